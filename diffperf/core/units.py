"""Units: bytes per element of each dtype.

Everything inside diffperf is SI: seconds (s), bytes (B), floating-point operations
(FLOP), FLOP/s, B/s, watts (W), square metres (m²) and US dollars (USD); TOML files
write values in e-notation (`50e9  # 400 Gb/s`), so no conversion constants are needed.
"""

BYTES = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 0.5,
    "int4": 0.5,
    "mxfp8": 1.0 + 1.0 / 32.0,
    "mxfp4": 0.5 + 1.0 / 32.0,
    "nvfp4": 0.5 + 1.0 / 16.0,
}
"""Bytes per element of each storage dtype. Microscaling formats carry their block
scales: MXFP8/MXFP4 one 8-bit scale per 32 elements (OCP MX spec v1.0), NVFP4 one FP8
scale per 16 elements (NVIDIA Blackwell)."""

DTYPES = tuple(BYTES)
