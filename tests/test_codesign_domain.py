"""The scale-up domain as a priced design choice (NVLink domain size, torus dims), the
scale-up bandwidth reaching every link the collectives use, and `dp.retrodict`
(issue #13)."""

import json

import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.analysis import codesign as cd

DGX_H100 = dp.load_hardware("dgx_h100")
NVL72 = dp.load_hardware("gb200_nvl72")
V4 = dp.load_hardware("tpu_v4_pod")
P = dp.DOMAIN_PARTS


def test_domain_cost_formula():
    # on one board: wired on the board, air-cooled
    assert float(dp.domain_cost(8.0, 8.0, 1275.0)) == 0.0
    # 72 chips off 8-chip boards at 1275 W each: 92 kW per rack, liquid
    want = P.cabling * (1 - 8 / 72) + P.liquid_cooling
    assert float(dp.domain_cost(72.0, 8.0, 1275.0)) == pytest.approx(want)
    # the same domain of low-power chips stays on air: 72 x 500 W = 36 kW
    assert float(dp.domain_cost(72.0, 8.0, 500.0)) == pytest.approx(
        P.cabling * (1 - 8 / 72)
    )
    # a domain smaller than its board costs nothing extra
    assert float(dp.domain_cost(4.0, 8.0, 1275.0)) == 0.0


@pytest.mark.parametrize("size", [12.0, 36.0, 72.0])
def test_domain_cost_gradient_matches_finite_differences(size):
    assert jax.config.jax_enable_x64

    def f(n, board):
        return dp.domain_cost(n, board, 1275.0)

    g = jax.grad(f, argnums=(0, 1))(size, 8.0)
    h = 1e-4
    fd_n = (f(size + h, 8.0) - f(size - h, 8.0)) / (2 * h)
    fd_b = (f(size, 8.0 + h) - f(size, 8.0 - h)) / (2 * h)
    assert float(g[0]) == pytest.approx(float(fd_n), rel=1e-6)
    assert float(g[1]) == pytest.approx(float(fd_b), rel=1e-6)
    assert float(g[0]) > 0 and float(g[1]) < 0  # bigger domains, more cable per chip


def test_scale_up_size_choice_is_priced_on_the_host():
    n = float(DGX_H100.host.chips_per_node)
    rack_w = float(DGX_H100.chip.power) + float(DGX_H100.host.power) / n
    prices = {}
    for size in (8, 36, 72):
        c = dp.apply_design(DGX_H100, {"scale_up_size": size})
        assert float(c.scale_up.size) == size
        step = float(dp.domain_cost(size, n, rack_w))
        assert float(c.host.price) == pytest.approx(
            float(DGX_H100.host.price) + n * step
        )
        prices[size] = float(dp.capex_per_chip(c))
    assert prices[8] == pytest.approx(float(dp.capex_per_chip(DGX_H100)))
    assert prices[8] < prices[36] < prices[72]
    # the as-built NVL72 already holds its spine: going to 8 makes it cheaper
    small = dp.apply_design(NVL72, {"scale_up_size": 8})
    assert float(dp.capex_per_chip(small)) < float(dp.capex_per_chip(NVL72))
    back = dp.apply_design(small, {"scale_up_size": 72})
    assert float(back.host.price) == pytest.approx(float(NVL72.host.price))


def test_scale_up_dims_resize_a_torus():
    c = dp.apply_design(V4, {"scale_up_dims": (16, 20, 28)})
    assert float(c.scale_up.size) == 16 * 20 * 28
    assert [float(d.size) for d in c.scale_up.dims] == [16, 20, 28]
    for d0, d1 in zip(V4.scale_up.dims, c.scale_up.dims, strict=True):
        assert float(d1.bandwidth) == float(d0.bandwidth)
    assert float(dp.capex_per_chip(c)) == pytest.approx(float(dp.capex_per_chip(V4)))
    with pytest.raises(ValueError, match="scale_up_dims"):
        dp.apply_design(V4, {"scale_up_dims": (16, 16)})
    with pytest.raises(ValueError, match="scale_up_dims"):
        dp.apply_design(V4, {"scale_up_dims": (16, 0, 16)})
    with pytest.raises(ValueError, match="scale_up_dims"):
        dp.apply_design(V4, {"scale_up_dims": ()})
    with pytest.raises(ValueError, match="scale_up_dims"):
        dp.apply_design(DGX_H100, {"scale_up_dims": (8,)})  # a switch has no dims
    designs, _ = dp.enumerate_designs(V4, {"scale_up_dims": [(8, 8, 8), (16, 16, 16)]})
    assert [float(c.scale_up.size) for _, c in designs] == [512, 4096]


def _tp8_step(c, bw):
    model = dp.load_workload("gpt3_5b")
    m = dp.Parallelism(tp=8, pp=1, dp=1, microbatch=1, global_batch=8, seq_len=2048)
    c = dp.set_leaf(c, "scale_up.bandwidth", bw)
    return dp.train_step(c, model, m, relax=dp.Smooth(64.0)).total


def test_scale_up_bandwidth_reaches_a_switch_tier_but_not_torus_dims():
    """A GPU tier without dims is one dimension built from scale_up.bandwidth, so the
    varied leaf is the link bandwidth; a torus's dims carry their own, so the
    retrodiction ties them to scale_up.bandwidth."""
    bw = float(DGX_H100.scale_up.bandwidth)
    g = jax.grad(lambda b: _tp8_step(DGX_H100, b))(bw)
    h = 1e-3 * bw
    fd = (_tp8_step(DGX_H100, bw + h) - _tp8_step(DGX_H100, bw - h)) / (2 * h)
    assert float(g) < 0 and float(g) == pytest.approx(float(fd), rel=1e-3)
    # on a torus the tier's own bandwidth is not what the collectives use
    pod = dp.load_hardware("tpu_v5p_pod")
    bw = float(pod.scale_up.bandwidth)
    assert float(_tp8_step(pod, 2 * bw)) == pytest.approx(float(_tp8_step(pod, bw)))
    tie = cd._retrodict_tie(pod, {"scale_up.bandwidth": (1e11, 1e12)})
    assert tie["scale_up.dims.2.bandwidth"] == "scale_up.bandwidth"
    assert not any("dims" in p for p in cd._retrodict_tie(DGX_H100, {"x": (1, 2)}))


def test_narrowest_precision():
    train = dp.narrowest_precision(["fp4", "fp8"], training=True)
    assert train(("fp8",)) == dp.Precision.training("fp8")
    assert train(()) == dp.Precision.training("bf16")
    serve = dp.narrowest_precision(["fp4", "fp8"], training=False)
    assert serve(("fp8", "fp4")) == dp.Precision(math="fp4", weights="fp4")
    assert serve(()) == dp.Precision()
    with pytest.raises(ValueError, match="formats"):
        dp.narrowest_precision(["fp6"], training=True)


def _serve_job():
    model = dp.load_workload("llama3_8b")
    m = dp.Serving(tp=1, batch=8, input_len=512, output_len=64)
    return dp.Job(model, m, "serve_usd_per_million_tokens")


def test_retrodict_rejects_bad_input():
    kw = dict(choices={"dies": [1]}, vary={"chip.flops_bf16": (1e14, 2e15)},
              budgets={}, steps=2, starts=1)  # fmt: skip
    jobs = {"serve": _serve_job()}
    with pytest.raises(ValueError, match="mix"):
        dp.retrodict(DGX_H100, NVL72, jobs, chips={"serve": 1}, mix={"x": 1}, **kw)
    with pytest.raises(ValueError, match="chips"):
        dp.retrodict(DGX_H100, NVL72, jobs, chips={}, mix={"serve": 1}, **kw)
    with pytest.raises(ValueError, match="explain"):
        dp.retrodict(DGX_H100, NVL72, jobs, chips={"serve": 1}, mix={"serve": 1},
                     explain="train", **kw)  # fmt: skip


def test_retrodict_second_stage_enumerates_the_domain(tmp_path):
    """Through `retrodict_study` (a config as an experiment's config.toml reads), which
    also writes results.json and balance.png."""
    cfg = dict(start="dgx_h100", reference="gb200_nvl72", reference_label="GB200",
               start_label="H100", choices={"dies": [1]},
               vary={"chip.flops_bf16": [1e14, 2e15]}, budgets={"power_w": 1200.0},
               mix={"serve": 1.0}, process_leaves=["markup"], efficiency_leaves=[],
               steps=3, starts=1, uncertainty=None,
               then={"scale_up_size": [8, 72]})  # fmt: skip
    r = dp.retrodict_study(cfg, {"serve": _serve_job()}, chips={"serve": 1},
                           out_dir=tmp_path, progress=None, explain=None)  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"] == cfg and saved["robust"] == r["robust"]
    assert (tmp_path / "balance.png").stat().st_size > 10_000
    then = r["jobs"]["serve"]["then"]
    assert [d["choices"]["scale_up_size"] for d in then["designs"]] == [8, 72]
    assert all(d["choices"]["dies"] == 1 for d in then["designs"])
    # one chip never uses the domain: the bigger one only costs, so 8 wins
    assert then["designs"][then["best"]]["choices"]["scale_up_size"] == 8
    assert then["designs"][0]["value"] < then["designs"][1]["value"]
    assert set(r["robust"]["expected"]) >= {"GB200", "H100", "serve#0", "serve#then1"}
    assert r["reference"] == pytest.approx(cd._describe(NVL72))
    assert r["capex_per_chip_usd"] == pytest.approx(float(dp.capex_per_chip(NVL72)))
    assert np.isfinite(r["jobs"]["serve"]["best"]["peak bf16 [PFLOP/s]"])


def test_better_of_keeps_each_combinations_better_start():
    def run(values, goal="min"):
        designs = [dict(choices={"k": i}, value=v, within_budget=v is not None)
                   for i, v in enumerate(values)]  # fmt: skip
        return dict(objective="x", goal=goal, designs=designs, skipped=[], best=None)

    r = cd._better_of([run([3.0, None, 5.0]), run([4.0, 2.0, None])])
    assert [d["value"] for d in r["designs"]] == [3.0, 2.0, 5.0]
    assert [d["start"] for d in r["designs"]] == [0, 1, 0]
    assert r["best"] == 1
    r = cd._better_of([run([3.0, 1.0], "max"), run([4.0, None], "max")])
    assert [d["value"] for d in r["designs"]] == [4.0, 1.0] and r["best"] == 0
    r = cd._better_of([run([None]), run([None])])
    assert r["best"] is None and not r["designs"][0]["within_budget"]
