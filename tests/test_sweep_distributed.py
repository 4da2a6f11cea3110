"""One sweep over many processes (jax.distributed) and resuming interrupted sweeps."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffperf as dp
from diffperf.cli import main
from diffperf.io import SweepCheckpoint

ROOT = Path(__file__).resolve().parents[1]
SPEC = """hardware = "dgx_h100"
model = "llama3_8b"
samples = 300
chunk = 64
seed = 3
[mapping]
dp = 2
global_batch = 16
seq_len = 4096
[grid]
"mapping.tp" = [1, 2, 4]
[random]
"hardware.chip.hbm_bandwidth" = [1e12, 8e12]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-m", "diffperf.cli", *argv],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(p, timeout=300):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 0, err
    return json.loads(out)  # exactly one JSON object on stdout


def test_two_processes_write_the_rows_of_one_process(tmp_path):
    (tmp_path / "s.toml").write_text(SPEC)
    addr = f"127.0.0.1:{_free_port()}"
    flags = ["sweep", "--spec", "s.toml", "--json"]
    procs = [
        _cli(*flags, "--out", "two.csv", "--coordinator", addr,
             "--num-processes", "2", "--process-id", str(i), cwd=tmp_path)
        for i in (0, 1)
    ]  # fmt: skip
    single = _cli(*flags, "--out", "one.csv", cwd=tmp_path)
    p0, p1 = (_finish(p) for p in procs)
    one = _finish(single)
    assert (p0["num_processes"], p0["process_id"], p1["process_id"]) == (2, 0, 1)
    # 5 chunks of 64: chunks 0, 2, 4 on process 0 and 1, 3 on process 1
    assert (p0["chunks_computed"], p1["chunks_computed"], one["chunks"]) == (3, 2, 5)
    assert p1["out"] is None and p0["out"] == "two.csv"
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert (tmp_path / "two.pareto.csv").read_bytes() == (
        tmp_path / "one.pareto.csv"
    ).read_bytes()
    assert p0["best"] == p1["best"] == one["best"]
    assert not (tmp_path / "two.chunks").exists()  # cleared once the CSV is written


def test_importing_diffperf_does_not_start_jax():
    """jax.distributed.initialize must come before any JAX computation."""
    code = (
        "import diffperf, diffperf.cli.main\n"
        "from jax._src import xla_bridge\n"  # no public query for this
        "assert not xla_bridge.backends_are_initialized()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


DGX = dp.load_hardware("dgx_h100")
LLAMA = dp.load_workload("llama3_8b")
MAP = dp.Parallelism(dp=2, global_batch=16, seq_len=4096)
GRID = {"mapping.tp": [1, 2, 4]}
RAND = {"hardware.chip.hbm_bandwidth": [1e12, 8e12]}


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    kw = dict(grid=GRID, random=RAND, samples=100, seed=1, chunk=16)  # 7 chunks
    full = dp.sweep(DGX, LLAMA, MAP, **kw)

    seen = []

    def stop_after_two(k, total):
        seen.append(k)
        if len(seen) == 2:
            raise KeyboardInterrupt

    store = SweepCheckpoint(tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        dp.sweep(DGX, LLAMA, MAP, **kw, progress=stop_after_two, store=store)
    assert store.held() == [0, 1]

    resumed = SweepCheckpoint(tmp_path / "ck", resume=True)
    res = dp.sweep(DGX, LLAMA, MAP, **kw, store=resumed)
    assert res.timing["chunks_loaded"] == 2 and res.timing["chunks_computed"] == 5
    np.testing.assert_array_equal(res.outputs, full.outputs)
    np.testing.assert_array_equal(res.pareto, full.pareto)

    again = dp.sweep(DGX, LLAMA, MAP, **kw, store=resumed)  # nothing left to compute
    assert again.timing["chunks_computed"] == 0
    np.testing.assert_array_equal(again.outputs, full.outputs)

    other = SweepCheckpoint(tmp_path / "ck", resume=True)
    with pytest.raises(ValueError, match="different sweep"):
        dp.sweep(DGX, LLAMA, MAP, **(kw | {"seed": 2}), store=other)


def test_cli_interrupt_then_resume(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.replace("samples = 300", "samples = 200"))  # 4 chunks
    out = str(tmp_path / "o.csv")
    assert main(["sweep", "--spec", str(spec), "--out", out, "--json"]) == 0
    fresh = Path(out).read_bytes()
    capsys.readouterr()

    real_save, saves = SweepCheckpoint.save, []

    def save_then_stop(self, index, outputs):
        real_save(self, index, outputs)
        saves.append(index)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SweepCheckpoint, "save", save_then_stop)
    Path(out).unlink()
    assert main(["sweep", "--spec", str(spec), "--out", out, "--json"]) == 130
    err = capsys.readouterr().err
    assert "2 finished chunk(s) kept" in err and "--resume" in err
    assert not Path(out).exists()
    monkeypatch.setattr(SweepCheckpoint, "save", real_save)

    assert main(["sweep", "--spec", str(spec), "--out", out, "--resume", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["chunks_resumed"], res["chunks_computed"]) == (2, 2)
    assert Path(out).read_bytes() == fresh
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == 200


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--process-id", "0"], "need --coordinator"),
        (["--coordinator", "nohost"], "must be HOST:PORT"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "--process-id I"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2",
             "--process-id", "2"],
            "--process-id=2 must be in [0",
        ),
    ],
)  # fmt: skip
def test_bad_distributed_flags(tmp_path, capsys, flags, message):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    assert main(["sweep", "--spec", str(spec), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
