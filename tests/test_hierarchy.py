"""Hierarchical calibration: planted family, device and stack leaves are recovered."""

import math

import equinox as eqx
import numpy as np
import pytest

import diffperf as dp
from diffperf.analysis.calibrate import Prior, Row
from diffperf.analysis.hierarchy import RowLevels, calibrate_hierarchy, level_folds
from diffperf.core.paths import set_leaf

MODEL = "llama3_8b"
FAMILY = {"a100_sxm4_40gb": "ampere", "a100_sxm4_80gb": "ampere",
          "h100_sxm": "hopper", "h200_sxm": "hopper"}  # fmt: skip
# planted truth: global matmul efficiency, family and device log residuals, stacks
GLOBAL = 0.7
FAM_RES = {"ampere": math.log(0.85), "hopper": math.log(1.15)}
DEV_RES = {"a100_sxm4_40gb": 0.0, "a100_sxm4_80gb": math.log(1.05),
           "h100_sxm": 0.0, "h200_sxm": math.log(0.97)}  # fmt: skip
STEP = {"megatron_core": 0.15, "composer_fsdp": 0.02}
PRIORS = {
    "chip.matmul_efficiency": Prior(0.7, 0.3, 0.98),
    "host.step_overhead": Prior(0.05, 1e-3, 1.0, sigma=math.log(4.0)),
}


# targets from the relaxation the fit optimizes, so that the test measures the
# estimator (levels, shrinkage, folds), not the gap between Smooth and Exact
_STEP_TIME = eqx.filter_jit(
    lambda c, m, p: dp.train_step(c, m, p, relax=dp.Smooth(32.0)).total
)


def _rows():
    model = dp.load_workload(MODEL)
    rows, levels = [], []
    for dev, fam in FAMILY.items():
        for stack, step in STEP.items():
            for batch in (8.0, 64.0):
                cluster = dp.load_hardware(dev, stack=stack)
                eff = GLOBAL * math.exp(FAM_RES[fam] + DEV_RES[dev])
                true = set_leaf(cluster, "chip.matmul_efficiency", eff)
                true = set_leaf(true, "host.step_overhead", step)
                mapping = dp.Parallelism(dp=8.0, tp=1.0, global_batch=batch,
                                         seq_len=2048.0)  # fmt: skip
                t = float(_STEP_TIME(true, model, mapping))
                rows.append(Row(dev, f"src-{dev}", cluster, (model, mapping), t,
                                "train", False, stack))  # fmt: skip
                levels.append(RowLevels((fam,), dev, stack))
    return rows, levels


@pytest.fixture(scope="module")
def fitted():
    # 500 steps: under the pseudo-Huber loss (bounded pull far from the optimum) the
    # held-out folds converge more slowly than under the squared loss (250 steps left
    # the h100_sxm fold at 6.5%, 500 at 5.3%; squared, 250 steps: 5.9%)
    rows, levels = _rows()
    fit = calibrate_hierarchy(
        rows, levels, PRIORS, stack_paths=["host.step_overhead"], steps=500,
        lr=0.05, holdout="device", noise=0.01,  # noise-free rows: weak priors
    )  # fmt: skip
    return rows, levels, fit


def test_recovers_planted_family_and_stack_values(fitted):
    _, _, fit = fitted
    fams = fit["values"]["families"]
    for fam, res in FAM_RES.items():
        truth = GLOBAL * math.exp(res)
        # family level = global × family residual; the devices' mean residual is
        # not zero (shrinkage shares it between levels), so compare devices exactly
        assert fams[fam]["chip.matmul_efficiency"] == pytest.approx(truth, rel=0.08)
    for dev, fam in FAMILY.items():
        truth = GLOBAL * math.exp(FAM_RES[fam] + DEV_RES[dev])
        got = fit["values"]["devices"][dev]["chip.matmul_efficiency"]
        assert got == pytest.approx(truth, rel=0.02), dev
    for stack, step in STEP.items():
        got = fit["values"]["stacks"][stack]["host.step_overhead"]
        assert got == pytest.approx(step, rel=0.1), stack
    assert fit["train_mape"] < 0.01
    assert fit["at_bound"] == []


def test_leave_one_device_out_predicts_from_the_family(fitted):
    _, levels, fit = fitted
    held = np.array(fit["row_heldout_ape"])
    devices = np.array([lv.device for lv in levels])
    # a withheld device is predicted by its family, estimated from its sibling alone:
    # it misses by its own planted residual plus what the sibling's residual moved
    # the family (nothing in the data can reveal either), plus the Exact model's
    # distance from the Smooth targets (~2%); without the family level it would miss
    # by the family's planted offset (15%)
    for dev, fam in FAMILY.items():
        sibling = next(d for d, f in FAMILY.items() if f == fam and d != dev)
        bound = abs(math.expm1(DEV_RES[dev])) + abs(math.expm1(DEV_RES[sibling]))
        mape = held[devices == dev].mean()
        assert mape < bound + 0.03, (dev, mape)
    assert fit["uncalibrated_mape"] > 2 * fit["heldout_mape"]


def test_folds_and_bad_input():
    rows, levels = _rows()
    names, held = level_folds(rows, levels, "stack")
    assert names == sorted(STEP)
    assert held.sum() == len(rows)
    names, held = level_folds(rows, levels, "device", min_rows=100)
    assert names == [] and held.shape[0] == 0
    with pytest.raises(ValueError, match="device, source, stack or kfold"):
        level_folds(rows, levels, "chip")
    with pytest.raises(ValueError, match="levels has"):
        calibrate_hierarchy(rows, levels[:-1], PRIORS)
    with pytest.raises(ValueError, match="no rows"):
        calibrate_hierarchy([], [], PRIORS)


def test_robust_loss_is_squared_near_zero_and_linear_far_out():
    from diffperf.analysis.hierarchy import robust_loss

    r = np.array([1e-3, 0.05, 1.0, 3.0])
    rho = np.asarray(robust_loss(r, 0.1))
    assert rho[0] == pytest.approx(r[0] ** 2, rel=1e-4)
    assert rho[1] == pytest.approx(r[1] ** 2, rel=0.07)
    # beyond δ the loss grows like 2δ|r|: the slope is bounded by 2δ
    assert (rho[3] - rho[2]) / 2.0 == pytest.approx(0.2, rel=0.01)
    assert np.allclose(np.asarray(robust_loss(r, None)), r**2)


def test_one_outlier_row_does_not_drag_the_fit():
    """Six rows of one device and stack, one measured 2x slow (a software release's
    regression): the pseudo-Huber loss keeps the device's fitted efficiency within 3%
    of the truth (the same fit with `robust=None`, the squared loss, fails this)."""
    model = dp.load_workload(MODEL)
    truth = 0.6
    cluster = dp.load_hardware("h100_sxm", stack="megatron_core")
    planted = set_leaf(cluster, "chip.matmul_efficiency", truth)
    rows, levels = [], []
    for k, batch in enumerate((8.0, 16.0, 32.0, 64.0, 128.0, 256.0)):
        mapping = dp.Parallelism(dp=8.0, tp=1.0, global_batch=batch, seq_len=2048.0)
        t = float(_STEP_TIME(planted, model, mapping)) * (2.0 if k == 3 else 1.0)
        rows.append(Row("h100_sxm", "src", cluster, (model, mapping), t, "train",
                        False, "megatron_core"))  # fmt: skip
        levels.append(RowLevels(("hopper",), "h100_sxm", "megatron_core"))
    priors = {"chip.matmul_efficiency": Prior(0.7, 0.3, 0.98, sigma=math.log(4.0))}
    fit = calibrate_hierarchy(rows, levels, priors, steps=200, lr=0.05, noise=0.01)
    got = fit["values"]["devices"]["h100_sxm"]["chip.matmul_efficiency"]
    assert got == pytest.approx(truth, rel=0.03)
