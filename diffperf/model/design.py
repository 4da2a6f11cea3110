"""Design choices that chip architects make, as transformations of a `Cluster`.

Each choice maps a cluster to the cluster with that choice made, by setting float
leaves, so the result is differentiable in every leaf that stays free, and a
discrete choice can be enumerated like a mapping (`analysis.codesign`):

- dies: compute dies per package. The chip's peaks (every dtype), last-level SRAM,
  SRAM bandwidth, cores and datasheet die area scale by dies / cost.dies (each die keeps
  its area, within a reticle); `cost.dies` is set, so the silicon is costed per die,
  packaging adds `cost.die_packaging_cost` per extra die and assembly yield falls as
  `cost.bond_yield`^(dies + stacks) (`economics.chip_cost`).
- hbm_generation, hbm_stacks: β_hbm = stacks·β_stack and capacity = stacks·C_stack of
  the generation (`HBM_GENERATIONS`); the generation also sets the cost leaves (stack
  bandwidth and capacity, USD per byte, J per byte). A die carries at most
  `sites_per_die` HBM PHYs, so stacks ≤ sites_per_die·dies.
- formats: the narrow tensor formats the chip supports, a subset of ("fp8", "fp4"):
  π_fp8 = 2·π_bf16 and π_fp4 = 4·π_bf16 when supported, else 0 (the dense tensor-core
  ratio of Hopper and Blackwell datasheets); their logic area is
  `cost.fp8_area`/`cost.fp4_area` (`economics.die_area`).
- scale_up_size, scale_up_bandwidth: chips in the scale-up domain and B/s per chip per
  direction. The size is priced: the host price moves by chips_per_node ·
  (D(new) − D(old)) with D the domain's copper spine, switch trays and liquid
  cooling per chip (`economics.domain_cost`; the as-built host price already holds
  its own domain's). A tier given as `dims` (a torus) is resized with
  scale_up_dims; its bandwidth choice scales every dimension's bandwidth by the
  same factor.
- scale_up_dims: the sizes of a torus tier's dimensions (as many as it has), e.g.
  (16, 16, 16) for a TPU v4 pod or (16, 20, 28) for v5p; scale_up.size becomes
  their product and each dimension keeps its bandwidth. Not priced: a torus wires
  each chip to its 2·dims neighbours whatever the torus size, and TPU v4's optical
  circuit switches are under 5% of the system's cost (Jouppi et al., ISCA 2023).
- nics_per_chip, nic_bandwidth: scale-out NICs per chip (host.nics_per_node =
  nics_per_chip·chips_per_node) and B/s per NIC per direction.

Bad values raise a `ValueError` naming the choice and what is allowed.
"""

import math
from typing import NamedTuple

import jax.numpy as jnp

from ..core.paths import get_leaf, set_leaf
from ..specs.hardware import Cluster
from .economics import domain_cost

__all__ = [
    "HbmGeneration",
    "HBM_GENERATIONS",
    "DESIGN_CHOICES",
    "FORMATS",
    "SITES_PER_DIE",
    "apply_design",
    "check_design",
]


class HbmGeneration(NamedTuple):
    """One HBM generation as a part a designer can buy (SI units, USD)."""

    stack_bandwidth: float  # B/s per stack (1024-bit interface × pin rate)
    stack_capacity: float  # B per stack
    usd_per_byte: float  # USD per B of DRAM
    energy: float  # J per B moved
    year: int  # first volume shipments
    source: str


HBM_GENERATIONS: dict[str, HbmGeneration] = {
    "hbm2e": HbmGeneration(
        stack_bandwidth=460e9,
        stack_capacity=16e9,
        usd_per_byte=1.0e-8,
        energy=3.1e-11,
        year=2020,
        source=(
            "SK hynix HBM2E (2020 mass production): 3.6 Gb/s/pin × 1024 = 460 GB/s, "
            "8-Hi 16 GB; price ~$10/GB an estimate (2/3 of HBM3's); 3.9 pJ/bit "
            "(O'Connor et al., MICRO 2017, HBM2)"
        ),
    ),
    "hbm3": HbmGeneration(
        stack_bandwidth=819e9,
        stack_capacity=16e9,
        usd_per_byte=1.5e-8,
        energy=3.1e-11,
        year=2022,
        source=(
            "JEDEC JESD238 HBM3 (Jan 2022) and SK hynix HBM3 (2022 volume): 6.4 "
            "Gb/s/pin × 1024 = 819 GB/s, 8-Hi 16 GB (24 GB 12-Hi announced); ~$15/GB "
            "(TrendForce, the Cost default); 3.9 pJ/bit as HBM2 (an estimate)"
        ),
    ),
    "hbm3e": HbmGeneration(
        stack_bandwidth=1.2e12,
        stack_capacity=24e9,
        usd_per_byte=1.8e-8,
        energy=2.7e-11,
        year=2024,
        source=(
            "Micron HBM3E 8-high 24 GB (2024): >9.2 Gb/s/pin, >1.2 TB/s per stack; "
            "price ~$18/GB an estimate (+20% over HBM3); energy an estimate: Micron "
            "states ~30% less power than competing HBM3E at higher bandwidth, "
            "taken as 3.4 pJ/bit"
        ),
    ),
}
"""HBM generations a design may use: per-stack datasheet figures and cost leaves."""

SITES_PER_DIE = 6
"""HBM PHYs on one compute die: GA100 and GH100 each have six HBM sites (NVIDIA A100
and H100 whitepapers; five populated on the 80 GB SKUs). The default of
`apply_design(sites_per_die=...)`."""

FORMATS = ("fp8", "fp4")
"""Optional narrow tensor formats (bf16 is always supported)."""

_FORMAT_RATIO = {"fp8": 2.0, "fp4": 4.0}  # dense peak over bf16 (H100, B200 datasheets)

DESIGN_CHOICES = (
    "dies",
    "hbm_generation",
    "hbm_stacks",
    "formats",
    "scale_up_size",
    "scale_up_dims",
    "scale_up_bandwidth",
    "nics_per_chip",
    "nic_bandwidth",
)
"""The choices `apply_design` takes, in the order it applies them."""

_PER_DIE = (
    "chip.flops_fp32",
    "chip.flops_tf32",
    "chip.flops_bf16",
    "chip.flops_fp8",
    "chip.flops_int8",
    "chip.flops_fp4",
    "chip.sram_capacity",
    "chip.sram_bandwidth",
    "chip.cores",
    "chip.die_area",
)


def _count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if value != int(value) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a number > 0")
    return float(value)


def check_design(choices: dict, *, sites_per_die: int = SITES_PER_DIE) -> dict:
    """The choices, validated and normalized (counts as int, formats as a tuple).

    Raises:
        ValueError: an unknown choice, or a value outside what it allows (0 dies, an
            unknown HBM generation or format, more stacks than the dies' HBM sites,
            stacks without a generation).
    """
    unknown = set(choices) - set(DESIGN_CHOICES)
    if unknown:
        raise ValueError(
            f"unknown design choice {sorted(unknown)[0]!r}; allowed: "
            f"{', '.join(DESIGN_CHOICES)}"
        )
    out = {}
    for name in ("dies", "hbm_stacks", "scale_up_size", "nics_per_chip"):
        if name in choices:
            out[name] = _count(name, choices[name])
    for name in ("scale_up_bandwidth", "nic_bandwidth"):
        if name in choices:
            out[name] = _positive(name, choices[name])
    if "scale_up_dims" in choices:
        d = choices["scale_up_dims"]
        d = (d,) if isinstance(d, int | float) else tuple(d)
        if not d:
            raise ValueError("scale_up_dims=() must give one size per torus dimension")
        out["scale_up_dims"] = tuple(_count("scale_up_dims", v) for v in d)
    if "hbm_generation" in choices:
        g = choices["hbm_generation"]
        if g not in HBM_GENERATIONS:
            raise ValueError(
                f"hbm_generation={g!r} must be one of {', '.join(HBM_GENERATIONS)}"
            )
        out["hbm_generation"] = g
    if ("hbm_stacks" in out) != ("hbm_generation" in out):
        raise ValueError("hbm_stacks and hbm_generation must be chosen together")
    if "formats" in choices:
        f = choices["formats"]
        f = (f,) if isinstance(f, str) else tuple(f)
        bad = [x for x in f if x not in FORMATS]
        if bad:
            raise ValueError(
                f"formats={bad[0]!r} must be among {', '.join(FORMATS)} (bf16 is "
                "always supported)"
            )
        out["formats"] = tuple(x for x in FORMATS if x in f)
    if "hbm_stacks" in out:
        dies = out.get("dies", 1)
        if out["hbm_stacks"] > sites_per_die * dies:
            raise ValueError(
                f"hbm_stacks={out['hbm_stacks']} exceeds the HBM sites of {dies} "
                f"die(s) ({sites_per_die} per die)"
            )
    return out


def apply_design(
    cluster: Cluster, choices: dict, *, sites_per_die: int = SITES_PER_DIE
) -> Cluster:
    """`cluster` with the design choices made (module docstring).

    Args:
        cluster: the starting hardware (its `cost.dies` is the die count its per-chip
            figures describe).
        choices: a subset of `DESIGN_CHOICES` → value; the others keep the cluster's.
        sites_per_die: HBM PHYs per compute die (`SITES_PER_DIE`).

    Raises:
        ValueError: as `check_design`, resizing a scale-up tier given as dims with
            scale_up_size, or scale_up_dims that do not match the tier's dims.
    """
    ch = check_design(choices, sites_per_die=sites_per_die)
    c = cluster
    if "dies" in ch:
        r = ch["dies"] / c.cost.dies
        for p in _PER_DIE:
            c = set_leaf(c, p, get_leaf(c, p) * r)
        c = set_leaf(c, "cost.dies", jnp.asarray(float(ch["dies"])))
    if "hbm_generation" in ch:
        g = HBM_GENERATIONS[ch["hbm_generation"]]
        n = float(ch["hbm_stacks"])
        for p, v in (
            ("chip.hbm_bandwidth", n * g.stack_bandwidth),
            ("chip.hbm_capacity", n * g.stack_capacity),
            ("cost.hbm_stack_bandwidth", g.stack_bandwidth),
            ("cost.hbm_stack_capacity", g.stack_capacity),
            ("cost.hbm_cost_per_byte", g.usd_per_byte),
            ("cost.hbm_energy", g.energy),
        ):
            c = set_leaf(c, p, jnp.asarray(v))
    if "formats" in ch:
        for f, ratio in _FORMAT_RATIO.items():
            on = ratio if f in ch["formats"] else 0.0
            c = set_leaf(c, f"chip.flops_{f}", on * c.chip.flops_bf16)
    if "scale_up_size" in ch:
        if c.scale_up.dims:
            raise ValueError(
                "scale_up_size: the scale-up tier is given as dims; resize its dims"
            )
        n = float(ch["scale_up_size"])
        h = c.host
        rack_w = c.chip.power + h.power / h.chips_per_node
        step = domain_cost(n, h.chips_per_node, rack_w) - domain_cost(
            c.scale_up.size, h.chips_per_node, rack_w
        )
        c = set_leaf(c, "scale_up.size", jnp.asarray(n))
        c = set_leaf(c, "host.price", h.price + h.chips_per_node * step)
    if "scale_up_dims" in ch:
        sizes = ch["scale_up_dims"]
        if len(sizes) != len(c.scale_up.dims):
            raise ValueError(
                f"scale_up_dims={sizes} must give {len(c.scale_up.dims)} sizes, one "
                "per dimension of the scale-up tier"
            )
        for i, v in enumerate(sizes):
            c = set_leaf(c, f"scale_up.dims.{i}.size", jnp.asarray(float(v)))
        prod = float(math.prod(sizes))
        c = set_leaf(c, "scale_up.size", jnp.asarray(prod))
    if "scale_up_bandwidth" in ch:
        r = ch["scale_up_bandwidth"] / c.scale_up.bandwidth
        c = set_leaf(c, "scale_up.bandwidth", jnp.asarray(ch["scale_up_bandwidth"]))
        for i in range(len(c.scale_up.dims)):  # a torus: every axis's links scale
            c = set_leaf(
                c, f"scale_up.dims.{i}.bandwidth", c.scale_up.dims[i].bandwidth * r
            )
    if "nics_per_chip" in ch:
        nics = ch["nics_per_chip"] * c.host.chips_per_node
        c = set_leaf(c, "host.nics_per_node", nics)
    if "nic_bandwidth" in ch:
        c = set_leaf(c, "scale_out.bandwidth", jnp.asarray(ch["nic_bandwidth"]))
    return c
