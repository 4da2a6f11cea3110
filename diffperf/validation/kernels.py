"""Validation of the GEMM model against measured kernel times.

The rows of `data/kernel_measured.csv`.

Each row is one GEMM (M×K)·(K×N) on one chip (`gpu`, names as people write them) in
its `dtype`; the prediction is the detailed tier's time of one kernel call:

    T = gemm_time(M, K, N) + kernel_overhead   [s]

(`model.ops.gemm_time` with the chip's efficiency curve and SRAM-aware traffic, plus
the chip's fixed per-kernel cost), compared with `time_ms`. Rows whose `op` is not a
GEMM are refused with the reason.
"""

import re

from .. import io
from ..core.relax import Exact
from ..model.ops import gemm_time
from .common import number, summarize

__all__ = ["validate_kernel_rows", "predict_kernel_row"]

_DTYPES = ((r"fp8", "fp8", 1.0), (r"bf16|fp16|half", "bf16", 2.0),
           (r"tf32|fp32|float32", "tf32", 4.0))  # fmt: skip


def predict_kernel_row(row: dict) -> dict:
    """The prediction for one kernel row (ValueError with the reason if it has none)."""
    op = row.get("op", "")
    if not re.match(r"\s*(matmul|gemm)", op, re.I):
        raise ValueError(
            f"op {op!r} is not a GEMM (only GEMMs are modelled per kernel)"
        )
    text = row.get("dtype", "").lower()
    found = next(((d, b) for p, d, b in _DTYPES if re.search(p, text)), None)
    if found is None:
        raise ValueError(f"dtype {row.get('dtype')!r} is not fp8, bf16/fp16 or tf32")
    dtype, nbytes = found
    cluster = io.load_hardware(row["gpu"])
    chip = cluster.chip
    m, k, n = (number(row, c) for c in ("M", "K", "N"))
    if not (m and k and n):
        raise ValueError("columns M, K and N are required")
    seconds = gemm_time(
        chip, m, k, n, peak=chip.peak_flops(dtype), nbytes=nbytes, relax=Exact()
    )
    predicted = 1e3 * float(seconds + chip.kernel_overhead)
    measured = number(row, "time_ms")
    if not measured:
        raise ValueError("column time_ms is blank")
    return dict(
        metric="gemm_time_ms", measured=measured, predicted=predicted,
        ape=abs(predicted - measured) / measured, feasible=True,
        hardware=cluster.name, model=f"gemm {dtype}",
        resolved_hardware=io.resolve_hardware(row["gpu"]).as_dict(),
    )  # fmt: skip


def validate_kernel_rows(rows: list[dict]) -> dict:
    """Per-row predictions and the error summary of kernel CSV rows."""
    results = []
    for i, row in enumerate(rows):
        entry = dict(row=i, source=row.get("source", ""), gpu=row.get("gpu", ""),
                     model_name=row.get("op", ""))  # fmt: skip
        try:
            entry |= predict_kernel_row(row)
        except ValueError as e:
            entry["reason"] = str(e).splitlines()[0]
        results.append(entry)
    return summarize(results) | {"kind": "kernel"}
