"""Discrete design choices (dies, HBM generation and stacks, formats, scale-up, NICs),
their cost terms, their enumeration and the workload-mix choice (issue #13)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model import economics as econ

A100 = dp.load_hardware("a100_sxm4_80gb")
H100 = dp.load_hardware("h100_sxm")


def test_two_dies_double_peak_sram_and_silicon_terms():
    two = dp.apply_design(A100, {"dies": 2})
    for leaf in ("flops_bf16", "flops_int8", "sram_capacity", "cores", "die_area"):
        assert float(getattr(two.chip, leaf)) == pytest.approx(
            2 * float(getattr(A100.chip, leaf)), rel=1e-6
        )
    # logic and SRAM double; the HBM and link PHYs serve the same bandwidth, so each
    # die is a little smaller than the one-die chip (its PHYs are shared out)
    logic_sram = float(dp.die_area(dp.set_leaf(A100, "chip.hbm_bandwidth", 1.0)))
    logic_sram = float(
        dp.die_area(dp.set_leaf(A100, "scale_up.bandwidth", 1.0))
    ) + logic_sram - float(dp.die_area(A100))  # fmt: skip
    assert float(dp.die_area(two)) == pytest.approx(
        float(dp.die_area(A100)) + logic_sram, rel=1e-4
    )
    one, dual = econ.chip_cost(A100), econ.chip_cost(two)
    # ~2x silicon: two dies, each a little smaller (better yield, more per wafer)
    assert 1.8 < float(dual["silicon"] / one["silicon"]) < 2.0
    # the extra die costs packaging and assembly yield
    k = A100.cost
    assert float(dual["packaging"] - one["packaging"]) == pytest.approx(
        float(k.die_packaging_cost)
    )
    assert float(dual["assembly"]) > float(one["assembly"])
    extra = float(dual["silicon"] - one["silicon"]) + float(k.die_packaging_cost)
    added = float(dp.chip_price(two) - dp.chip_price(A100))
    assert added > float(k.markup) * extra


def test_assembly_term_follows_bond_yield():
    perfect = dp.set_leaf(A100, "cost.bond_yield", jnp.asarray(1.0))
    assert float(econ.chip_cost(perfect)["assembly"]) == 0.0
    parts = econ.chip_cost(A100)
    n = float(A100.cost.dies + econ.hbm_stacks(A100))
    made = float(parts["silicon"] + parts["hbm"] + parts["packaging"])
    want = made * (0.99**-n - 1.0)
    assert float(parts["assembly"]) == pytest.approx(want, rel=1e-4)


def test_more_hbm_stacks_more_bandwidth_capacity_cost_and_power():
    g = dp.HBM_GENERATIONS["hbm3"]
    four = dp.apply_design(A100, {"hbm_generation": "hbm3", "hbm_stacks": 4})
    six = dp.apply_design(A100, {"hbm_generation": "hbm3", "hbm_stacks": 6})
    assert float(six.chip.hbm_bandwidth) == pytest.approx(6 * g.stack_bandwidth)
    assert float(six.chip.hbm_capacity) == pytest.approx(6 * g.stack_capacity)
    assert float(dp.hbm_stacks(six)) == pytest.approx(6.0)
    assert float(econ.chip_cost(six)["hbm"]) == pytest.approx(
        1.5 * float(econ.chip_cost(four)["hbm"]), rel=1e-5
    )
    assert float(dp.die_area(six)) > float(dp.die_area(four))  # more PHYs
    assert float(dp.chip_tdp(six)) > float(dp.chip_tdp(four))
    # a newer generation: more bandwidth per stack at a higher price per GB
    e2, e3 = (
        dp.apply_design(A100, {"hbm_generation": n, "hbm_stacks": 5})
        for n in ("hbm2e", "hbm3")
    )
    assert float(e3.chip.hbm_bandwidth) > 1.7 * float(e2.chip.hbm_bandwidth)
    assert float(e3.cost.hbm_cost_per_byte) > float(e2.cost.hbm_cost_per_byte)


def test_formats_set_peaks_and_cost_area():
    bf16 = dp.apply_design(H100, {"formats": ()})
    fp8 = dp.apply_design(H100, {"formats": ("fp8",)})
    both = dp.apply_design(H100, {"formats": ["fp8", "fp4"]})
    pi = float(H100.chip.flops_bf16)
    assert float(bf16.chip.flops_fp8) == 0.0 and float(bf16.chip.flops_fp4) == 0.0
    assert float(fp8.chip.flops_fp8) == pytest.approx(2 * pi)
    assert float(both.chip.flops_fp4) == pytest.approx(4 * pi)
    assert float(dp.die_area(bf16)) < float(dp.die_area(fp8)) < float(dp.die_area(both))
    # H100 supports fp8 and is anchored with it: its datasheet area is reproduced
    assert float(dp.die_area(H100)) * 1e6 == pytest.approx(814.0, rel=1e-4)


def test_scale_up_and_nics():
    c = dp.apply_design(
        A100,
        {"scale_up_size": 32, "scale_up_bandwidth": 450e9, "nics_per_chip": 2,
         "nic_bandwidth": 50e9},
    )  # fmt: skip
    assert float(c.scale_up.size) == 32 and float(c.scale_up.bandwidth) == 450e9
    assert float(c.host.nics_per_node) == 2 * float(A100.host.chips_per_node)
    assert float(dp.capex_per_chip(c)) > float(dp.capex_per_chip(A100))


def test_scale_up_bandwidth_moves_every_torus_axis():
    pod = dp.load_hardware("tpu_v5p_pod")
    c = dp.apply_design(pod, {"scale_up_bandwidth": 2 * float(pod.scale_up.bandwidth)})
    for d0, d1 in zip(pod.scale_up.dims, c.scale_up.dims, strict=True):
        assert float(d1.bandwidth) == pytest.approx(2 * float(d0.bandwidth))
    with pytest.raises(ValueError, match="scale_up_size"):
        dp.apply_design(pod, {"scale_up_size": 64})


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"dies": 0}, "dies"),
        ({"dies": 1.5}, "dies"),
        ({"hbm_generation": "hbm4", "hbm_stacks": 4}, "hbm_generation"),
        ({"hbm_generation": "hbm3", "hbm_stacks": 7}, "hbm_stacks"),
        ({"hbm_stacks": 4}, "hbm_stacks"),
        ({"formats": ("fp6",)}, "formats"),
        ({"scale_up_bandwidth": -1.0}, "scale_up_bandwidth"),
        ({"chiplets": 2}, "chiplets"),
    ],
)
def test_bad_choices_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        dp.apply_design(A100, bad)


def test_two_dies_have_twice_the_hbm_sites():
    c = dp.apply_design(A100, {"dies": 2, "hbm_generation": "hbm3e", "hbm_stacks": 8})
    assert float(c.chip.hbm_capacity) == pytest.approx(8 * 24e9)


def test_gradients_through_choices_are_finite():
    model = dp.load_workload("gpt3_5b")
    m = dp.Parallelism(tp=2, pp=1, dp=4, microbatch=1, global_batch=64, seq_len=2048)

    def usd_per_token(c):
        c = dp.apply_design(
            c, {"dies": 2, "hbm_generation": "hbm3", "hbm_stacks": 8,
                "formats": ("fp8",)},
        )  # fmt: skip
        b = dp.train_step(c, model, m, relax=dp.Smooth(64.0))
        return dp.hourly_cost(c, 8) * b.total / b.tokens

    g = jax.grad(usd_per_token)(A100)
    leaves = [g.chip.flops_bf16, g.chip.sram_capacity, g.scale_up.bandwidth,
              g.cost.bond_yield, g.cost.die_packaging_cost,
              g.cost.fp8_area]  # fmt: skip
    assert all(np.isfinite(float(x)) for x in leaves)
    assert float(g.cost.die_packaging_cost) > 0  # dearer packaging, dearer tokens
    assert float(g.cost.bond_yield) < 0


def test_enumerate_designs_skips_unbuildable_and_rejects_bad_values():
    designs, skipped = dp.enumerate_designs(
        A100, {"dies": [1, 2], "hbm_generation": ["hbm2e", "hbm3"],
               "hbm_stacks": [6, 8]},
    )  # fmt: skip
    assert len(designs) == 6 and len(skipped) == 2  # 8 stacks on one die
    assert all(ch["dies"] == 1 and ch["hbm_stacks"] == 8 for ch, _ in skipped)
    with pytest.raises(ValueError, match="hbm_generation"):
        dp.enumerate_designs(A100, {"hbm_generation": ["hbm5"], "hbm_stacks": [4]})
    with pytest.raises(ValueError, match="dies"):
        dp.enumerate_designs(A100, {"dies": []})


def _small_job():
    model = dp.load_workload("gpt3_5b")
    m = dp.Parallelism(tp=2, pp=1, dp=4, microbatch=1, global_batch=64, seq_len=2048)
    return dp.Job(model, m, "tokens_per_usd")


def test_codesign_picks_best_feasible_combination():
    job = _small_job()
    vary = {"chip.flops_bf16": (1e14, 2e15)}
    budgets = {"die_mm2": 858.0, "power_w": 700.0}
    r = dp.codesign(
        H100, job, choices={"hbm_generation": ["hbm2e", "hbm3"], "hbm_stacks": [2, 5]},
        vary=vary, budgets=budgets, tie={"chip.flops_fp8": "chip.flops_bf16"},
        steps=12, starts=1,
    )  # fmt: skip
    ds = r["designs"]
    assert len(ds) == 4 and r["best"] is not None
    ok = [d for d in ds if d["within_budget"]]
    assert ds[r["best"]]["value"] == max(d["value"] for d in ok)
    for d in ok:
        assert d["budgets"]["die_mm2"] <= 858.0 and d["budgets"]["power_w"] <= 700.0
    # the winner re-scored from its choices and leaves gives the same value
    best = ds[r["best"]]
    c = dp.design_cluster(H100, best["choices"], best["hardware"],
                          tie={"chip.flops_fp8": "chip.flops_bf16"})  # fmt: skip
    assert dp.score_jobs(c, {"j": job})["j"] == pytest.approx(best["value"], 1e-4)


def test_tie_keeps_ratio_in_optimize():
    import equinox as eqx

    job = _small_job()
    fp8 = eqx.tree_at(lambda m: m.precision, job.model, dp.Precision.training("fp8"))
    pi = float(H100.chip.flops_bf16)
    times = {}
    for name, tie in (("tied", {"chip.flops_fp8": "chip.flops_bf16"}), ("free", None)):
        s = dp.DesignScorer(H100, fp8, job.mapping, vary={"chip.flops_bf16":
                            (pi / 4, 4 * pi)}, tie=tie)  # fmt: skip
        times[name] = s(np.asarray([[pi], [2 * pi]]))["value"]
    assert times["tied"][0] == pytest.approx(times["free"][0])  # same at the start
    assert times["tied"][1] < 0.9 * times["free"][1]  # fp8 peak followed bf16's
    with pytest.raises(ValueError, match="not a --vary leaf"):
        dp.optimize(H100, job.model, job.mapping,
                    vary={"chip.flops_bf16": (3e14, 3e15)},
                    tie={"chip.flops_fp8": "chip.hbm_bandwidth"}, steps=2)  # fmt: skip


def test_robust_design_expected_log_gain():
    job = _small_job()
    slow = dp.scale_leaf(H100, "chip.flops_bf16", 0.5)
    jobs = {"a": job, "b": dp.Job(job.model, job.mapping, "step_time")}
    r = dp.robust_design(
        {"h100": H100, "slow": slow}, jobs, {"a": 1.0, "b": 1.0}, reference="h100"
    )
    assert r["expected"]["h100"] == 0.0
    assert r["gain"]["slow"]["b"] < 0 and r["best"] == "h100"  # slower is worse
    with pytest.raises(ValueError, match="weights"):
        dp.robust_design({"h100": H100}, jobs, {"a": 1.0}, reference="h100")


def test_job_adjust_scores_a_sample_of_uncertain_leaves():
    job = _small_job()

    def half(c):
        return dp.scale_leaf(c, "chip.matmul_efficiency", 0.5)

    slower = dp.Job(job.model, job.mapping, "tokens_per_usd", adjust=half)
    v = dp.score_jobs(H100, {"nominal": job, "sample": slower})
    assert v["sample"] < 0.9 * v["nominal"]
