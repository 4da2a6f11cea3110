"""Cost, area and power model: anchoring, closed forms, gradients, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.io import hardware_names
from diffperf.model import economics as _cost
from tests.helpers import float_leaf_paths, get_leaf, scale_leaf

H100 = dp.load_hardware("dgx_h100")
LLAMA = dp.load_workload("llama3_8b")
MAP = dp.Parallelism(tp=8, dp=8, microbatch=1, global_batch=64, seq_len=8192)


@pytest.mark.parametrize("name", hardware_names())
def test_anchor_reproduces_datasheet_area_price_and_tdp(name):
    c = dp.load_hardware(name)
    chip = c.chip
    np.testing.assert_allclose(float(dp.die_area(c)), float(chip.die_area), rtol=1e-4)
    np.testing.assert_allclose(float(dp.chip_price(c)), float(chip.price), rtol=1e-4)
    np.testing.assert_allclose(float(dp.chip_tdp(c)), float(chip.power), rtol=1e-4)


def test_dies_per_wafer_and_yield_closed_forms():
    # 100 mm² on a 300 mm wafer: π·150²/100 − π·300/√200 = 640.3 (Hennessy & Patterson)
    n = float(_cost.dies_per_wafer(100e-6, 0.3))
    assert n == pytest.approx(math.pi * 150**2 / 100 - math.pi * 300 / math.sqrt(200))
    # 1 cm² at 0.1 defects/cm², α = 3: (1 + 0.1/3)^−3
    y = float(_cost.die_yield(1e-4, 1000.0, 3.0))
    assert y == pytest.approx((1 + 0.1 / 3) ** -3)
    areas = jnp.linspace(50e-6, 900e-6, 20)
    assert np.all(np.diff(np.asarray(_cost.die_yield(areas, 1000.0, 3.0))) < 0)
    assert float(_cost.dies_per_wafer(1.0, 0.3)) == 1.0  # wafer-scale part


@pytest.mark.parametrize(
    "path", ["chip.hbm_bandwidth", "chip.flops_bf16", "chip.sram_capacity"]
)
def test_more_resource_costs_more_area_price_and_power(path):
    big = scale_leaf(H100, path, 1.5)
    assert float(dp.die_area(big)) > float(dp.die_area(H100))
    assert float(dp.chip_price(big)) > float(dp.chip_price(H100))
    if path != "chip.sram_capacity":
        assert float(dp.chip_tdp(big)) > float(dp.chip_tdp(H100))


def test_hbm_capacity_needs_stacks_beyond_the_bandwidth_count():
    cost = _cost.chip_cost(H100)["hbm"]
    more = _cost.chip_cost(scale_leaf(H100, "chip.hbm_capacity", 4.0))["hbm"]
    k = H100.cost
    stacks = 4 * float(H100.chip.hbm_capacity / k.hbm_stack_capacity)
    expect = stacks * float(k.hbm_stack_cost) + 4 * float(
        H100.chip.hbm_capacity * k.hbm_cost_per_byte
    )
    assert float(more) == pytest.approx(expect) and float(more) > 4 * float(cost) * 0.9


def test_hourly_cost_formula_and_overrides():
    k, h = H100.cost, H100.host
    capex = float(_cost.capex_per_chip(H100))
    watts = float(dp.chip_tdp(H100) + h.power / h.chips_per_node)
    energy = watts / 1e3 * float(k.pue * k.usd_per_kwh)
    expect = 16 * (capex / float(k.lifetime) + energy)
    assert float(dp.hourly_cost(H100, 16)) == pytest.approx(expect)
    cheap = float(dp.hourly_cost(H100, 16, usd_per_kwh=0.0))
    assert cheap == pytest.approx(16 * capex / float(k.lifetime))


def test_step_power_between_idle_and_tdp_and_energy_per_token():
    b = dp.train_step(H100, LLAMA, MAP)
    p = float(dp.step_power(H100, b))
    assert float(H100.cost.idle_power) < p <= float(dp.chip_tdp(H100))
    u = _cost.busy_fractions(b)
    assert all(0.0 <= float(x) <= 1.0 + 1e-9 for x in u)
    j = float(dp.joules_per_token(H100, b))
    h = H100.host
    per_chip = p + float(h.power / h.chips_per_node)
    expect = 64 * per_chip * float(H100.cost.pue) * float(b.total) / float(b.tokens)
    assert j == pytest.approx(expect)


def _metric(c):
    b = dp.train_step(c, LLAMA, MAP, relax=dp.Smooth())
    return (
        jnp.log(dp.hourly_cost(c, 64))
        + jnp.log(dp.die_area(c))
        + jnp.log(dp.joules_per_token(c, b))
    )


def test_gradients_finite_for_every_leaf_and_match_finite_differences():
    g = jax.grad(_metric)(H100)
    for path in float_leaf_paths(H100):
        assert np.isfinite(float(get_leaf(g, path))), path
    for path in ("chip.hbm_bandwidth", "cost.wafer_cost", "cost.defect_density"):
        x0 = float(get_leaf(H100, path))
        eps = 1e-6
        hi = _metric(scale_leaf(H100, path, 1 + eps))
        lo = _metric(scale_leaf(H100, path, 1 - eps))
        fd = float(hi - lo) / (2 * eps * x0)
        assert float(get_leaf(g, path)) == pytest.approx(fd, rel=1e-4, abs=1e-12)


def test_bad_cost_input(tmp_path):
    with pytest.raises(ValueError, match="wafer_cost"):
        dp.Cost(wafer_cost=-1.0)
    with pytest.raises(ValueError, match="misc_area_fraction"):
        dp.Cost(misc_area_fraction=1.5)
    spec = tmp_path / "x.toml"
    text = (dp.io.spec_dir("hardware") / "h100_sxm.toml").read_text()
    spec.write_text(text + "\n[cost]\nwafer_price = 1.0\n")
    with pytest.raises(ValueError, match=r"\[cost\].*wafer_price"):
        dp.load_hardware(str(spec))
