"""`diffperf optimize`: analytic optimum, bounds, budgets, Exact re-score, errors."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.analysis.optimize import enumerate_mappings, minimize_box, optimize
from diffperf.model import economics as _cost

DGX = dp.load_hardware("dgx_h100")
LLAMA = dp.load_workload("llama3_8b")
MAP = dp.Parallelism(tp=8, dp=2, microbatch=1, global_batch=16, seq_len=4096)


def test_projected_adam_reaches_the_lagrange_optimum_and_stays_in_the_box():
    # min a/x + b/y  s.t.  c1·x + c2·y ≤ B:  f* = (√(a·c1) + √(b·c2))² / B.
    a, b, c1, c2, budget = 3.0, 1.0, 2.0, 5.0, 40.0
    lo, hi = jnp.log(0.1), jnp.log(100.0)

    def loss(z, aux, knob):
        x, y = jnp.exp(lo + z * (hi - lo))
        return jnp.log(a / x + b / y), jnp.log((c1 * x + c2 * y) / budget)[None] + 2e-3

    z0 = jnp.asarray([[0.2, 0.9], [0.9, 0.1], [0.5, 0.5]])
    res = minimize_box(loss, z0, steps=150, lr=0.05, schedule=(("penalty", 1, 1e4),))
    assert float(res.z.min()) >= 0.0 and float(res.z.max()) <= 1.0
    x, y = np.exp(lo + np.asarray(res.z[-1]) * (hi - lo)).T
    best = (np.sqrt(a * c1) + np.sqrt(b * c2)) ** 2 / budget
    assert np.all(c1 * x + c2 * y <= budget)
    assert np.min(a / x + b / y) == pytest.approx(best, rel=5e-3)
    assert np.all(a / x + b / y < best * 1.02)


@pytest.fixture(scope="module")
def power_capped():
    """Step time vs HBM bandwidth under a chip-power budget: the analytic optimum is
    the bandwidth at which the modelled TDP meets the budget (time falls with it)."""
    budget = 720.0
    r = optimize(
        DGX,
        LLAMA,
        MAP,
        vary={"chip.hbm_bandwidth": (1e12, 8e12)},
        objective="step_time",
        budgets={"power_w": budget},
        steps=80,
        starts=2,
    )
    return r, budget


def test_optimum_is_where_the_power_budget_binds(power_capped):
    r, budget = power_capped
    k, c = DGX.cost, DGX.chip
    other = float(dp.chip_tdp(DGX) - c.hbm_bandwidth * k.hbm_energy)
    bw_star = (budget - other) / float(k.hbm_energy)
    got = r["best"]["hardware"]["chip.hbm_bandwidth"]
    at_star = dp.set_leaf(DGX, "chip.hbm_bandwidth", jnp.asarray(bw_star))
    t_star = float(dp.train_step(at_star, LLAMA, MAP).total)
    assert r["best"]["value"] == pytest.approx(t_star, rel=2e-3)
    # The search keeps a small margin on log budgets (MARGIN).
    assert got == pytest.approx(bw_star, rel=2e-2)
    assert got <= bw_star * (1 + 1e-9)  # never over the budget
    assert r["best"]["binding_budgets"] == ["power_w"]
    assert r["best"]["budgets"]["power_w"] <= budget
    assert r["goal"] == "min" and r["objective"] == "step_time"
    assert r["baseline"]["method"] == "random"
    assert r["baseline"]["evaluations"] == r["evaluations"]
    assert r["best"]["value"] <= r["baseline"]["value"] * (1 + 1e-3)


def test_exact_rescore_equals_diffperf_train(power_capped, tmp_path):
    r, _ = power_capped
    bw = r["best"]["hardware"]["chip.hbm_bandwidth"]
    c = dp.set_leaf(DGX, "chip.hbm_bandwidth", jnp.asarray(bw))
    assert float(dp.train_step(c, LLAMA, MAP).total) == pytest.approx(
        r["best"]["value"], rel=1e-9
    )
    spec = tmp_path / "designed.toml"
    spec.write_text(
        '[meta]\nschema = 1\nsource = "diffperf optimize"\nextends = "dgx_h100"\n'
        f"[chip]\nhbm_bandwidth = {bw!r}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "diffperf.cli", "train", "--hardware", str(spec),
         "--model", "llama3_8b", "--gpus", "16", "--tp", "8",
         "--global-batch", "16", "--seq-len", "4096", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # The CLI computes in float32 (JAX's default); the tests run in float64.
    assert json.loads(out.stdout)["step_time_s"] == pytest.approx(
        r["best"]["value"], rel=1e-6
    )


def test_mapping_search_and_budgets_hold_under_several_limits():
    for limit in (2.0e6, 2.6e6):
        r = optimize(
            DGX,
            LLAMA,
            MAP,
            vary={"chip.flops_bf16": (2e14, 3e15), "chip.hbm_bandwidth": (1e12, 8e12)},
            objective="tokens_per_usd",
            budgets={"capex_usd": limit, "area_mm2": 900.0},
            search_mapping=True,
            steps=40,
            starts=1,
            gradient_cost=1.0,  # a small random-search baseline: not under test here
        )
        best = r["best"]
        assert r["goal"] == "max" and r["mappings"] > 1
        assert best["budgets"]["capex_usd"] <= limit
        assert best["budgets"]["area_mm2"] <= 900.0
        for path, (lo, hi) in {
            "chip.flops_bf16": (2e14, 3e15),
            "chip.hbm_bandwidth": (1e12, 8e12),
        }.items():
            assert lo * (1 - 1e-12) <= best["hardware"][path] <= hi * (1 + 1e-12)
        m = best["mapping"]
        assert m["tp"] * m["pp"] * m["dp"] == 16
        assert best["value"] >= r["baseline"]["value"] * (1 - 0.02)


def test_enumerated_mappings_are_all_valid_and_complete():
    maps = enumerate_mappings(LLAMA, MAP, 16)
    keys = {(int(m.tp), int(m.pp), int(m.dp), int(m.microbatch)) for m in maps}
    assert len(keys) == len(maps)
    for m in maps:
        dp.check_mapping(LLAMA, m, 16)
    # Llama-3-8B: 32 heads, 8 KV heads, 32 layers; global batch 16.
    brute = {
        (tp, pp, 16 // (tp * pp), mb)
        for tp in (1, 2, 4, 8, 16)
        for pp in (1, 2, 4, 8, 16)
        for mb in (1, 2, 4, 8)
        if 16 % (tp * pp) == 0 and 16 % (mb * (16 // (tp * pp))) == 0
    }
    assert keys == brute


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vary={"chip.hbm_speed": (1.0, 2.0)}), "unknown hardware leaf"),
        (dict(vary={"chip.hbm_bandwidth": (2e12, 1e12)}), "0 < low < high"),
        (dict(vary={}), "at least one"),
        (dict(objective="speed"), "objective"),
        (dict(budgets={"watts": 1.0}), "budget"),
        (dict(budgets={"power_w": -1.0}), "must be > 0"),
    ],
)
def test_bad_input_raises_one_line_value_errors(kwargs, match):
    args = dict(vary={"chip.hbm_bandwidth": (1e12, 8e12)}) | kwargs
    with pytest.raises(ValueError, match=match):
        optimize(DGX, LLAMA, MAP, **args)


def test_cli_optimize_errors_exit_2():
    base = [sys.executable, "-m", "diffperf.cli", "optimize", "train",
            "--hardware", "dgx_h100", "--model", "llama3_8b", "--gpus", "16",
            "--tp", "8", "--json"]  # fmt: skip
    for extra in (["--vary", "chip.hbm_bandwidth:8e12"], ["--vary", "chip.nope:1:2"]):
        p = subprocess.run(base + extra, capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("error:") and len(p.stderr.splitlines()) == 1


def test_cost_leaves_can_be_design_variables():
    # "what if HBM stacks were cheaper": $ per token falls monotonically with their
    # cost, so the optimum is the lower bound, and the answer is within budget.
    r = optimize(
        DGX,
        LLAMA,
        MAP,
        vary={"cost.hbm_stack_cost": (10.0, 300.0)},
        objective="usd_per_million_tokens",
        budgets={"capex_usd": 1e7},
        steps=100,
        starts=1,
        gradient_cost=1.0,  # a small random-search baseline: not under test here
    )
    assert r["best"]["hardware"]["cost.hbm_stack_cost"] == pytest.approx(10.0, rel=1e-3)
    assert r["best"]["bounds_hit"] == {"cost.hbm_stack_cost": "low"}
    cheap = dp.set_leaf(DGX, "cost.hbm_stack_cost", jnp.asarray(10.0))
    assert _cost.chip_price(cheap) < _cost.chip_price(DGX)
    assert r["best"]["value"] < r["initial"]["value"]


def test_serving_objectives_with_a_batch_search():
    llama70 = dp.load_workload("llama2_70b")
    serving = dp.Serving(tp=4, batch=16, input_len=2048, output_len=256)
    r = optimize(
        DGX,
        llama70,
        serving,
        vary={"chip.hbm_bandwidth": (1e12, 1.2e13), "chip.flops_bf16": (2e14, 3e15)},
        objective="output_tokens_per_s_per_gpu",
        budgets={"power_w": 800.0},
        search_mapping=True,
        steps=40,
        starts=2,
        gradient_cost=1.0,  # a small random-search baseline: not under test here
    )
    best = r["best"]
    assert r["goal"] == "max" and r["mappings"] == 11
    assert best["budgets"]["power_w"] <= 800.0
    assert best["mapping"]["batch"] > 16  # throughput buys a larger batch
    c = DGX
    for p, v in best["hardware"].items():
        c = dp.set_leaf(c, p, jnp.asarray(v))
    s = dp.Serving(tp=4, batch=best["mapping"]["batch"], input_len=2048, output_len=256)
    res = dp.serve(c, llama70, s)
    assert float(res.output_tokens_per_s_per_gpu) == pytest.approx(best["value"])
    assert bool(res.feasible)
    with pytest.raises(ValueError, match="for a serving job"):
        optimize(DGX, llama70, serving, vary={"chip.hbm_bandwidth": (1e12, 8e12)})


def test_cost_counts_measured_gradient_steps_and_random_search_gets_it(power_capped):
    r, _ = power_capped
    c = r["cost"]
    assert c["gradient_cost"] == c["gradient_cost_measured"] > 0
    assert c["gradient_steps"] == 80 * 2 and c["exact_evaluations"] == 10 * 2
    assert r["evaluations"] == round((80 * c["gradient_cost"] + 10) * 2)
    assert r["baseline"]["evaluations"] == r["evaluations"]
    # the same start: random search scores the initial design first
    assert r["initial"]["within_budget"]
    assert r["baseline"]["value"] <= r["initial"]["value"]


def test_score_designs_reproduces_the_rescore(power_capped):
    r, budget = power_capped
    bw = r["best"]["hardware"]["chip.hbm_bandwidth"]
    vary = {"chip.hbm_bandwidth": (1e12, 8e12)}
    score = dp.DesignScorer(DGX, LLAMA, MAP, vary=vary, budgets={"power_w": budget})
    s = score([[bw], [7.9e12]], [0, 0])
    assert s["value"][0] == pytest.approx(r["best"]["value"], rel=1e-12)
    assert s["ok"].tolist() == [True, False]  # 7.9 TB/s of HBM exceeds 720 W
    with pytest.raises(ValueError, match=r"must be \[n, 1\]"):
        score([1e12, 2e12])
    with pytest.raises(ValueError, match=r"mapping_index must be"):
        score([[bw]], [1])
