"""One description of every collective of a step: `Collective` records.

The layer model (`layer.layer_collectives`), the data-parallel model
(`data_parallel.dp_collectives`) and the pipeline (`data_parallel.pp_collectives`,
`phases.phase_collectives`) emit lists of `Collective` records. Everything the model
says about communication is read off those lists, so the quantities cannot drift
apart:
    time       T = Σ_r count_r · t_kind(S_r, n_r, stride_r)            [s]
    NIC bytes  N = Σ_r count_r · s_kind(S_r, n_r, stride_r)            [B per chip]
    placement  (n_in, n_out): members of the group in one scale-up domain, domains
    trace      one event per record per pipeline chunk (`model.trace`)
with t_kind the closed forms of `collectives.py` (`collective_time`, `dispatch_time`,
`p2p_time`) and s_kind their off-domain bytes (`scale_out_bytes`,
`dispatch_scale_out_bytes`, `p2p_scale_out_bytes`). How much of T each step hides
behind compute (the exposure rule of each parallel axis) is decided by the step
models (`train.layer_passes`, `data_parallel.dp_exposed`, `data_parallel.p2p_exposed`);
the record only says which share the schedule may overlap (`overlap`).

A record (an equinox Module: float leaves, static names, so jit / vmap / grad apply):
    kind     all_reduce | all_gather | reduce_scatter | all_to_all | p2p     (static)
    axis     tp | cp | ep | dp | pp: the parallel axis (its group)         (static)
    phase    forward | backward | recompute | step                         (static)
    nbytes   S: per rank, the full buffer of RS / AG / AR, the bytes a rank sends
             in an all-to-all (for a dispatch: before its k copies), the message of
             a send                                                        [B]
    group    n: ranks in the group (p2p: the ring or pipeline it belongs to)
    stride   rank distance between consecutive members (p2p: to the peer)
    count    instances per unit of the emitter (per layer and microbatch for layer
             records, per step for step records)
    overlap  the share the schedule may run concurrently with compute (0: blocking)
    fanout   all-to-all only: k, the destinations of each token of a top-k MoE
             dispatch (hierarchical, `dispatch_time`); None: a uniform all-to-all
The Breakdown term a record's exposed time belongs to is `term(record)`: the axis'
own term (`tp_comm`, `cp_comm`, `ep_comm`, `dp_comm`, `pp_p2p`), or `recompute` for
the collectives of a recomputed forward pass.
"""

import equinox as eqx
from jaxtyping import Array

from ..core.relax import AbstractRelax, as_float
from ..specs.hardware import Cluster
from .collectives import (
    collective_time,
    dispatch_scale_out_bytes,
    dispatch_time,
    p2p_scale_out_bytes,
    p2p_time,
    placement,
    scale_out_bytes,
)

__all__ = [
    "Collective",
    "KINDS",
    "AXES",
    "PHASES",
    "term",
    "instance_time",
    "instance_nic_bytes",
    "comm_time",
    "nic_bytes",
    "group_placement",
    "scaled",
]

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")
AXES = ("tp", "cp", "ep", "dp", "pp")
PHASES = ("forward", "backward", "recompute", "step")
_TERM = {"tp": "tp_comm", "cp": "cp_comm", "ep": "ep_comm", "dp": "dp_comm"}
_TERM["pp"] = "pp_p2p"


def _optional_float(x):
    return None if x is None else as_float(x)


class Collective(eqx.Module):
    """One collective (or send) that every rank of a group issues `count` times.

    Fields and units: module docstring.
    """

    kind: str = eqx.field(static=True)
    axis: str = eqx.field(static=True)
    phase: str = eqx.field(static=True)
    nbytes: Array = eqx.field(converter=as_float)
    group: Array = eqx.field(converter=as_float)
    stride: Array = eqx.field(converter=as_float)
    count: Array = eqx.field(converter=as_float)
    overlap: Array = eqx.field(converter=as_float, default=0.0)
    fanout: Array | None = eqx.field(converter=_optional_float, default=None)

    def __check_init__(self):
        for name, allowed in (("kind", KINDS), ("axis", AXES), ("phase", PHASES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"Collective({name}={value!r}) must be one of {', '.join(allowed)}"
                )
        if self.fanout is not None and self.kind != "all_to_all":
            raise ValueError(
                f"Collective(fanout=...) is for all_to_all only, not kind={self.kind!r}"
            )


def term(record: Collective) -> str:
    """The Breakdown term its exposed time belongs to (module docstring)."""
    return "recompute" if record.phase == "recompute" else _TERM[record.axis]


def instance_time(
    cluster: Cluster, record: Collective, *, relax: AbstractRelax
) -> Array:
    """Seconds of one instance: the closed form of its kind (`collectives.py`)."""
    r = record
    if r.kind == "p2p":
        return p2p_time(cluster, r.nbytes, r.stride, relax=relax)
    if r.fanout is not None:
        k = r.fanout
        return dispatch_time(cluster, r.nbytes, k, r.group, r.stride, relax=relax)
    return collective_time(cluster, r.kind, r.nbytes, r.group, r.stride, relax=relax)


def instance_nic_bytes(
    cluster: Cluster, record: Collective, *, relax: AbstractRelax
) -> Array:
    """Bytes one chip sends over its NICs in one instance [B] (`scale_out_bytes`...)."""
    r = record
    if r.kind == "p2p":
        return p2p_scale_out_bytes(cluster, r.nbytes, r.stride, relax=relax)
    if r.fanout is not None:
        return dispatch_scale_out_bytes(
            cluster, r.nbytes, r.fanout, r.group, r.stride, relax=relax
        )
    return scale_out_bytes(cluster, r.kind, r.nbytes, r.group, r.stride, relax=relax)


def comm_time(cluster: Cluster, records, *, relax: AbstractRelax) -> Array:
    """T = Σ count · instance_time over `records` (one record or a list) [s]."""
    if isinstance(records, Collective):
        records = [records]
    total = as_float(0.0)
    for r in records:
        total = total + r.count * instance_time(cluster, r, relax=relax)
    return total


def nic_bytes(cluster: Cluster, records, *, relax: AbstractRelax) -> Array:
    """N = Σ count · instance_nic_bytes over `records` [B per chip]."""
    if isinstance(records, Collective):
        records = [records]
    total = as_float(0.0)
    for r in records:
        total = total + r.count * instance_nic_bytes(cluster, r, relax=relax)
    return total


def group_placement(
    cluster: Cluster, record: Collective, *, relax: AbstractRelax
) -> tuple[Array, Array]:
    """(n_in, n_out): the group's members in one scale-up domain, and its domains.

    A send (p2p) is a group of two ranks `stride` apart: (2, 1) when the peer shares
    the domain, (1, 2) when the message leaves it (blended as `p2p_time` blends).
    """
    if record.kind == "p2p":
        leaves = p2p_scale_out_bytes(cluster, 1.0, record.stride, relax=relax)
        return 2.0 - leaves, 1.0 + leaves
    return placement(cluster, record.group, record.stride, relax=relax)


def scaled(records, factor) -> list[Collective]:
    """The records with their counts times `factor` (e.g. layers × microbatches)."""
    return [eqx.tree_at(lambda r: r.count, r, r.count * factor) for r in records]
