"""What a hardware name adds to its spec: a TPU slice's ICI domain, a power cap.

`tpu_slice(cluster, chips)` cuts a pod spec (`tpu_v5p_pod`, ...) down to one slice: a
slice is its own ICI domain (scale-up tier) and slices talk over the data-center
network (scale-out), so a multi-slice job's data-parallel axis crosses DCN. The slice
shape is the most cubic factorization of `chips` into the pod's dimensions (4x4x4 for
v4-128 / v5p-128, 16x16 for v5e-256); an axis keeps the pod's wraparound bandwidth
(two links) when it has wraparound (3D tori: an axis that is a multiple of 4, which
the optical switches close into a ring; 2D tori: a full axis of the pod) and one
link's bandwidth otherwise (Google Cloud TPU docs, "TPU v4" and "TPU v5p" topologies;
the scaling book, "TPUs").

`power_cap(cluster, watts)` records a power limit below the chip's TDP as its power
(`Chip.power`: what energy and cost use). The model has no clock/voltage curve, so
the compute peaks stay at their datasheet values; a cap above the TDP is an error
(that would be a different product, e.g. B200 at 1200 W is the GB200's B200).
"""

import dataclasses
import itertools
import math

import equinox as eqx

from ..specs.hardware import Cluster, Dimension

__all__ = ["tpu_slice", "power_cap", "slice_shape"]


def slice_shape(chips: int, limits: list[int]) -> list[int]:
    """The most cubic factorization of `chips` into len(limits) axes within limits.

    3D tori (v4, v5p) of 64 chips or more are built of 4x4x4 cubes, so every axis is
    then a multiple of 4 (v4-384: 4x4x12).

    Raises:
        ValueError: `chips` does not fit the pod's axes.
    """
    best = None
    cubes = len(limits) >= 3 and chips >= 64 and chips % 64 == 0
    divisors = [
        d for d in range(1, chips + 1) if chips % d == 0 and (not cubes or d % 4 == 0)
    ]
    for combo in itertools.product(divisors, repeat=len(limits)):
        if math.prod(combo) != chips or any(
            c > lim for c, lim in zip(combo, limits, strict=True)
        ):
            continue
        spread = max(combo) / min(combo)
        key = (spread, [-c for c in combo])
        if best is None or key < best[0]:
            best = (key, list(combo))
    if best is None:
        raise ValueError(
            f"a slice of {chips} chips does not fit the pod's "
            f"{'x'.join(str(v) for v in limits)} torus"
        )
    return sorted(best[1])


def tpu_slice(cluster: Cluster, chips: int) -> Cluster:
    """The cluster with its ICI domain cut to a slice of `chips` (module docstring).

    Raises:
        ValueError: the spec has no per-axis ICI dims, or the slice does not fit.
    """
    up = cluster.scale_up
    if not up.dims:
        raise ValueError(f"{cluster.name}: no torus dims to cut a {chips}-chip slice")
    pod = [round(float(d.size)) for d in up.dims]
    if chips > math.prod(pod):
        raise ValueError(
            f"{cluster.name}: a slice of {chips} chips exceeds the pod "
            f"({math.prod(pod)} chips)"
        )
    shape = slice_shape(chips, pod)
    three_d = len(pod) >= 3
    dims = []
    for d, full, e in zip(up.dims, pod, shape, strict=True):
        wrap = (e % 4 == 0) if three_d else (e == full)
        bandwidth = d.bandwidth if wrap else d.bandwidth / 2.0
        dims.append(Dimension(float(e), bandwidth, d.latency, d.topology))
    new_up = dataclasses.replace(up, size=float(chips), dims=tuple(dims))
    return dataclasses.replace(cluster, scale_up=new_up)


def power_cap(cluster: Cluster, watts: float) -> Cluster:
    """The cluster with its chip capped at `watts` (module docstring).

    Raises:
        ValueError: `watts` is above the chip's TDP.
    """
    tdp = float(cluster.chip.power)
    if watts > tdp * 1.01:
        raise ValueError(
            f"power {watts:g} W exceeds {cluster.name}'s TDP {tdp:g} W (a power cap "
            "must be at or below it; a higher-power part is a different spec)"
        )
    if watts >= tdp * 0.99:
        return cluster
    return eqx.tree_at(lambda c: c.chip.power, cluster, cluster.chip.power * 0 + watts)
