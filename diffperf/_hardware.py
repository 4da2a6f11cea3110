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

__all__ = ["Chip", "NetworkTier", "Host", "Cost", "Cluster", "Topology"]

HOURS_PER_LIFETIME = 4 * 365 * 24.0  # 4 years [h]

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


class Cost(eqx.Module):
    """Leaves of the area, cost and power model (SI, USD); formulas in `_cost`."""

    # Silicon. Densities from TSMC N5/N4 public figures and the H100 die (anchor).
    logic_density: Array = eqx.field(**_F, default=1.65e18)  # bf16 FLOP/s per m²
    sram_density: Array = eqx.field(
        **_F, default=2e12
    )  # B/m² (2 MB/mm², macro+periph.)
    hbm_phy_area: Array = eqx.field(**_F, default=1.5e-17)  # m² per B/s (~10 mm²/stack)
    link_phy_area: Array = eqx.field(**_F, default=2.8e-17)  # m² per B/s of SerDes
    misc_area_fraction: Array = eqx.field(**_F, default=0.12)  # uncore share of die
    dies: Array = eqx.field(**_F, default=1.0)  # compute dies per package
    wafer_cost: Array = eqx.field(**_F, default=17000.0)  # USD, 300 mm N5 (CSET 2020)
    wafer_diameter: Array = eqx.field(**_F, default=0.3)  # m
    defect_density: Array = eqx.field(**_F, default=1000.0)  # per m² (0.1 /cm², N5)
    defect_clustering: Array = eqx.field(**_F, default=3.0)  # α of negative binomial
    packaging_cost: Array = eqx.field(**_F, default=750.0)  # USD, CoWoS-class + test
    # HBM (HBM3: 819 GB/s and 16–24 GB per stack; TrendForce ~$15/GB in 2024).
    hbm_cost_per_byte: Array = eqx.field(**_F, default=1.5e-8)  # USD/B
    hbm_stack_bandwidth: Array = eqx.field(**_F, default=819e9)  # B/s per stack
    hbm_stack_capacity: Array = eqx.field(**_F, default=24e9)  # B per stack
    hbm_stack_cost: Array = eqx.field(**_F, default=150.0)  # USD per stack (base, TSV)
    markup: Array = eqx.field(**_F, default=6.0)  # price / manufacturing cost
    # Network (400G NIC with transceiver; switch port with optics, 2024 list prices).
    nic_price: Array = eqx.field(**_F, default=2500.0)  # USD per NIC
    switch_port_price: Array = eqx.field(**_F, default=1500.0)  # USD per port
    switch_ports_per_nic: Array = eqx.field(**_F, default=3.0)  # 2-level fat tree
    scale_up_cost: Array = eqx.field(**_F, default=6.7e-9)  # USD per B/s per chip
    # Power (HBM3 ~3.9 pJ/bit, O'Connor et al. 2017; 112G SerDes ~2.5 pJ/bit).
    idle_power: Array = eqx.field(**_F, default=100.0)  # W per chip
    flop_energy: Array = eqx.field(**_F, default=0.48e-12)  # J per bf16 FLOP
    hbm_energy: Array = eqx.field(**_F, default=3.1e-11)  # J/B
    link_energy: Array = eqx.field(**_F, default=2e-11)  # J/B
    # Operations.
    lifetime: Array = eqx.field(**_F, default=HOURS_PER_LIFETIME)  # h of amortization
    pue: Array = eqx.field(**_F, default=1.3)  # facility power / IT power
    usd_per_kwh: Array = eqx.field(**_F, default=0.10)  # USD/kWh

    def __check_init__(self):
        check_fields(
            self,
            positive=(
                "logic_density",
                "sram_density",
                "dies",
                "wafer_cost",
                "wafer_diameter",
                "defect_clustering",
                "hbm_stack_bandwidth",
                "hbm_stack_capacity",
                "lifetime",
                "pue",
            ),
            nonneg=(
                "hbm_phy_area",
                "link_phy_area",
                "defect_density",
                "packaging_cost",
                "hbm_cost_per_byte",
                "hbm_stack_cost",
                "markup",
                "nic_price",
                "switch_port_price",
                "switch_ports_per_nic",
                "scale_up_cost",
                "idle_power",
                "flop_energy",
                "hbm_energy",
                "link_energy",
                "usd_per_kwh",
            ),
            fraction=("misc_area_fraction",),
        )


class Cluster(eqx.Module):
    """A chip, its scale-up and scale-out networks, and its host. Pure data."""

    chip: Chip
    scale_up: NetworkTier
    scale_out: NetworkTier
    host: Host
    name: str = eqx.field(static=True, default="custom")
    cost: Cost = eqx.field(default_factory=Cost)

    def scale_out_bandwidth(self) -> Array:
        """A chip's scale-out bandwidth [B/s per direction]: W_nic · nics / chips."""
        h = self.host
        return self.scale_out.bandwidth * h.nics_per_node / h.chips_per_node
