"""Sensitivity analysis: elasticities, binding resource, uncertainty, the CLI."""

import json

import jax
import numpy as np

import diffperf as dp
from diffperf.analysis.sensitivity import binding_resource, elasticities, uncertainty
from diffperf.cli import main

from .helpers import scale_leaf

DGX = dp.load_hardware("dgx_h100")
LLAMA = dp.load_workload("llama3_8b")
MAP = dp.Parallelism(tp=2, dp=4, microbatch=1, global_batch=64, seq_len=4096)


def metric(c):
    return dp.train_step(c, LLAMA, MAP, relax=dp.Smooth(16.0)).total


def test_elasticities_equal_finite_differences():
    el = elasticities(metric, DGX)
    f = jax.jit(metric)
    eps = 1e-4
    for path in ("chip.flops_bf16", "chip.hbm_bandwidth", "scale_up.bandwidth",
                 "host.step_overhead", "chip.kernel_overhead"):  # fmt: skip
        up = float(f(scale_leaf(DGX, path, np.exp(eps))))
        down = float(f(scale_leaf(DGX, path, np.exp(-eps))))
        fd = (np.log(up) - np.log(down)) / (2 * eps)
        assert abs(el[path] - fd) < 1e-5 + 1e-4 * abs(fd), (path, el[path], fd)


def test_binding_resource_is_the_largest_resource_elasticity():
    el = elasticities(metric, DGX)
    leaf, e = binding_resource(el)
    assert leaf == "chip.flops_bf16" and e < 0


def test_first_order_uncertainty_matches_monte_carlo():
    spreads = {"chip.flops_bf16": 0.05, "chip.hbm_bandwidth": 0.05,
               "scale_up.bandwidth": 0.1}  # fmt: skip
    u = uncertainty(metric, DGX, spreads, samples=4000)
    # 15%: Monte Carlo error of a std estimate with 4000 samples is ~1%; the rest is
    # the curvature the first-order formula ignores.
    assert abs(u["monte_carlo_rel_std"] / u["first_order_rel_std"] - 1) < 0.15
    assert u["p025"] < u["value"] < u["p975"]


def test_cli_sensitivity_train_json_and_tornado(capsys, tmp_path):
    png = tmp_path / "t.png"
    rc = main(["sensitivity", "train", "--hardware", "dgx_h100", "--model", "llama3_8b",
               "--gpus", "8", "--tp", "2", "--global-batch", "16", "--spread", "0.05",
               "--tornado", str(png), "--top", "5", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and png.stat().st_size > 1000
    assert {"metric", "value", "elasticities", "binding_resource"} <= set(out)
    assert "hardware.chip.hbm_bandwidth" in out["elasticities"]
    assert "workload.d_model" in out["elasticities"]
    assert out["uncertainty"]["first_order_rel_std"] > 0


def test_cli_sensitivity_infer_tpot_is_memory_or_overhead_bound(capsys):
    rc = main(["sensitivity", "infer", "--hardware", "dgx_h100", "--model",
               "llama2_70b", "--gpus", "8", "--tp", "8", "--batch", "64",
               "--metric", "tpot", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["metric"] == "tpot"
    assert out["elasticities"]["hardware.chip.hbm_bandwidth"] < 0


def test_cli_sensitivity_bad_spread_leaf(capsys):
    rc = main(["sensitivity", "train", "--hardware", "dgx_h100", "--model", "llama3_8b",
               "--gpus", "8", "--spread-leaf", "chip.warp=0.1"])  # fmt: skip
    assert rc == 2 and "unknown leaf path" in capsys.readouterr().err
