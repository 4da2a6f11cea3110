"""Sweeps: configurations, vmapped evaluation equal to one-by-one, Pareto, the CLI."""

import csv
import json

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.analysis.sweep import evaluate, pareto_mask, sweep_configs
from diffperf.cli import main

DGX = dp.load_hardware("dgx_h100")
LLAMA = dp.load_workload("llama3_70b")
MAP = dp.Parallelism(dp=4, microbatch=1, global_batch=64, seq_len=4096)


def test_grid_drops_invalid_mappings_and_random_is_log_uniform():
    grid = {"mapping.tp": [3, 4, 8]}
    rand = {"hardware.chip.hbm_bandwidth": [1e12, 4e12]}
    names, values, invalid = sweep_configs(LLAMA, MAP, grid, rand, samples=500, seed=1)
    assert invalid == 1  # tp=3 does not divide 64 heads
    assert set(values[:, 0]) <= {4.0, 8.0}
    assert values[:, 1].min() >= 1e12 and values[:, 1].max() <= 4e12


def test_vmapped_sweep_equals_one_by_one():
    names, values, _ = sweep_configs(
        LLAMA, MAP, {"mapping.tp": [4, 8], "mapping.pp": [1, 2]},
        {"hardware.scale_up.bandwidth": [1e11, 1e12]}, samples=40,
    )  # fmt: skip
    out, timing = evaluate(DGX, LLAMA, MAP, names, values, chunk=16)  # 3 chunks, padded
    assert out.shape == (40, 6) and timing["configs_per_s"] > 0
    for i in (0, 17, 39):
        tp, pp, bw = values[i]
        c = eqx.tree_at(lambda c: c.scale_up.bandwidth, DGX, jnp.asarray(bw))
        m = eqx.tree_at(lambda m: (m.tp, m.pp), MAP, (jnp.asarray(tp), jnp.asarray(pp)))
        b = dp.train_step(c, LLAMA, m)
        np.testing.assert_allclose(out[i, 0], float(b.total), rtol=1e-6)
        np.testing.assert_allclose(out[i, 2], float(b.memory_per_gpu), rtol=1e-6)


def test_pareto_mask():
    a = np.array([1.0, 2.0, 3.0, 2.5])
    b = np.array([3.0, 1.0, 0.5, 2.0])
    assert pareto_mask(a, b).tolist() == [True, True, True, False]


def test_bad_sweep_keys():
    with pytest.raises(ValueError, match="must start with hardware. or mapping."):
        sweep_configs(LLAMA, MAP, {"chip.flops": [1]}, {}, samples=1)
    with pytest.raises(ValueError, match="mapping degrees are integers"):
        sweep_configs(LLAMA, MAP, {}, {"mapping.tp": [1, 8]}, samples=1)


def test_cli_sweep(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'hardware = "dgx_h100"\nmodel = "llama3_8b"\nsamples = 300\nchunk = 128\n'
        "[mapping]\ndp = 2\nglobal_batch = 16\nseq_len = 4096\n"
        '[grid]\n"mapping.tp" = [1, 2, 4]\n'
        '[random]\n"hardware.chip.hbm_bandwidth" = [1e12, 8e12]\n'
    )
    rc = main(["sweep", "--spec", str(spec), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["n_configs"] == 300 and out["best"]["feasible"] == 1.0
    assert {"n_configs", "configs_per_s", "best"} <= set(out)
    with open(out["out"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and "step_time_s" in rows[0]


def test_cli_sweep_bad_spec(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('hardware = "dgx_h100"\nmodel = "llama3_8b"\nwarp = 1\n')
    rc = main(["sweep", "--spec", str(spec)])
    assert rc == 2 and "unknown key(s) warp" in capsys.readouterr().err
