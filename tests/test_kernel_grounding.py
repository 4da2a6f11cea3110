"""Kernel-level grounding: the table reader, the staged fit, the CLI.

The reader runs on a tiny fixture in aiconfigurator-core's layout (tests/data/
aic_systems, rows written for these tests, tables as CSV so that no pyarrow is needed);
the fit on synthetic kernels made by the model with planted leaves. Only the test of
the installed package is skipped when the extra `diffperf[kernels]` is absent.
"""

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import diffperf as dp
from diffperf.analysis import kernels as ak
from diffperf.cli import calibrate as cli_calibrate
from diffperf.cli.main import main
from diffperf.io import kernels as ik

FIXTURE = Path(__file__).resolve().parent / "data" / "aic_systems"


def test_reader_on_fixture_rows_units_and_versions():
    rows, tables = dp.read_kernel_tables("h100_sxm", root=FIXTURE)
    by = {t["table"]: t for t in tables}
    # latest trtllm GEMM version, the system YAML's NCCL version
    assert by["gemm_perf"]["version"] == "1.3.0rc20"
    assert by["nccl_perf"]["version"] == "2.27.3"
    assert by["gemm_perf"]["provenance"] == "collected"
    assert by["gemm_perf"]["excluded"] == {"gemm dtype int4_wo": 1}
    assert by["moe_perf"]["excluded"] == {"moe routing power_law_1.2": 1}
    # the newest MoE table has no row the model scores: the next older one is read
    assert by["moe_perf"]["version"] == "1.3.0rc20"
    assert by["moe_perf"]["newer_without_scored_rows"] == {
        "1.3.0rc23": {"moe dtype w4a16_mxfp4": 1}
    }
    assert by["generation_attention_perf"]["excluded"] == {"beam width > 1": 1}
    assert by["nccl_perf"]["excluded"] == {"nccl broadcast/half": 1}
    ops = [r.op for r in rows]
    assert ops.count("gemm") == 4 and ops.count("moe") == 2
    assert ops.count("context_attention") == 2
    assert ops.count("generation_attention") == 1
    g = rows[0]
    assert (g.op, g.dtype, g.m, g.n, g.k) == ("gemm", "bf16", 4096, 4096, 4096)
    assert g.seconds == pytest.approx(0.2e-3)  # milliseconds in the tables
    assert [r.dtype for r in rows if r.op == "gemm"] == ["bf16", "bf16", "fp8", "fp8"]
    ctx = [r for r in rows if r.op == "context_attention"]
    assert ctx[1].window == 128 and ctx[1].kv_nbytes == 1.0 and ctx[1].dtype == "fp8"
    gen = next(r for r in rows if r.op == "generation_attention")
    assert gen.seq == 1024 and gen.batch == 64 and gen.kv_heads == 8  # isl + step
    moe, nongated = (r for r in rows if r.op == "moe")
    assert (moe.m, moe.k, moe.n, moe.experts, moe.topk, moe.ep) == (
        256,
        4096,
        1536,
        64,
        8,
        8,
    )
    assert moe.gated and not nongated.gated and nongated.tp == 2
    ar = next(r for r in rows if r.op == "all_reduce")
    assert ar.nbytes == 2 * 1048576 and ar.gpus == 8  # elements × 2 B (half)
    assert next(r for r in rows if r.op == "all_gather").nbytes == 65536  # int8
    assert any(r.op == "all_to_all" for r in rows)
    assert all(r.source.startswith("aiconfigurator-core h100_sxm/") for r in rows)


def test_reader_backend_version_and_errors():
    rows, tables = dp.read_kernel_tables(
        "h100_sxm", backend="trtllm", version="1.2.0", root=FIXTURE
    )
    assert {t["table"]: t["version"] for t in tables}["gemm_perf"] == "1.2.0"
    assert [r.seconds for r in rows if r.op == "gemm"] == [pytest.approx(0.25e-3)]
    rows, _ = dp.read_kernel_tables("h100_sxm", backend="vllm", root=FIXTURE)
    assert sum(r.op == "gemm" for r in rows) == 2
    with pytest.raises(ValueError, match="must be one of h100_sxm"):
        dp.read_kernel_tables("tpu_v9", root=FIXTURE)
    with pytest.raises(ValueError, match="backend 'sglang'"):
        dp.read_kernel_tables("h100_sxm", backend="sglang", root=FIXTURE)
    with pytest.raises(ValueError, match="version '9.9'"):
        dp.read_kernel_tables("h100_sxm", version="9.9", root=FIXTURE)
    with pytest.raises(ValueError, match="no data/ folder"):
        dp.read_kernel_tables("h100_sxm", root=FIXTURE / "data")


def test_missing_extra_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError) as e:
        ik.kernel_root()
    assert str(e.value) == ik.EXTRA_MESSAGE
    assert "pip install 'diffperf[kernels]'" in str(e.value)
    assert "\n" not in str(e.value)


def test_version_order():
    key = ik._version_key
    assert key("1.3.0rc20") > key("1.3.0rc5") > key("1.2.0")
    assert key("1.3.0") > key("1.3.0rc23")
    assert key("0.5.6.post2") > key("0.5.6") > key("0.5.6rc1")


PLANTED = {
    "chip.matmul_efficiency": 0.78,
    "chip.matmul_half_dim": 220.0,
    "chip.memory_efficiency": 0.72,
    "chip.kernel_overhead": 4e-6,
    "chip.fp8_efficiency": 0.8,
    "chip.attention_efficiency": 0.6,
    "scale_up.efficiency": 0.7,
    "scale_up.latency": 6e-6,
}


def _synthetic_rows():
    rng = np.random.default_rng(0)
    rows = []
    for dtype in ("bf16", "fp8"):
        for _ in range(120):
            m, k, n = (float(2 ** rng.integers(0, 15)) for _ in range(3))
            rows.append(dp.KernelRow("gemm", dtype, 1.0, m=m, k=k, n=n))
    for _ in range(60):
        rows.append(dp.KernelRow(
            "context_attention", "bf16", 1.0, batch=float(rng.integers(1, 9)),
            seq=float(2 ** rng.integers(7, 14)), heads=32.0, kv_heads=8.0,
            head_dim=128.0, kv_nbytes=2.0,
        ))  # fmt: skip
    for op in ak.COLLECTIVE_OPS:
        for gpus in (2.0, 4.0, 8.0):
            for e in range(8, 30, 3):
                rows.append(dp.KernelRow(op, "bf16", 1.0, nbytes=2.0**e, gpus=gpus))
    return rows


def _planted(rows):
    truth = dp.load_hardware("h100_sxm")
    for p, v in PLANTED.items():
        truth = dp.set_leaf(truth, p, v)
    t = dp.predict_kernels(truth, rows)
    return [r._replace(seconds=float(s)) for r, s in zip(rows, t, strict=True)]


def test_staged_fit_recovers_planted_leaves():
    rows = _planted(_synthetic_rows())
    start = dp.load_hardware("h100_sxm")
    fit = dp.fit_kernels(start, rows, steps=400, lr=0.05, diagnostics=())
    for p, v in PLANTED.items():
        assert fit["leaves"][p]["fitted"] == pytest.approx(v, rel=0.03), p
    assert fit["defects"] == []
    for op, a in fit["after"].items():
        assert a["mape"] < 0.01, op
        assert fit["before"][op]["mape"] > a["mape"]
    assert [s["name"] for s in fit["stages"]] == [s.name for s in ak.STAGES]


def test_leaf_beyond_its_bound_is_a_defect():
    rows = [r for r in _synthetic_rows() if r.op == "gemm" and r.dtype == "bf16"]
    start = dp.load_hardware("h100_sxm")
    truth = dp.set_leaf(start, "chip.kernel_overhead", 40e-6)  # bounds: 0.5-10 µs
    t = dp.predict_kernels(truth, rows)
    rows = [r._replace(seconds=float(s)) for r, s in zip(rows, t, strict=True)]
    fit = dp.fit_kernels(start, rows, steps=150, diagnostics=())
    assert fit["leaves"]["chip.kernel_overhead"]["at_bound"]
    assert any("kernel_overhead" in d and "upper bound" in d for d in fit["defects"])
    assert fit["skipped"] == ["gemm low precision", "context attention", "collectives"]


def test_predictions_use_the_op_functions():
    c = dp.load_hardware("h100_sxm")
    row = dp.KernelRow("gemm", "bf16", 1.0, m=4096.0, k=8192.0, n=1024.0)
    from diffperf.core.relax import Exact
    from diffperf.model.ops import gemm_time

    want = gemm_time(c.chip, 4096.0, 8192.0, 1024.0, peak=c.chip.flops_bf16,
                     nbytes=2.0, relax=Exact()) + c.chip.kernel_overhead  # fmt: skip
    assert dp.predict_kernels(c, [row])[0] == pytest.approx(float(want))
    ar = dp.KernelRow("all_reduce", "bf16", 1.0, nbytes=2.0**24, gpus=8.0)
    want = dp.collective_time(c, "all_reduce", 2.0**24, 8.0, 1.0, relax=Exact())
    assert dp.predict_kernels(c, [ar])[0] == pytest.approx(float(want))
    # MoE with one token: only top-k experts are active, so their weights dominate
    one = dp.KernelRow("moe", "bf16", 1.0, m=1.0, k=4096.0, n=1536.0, experts=128.0,
                       topk=8.0, ep=1.0, tp=1.0)  # fmt: skip
    many = one._replace(m=4096.0)
    t1, t2 = dp.predict_kernels(c, [one, many])
    weights_8 = 8 * 3 * 4096 * 1536 * 2 / float(c.chip.hbm_bandwidth * 0.85)
    assert t1 == pytest.approx(weights_8 + float(c.chip.kernel_overhead), rel=0.05)
    assert t2 > 5 * t1


@pytest.mark.parametrize(
    "row,match",
    [
        (dp.KernelRow("conv", "bf16", 1.0), "op='conv' must be one of gemm"),
        (dp.KernelRow("gemm", "fp7", 1.0, m=1, k=1, n=1), "dtype='fp7'"),
        (dp.KernelRow("gemm", "bf16", 0.0, m=1, k=1, n=1), "seconds=0.0"),
    ],
)
def test_bad_rows_are_refused(row, match):
    with pytest.raises(ValueError, match=match):
        dp.predict_kernels(dp.load_hardware("h100_sxm"), [row])


def test_cli_kernels_on_fixture(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        cli_calibrate,
        "read_kernel_tables",
        functools.partial(ik.read_kernel_tables, root=FIXTURE),
    )
    out = tmp_path / "fit.json"
    rc = main(["calibrate", "--kernels", "h100_sxm", "--steps", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "chip.matmul_efficiency" in text and "MAPE before" in text
    assert "gemm/trtllm/1.3.0rc20/gemm_perf.csv" in text
    assert out.exists()
    rc = main(["calibrate", "--kernels", "h100_sxm", "--steps", "5", "--json"])
    assert rc == 0
    assert main(["calibrate", "--kernels", "h100_sxm", "--data", "x.csv"]) == 2
    assert "drop --data" in capsys.readouterr().err
    assert main(["calibrate", "--hardware", "h100_sxm"]) == 2
    assert "--kernels SYSTEM" in capsys.readouterr().err


def test_cli_without_extra_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["calibrate", "--kernels", "h100_sxm"]) == 2
    assert "diffperf[kernels]" in capsys.readouterr().err


HAVE_EXTRA = importlib.util.find_spec("aiconfigurator_core") is not None and (
    importlib.util.find_spec("pyarrow") is not None
)


@pytest.mark.skipif(
    not HAVE_EXTRA, reason="optional extra diffperf[kernels] (aiconfigurator-core, "
    "pyarrow) not installed",
)  # fmt: skip
def test_installed_package_tables():
    assert {"h100_sxm", "h200_sxm", "b200_sxm"} <= set(dp.kernel_systems())
    rows, tables = dp.read_kernel_tables("h100_sxm")
    assert not any("silicon" in t["file"] for t in tables)
    gemm = [r for r in rows if r.op == "gemm" and r.dtype == "bf16"]
    assert len(gemm) > 1000
    tflops = np.array([2 * r.m * r.k * r.n / r.seconds for r in gemm])
    assert tflops.max() < 989.4e12  # never above the bf16 peak: units are right
    assert tflops.max() > 0.5 * 989.4e12
    nccl = [r for r in rows if r.op == "all_reduce" and r.gpus == 8]
    busbw = max(2 * 7 / 8 * r.nbytes / r.seconds for r in nccl)
    assert 100e9 < busbw < 900e9  # NVLink 4: 450 GB/s per direction
    assert math.isfinite(sum(r.seconds for r in rows))
