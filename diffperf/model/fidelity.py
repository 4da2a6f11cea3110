"""Fidelity tiers: the same cost functions on an ideal (roofline) or the real device.

`fidelity="detailed"` (default) is the per-operator model: smooth GEMM efficiency
curves, attention and low-precision efficiencies, achievable HBM and link bandwidth,
SRAM-aware re-reads, kernel-launch, host-dispatch, sync and per-step fixed costs, and
overlap windows (DP gradient reduction hidden behind the backward, TP overlap).

`fidelity="roofline"` costs every operator at its roofline (Williams et al. 2009):

    T_op = max(F / π, Q_min / β)  [s]

with F its FLOP, π the dtype's datasheet peak, Q_min its compulsory HBM traffic (each
operand read once, the output written once) and β the datasheet HBM bandwidth;
collectives move their bytes at the datasheet link bandwidth with no latency; there
are no fixed per-kernel, per-sync or per-step costs and no overlap (communication adds
to computation). It is obtained by evaluating the detailed tier on the ideal device
(`roofline_device`: efficiencies 1, fixed costs and latencies 0, per network dimension
and memory tier too, SRAM large enough for one pass over every operand) and mapping
(`dp_overlap = tp_overlap = 0`), so both tiers share every type, the API and the
`Breakdown` terms.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp

from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism

__all__ = ["Fidelity", "FIDELITIES", "check_fidelity", "roofline_device", "tier"]

Fidelity = Literal["roofline", "detailed"]
FIDELITIES = ("roofline", "detailed")

_ONE = (
    "chip.matmul_efficiency", "chip.attention_efficiency", "chip.memory_efficiency",
    "chip.fp8_efficiency", "chip.fp4_efficiency", "chip.attention_fa2_efficiency",
    "scale_up.efficiency", "scale_out.efficiency",
)  # fmt: skip
_ZERO = (
    "chip.matmul_half_dim", "chip.kernel_overhead", "scale_up.latency",
    "scale_out.latency", "host.pcie_latency", "host.dispatch_overhead",
    "host.sync_overhead", "host.step_overhead", "host.serve_overhead",
)  # fmt: skip
_HUGE_SRAM = 1e30  # B: every GEMM tile covers its operand, attention K/V never miss


def check_fidelity(fidelity: str):
    """ValueError unless `fidelity` is "roofline" or "detailed"."""
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity={fidelity!r} must be one of roofline, detailed")


def _get(tree, path):
    for part in path.split("."):
        tree = tree[int(part)] if part.isdigit() else getattr(tree, part)
    return tree


def roofline_device(cluster: Cluster) -> Cluster:
    """The ideal device of the roofline tier (module docstring); same pytree type."""
    paths = _ONE + _ZERO + ("chip.sram_capacity",)
    values = [1.0] * len(_ONE) + [0.0] * len(_ZERO) + [_HUGE_SRAM]
    leaves = lambda c: [_get(c, p) for p in paths]  # noqa: E731
    # constants (not x·0 + v): XLA folds the efficiency curves and fixed costs away
    consts = [
        jnp.full_like(_get(cluster, p), v) for p, v in zip(paths, values, strict=True)
    ]
    ideal = eqx.tree_at(leaves, cluster, consts)
    # latencies of the per-dimension network description and of the memory tier
    paths = [
        f"{t}.dims.{i}.latency"
        for t in ("scale_up", "scale_out")
        for i in range(len(getattr(ideal, t).dims))
    ]
    if ideal.memory_tier is not None:
        paths.append("memory_tier.latency")
    for path in paths:
        zero = jnp.zeros_like(_get(ideal, path))
        ideal = eqx.tree_at(lambda c, path=path: _get(c, path), ideal, zero)
    return ideal


def tier(fidelity: str, cluster: Cluster, mapping=None):
    """(cluster, mapping) as the chosen tier costs them (mapping may be None)."""
    check_fidelity(fidelity)
    if fidelity == "detailed":
        return cluster, mapping
    if isinstance(mapping, Parallelism):
        mapping = eqx.tree_at(
            lambda m: (m.dp_overlap, m.tp_overlap),
            mapping,
            (jnp.zeros_like(mapping.dp_overlap), jnp.zeros_like(mapping.tp_overlap)),
        )
    return roofline_device(cluster), mapping
