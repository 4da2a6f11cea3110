"""Hierarchical alpha-beta costs of collectives placed on the network tiers.

A group of n ranks whose consecutive members are `stride` ranks apart (the product of
the degrees of the axes inside it) has n_in = clip(size_up / stride, 1, n) members in
one scale-up domain and n_out = n / n_in domains. Collectives run hierarchically (as
NCCL's NVLS/tree and the scaling book's multi-tier analysis do): the scale-up part on
the full buffer, the scale-out part on 1/n_in of it, over each chip's share of the
node's NICs.

For a buffer of S bytes (the full, gathered size) and ring algorithms, per tier with
n ranks, bandwidth W·η and latency α (Thakur et al. 2005; Chan et al. 2007):

    all-gather = reduce-scatter = (n − 1)·α + (n − 1)/n · S / (W·η)       [s]
    all-reduce = 2 · reduce-scatter                                       [s]
    all-to-all (S bytes sent per rank) = (n − 1)·α + (n − 1)/n · S / (W·η) [s]
    send/recv = α + S / (W·η)                                             [s]

Hierarchical: RS(S) = RS_up(S, n_in) + RS_out(S / n_in, n_out), AG likewise;
all-to-all splits its bytes between tiers by the fraction of peers in the domain and the
tiers run concurrently (max).
"""

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array

from ._hardware import Cluster
from ._relax import AbstractRelax, as_float

__all__ = ["collective_time", "p2p_time", "ranks_in_domain", "dispatch_time"]

Kind = Literal["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]


def ranks_in_domain(cluster: Cluster, n, stride, *, relax: AbstractRelax) -> Array:
    """n_in = clip(size_up / stride, 1, n): members of an n-rank group in one domain."""
    return relax.clip(cluster.scale_up.size / as_float(stride), 1.0, n)


def _ring(nbytes, n, bandwidth, latency) -> Array:
    """(n − 1)·α + (n − 1)/n · S / W  [s]; zero when n = 1."""
    return (n - 1.0) * latency + (n - 1.0) / n * nbytes / bandwidth


def collective_time(
    cluster: Cluster,
    kind: Kind,
    nbytes,
    n,
    stride,
    *,
    relax: AbstractRelax,
) -> Array:
    """Time of one collective over an n-rank group with the given rank stride [s].

    Args:
        cluster: the hardware.
        kind: all_gather | reduce_scatter | all_reduce | all_to_all.
        nbytes: S, the full (gathered / reduced) buffer size per rank [B]; for
            all_to_all, the bytes each rank sends in total.
        n: group size (float, ≥ 1).
        stride: rank distance between consecutive group members (float, ≥ 1).
        relax: Exact() or Smooth(p).

    Returns:
        Seconds; exactly 0 when n = 1.
    """
    nbytes, n = as_float(nbytes), as_float(n)
    up, out = cluster.scale_up, cluster.scale_out
    w_up = up.bandwidth * up.efficiency
    w_out = cluster.scale_out_bandwidth() * out.efficiency
    n_in = ranks_in_domain(cluster, n, stride, relax=relax)
    n_out = n / n_in
    if kind == "all_to_all":
        # Peers inside the domain receive (n_in − 1)/n of the bytes; the rest leaves.
        t_up = (n_in - 1.0) * up.latency + (n_in - 1.0) / n * nbytes / w_up
        t_out = (n - n_in) * out.latency / n_in + (n - n_in) / n * nbytes / w_out
        return relax.max(t_up, t_out)
    rs = _ring(nbytes, n_in, w_up, up.latency) + _ring(
        nbytes / n_in, n_out, w_out, out.latency
    )
    if kind in ("all_gather", "reduce_scatter"):
        return rs
    if kind == "all_reduce":
        return 2.0 * rs
    raise ValueError(f"collective kind={kind!r} must be one of {Kind.__args__}")


def p2p_time(cluster: Cluster, nbytes, stride, *, relax: AbstractRelax) -> Array:
    """Send/recv of S bytes to a rank `stride` away: α + S/(W·η) on the tier it crosses.

    The tier is scale-up when stride < size_up (the neighbour shares the domain), else
    scale-out; `relax.step` blends the two smoothly (offset by half a rank so that a tie
    stride = size_up is clearly outside).
    """
    up, out = cluster.scale_up, cluster.scale_out
    t_up = up.latency + nbytes / (up.bandwidth * up.efficiency)
    t_out = out.latency + nbytes / (cluster.scale_out_bandwidth() * out.efficiency)
    inside = relax.step(up.size - as_float(stride) - 0.5, scale=1.0)
    return inside * t_up + (1.0 - inside) * t_out


def dispatch_time(cluster: Cluster, token_bytes, k, n, stride, *, relax: AbstractRelax):
    """MoE token dispatch (or combine) over an n-rank expert-parallel group [s].

    Each of a rank's tokens (token_bytes in all) goes to k experts spread evenly over
    the n ranks, n_in of them in this scale-up domain and n_out = n/n_in domains in all.
    Hierarchical dispatch (DeepEP / Megatron's flex dispatcher) sends a token once to
    each distinct remote domain and fans it out there over the scale-up tier:
        inter = S · (n_out − 1) · (1 − (1 − 1/n_out)^k)          [B over the NICs]
        intra = S · k · (n − 1)/n                                [B over NVLink / ICI]
        T = max(intra / W_up + (n_in − 1)·α_up, inter / W_out + (n_out − 1)·α_out)
    (the expected number of distinct remote domains among k uniform picks is
    (n_out − 1)·(1 − (1 − 1/n_out)^k)). With n_out = 1 it is a flat all-to-all.
    """
    token_bytes, n, k = as_float(token_bytes), as_float(n), as_float(k)
    up, out = cluster.scale_up, cluster.scale_out
    n_in = ranks_in_domain(cluster, n, stride, relax=relax)
    n_out = jnp.maximum(n / n_in, 1.0)  # the smooth clip may overshoot n by rounding
    intra = token_bytes * k * (n - 1.0) / n
    miss = 1.0 - 1.0 / n_out  # P(a pick is not a given remote domain), 0 at n_out = 1
    safe = jnp.where(miss > 0, miss, 1.0)  # double where: 0**k has a NaN gradient
    none = jnp.where(miss > 0, safe**k, jnp.where(k > 0, 0.0, 1.0))
    inter = token_bytes * (n_out - 1.0) * (1.0 - none)
    t_up = intra / (up.bandwidth * up.efficiency) + (n_in - 1.0) * up.latency
    t_out = inter / (cluster.scale_out_bandwidth() * out.efficiency)
    t_out = t_out + (n_out - 1.0) * out.latency
    return relax.max(t_up, t_out)
