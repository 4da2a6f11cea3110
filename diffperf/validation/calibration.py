"""Measured rows ready for `dp.calibrate`: resolution, grouping, default leaves, priors.

What `diffperf calibrate` and the calibration studies (experiments/calibrate_*) share:
a CSV's rows resolved to `Row`s, grouped by device, the leaves fitted by default and
their priors.
"""

from .. import io
from ..analysis.calibrate import (
    PRIORS,
    SERVE_LEAVES,
    TRAIN_LEAVES,
    Prior,
    Row,
    prior_for,
)
from ..analysis.hierarchy import RowLevels
from ..specs.hardware import Cluster
from .serving import calibration_infer_rows
from .training import calibration_rows, spec_family

__all__ = [
    "MIN_ROWS_FOR_ALL",
    "measured_rows",
    "rows_by_device",
    "default_leaves",
    "leaf_priors",
    "hierarchy_levels",
    "hierarchy_priors",
    "HIERARCHY_HARDWARE",
    "HIERARCHY_STACK",
    "HIERARCHY_SERVE_STACK",
]

MIN_ROWS_FOR_ALL = 20
"""Fewer training rows than this: fit `chip.matmul_efficiency` only."""


def measured_rows(
    kind: str, rows: list[dict]
) -> tuple[list[Row], list[int], dict[int, str]]:
    """(resolved `Row`s, their CSV row indices, reasons of the others).

    Args:
        kind: "training" or "inference" (`read_measurements` tells which).
        rows: the CSV's rows as dicts.
    """
    if kind not in ("training", "inference"):
        raise ValueError(f"kind={kind!r} must be 'training' or 'inference'")
    resolve = calibration_rows if kind == "training" else calibration_infer_rows
    fitted, skipped = resolve(rows)
    index = [i for i in range(len(rows)) if i not in skipped]
    return fitted, index, skipped


def rows_by_device(rows: list[Row], *, by_family: bool) -> dict[str, list[int]]:
    """Indices of `rows` per device: the root chip spec (by_family) or the spec.

    With `by_family`, rows of a system that extends a chip file (dgx_a100_40gb →
    a100_sxm4_40gb) count for that chip.
    """
    out: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        out.setdefault(spec_family(r.spec)[-1] if by_family else r.spec, []).append(k)
    return dict(sorted(out.items()))


def default_leaves(kind: str, rows: list[Row]) -> list[str]:
    """The leaves fitted when none are named.

    Training: `TRAIN_LEAVES` with at least `MIN_ROWS_FOR_ALL` rows, else the matmul
    efficiency alone. Serving: `SERVE_LEAVES`, without the CPU launch cost when every
    row replays captured graphs (the launch cost is hidden in all of them).
    """
    if kind == "training":
        return (
            list(TRAIN_LEAVES) if len(rows) >= MIN_ROWS_FOR_ALL else [TRAIN_LEAVES[0]]
        )
    if all(r.job[1].graphs for r in rows):  # launch cost hidden in every row
        return [p for p in SERVE_LEAVES if p != "host.dispatch_overhead"]
    return list(SERVE_LEAVES)


def leaf_priors(
    kind: str, paths: list[str], cluster: Cluster, *, center: str
) -> dict[str, Prior]:
    """Priors of the fitted leaves; serving fits start the CPU launch cost at 30 µs.

    A launch cost hidden behind the GPU has no gradient, so the serving fit starts it
    where it binds. `center` is
    "defaults" (project defaults) or "spec" (the spec's values), as in `prior_for`.
    """
    priors = {p: prior_for(p, cluster, center=center) for p in paths}
    p = priors.get("host.dispatch_overhead")
    if kind == "inference" and p is not None:
        # a Python engine's per-op host path (2023 vLLM: scheduler, sampler and
        # eager PyTorch launches) can reach 100-200 µs per op, above the box of a
        # training framework's C++ launch path
        priors["host.dispatch_overhead"] = p._replace(
            start=max(p.center, 3e-5), upper=max(p.upper, 2e-4)
        )
    return priors


HIERARCHY_HARDWARE = (
    "chip.matmul_efficiency",
    "chip.matmul_half_dim",
    "chip.attention_efficiency",
    "scale_out.efficiency",
)
"""Hardware leaves of the hierarchical training fit (global, family, device levels)."""
HIERARCHY_STACK = (
    "chip.kernel_overhead",
    "host.dispatch_overhead",
    "host.sync_overhead",
    "host.step_overhead",
    "host.moe_host_ops",
)
"""Software leaves of the hierarchical training fit (global, stack levels).
`host.moe_host_ops` sets the host's issue time of an MoE block after its dispatch
sync (`model.train.moe_sync`), exposed where it exceeds the block's GPU time."""
HIERARCHY_SERVE_STACK = ("host.serve_overhead", "host.dispatch_overhead")
"""Software leaves of the hierarchical serving fit (chip leaves come from training)."""


def hierarchy_levels(rows: list[Row]) -> list[RowLevels]:
    """Where each row sits: its chip's family chain, the chip, its stack.

    Systems count for the chip they extend (dgx_a100_40gb → a100_sxm4_40gb); a row
    without a stack runs its chip's default training stack.
    """
    out = []
    for r in rows:
        device = spec_family(r.spec)[-1]
        stack = r.stack or io.default_stack(device) or "generic"
        out.append(RowLevels(tuple(io.family_chain(device)), device, stack))
    return out


def hierarchy_priors(paths, kind: str = "training") -> dict[str, Prior]:
    """Global priors of the hierarchical fit: the project defaults (`PRIORS`).

    Serving fits start the CPU launch cost at 30 µs, where it binds (as
    `leaf_priors` does: a launch cost hidden behind the GPU has no gradient), in a box
    up to 200 µs per op.
    """
    missing = [p for p in paths if p not in PRIORS]
    if missing:
        raise ValueError(
            f"no default prior for {', '.join(missing)}; allowed: {', '.join(PRIORS)}"
        )
    priors = {p: PRIORS[p] for p in paths}
    p = priors.get("host.dispatch_overhead")
    if kind == "inference" and p is not None:
        # a Python engine's per-op host path (2023 vLLM: scheduler, sampler and
        # eager PyTorch launches) can reach 100-200 µs per op, above the box of a
        # training framework's C++ launch path
        priors["host.dispatch_overhead"] = p._replace(
            start=max(p.center, 3e-5), upper=max(p.upper, 2e-4)
        )
    return priors
