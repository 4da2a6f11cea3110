"""The GEMM model against measured A100 / MI210 GEMM sweeps (LLMCompass artifact).

The sweeps vary M with K = N = 12288, and K = N with M = 8192 (fp16). The measuring
harness adds a fixed per-call cost, taken as the time of its smallest GEMM
(8192×64×64 on A100, 8192×32×32 on MI210, ~30 µs, almost no work). The efficiency
curve's best fraction ε_max of a GEMM in isolation is one free scale (fitted as the
median ratio);
the test checks the *shape*: the half-efficiency dimension, the memory roofline for
skinny GEMMs and the SRAM-aware traffic, across 3 orders of magnitude of GEMM size.
"""

import csv
from pathlib import Path

import numpy as np
import pytest

import diffperf as dp
from diffperf.model.ops import gemm_time

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel_measured.csv"


# MI210: only GEMMs whose ideal compute time exceeds their ideal HBM time are compared.
# Its skinny GEMMs (M ≤ 256 with K = N = 12288) ran at 35–55% of HBM bandwidth in the
# measured rocBLAS version, which one memory_efficiency leaf per chip cannot capture
# (a known gap, VALIDATION.md).
@pytest.mark.parametrize(
    "gpu,stem,compute_bound_only",
    [("A100", "a100_sxm4_80gb", False), ("MI210", "mi210", True)],
)
def test_gemm_curve_shape_matches_measurements(gpu, stem, compute_bound_only):
    with DATA.open() as f:
        rows = [r for r in csv.DictReader(f) if r["gpu"] == gpu]
    chip = dp.load_hardware(stem).chip
    m, k, n = (np.array([float(r[c]) for r in rows]) for c in "MKN")
    measured = np.array([float(r["time_ms"]) for r in rows]) * 1e-3
    harness = measured[np.argmin(m * k * n)]
    model = np.asarray(
        gemm_time(chip, m, k, n, peak=chip.flops_bf16, nbytes=2.0, relax=dp.Exact())
    )
    work = measured - harness
    keep = work > 0.2 * measured  # rows where the GEMM, not the harness, dominates
    if compute_bound_only:
        ideal_compute = 2 * m * k * n / float(chip.flops_bf16)
        ideal_memory = 2 * (m * k + k * n + m * n) / float(chip.hbm_bandwidth)
        keep &= ideal_compute > ideal_memory
        m, k, n, measured, model, work = (
            a[keep] for a in (m, k, n, measured, model, work)
        )
        keep = keep[keep]
    scale = np.median(model[keep] / work[keep])
    ratio = (model / scale + harness) / measured
    # 35%: one scale for all shapes; wave quantization of tiles is not modeled.
    assert np.all(np.abs(ratio - 1) < 0.35), dict(zip(m * k * n, ratio, strict=True))
    # The fitted isolated-GEMM efficiency is physical (the training calibration folds
    # interference from communication kernels, clocks and power into matmul_efficiency).
    iso = float(chip.matmul_efficiency) * scale
    assert 0.5 < iso <= 1.0
