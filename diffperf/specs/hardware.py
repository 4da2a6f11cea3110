"""Hardware as pytrees: `Chip`, `NetworkTier`, `Host`, `Cluster`.

Every continuous quantity is a float leaf (SI units, see each field), so any of them
can be scaled, vmapped and differentiated; only names and topology labels are static.
The number of
chips in a job comes from the mapping, not from the cluster.

Notation: peak FLOP/s π, HBM bandwidth β [B/s], link bandwidth W [B/s per chip per
direction], latency α [s].
"""

import math
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.checks import check_fields, concrete
from ..core.relax import AbstractRelax, Exact, as_float

__all__ = [
    "Chip",
    "Dimension",
    "NetworkTier",
    "MemoryTier",
    "Host",
    "Cost",
    "Cluster",
    "Topology",
]

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
    effective dimension 3/(1/M + 1/K + 1/N). `attention_fa2_efficiency` is the
    throughput of FlashAttention-2 relative to the chip's best fused attention kernel,
    for jobs whose stack runs FA2 (`Parallelism.attention_kernel="fa2"`): 1 where FA2
    is the best kernel (Ampere and earlier), below 1 on Hopper/Blackwell, whose FA3 /
    cuDNN kernels use wgmma/TMA (tcgen05 on Blackwell) that FA2 does not.

    `fp8_efficiency` and `fp4_efficiency` scale the 8-bit (fp8, int8, MXFP8) and 4-bit
    (fp4, NVFP4, MXFP4) tensor peaks: a low-precision GEMM reaches `matmul_efficiency`
    times that share of its own peak (`dtype_efficiency`). They replace the single
    `low_precision_efficiency` of earlier versions (a TOML key the loader still reads,
    deprecated, as both).
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
    fp8_efficiency: Array = eqx.field(**_F, default=1.0)  # 8-bit GEMMs rel. bf16
    fp4_efficiency: Array = eqx.field(**_F, default=1.0)  # 4-bit GEMMs rel. bf16
    # FlashAttention-2 rel. to the chip's best fused attention kernel (1 = FA2 is it)
    attention_fa2_efficiency: Array = eqx.field(**_F, default=1.0)

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
                "fp8_efficiency",
                "fp4_efficiency",
                "attention_fa2_efficiency",
            ),
        )

    def dtype_efficiency(self, dtype: str):
        """Achieved share of a math dtype's peak relative to bf16's.

        1 for 16/32-bit, `fp8_efficiency` for 8-bit (fp8, int8, mxfp8),
        `fp4_efficiency` for 4-bit (fp4, nvfp4, mxfp4).
        """
        if dtype not in MATH_DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {', '.join(MATH_DTYPES)}")
        if dtype in ("fp8", "int8", "mxfp8"):
            return self.fp8_efficiency
        if dtype in ("fp4", "mxfp4", "nvfp4"):
            return self.fp4_efficiency
        return 1.0

    def peak_flops(self, dtype: str) -> Array:
        """Dense tensor peak [FLOP/s] of a math dtype (fp16 → bf16, MX/NV → fp8/fp4)."""
        if dtype not in MATH_DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {', '.join(MATH_DTYPES)}")
        name = _PEAK_FIELD.get(dtype, dtype)
        return getattr(self, f"flops_{name}")


TOPOLOGIES = ("switch", "ring", "full_mesh", "torus")


def _check_topology(cls: str, topology: str, allowed=TOPOLOGIES) -> None:
    if topology not in allowed:
        raise ValueError(
            f"{cls}(topology={topology!r}) must be one of {', '.join(allowed)}"
        )


class Dimension(eqx.Module):
    """One dimension of a multi-dimensional network tier (e.g. one axis of a torus).

    `bandwidth` is what one chip can send along this dimension per direction, summed
    over its links in the dimension (a torus axis with wraparound has two links, + and
    −, so 2 × the one-way link bandwidth). `topology` is how the chips of one line of
    this dimension are joined: "ring" (a torus axis), "switch" or "full_mesh".
    """

    size: Array = eqx.field(**_F)  # chips along this dimension
    bandwidth: Array = eqx.field(**_F)  # B/s per chip per direction along it
    latency: Array = eqx.field(**_F)  # s per hop / message
    topology: str = eqx.field(static=True, default="ring")

    def __check_init__(self):
        check_fields(self, positive=("size", "bandwidth"), nonneg=("latency",))
        _check_topology("Dimension", self.topology, ("switch", "ring", "full_mesh"))


class NetworkTier(eqx.Module):
    """One tier of the network (scale-up NVLink/ICI domain, or scale-out NICs).

    Time to move S bytes point to point: α + S / (W · efficiency)  [s].
    For the scale-up tier W is per chip per direction (summed over its links); for the
    scale-out tier W is per NIC per direction and a chip's share is
    W · nics_per_node / chips_per_node, capped by PCIe (see `Cluster`).

    `dims` describes the tier as a product of dimensions (innermost first; ranks are
    laid out along dims[0] first): a TPU v5p pod is three ring dims of 16, 20 and 28
    chips (a 3D torus), a Trainium2 node two ring dims of 4 (a 2D torus), an NVLink
    domain one switch dim. With no `dims` the tier is one dimension of `size` chips
    and `bandwidth`, joined as `topology` says ("torus" then means one ring). The
    product of the dims' sizes must equal `size`.

    `in_network_reduction` (NVLink SHARP / NVLS, InfiniBand SHARP) lets the switches of
    the tier's switch dimensions reduce and multicast: reduce-scatter / all-gather
    take one latency step instead of e − 1, and an all-reduce inside the tier moves
    each byte once, 2·α + (e − 1)/e·S/W instead of the ring's 2·(e − 1)/e·S/W.

    Scale-out fabrics are fat trees: `leaf_size` domains hang below one leaf (rail)
    switch at full bandwidth, and traffic that leaves a leaf shares uplinks tapered by
    `oversubscription` (1 = full bisection, 2 = 2:1). Only all-to-all traffic pays the
    taper: ring / tree collectives cross a leaf boundary on one edge per ring.
    """

    bandwidth: Array = eqx.field(**_F)  # B/s per direction (per chip or per NIC)
    latency: Array = eqx.field(**_F)  # s
    efficiency: Array = eqx.field(**_F)  # achievable fraction of bandwidth
    size: Array = eqx.field(**_F, default=1.0)  # chips in one domain (scale-up)
    oversubscription: Array = eqx.field(**_F, default=1.0)  # fat-tree taper (≥ 1)
    leaf_size: Array = eqx.field(**_F, default=1.0)  # domains below one leaf switch
    topology: Topology = eqx.field(static=True, default="switch")
    in_network_reduction: bool = eqx.field(static=True, default=False)  # NVLS
    dims: tuple[Dimension, ...] = ()

    def __check_init__(self):
        check_fields(
            self,
            positive=("bandwidth", "size", "leaf_size"),
            nonneg=("latency",),
            fraction=("efficiency",),
        )
        over = concrete(self.oversubscription)
        if over is not None and not over >= 1.0:
            raise ValueError(
                f"NetworkTier(oversubscription={over:g}) must be >= 1 (1 = no taper)"
            )
        _check_topology("NetworkTier", self.topology)
        if self.dims:
            sizes = [concrete(d.size) for d in self.dims]
            size = concrete(self.size)
            if None not in sizes and size is not None:
                prod = math.prod(sizes)
                if abs(prod - size) > 1e-6 * size:
                    raise ValueError(
                        f"NetworkTier(dims) sizes {' x '.join(f'{v:g}' for v in sizes)}"
                        f" = {prod:g} must multiply to size={size:g}"
                    )

    def dimensions(self) -> tuple[Dimension, ...]:
        """The tier's dimensions; one of `size` chips when `dims` is empty."""
        if self.dims:
            return self.dims
        topo = "ring" if self.topology == "torus" else self.topology
        return (Dimension(self.size, self.bandwidth, self.latency, topo),)


class MemoryTier(eqx.Module):
    """Memory beyond HBM that a chip can offload to: host DRAM, CXL, Grace LPDDR.

    Moving S bytes between HBM and the tier takes α + S / W  [s], W per chip per
    direction: the host PCIe link (shared behind a PCIe switch, see `Host`) for host
    DRAM and CXL, NVLink-C2C for Grace-Hopper/Blackwell (GH200: 450 GB/s per direction;
    GB200: one Grace's 900 GB/s bidirectional shared by two GPUs).
    """

    capacity: Array = eqx.field(**_F)  # B per chip
    bandwidth: Array = eqx.field(**_F)  # B/s per chip per direction
    latency: Array = eqx.field(**_F, default=1e-6)  # s per transfer
    kind: str = eqx.field(static=True, default="host_dram")  # host_dram | cxl | c2c

    def __check_init__(self):
        check_fields(self, positive=("bandwidth",), nonneg=("capacity", "latency"))
        if self.kind not in ("host_dram", "cxl", "c2c"):
            raise ValueError(
                f"MemoryTier(kind={self.kind!r}) must be one of host_dram, cxl, c2c"
            )


PCIE_LANE_RATE = {3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
"""Usable B/s per lane per direction after line coding: gen 3–5 128b/130b at 8, 16,
32 GT/s; gen 6 PAM4 64 GT/s with 242/256 FLIT efficiency (PCI-SIG specifications)."""

_EXACT = Exact()


class Host(eqx.Module):
    """The server around the chips: PCIe, NICs, CPU, DRAM, per-step host costs.

    `dispatch_overhead` is CPU time per launched kernel, hidden while the GPU has queued
    work; `sync_overhead` is the time exposed by one device-to-host synchronization
    (the device-to-host copy and the host's wake-up once the GPU has drained), e.g.
    the token counts of a dropless MoE layer, once per pass over it. `moe_host_ops` is
    the number of small CPU-side ops an MoE layer issues per pass besides its kernels
    (router bookkeeping, auxiliary loss, token-count histogram, permutation indices,
    all-to-all splits), each costing `dispatch_overhead`; after the sync the GPU waits
    for them, so their issue time shows where it exceeds the MoE block's GPU time
    (`model.train.moe_sync`). Its default, 40, is a prior counted from the structure
    of Megatron-core's MoE layer (router, token dispatcher), not a measurement:
    `experiments/calibrate_hierarchy` fits it per training stack.

    PCIe: each chip's link is `pcie_bandwidth` [B/s per direction], or, when
    `pcie_gen` is given, pcie_lanes × the per-lane rate of that generation
    (`PCIE_LANE_RATE`). With a PCIe switch (`pcie_switch_uplink` > 0),
    `pcie_switch_chips` chips and `pcie_switch_nics` NICs sit behind one switch whose
    uplink to the CPU they share: host traffic (offload, input data) gets
    uplink / chips per chip; GPU↔NIC traffic stays below the switch (GPUDirect RDMA),
    unless no NIC sits there, when it too crosses the uplink. NIC traffic always
    crosses the chip's own link, and each NIC's link caps that NIC.

    Input pipeline: `cpu_time_per_token` seconds of one CPU core per training token
    (reading, decoding, tokenizing, packing); the node's cores minus one dispatch
    thread per chip run it ahead of the GPUs, and a step stalls when they fall behind.
    """

    chips_per_node: Array = eqx.field(**_F)
    nics_per_node: Array = eqx.field(**_F)
    pcie_latency: Array = eqx.field(**_F)  # s
    cpu_cores: Array = eqx.field(**_F)
    dram_capacity: Array = eqx.field(**_F)  # B
    dispatch_overhead: Array = eqx.field(**_F)  # s of CPU time per kernel launch
    step_overhead: Array = eqx.field(**_F)  # s per optimizer step (data, logging, sync)
    power: Array = eqx.field(**_F)  # W per node excluding the chips
    price: Array = eqx.field(**_F)  # USD per node excluding the chips
    pcie_bandwidth: Array = eqx.field(**_F, default=0.0)  # B/s per chip per direction
    pcie_lanes: Array = eqx.field(**_F, default=16.0)  # lanes per chip (and per NIC)
    pcie_switch_chips: Array = eqx.field(**_F, default=0.0)  # chips behind one switch
    pcie_switch_nics: Array = eqx.field(**_F, default=0.0)  # NICs behind that switch
    pcie_switch_uplink: Array = eqx.field(**_F, default=0.0)  # B/s; 0 = no switch
    cpu_time_per_token: Array = eqx.field(**_F, default=0.0)  # core-s per token
    sync_overhead: Array = eqx.field(**_F, default=1e-3)  # s exposed per host sync
    serve_overhead: Array = eqx.field(**_F, default=2e-3)  # s per serving engine step
    moe_host_ops: Array = eqx.field(**_F, default=40.0)  # CPU ops per MoE layer pass
    pcie_gen: int = eqx.field(static=True, default=0)  # 0: use pcie_bandwidth

    def __check_init__(self):
        check_fields(
            self,
            positive=("chips_per_node", "nics_per_node", "pcie_lanes"),
            nonneg=(
                "pcie_bandwidth",
                "pcie_latency",
                "pcie_switch_chips",
                "pcie_switch_nics",
                "pcie_switch_uplink",
                "cpu_time_per_token",
                "cpu_cores",
                "dram_capacity",
                "dispatch_overhead",
                "step_overhead",
                "sync_overhead",
                "serve_overhead",
                "moe_host_ops",
                "power",
                "price",
            ),
        )
        if self.pcie_gen not in (0, *PCIE_LANE_RATE):
            raise ValueError(
                f"Host(pcie_gen={self.pcie_gen!r}) must be one of 3, 4, 5, 6 "
                "(or 0 to give pcie_bandwidth)"
            )
        bw = concrete(self.pcie_bandwidth)
        if self.pcie_gen == 0 and bw is not None and bw <= 0:
            raise ValueError(
                f"Host(pcie_bandwidth={bw:g}) must be > 0 unless pcie_gen is given"
            )
        if self.pcie_gen and bw is not None and bw > 0:
            raise ValueError(
                "Host(pcie_bandwidth) and Host(pcie_gen) exclude each other: give one"
            )
        uplink = concrete(self.pcie_switch_uplink)
        chips = concrete(self.pcie_switch_chips)
        if uplink and chips is not None and chips < 1:
            raise ValueError(
                f"Host(pcie_switch_chips={chips:g}) must be >= 1 when "
                "pcie_switch_uplink is given"
            )

    def pcie_link(self) -> Array:
        """One chip's (or NIC's) PCIe link [B/s per direction]."""
        if self.pcie_gen:
            return self.pcie_lanes * PCIE_LANE_RATE[self.pcie_gen]
        return self.pcie_bandwidth

    def _uplink_share(self, relax: AbstractRelax, link) -> Array:
        """min(link, uplink / chips behind the switch), or link without a switch."""
        if concrete(self.pcie_switch_uplink) == 0.0:  # no switch (a static fact here)
            return link
        has = self.pcie_switch_uplink > 0
        chips = jnp.where(has, self.pcie_switch_chips, 1.0)
        shared = jnp.where(has, self.pcie_switch_uplink, link) / chips
        return relax.min(link, shared)

    def host_bandwidth(self, relax: AbstractRelax = _EXACT) -> Array:
        """A chip's bandwidth to host memory [B/s per direction].

        Its PCIe link, or its share of the PCIe switch uplink when a switch sits in
        between: min(link, uplink / pcie_switch_chips).
        """
        return self._uplink_share(relax, self.pcie_link())

    def nic_bandwidth(self, nic, relax: AbstractRelax = _EXACT) -> Array:
        """A chip's scale-out bandwidth [B/s per direction].

            W_chip = min(min(W_nic, link) · nics / chips, link[, uplink / chips_sw])
        the last term only when the NICs are not behind the chips' PCIe switch.
        """
        link = self.pcie_link()
        share = relax.min(nic, link) * self.nics_per_node / self.chips_per_node
        share = relax.min(share, link)
        if concrete(self.pcie_switch_uplink) == 0.0:  # no switch: nothing shared
            return share
        far = (self.pcie_switch_uplink > 0) & (self.pcie_switch_nics <= 0)
        return jnp.where(far, self._uplink_share(relax, share), share)

    def input_time(self, tokens_per_chip) -> Array:
        """CPU seconds per step to prepare a chip's tokens with the node's spare cores.

        T_in = tokens_chip · c_tok · chips_per_node / max(cores − chips_per_node, 1)
        """
        spare = jnp.maximum(self.cpu_cores - self.chips_per_node, 1.0)
        return tokens_per_chip * self.cpu_time_per_token * self.chips_per_node / spare


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
    # Multi-die packages (estimates; economics.chip_cost): interposer area, bridge and
    # test of each compute die beyond the first (~1/3 more CoWoS interposer per extra
    # reticle die at the $750 package), and the yield of bonding one die or HBM stack
    # (Stow et al., ICCAD 2017, and Feng & Ma, DAC 2022 "Chiplet Actuary", use 0.99).
    die_packaging_cost: Array = eqx.field(**_F, default=250.0)  # USD per extra die
    bond_yield: Array = eqx.field(**_F, default=0.99)  # per bonded die or stack
    # Logic area of optional narrow tensor formats as a share of the bf16 tensor logic
    # (estimates: fp8/fp4 reuse the bf16 multiplier arrays at 2x/4x rate, adding
    # operand unpacking, scaling and accumulation paths; economics.die_area).
    fp8_area: Array = eqx.field(**_F, default=0.05)  # share of bf16 logic
    fp4_area: Array = eqx.field(**_F, default=0.05)  # share of bf16 logic
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
                "die_packaging_cost",
                "fp8_area",
                "fp4_area",
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
            fraction=("misc_area_fraction", "bond_yield"),
        )
        y = concrete(self.bond_yield)
        if y is not None and y <= 0.0:
            raise ValueError(f"Cost(bond_yield={y:g}) must be in (0, 1]")


class Cluster(eqx.Module):
    """A chip, its scale-up and scale-out networks, its host and offload memory.

    `memory_tier` is where offloaded optimizer state, activations and KV cache go;
    without one it is the host DRAM (dram_capacity / chips_per_node per chip) over the
    host PCIe path (`Host.host_bandwidth`).
    """

    chip: Chip
    scale_up: NetworkTier
    scale_out: NetworkTier
    host: Host
    name: str = eqx.field(static=True, default="custom")
    cost: Cost = eqx.field(default_factory=Cost)
    memory_tier: MemoryTier | None = None

    def scale_out_bandwidth(self, relax: AbstractRelax = _EXACT) -> Array:
        """A chip's scale-out bandwidth [B/s per direction] (`Host.nic_bandwidth`)."""
        return self.host.nic_bandwidth(self.scale_out.bandwidth, relax)

    def offload_tier(self, relax: AbstractRelax = _EXACT) -> MemoryTier:
        """The memory tier offloads go to (the class docstring)."""
        if self.memory_tier is not None:
            return self.memory_tier
        h = self.host
        return MemoryTier(
            capacity=h.dram_capacity / h.chips_per_node,
            bandwidth=h.host_bandwidth(relax),
            latency=h.pcie_latency,
        )
