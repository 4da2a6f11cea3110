"""Cost, area and power of a cluster as functions of its hardware leaves.

Every quantity is a smooth function of float leaves of `Cluster` (the chip's FLOP/s,
SRAM, HBM bandwidth and capacity, its scale-up bandwidth, the host's NICs) and of the
`Cost` leaves below, so a co-design loop can trade performance against area, power and
dollars by gradient descent.

Die area [m²] (calibrated per chip at load; see `anchor`):
    A = (π_bf16·(1 + a_8·[π_fp8 > 0] + a_4·[π_fp4 > 0])/ρ_logic + SRAM/ρ_sram
         + β_hbm·a_hbm + 2·W_up·a_link) / (1 − f_misc)
with ρ_logic [FLOP/s per m²] and ρ_sram [B/m²] the process densities, a_8 and a_4 the
extra tensor logic of supporting fp8 and fp4 (shares of the bf16 logic, estimates),
a_hbm and a_link [m² per B/s] the PHY area per unit of bandwidth, W_up the scale-up
bandwidth per direction and f_misc the share of uncore (caches' tags, crossbar, media,
PCIe).

Die cost (Cunningham 1990; Hennessy & Patterson, "Computer Architecture", ch. 1.6):
    dies per wafer  N = π (d/2)² / a − π d / √(2a)          (a = A / dies, per die)
    yield           Y = (1 + a·D₀ / α)^(−α)                 (negative binomial)
    silicon [USD]   = dies · C_wafer / (N · Y)
HBM [USD] = stacks · C_stack + capacity · c_B, stacks = max(β_hbm / β_stack,
capacity / C_stack_capacity) (a continuous count, as bandwidth and capacity both need
stacks). Packaging [USD] = C_pkg + (dies − 1)·C_die_pkg (interposer, bridge and test
of each extra compute die). Every bonded die and stack must survive assembly, and a
failed bond scraps the package with its known-good dies and stacks:
    Y_asm = y_bond^(dies + stacks)      (Stow et al., ICCAD 2017; Feng & Ma, DAC 2022)
    assembly [USD] = (silicon + HBM + packaging)·(1/Y_asm − 1)
Manufacturing cost = silicon + HBM + packaging + assembly; price = markup × that.

Cluster capex per chip [USD]:
    price + host.price / n_node + (NICs / n_node) · (c_nic + ports_per_nic · c_port)
          + W_up · c_up
(a non-blocking two-level fat tree uses three switch ports per NIC: leaf down, leaf up
and spine; c_up is the scale-up switching cost per B/s of a chip's bandwidth).

Scale-up domain beyond one board [USD per chip] (`domain_cost`; priced by
`design.apply_design` when a design changes the domain size):
    D(N) = c_cab · max(0, 1 − n/N) + c_liq · [N · (P_chip + P_host/n) > P_air]
with N the chips in the domain, n the chips on one board (host.chips_per_node), c_cab
the copper spine and switch trays per chip when every link leaves the board, c_liq
the liquid cooling per chip and P_air the rack power air can remove (a copper domain
must sit in one rack, so N chips set the rack's power).

Power [W] per chip (static plus utilization-weighted dynamic):
    P = P_idle + u_c · π_bf16 · e_flop + u_m · β_hbm · e_hbm + u_n · 2·W_up · e_link
with busy fractions u ∈ [0, 1]; at u = 1 this is the modelled TDP. e_flop is the energy
of a bf16 FLOP (fp8 runs twice the FLOPs at the same power). $ per hour:
    capex / lifetime + chips · (P + host.power / n_node) · PUE · c_kWh / 1000.

Default values (N4/N5-class process, HBM3, 400G networking, 2024 prices) and their
sources are on each field; `anchor` fits the two leaves that datasheets do not publish
(logic density and markup, flop energy) so that a bundled chip's modelled die area,
price and TDP equal its datasheet values.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.relax import as_float
from ..specs.hardware import Cluster, Cost
from .breakdown import Breakdown

__all__ = [
    "anchor",
    "die_area",
    "die_yield",
    "dies_per_wafer",
    "chip_cost",
    "hbm_stacks",
    "chip_price",
    "chip_tdp",
    "capex_per_chip",
    "power_per_chip",
    "hourly_cost",
    "usd_per_million_tokens",
    "busy_fractions",
    "step_power",
    "joules_per_token",
    "DomainParts",
    "DOMAIN_PARTS",
    "domain_cost",
]


IDLE_POWER_PRIOR = 0.15
"""The prior of the `Cost.idle_power` leaf as a share of TDP, used by `anchor` when a
hardware file does not give `idle_power`. An assumption, not a measurement: no public
per-SKU idle figure was found (idle-with-context power is a fixed DVFS state, not a
function of memory use; Vadari 2026, arXiv:2605.23918). Set `[cost] idle_power` from a
measured idle draw when one exists; the leaf is differentiable like any other."""


def _sram(cluster: Cluster) -> Array:
    c = cluster.chip
    return c.sram_capacity + c.cores * c.core_sram


def _logic_free_area(cluster: Cluster, k: Cost) -> Array:
    """SRAM and PHY area [m²]: SRAM/ρ_sram + β_hbm·a_hbm + 2·W_up·a_link."""
    c = cluster.chip
    return (
        _sram(cluster) / k.sram_density
        + c.hbm_bandwidth * k.hbm_phy_area
        + 2.0 * cluster.scale_up.bandwidth * k.link_phy_area
    )


def _logic_share(cluster: Cluster) -> Array:
    """1 + a_8·[π_fp8 > 0] + a_4·[π_fp4 > 0]: tensor logic per bf16 FLOP/s, relative."""
    c, k = cluster.chip, cluster.cost
    return (
        1.0
        + k.fp8_area * jnp.where(c.flops_fp8 > 0, 1.0, 0.0)
        + k.fp4_area * jnp.where(c.flops_fp4 > 0, 1.0, 0.0)
    )


def die_area(cluster: Cluster) -> Array:
    """Total silicon area of one chip [m²] (module docstring formula).

    Summed over its `cost.dies` compute dies; each die has area A / dies.
    """
    k = cluster.cost
    logic = cluster.chip.flops_bf16 * _logic_share(cluster) / k.logic_density
    return (logic + _logic_free_area(cluster, k)) / (1.0 - k.misc_area_fraction)


def dies_per_wafer(area, diameter) -> Array:
    """Gross dies per wafer, π(d/2)²/a − πd/√(2a), at least 1 (wafer-scale parts)."""
    area, diameter = as_float(area), as_float(diameter)
    n = math.pi * diameter**2 / (4.0 * area) - math.pi * diameter / jnp.sqrt(2.0 * area)
    return jnp.maximum(n, 1.0)


def die_yield(area, defect_density, clustering) -> Array:
    """Negative-binomial die yield (1 + a·D₀/α)^(−α) of a die of area a [m²]."""
    return (1.0 + as_float(area) * defect_density / clustering) ** (-clustering)


def hbm_stacks(cluster: Cluster) -> Array:
    """HBM stacks of one chip: max(β_hbm / β_stack, capacity / capacity_stack).

    A continuous count (bandwidth and capacity both need stacks).
    """
    c, k = cluster.chip, cluster.cost
    return jnp.maximum(
        c.hbm_bandwidth / k.hbm_stack_bandwidth, c.hbm_capacity / k.hbm_stack_capacity
    )


def chip_cost(cluster: Cluster) -> dict[str, Array]:
    """Manufacturing cost of one chip by part [USD].

    silicon = dies·C_wafer/(N·Y) per die area A/dies; hbm = stacks·C_stack +
    capacity·c_B; packaging = C_pkg + (dies − 1)·C_die_pkg; assembly =
    (silicon + hbm + packaging)·(y_bond^−(dies + stacks) − 1) (module docstring).
    """
    c, k = cluster.chip, cluster.cost
    a = die_area(cluster) / k.dies
    good = dies_per_wafer(a, k.wafer_diameter) * die_yield(
        a, k.defect_density, k.defect_clustering
    )
    stacks = hbm_stacks(cluster)
    parts = {
        "silicon": k.dies * k.wafer_cost / good,
        "hbm": stacks * k.hbm_stack_cost + c.hbm_capacity * k.hbm_cost_per_byte,
        "packaging": k.packaging_cost + (k.dies - 1.0) * k.die_packaging_cost,
    }
    loss = k.bond_yield ** (-(k.dies + stacks)) - 1.0
    parts["assembly"] = sum(parts.values()) * loss
    return parts


def chip_price(cluster: Cluster) -> Array:
    """Price of one chip [USD]: markup × (silicon + HBM + packaging + assembly)."""
    return cluster.cost.markup * sum(chip_cost(cluster).values())


def power_per_chip(
    cluster: Cluster, busy_compute=1.0, busy_memory=1.0, busy_network=1.0
) -> Array:
    """Average power of one chip [W] at the given busy fractions (module docstring)."""
    c, k = cluster.chip, cluster.cost
    return (
        k.idle_power
        + as_float(busy_compute) * c.flops_bf16 * k.flop_energy
        + as_float(busy_memory) * c.hbm_bandwidth * k.hbm_energy
        + as_float(busy_network) * 2.0 * cluster.scale_up.bandwidth * k.link_energy
    )


def chip_tdp(cluster: Cluster) -> Array:
    """Modelled TDP of one chip [W]: `power_per_chip` with every unit busy."""
    return power_per_chip(cluster)


def capex_per_chip(cluster: Cluster) -> Array:
    """Capital cost per chip [USD]: chip, host share, NICs and fabric, scale-up."""
    h, k = cluster.host, cluster.cost
    nics = h.nics_per_node / h.chips_per_node
    return (
        chip_price(cluster)
        + h.price / h.chips_per_node
        + nics * (k.nic_price + k.switch_ports_per_nic * k.switch_port_price)
        + cluster.scale_up.bandwidth * k.scale_up_cost
    )


def hourly_cost(
    cluster: Cluster,
    chips,
    *,
    power=None,
    lifetime_hours=None,
    pue=None,
    usd_per_kwh=None,
) -> Array:
    """USD per hour of `chips` chips with their share of hosts and network.

    capex_per_chip · chips / lifetime + chips · (P + host.power / n_node) · PUE ·
    $/kWh / 1000, with P the chip's power [W] (default: the modelled TDP, i.e. the
    provisioned power). The keyword overrides replace the lifetime [h], PUE and
    $/kWh leaves of `cluster.cost`.
    """
    k = cluster.cost
    h = cluster.host
    life = k.lifetime if lifetime_hours is None else as_float(lifetime_hours)
    pue = k.pue if pue is None else as_float(pue)
    kwh = k.usd_per_kwh if usd_per_kwh is None else as_float(usd_per_kwh)
    p = chip_tdp(cluster) if power is None else as_float(power)
    chips = as_float(chips)
    capex = chips * capex_per_chip(cluster) / life
    watts = chips * (p + h.power / h.chips_per_node)
    return capex + watts / 1e3 * pue * kwh


def usd_per_million_tokens(usd_per_hour, tokens_per_s):
    """$ per million tokens [USD]: $/h / (3600 s/h · tokens/s) · 1e6.

    Plain arithmetic, so Python floats stay floats and arrays stay arrays.
    """
    return usd_per_hour / (3600.0 * tokens_per_s) * 1e6


def anchor(cluster: Cluster, *, given: frozenset = frozenset()) -> Cluster:
    """`cluster` with the unpublished cost leaves fitted to its datasheet values.

    Solves, for the leaves not in `given`: logic_density so that `die_area` equals
    `chip.die_area`; markup so that `chip_price` equals `chip.price`; idle_power =
    `IDLE_POWER_PRIOR`·TDP and flop_energy so that `chip_tdp` equals `chip.power`.
    Leaves whose solution would be non-physical (a die too small for its SRAM and
    PHYs, a TDP below idle + memory + links) keep their defaults.
    """
    c = cluster.chip

    def put(k: Cost, name: str, value: float) -> Cost:
        return eqx.tree_at(lambda t: getattr(t, name), k, as_float(value))

    k = cluster.cost
    if "logic_density" not in given and float(c.die_area) > 0:
        logic = float(c.die_area) * (1.0 - float(k.misc_area_fraction)) - float(
            _logic_free_area(cluster, k)
        )
        if logic > 0:
            share = float(_logic_share(_with(cluster, k)))
            k = put(k, "logic_density", float(c.flops_bf16) * share / logic)
    if "idle_power" not in given and float(c.power) > 0:
        k = put(k, "idle_power", IDLE_POWER_PRIOR * float(c.power))
    if "flop_energy" not in given and float(c.power) > 0:
        rest = float(power_per_chip(_with(cluster, k), busy_compute=0.0))
        if float(c.power) > rest:
            k = put(k, "flop_energy", (float(c.power) - rest) / float(c.flops_bf16))
    if "markup" not in given and float(c.price) > 0:
        made = float(sum(chip_cost(_with(cluster, k)).values()))
        k = put(k, "markup", float(c.price) / made)
    return _with(cluster, k)


def _with(cluster: Cluster, cost: Cost) -> Cluster:
    return eqx.tree_at(lambda t: t.cost, cluster, cost)


def busy_fractions(b: Breakdown) -> tuple[Array, Array, Array]:
    """(u_compute, u_memory, u_network) of a training step from its breakdown.

    u_c = (matmul + attention + recompute + head) / t: tensor units busy;
    u_m = (those + elementwise + optimizer) / t: HBM streams during every kernel;
    u_n = (all communication, exposed and overlapped) / t, at most 1.
    """
    t = b.total
    compute = b.matmul + b.attention + b.recompute + b.head
    comm = sum(b.overlapped().values()) + sum(
        getattr(b, n) for n in ("tp_comm", "cp_comm", "ep_comm", "pp_p2p", "dp_comm")
    )
    memory = compute + b.elementwise + b.optimizer
    return compute / t, memory / t, jnp.minimum(comm / t, 1.0)


def step_power(cluster: Cluster, b: Breakdown) -> Array:
    """Average power of one chip over a training step [W] (`busy_fractions`)."""
    return power_per_chip(cluster, *busy_fractions(b))


def joules_per_token(cluster: Cluster, b: Breakdown) -> Array:
    """Energy per trained token [J]: chips·(P_step + host share)·PUE·t / tokens."""
    h = cluster.host
    watts = step_power(cluster, b) + h.power / h.chips_per_node
    return b.chips * watts * cluster.cost.pue * b.total / b.tokens


class DomainParts(NamedTuple):
    """What a switched scale-up domain beyond one board costs (USD per chip, W)."""

    cabling: float  # USD per chip: copper spine and switch trays, every link off-board
    liquid_cooling: float  # USD per chip: cold plates, manifolds, switch-tray share
    air_limit: float  # W per rack that air cooling removes
    source: str


DOMAIN_PARTS = DomainParts(
    cabling=1720.0,
    liquid_cooling=577.0,
    air_limit=40e3,
    source=(
        "cabling: an estimate built from the GB200 NVL72 rack's parts, no public price "
        "found: 5,184 NVLink copper cables per 72 GPUs = 72 per GPU "
        "(chips.sanjay920.com/l/06-scale-up, diskmfr.com 'Nvidia GPU copper cable "
        "interconnect') at ~$10 per 224G twinax assembly with its connector share "
        "($720), plus 9 NVLink switch trays per 72 GPUs (setloop.io GB200 NVL72 "
        "guide) at ~$8,000 per tray without its switch chips, which `scale_up_cost` "
        "already prices per B/s ($1,000 per GPU). liquid_cooling: Morgan Stanley's "
        "GB300 NVL72 cooling BOM, $49,860 per rack ($2,260 per 4-GPU compute tray, "
        "$1,020 per switch tray), GB200's 20% lower (Tom's Hardware, Nov 2025, copied "
        "at worldnl.com and epium.com): $41,550 / 72 = $577 per GPU; an air-cooled "
        "board's heat sinks are not credited. air_limit: an estimate; air-cooled "
        "racks top out near 40 kW, and GB200 NVL72 at ~120 kW has no air-cooled "
        "option (leviathansystems.co 'Liquid cooling requirements for Blackwell')."
    ),
)
"""The default parts of `domain_cost` (NVLink5-class copper domain, 2024 prices)."""


def domain_cost(size, chips_per_node, rack_power_per_chip, parts=DOMAIN_PARTS):
    """USD per chip of a switched scale-up domain of `size` chips beyond its boards.

    D(N) = c_cab · max(0, 1 − n/N) + c_liq · [N · p > P_air]  (module docstring), with
    N = `size`, n = `chips_per_node` (a domain within one board is wired on the board:
    0), p = `rack_power_per_chip` [W] (the chip's and its host share's) and the
    `DomainParts` c_cab, c_liq, P_air (`DOMAIN_PARTS`, sourced there). The off-board
    share 1 − n/N is the share of a chip's domain peers beyond its board; the
    cooling term is a step (the rack either needs liquid or not). Smooth in size
    and every price for N > n away from the cooling step.
    """
    n = as_float(size)
    board = as_float(chips_per_node)
    off = jnp.maximum(1.0 - board / n, 0.0)
    liquid = jnp.where(n * as_float(rack_power_per_chip) > parts.air_limit, 1.0, 0.0)
    return parts.cabling * off + parts.liquid_cooling * liquid
