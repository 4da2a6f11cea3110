"""Topology-aware alpha-beta costs of collectives placed on the network tiers.

A group of n ranks whose consecutive members are `stride` ranks apart (the product of
the degrees of the axes inside it) has n_in = clip(size_up / stride, 1, n) members in
one scale-up domain and n_out = n / n_in domains. Collectives run hierarchically (as
NCCL's NVLS/tree and the scaling book's multi-tier analysis do): the scale-up part on
the full buffer, the scale-out part on 1/n_in of it, over each chip's share of the
node's NICs (`Cluster.scale_out_bandwidth`, capped by PCIe).

Each tier is a product of dimensions (`NetworkTier.dimensions`, innermost first); the
group spans e_i chips of dimension i (∏ e_i = n_in), found from the stride. Per
dimension of e chips, bandwidth W·η and latency α, for a buffer of S bytes (the full,
gathered size; for all-to-all the bytes each rank sends in total):

| dimension | reduce-scatter = all-gather | all-to-all |
|---|---|---|
| ring (torus axis) | (e − 1)·α + (e − 1)/e·S/W | min(e − 1, e/2)·α + g·S/W |
| switch | (e − 1)·α + (e − 1)/e·S/W | min(e − 1, 1)·α + (e − 1)/e·S/W |
| full mesh | min(e − 1, 1)·α + (e − 1)/e·S/W | min(e − 1, 1)·α + (e − 1)/e·S/W |

Ring reduce-scatter / all-gather are Thakur et al. 2005 (IJHPCA 19(1)) and Chan et al.
2007. All-to-all through a non-blocking switch or a full mesh is direct: every rank
posts its e − 1 sends at once (NCCL grouped send/recv, DeepEP), so it pays one α, not
the e − 1 steps of Thakur's single-port pairwise exchange; a bidirectional ring of e
chips with W per direction summed over its two links runs the ring algorithm on half
the data each way, the same (e − 1)/e·S/W. Direct all-to-all on a ring sends S/e to
every peer over min(j, e − j) hops: S·⌊e²/4⌋ hop-bytes per chip over 2e directed
links of W/2 gives g = e/4 for even e (the scaling book, "All-to-all on a ring");
the code uses g = (e − 1)/e · max(1, e²/(4·max(e − 1, 1))), exact for even e and
e ≤ 3.

Several dimensions (a 2D/3D torus) run the bucket algorithm (Chan et al. 2007): a
reduce-scatter along dim 1, then along dim 2 on 1/e_1 of the data, and so on. With k
dims, k buckets in rotated dimension orders each take S/k, so every dimension's links
work at once (scaling book, "multi-axis collectives"):
    T = Σ_i lat_i + max_i Σ_r (e_i − 1)/e_i · (S/k) / prefix_r(i) / W_i         [s]
where prefix_r(i) is the product of the extents before i in rotation r. All-to-all
routes dimension by dimension: T = Σ_i lat_i + max_i g_i·S_dom/W_i with S_dom the
bytes bound for the domain.

Across tiers: RS(S) = RS_up(S) + RS_out(S/n_in), AG likewise; all-reduce =
RS_up + AR_out(S/n_in) + AG_up, where a switched scale-out tier picks the faster of
two ring passes and the double binary tree (NCCL's tree; Sanders et al. 2009):
    AR_tree = 2·log2(n_out)·α + 2·S/W                                          [s]
and a scale-up switch with in-network reduction (NVLS; NCCL docs) takes one latency step
per reduce-scatter / all-gather and, for the all-reduce inside it, the faster of the
ring and AR_nvls = 2·α + (n_in − 1)/n_in·S/W (each byte crosses a link once each way).
All-to-all splits its bytes between tiers by the fraction of peers in the domain and
the tiers run concurrently (max); the scale-out part of all-to-all traffic pays the
fat-tree taper: W_out / (1 + (o − 1)·relu(1 − leaf / n_out)).
Send/recv = α + S/(W·η) on the tier it crosses.

`scale_out_bytes`, `p2p_scale_out_bytes` and `dispatch_scale_out_bytes` give the bytes
a chip sends over its NICs for the same operations (the NIC demand of a mapping).
"""

from typing import Literal, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from ..core.checks import concrete
from ..core.relax import AbstractRelax, as_float
from ..specs.hardware import Cluster, NetworkTier

__all__ = [
    "collective_time",
    "p2p_time",
    "ranks_in_domain",
    "placement",
    "dispatch_time",
    "scale_out_bytes",
    "p2p_scale_out_bytes",
    "dispatch_scale_out_bytes",
]

Kind = Literal["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]
KINDS = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all")


TIE_SCALE = 0.1
"""Ranks over which `ranks_in_domain` bends under `Smooth` (see there)."""


def ranks_in_domain(cluster: Cluster, n, stride, *, relax: AbstractRelax) -> Array:
    """n_in = clip(size_up / stride, 1, n): members of an n-rank group in one domain.

    Written as n − relu(n − r) and 1 + relu(· − 1) with a bend of `TIE_SCALE` ranks,
    not as a scale-free p-norm min: the tie r = n is the common case (TP 8 on an 8-GPU
    domain), where the p-norm min gives n·2^(−1/p) and Smooth(16) would send 4% of
    the group's bytes over the NICs (n_out = 1.044); the relu misses by
    TIE_SCALE·ln 2/p ranks there (0.004 at p = 16). Exact is unchanged.
    """
    r = cluster.scale_up.size / as_float(stride)
    inside = n - relax.relu(n - r, scale=TIE_SCALE)
    return 1.0 + relax.relu(inside - 1.0, scale=TIE_SCALE)


def _extents(tier: NetworkTier, n, stride, relax: AbstractRelax) -> list:
    """e_i: members of a group of n (stride apart) along each dimension of the tier.

    e_i = max(min(P_(i+1), stride·n) / max(P_i, stride), 1) with P_i the product of the
    sizes of the dims before i; ∏ e_i = n when stride and n align with the dims.
    """
    if not tier.dims:
        return [as_float(n)]
    out, prefix = [], as_float(1.0)
    top = as_float(stride) * n
    for d in tier.dims:
        lo = relax.max(prefix, stride)
        out.append(relax.max(relax.min(prefix * d.size, top) / lo, 1.0))
        prefix = prefix * d.size
    return out


class _Dim(NamedTuple):
    size: Array
    bandwidth: Array
    latency: Array
    topology: str
    nvls: bool  # the dimension's switch reduces in the network


def _dims(tier: NetworkTier) -> list[_Dim]:
    """The tier's dimensions (`NetworkTier.dimensions`, without building modules)."""
    nvls = tier.in_network_reduction
    if tier.dims:
        return [
            _Dim(
                d.size,
                d.bandwidth,
                d.latency,
                d.topology,
                nvls and d.topology == "switch",
            )
            for d in tier.dims
        ]
    topo = "ring" if tier.topology == "torus" else tier.topology
    return [
        _Dim(tier.size, tier.bandwidth, tier.latency, topo, nvls and topo == "switch")
    ]


def _max_all(values, relax: AbstractRelax) -> Array:
    out = values[0]
    for v in values[1:]:
        out = relax.max(out, v)
    return out


def _hops(dim, e, relax: AbstractRelax):
    """(latency steps of RS/AG, of all-to-all, all-to-all hop factor) of one dim."""
    if dim.topology in ("full_mesh", "switch"):
        one = relax.min(e - 1.0, 1.0)  # all peers at once (direct all-to-all)
        direct = dim.topology == "full_mesh" or dim.nvls
        return (one if direct else e - 1.0), one, 1.0
    far = relax.min(e - 1.0, e / 2.0)  # ring: the farthest peer is e/2 hops away
    return e - 1.0, far, relax.max(1.0, e * e / (4.0 * relax.max(e - 1.0, 1.0)))


def _tier_time(tier, kind, nbytes, n, stride, share, relax, taper=1.0) -> Array:
    """RS/AG or all-to-all over one tier (module docstring table and bucket rule).

    `share` scales every dimension's bandwidth (a chip's share of the NICs per NIC);
    `taper` divides the all-to-all bandwidth (fat-tree oversubscription).
    """
    dims = _dims(tier)
    e = _extents(tier, n, stride, relax)
    eta = tier.efficiency * share
    hops = [_hops(d, x, relax) for d, x in zip(dims, e, strict=True)]
    if kind == "all_to_all":
        lat = sum(h[1] * d.latency for d, h in zip(dims, hops, strict=True))
        bw = [
            (x - 1.0) / x * h[2] * nbytes * taper / (d.bandwidth * eta)
            for d, x, h in zip(dims, e, hops, strict=True)
        ]
        return lat + _max_all(bw, relax)
    lat = sum(h[0] * d.latency for d, h in zip(dims, hops, strict=True))
    k = len(dims)
    bw = []
    for i, (d, x) in enumerate(zip(dims, e, strict=True)):
        load = 0.0
        for r in range(k):  # rotation r starts at dim r
            order = [(r + j) % k for j in range(k)]
            prefix = 1.0
            for j in order[: order.index(i)]:
                prefix = prefix * e[j]
            load = load + (x - 1.0) / x * nbytes / k / prefix
        bw.append(load / (d.bandwidth * eta))
    return lat + _max_all(bw, relax)


def _out_share(cluster: Cluster, relax: AbstractRelax) -> Array:
    """A chip's scale-out bandwidth per unit of the tier's (per-NIC) bandwidth."""
    return cluster.scale_out_bandwidth(relax) / cluster.scale_out.bandwidth


def _taper(tier: NetworkTier, n_out, relax: AbstractRelax) -> Array:
    """1 + (o − 1)·relu(1 − leaf / n_out): slowdown of all-to-all across leaves."""
    if concrete(tier.oversubscription) == 1.0:  # full bisection: no taper
        return 1.0
    beyond = relax.relu(1.0 - tier.leaf_size / n_out, scale=1.0)
    return 1.0 + (tier.oversubscription - 1.0) * beyond


def _split(cluster: Cluster, n, stride, relax: AbstractRelax):
    """(n_in, n_out, stride of the group in units of domains)."""
    n_in = ranks_in_domain(cluster, n, stride, relax=relax)
    stride_out = relax.max(as_float(stride) / cluster.scale_up.size, 1.0)
    n_out = jnp.maximum(n / n_in, 1.0)  # the smooth clip may overshoot n by rounding
    return n_in, n_out, stride_out


def placement(cluster: Cluster, n, stride, *, relax: AbstractRelax):
    """(n_in, n_out): an n-rank group's members in one scale-up domain, and its domains.

    n_in = clip(size_up / stride, 1, n), n_out = n / n_in (what every closed form here
    splits between the scale-up and the scale-out tier).
    """
    n_in, n_out, _ = _split(cluster, as_float(n), stride, relax)
    return n_in, n_out


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

    Formulas and sources: module docstring (per-dimension closed forms, bucket
    algorithm over several dimensions, hierarchy across tiers, tree on scale-out).

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
    if kind not in KINDS:
        raise ValueError(f"collective kind={kind!r} must be one of {', '.join(KINDS)}")
    nbytes, n = as_float(nbytes), as_float(n)
    up, out = cluster.scale_up, cluster.scale_out
    n_in, n_out, s_out = _split(cluster, n, stride, relax)
    share = _out_share(cluster, relax)
    if kind == "all_to_all":
        # Peers inside the domain receive (n_in − 1)/n of the bytes; the rest leaves.
        t_up = _tier_time(up, kind, nbytes * n_in / n, n_in, stride, 1.0, relax)
        t_out = _tier_time(
            out, kind, nbytes, n_out, s_out, share, relax, _taper(out, n_out, relax)
        )
        return relax.max(t_up, t_out)
    rs_up = _tier_time(up, "reduce_scatter", nbytes, n_in, stride, 1.0, relax)
    rs_out = _tier_time(
        out, "reduce_scatter", nbytes / n_in, n_out, s_out, share, relax
    )
    if kind in ("all_gather", "reduce_scatter"):
        return rs_up + rs_out
    ar_up = 2.0 * rs_up
    if up.in_network_reduction and up.topology == "switch" and not up.dims:
        w = up.bandwidth * up.efficiency  # NVLS: each byte in once, reduced, out once
        one = relax.min(n_in - 1.0, 1.0)
        nvls = one * 2.0 * up.latency + (n_in - 1.0) / n_in * nbytes / w
        # only a whole all-reduce inside the domain (n_out = 1); across domains the
        # hierarchy needs the reduce-scattered shards: ring cost (+ (n_out − 1)·ar_up)
        ar_up = relax.min(ar_up, nvls + (n_out - 1.0) * ar_up)
    ar_out = 2.0 * rs_out
    if out.topology == "switch" and not out.dims:
        w = cluster.scale_out_bandwidth(relax) * out.efficiency
        tree = 2.0 * jnp.log2(n_out) * out.latency + 2.0 * nbytes / n_in / w
        ar_out = relax.min(ar_out, tree)
    return ar_up + ar_out


def scale_out_bytes(
    cluster: Cluster, kind: Kind, nbytes, n, stride, *, relax: AbstractRelax
) -> Array:
    """Bytes one chip sends over its NICs for `collective_time`'s collective [B].

    RS = AG: (n_out − 1)/n_out · S/n_in;   AR: twice that;
    all-to-all: (n − n_in)/n · S;   0 when the group fits in one domain.
    """
    if kind not in KINDS:
        raise ValueError(f"collective kind={kind!r} must be one of {', '.join(KINDS)}")
    nbytes, n = as_float(nbytes), as_float(n)
    n_in, n_out, _ = _split(cluster, n, stride, relax)
    if kind == "all_to_all":
        return (n - n_in) / n * nbytes
    ring = (n_out - 1.0) / n_out * nbytes / n_in
    return 2.0 * ring if kind == "all_reduce" else ring


def _inside(cluster: Cluster, stride, relax: AbstractRelax) -> Array:
    """1 when a rank `stride` away shares the domain (offset by half a rank)."""
    return relax.step(cluster.scale_up.size - as_float(stride) - 0.5, scale=1.0)


def p2p_time(cluster: Cluster, nbytes, stride, *, relax: AbstractRelax) -> Array:
    """Send/recv of S bytes to a rank `stride` away: α + S/(W·η) on the tier it crosses.

    The tier is scale-up when stride < size_up (the neighbour shares the domain), else
    scale-out; `relax.step` blends the two smoothly (offset by half a rank so that a tie
    stride = size_up is clearly outside). On a multi-dimensional tier the send uses the
    links of the dimension the stride lands in: W = max(Σ_i (e_i − 1)·W_i, min_i W_i)
    with e_i the extents of a two-rank group.
    """
    up, out = cluster.scale_up, cluster.scale_out
    w_up = up.bandwidth
    if up.dims:
        e = _extents(up, 2.0, stride, relax)
        used = sum((x - 1.0) * d.bandwidth for d, x in zip(up.dims, e, strict=True))
        floor = up.dims[0].bandwidth
        for d in up.dims[1:]:
            floor = relax.min(floor, d.bandwidth)
        w_up = relax.max(used, floor)
    t_up = up.latency + nbytes / (w_up * up.efficiency)
    t_out = out.latency + nbytes / (cluster.scale_out_bandwidth(relax) * out.efficiency)
    inside = _inside(cluster, stride, relax)
    return inside * t_up + (1.0 - inside) * t_out


def p2p_scale_out_bytes(
    cluster: Cluster, nbytes, stride, *, relax: AbstractRelax
) -> Array:
    """Bytes one chip sends over its NICs for `p2p_time`'s send: S when it leaves."""
    return (1.0 - _inside(cluster, stride, relax)) * as_float(nbytes)


def _dispatch_bytes(cluster: Cluster, token_bytes, k, n, stride, relax):
    """(intra, inter, n_in, n_out, stride_out) of a hierarchical MoE dispatch."""
    token_bytes, n, k = as_float(token_bytes), as_float(n), as_float(k)
    n_in, n_out, s_out = _split(cluster, n, stride, relax)
    intra = token_bytes * k * (n - 1.0) / n
    miss = 1.0 - 1.0 / n_out  # P(a pick is not a given remote domain), 0 at n_out = 1
    safe = jnp.where(miss > 0, miss, 1.0)  # double where: 0**k has a NaN gradient
    none = jnp.where(miss > 0, safe**k, jnp.where(k > 0, 0.0, 1.0))
    inter = token_bytes * (n_out - 1.0) * (1.0 - none)
    return intra, inter, n_in, n_out, s_out


def dispatch_time(cluster: Cluster, token_bytes, k, n, stride, *, relax: AbstractRelax):
    """MoE token dispatch (or combine) over an n-rank expert-parallel group [s].

    Each of a rank's tokens (token_bytes in all) goes to k experts spread evenly over
    the n ranks, n_in of them in this scale-up domain and n_out = n/n_in domains in all.
    Hierarchical dispatch (DeepEP / Megatron's flex dispatcher) sends a token once to
    each distinct remote domain and fans it out there over the scale-up tier:
        inter = S · (n_out − 1) · (1 − (1 − 1/n_out)^k)          [B over the NICs]
        intra = S · k · (n − 1)/n                                [B over NVLink / ICI]
        T = max(Σ lat_up + max_i h_i·intra / W_up,i,
                inter·taper / W_out + min(n_out − 1, 1)·α_out)
    (the expected number of distinct remote domains among k uniform picks is
    (n_out − 1)·(1 − (1 − 1/n_out)^k)); h_i is the all-to-all hop factor of a ring
    dimension (1 on a switch or full mesh; module docstring) and lat_up the tier's
    all-to-all latency. With n_out = 1 it is a flat all-to-all.
    """
    intra, inter, n_in, n_out, _ = _dispatch_bytes(
        cluster, token_bytes, k, n, stride, relax
    )
    up, out = cluster.scale_up, cluster.scale_out
    dims = _dims(up)
    e = _extents(up, n_in, stride, relax)
    hops = [_hops(d, x, relax) for d, x in zip(dims, e, strict=True)]
    lat = sum(h[1] * d.latency for d, h in zip(dims, hops, strict=True))
    bw = [
        h[2] * intra / (d.bandwidth * up.efficiency)
        for d, h in zip(dims, hops, strict=True)
    ]
    t_up = _max_all(bw, relax) + lat
    w_out = cluster.scale_out_bandwidth(relax) * out.efficiency
    t_out = inter * _taper(out, n_out, relax) / w_out
    t_out = t_out + relax.min(n_out - 1.0, 1.0) * out.latency
    return relax.max(t_up, t_out)


def dispatch_scale_out_bytes(
    cluster: Cluster, token_bytes, k, n, stride, *, relax: AbstractRelax
) -> Array:
    """Bytes one chip sends over its NICs for one `dispatch_time` dispatch [B]."""
    return _dispatch_bytes(cluster, token_bytes, k, n, stride, relax)[1]
