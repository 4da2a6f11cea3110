"""Hardware as pytrees: `Chip`, `NetworkTier`, `Host`, `Cluster`.

Every continuous quantity is a float leaf (SI units, see each field), so any of them
can be scaled, vmapped and differentiated; only names and topology labels are static.
The number of
chips in a job comes from the mapping, not from the cluster.

Notation: peak FLOP/s π, HBM bandwidth β [B/s], link bandwidth W [B/s per chip per
direction], latency α [s].
"""

from typing import Literal

import equinox as eqx
from jaxtyping import Array

from ._checks import check_fields
from ._relax import as_float

__all__ = ["Chip", "NetworkTier", "Host", "Cluster", "Topology"]

Topology = Literal["switch", "ring", "full_mesh", "torus"]
_F = dict(converter=as_float)

MATH_DTYPES = (
    "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "mxfp8", "mxfp4", "nvfp4",
)  # fmt: skip
_PEAK_FIELD = {"fp16": "bf16", "mxfp8": "fp8", "mxfp4": "fp4", "nvfp4": "fp4"}


class Chip(eqx.Module):
    """One accelerator: compute, memory, efficiency leaves, power, area and price.

    The efficiency leaves are calibrated against measurements (see VALIDATION.md):
    GEMM efficiency is `matmul_efficiency · x / (x + matmul_half_dim)` with x the GEMM's
    effective dimension 3/(1/M + 1/K + 1/N).
    """

    flops_fp32: Array = eqx.field(**_F)  # FLOP/s, vector (non-tensor) FP32
    flops_tf32: Array = eqx.field(**_F)  # FLOP/s, dense tensor TF32 (0 = none)
    flops_bf16: Array = eqx.field(**_F)  # FLOP/s, dense tensor BF16/FP16
    flops_fp8: Array = eqx.field(**_F)  # FLOP/s, dense tensor FP8 (0 = none)
    flops_int8: Array = eqx.field(**_F)  # OP/s, dense tensor INT8 (0 = none)
    flops_fp4: Array = eqx.field(**_F)  # FLOP/s, dense tensor FP4 (0 = none)
    hbm_bandwidth: Array = eqx.field(**_F)  # B/s
    hbm_capacity: Array = eqx.field(**_F)  # B
    sram_capacity: Array = eqx.field(**_F)  # B, last-level on-chip SRAM (L2)
    sram_bandwidth: Array = eqx.field(**_F)  # B/s
    cores: Array = eqx.field(**_F)  # SMs / CUs / TensorCores
    core_sram: Array = eqx.field(**_F)  # B per core (shared memory / VMEM)
    matmul_efficiency: Array = eqx.field(**_F)  # best fraction of peak on large GEMMs
    matmul_half_dim: Array = eqx.field(**_F)  # effective GEMM dim at half efficiency
    attention_efficiency: Array = eqx.field(**_F)  # fused attention rel. to GEMM
    memory_efficiency: Array = eqx.field(**_F)  # achievable fraction of HBM bandwidth
    kernel_overhead: Array = eqx.field(**_F)  # s per kernel (launch + tail)
    reserved_memory: Array = eqx.field(**_F)  # B of HBM unavailable to the model
    power: Array = eqx.field(**_F)  # W (TDP)
    die_area: Array = eqx.field(**_F)  # m²
    price: Array = eqx.field(**_F)  # USD
    low_precision_efficiency: Array = eqx.field(**_F, default=1.0)  # fp8/fp4 rel. bf16

    def __check_init__(self):
        check_fields(
            self,
            positive=(
                "flops_fp32",
                "flops_bf16",
                "hbm_bandwidth",
                "hbm_capacity",
                "sram_capacity",
                "sram_bandwidth",
                "cores",
                "core_sram",
                "matmul_half_dim",
            ),
            nonneg=(
                "flops_tf32",
                "flops_fp8",
                "flops_int8",
                "flops_fp4",
                "kernel_overhead",
                "reserved_memory",
                "power",
                "die_area",
                "price",
            ),
            fraction=(
                "matmul_efficiency",
                "attention_efficiency",
                "memory_efficiency",
                "low_precision_efficiency",
            ),
        )

    def peak_flops(self, dtype: str) -> Array:
        """Dense tensor peak [FLOP/s] of a math dtype (fp16 → bf16, MX/NV → fp8/fp4)."""
        if dtype not in MATH_DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {', '.join(MATH_DTYPES)}")
        name = _PEAK_FIELD.get(dtype, dtype)
        return getattr(self, f"flops_{name}")


class NetworkTier(eqx.Module):
    """One tier of the network (scale-up NVLink/ICI domain, or scale-out NICs).

    Time to move S bytes point to point: α + S / (W · efficiency)  [s].
    For the scale-up tier W is per chip per direction; for the scale-out tier W is per
    NIC per direction and a chip's share is W · nics_per_node / chips_per_node (see
    `Cluster`).
    """

    bandwidth: Array = eqx.field(**_F)  # B/s per direction (per chip or per NIC)
    latency: Array = eqx.field(**_F)  # s
    efficiency: Array = eqx.field(**_F)  # achievable fraction of bandwidth
    size: Array = eqx.field(**_F, default=1.0)  # chips in one domain (scale-up)
    topology: Topology = eqx.field(static=True, default="switch")

    def __check_init__(self):
        check_fields(
            self,
            positive=("bandwidth", "size"),
            nonneg=("latency",),
            fraction=("efficiency",),
        )
        if self.topology not in ("switch", "ring", "full_mesh", "torus"):
            raise ValueError(
                f"NetworkTier(topology={self.topology!r}) must be one of "
                "switch, ring, full_mesh, torus"
            )


class Host(eqx.Module):
    """The server around the chips: PCIe, NICs, CPU, DRAM, per-step host costs.

    `dispatch_overhead` is CPU time per launched kernel, hidden while the GPU has queued
    work; `sync_overhead` is the time exposed by one device-to-host synchronization
    (the GPU drains, then waits for the CPU to launch what follows), e.g. the token
    counts of a dropless MoE layer.
    """

    chips_per_node: Array = eqx.field(**_F)
    nics_per_node: Array = eqx.field(**_F)
    pcie_bandwidth: Array = eqx.field(**_F)  # B/s per chip per direction
    pcie_latency: Array = eqx.field(**_F)  # s
    cpu_cores: Array = eqx.field(**_F)
    dram_capacity: Array = eqx.field(**_F)  # B
    dispatch_overhead: Array = eqx.field(**_F)  # s of CPU time per kernel launch
    step_overhead: Array = eqx.field(**_F)  # s per optimizer step (data, logging, sync)
    power: Array = eqx.field(**_F)  # W per node excluding the chips
    price: Array = eqx.field(**_F)  # USD per node excluding the chips
    sync_overhead: Array = eqx.field(**_F, default=1e-3)  # s exposed per host sync
    serve_overhead: Array = eqx.field(**_F, default=2e-3)  # s per serving engine step

    def __check_init__(self):
        check_fields(
            self,
            positive=("chips_per_node", "nics_per_node", "pcie_bandwidth"),
            nonneg=(
                "pcie_latency",
                "cpu_cores",
                "dram_capacity",
                "dispatch_overhead",
                "step_overhead",
                "sync_overhead",
                "serve_overhead",
                "power",
                "price",
            ),
        )


class Cluster(eqx.Module):
    """A chip, its scale-up and scale-out networks, and its host. Pure data."""

    chip: Chip
    scale_up: NetworkTier
    scale_out: NetworkTier
    host: Host
    name: str = eqx.field(static=True, default="custom")

    def scale_out_bandwidth(self) -> Array:
        """A chip's scale-out bandwidth [B/s per direction]: W_nic · nics / chips."""
        h = self.host
        return self.scale_out.bandwidth * h.nics_per_node / h.chips_per_node
