"""Batch evaluation of training configurations: grids and random ranges, vmapped.

A sweep varies float leaves of the hardware ("hardware.chip.hbm_bandwidth") and of the
mapping ("mapping.tp"). Configurations are evaluated with `jax.jit(jax.vmap(...))` in
fixed-size chunks (bounded memory, one compilation), each chunk sharded over all local
devices along its batch axis (`jax.sharding.NamedSharding`). On several hosts, call
`jax.distributed.initialize()` first and give each host its own `seed` / slice of the
grid: every host then evaluates its configurations on its own devices.

Outputs per configuration: step time [s], tokens/s per GPU, memory per GPU [B],
feasibility, $/h of the chips and $ per million tokens (`hourly_cost`).
"""

import itertools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core.paths import get_leaf, set_leaf
from ..core.relax import Exact
from ..model.economics import hourly_cost, usd_per_million_tokens
from ..model.train import train_step
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, check_mapping
from ..specs.workload import Transformer

__all__ = [
    "sweep",
    "SweepResult",
    "sweep_configs",
    "evaluate",
    "pareto_mask",
    "OUTPUTS",
]

OUTPUTS = (
    "step_time_s",
    "tokens_per_s_per_gpu",
    "memory_per_gpu_bytes",
    "feasible",
    "usd_per_hour",
    "usd_per_million_tokens",
)


def sweep_configs(
    model: Transformer,
    mapping: Parallelism,
    grid: dict[str, list],
    random: dict[str, list],
    *,
    samples: int,
    seed: int = 0,
) -> tuple[list[str], np.ndarray, int]:
    """The configurations of a sweep: (names, values [n, k], invalid mappings dropped).

    Grid entries take every combination; with `random` ranges, `samples` configurations
    draw each random leaf log-uniformly in [low, high] and each grid entry uniformly
    from its list. Mapping combinations that do not fit the model are dropped.

    Raises:
        ValueError: an unknown path, a random range on a mapping degree, or a bad range.
    """
    for path in list(grid) + list(random):
        head, _, rest = path.partition(".")
        if head not in ("hardware", "mapping") or not rest:
            raise ValueError(
                f"sweep key {path!r} must start with hardware. or mapping."
            )
    for path, rng in random.items():
        if path.startswith("mapping."):
            raise ValueError(
                f"[random] {path!r}: mapping degrees are integers; use [grid]"
            )
        if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
            raise ValueError(
                f"[random] {path!r} = {rng!r} must be [low, high], 0 < low ≤ high"
            )
    names = list(grid) + list(random)
    combos = list(itertools.product(*grid.values())) if grid else [()]
    valid = [c for c in combos if _mapping_ok(model, mapping, list(grid), c)]
    invalid = len(combos) - len(valid)
    if not valid:
        raise ValueError("no grid combination gives a mapping that fits the model")
    if not random:
        return names, np.asarray(valid, dtype=float).reshape(len(valid), -1), invalid
    rng = np.random.default_rng(seed)
    picks = np.asarray(valid, dtype=float).reshape(len(valid), -1)[
        rng.integers(0, len(valid), samples)
    ]
    lo = np.log([r[0] for r in random.values()])
    hi = np.log([r[1] for r in random.values()])
    draws = np.exp(lo + (hi - lo) * rng.random((samples, len(random))))
    return names, np.concatenate([picks, draws], axis=1), invalid


def _mapping_ok(model, mapping, names, combo) -> bool:
    m = mapping
    for name, value in zip(names, combo, strict=True):
        if name.startswith("mapping."):
            field = name.split(".", 1)[1]
            if not hasattr(m, field):
                raise ValueError(
                    f"unknown mapping field {field!r} in sweep key {name!r}"
                )
            m = set_leaf(m, field, jnp.asarray(float(value)))
    try:
        check_mapping(model, m)
    except ValueError:
        return False
    return True


def _one(cluster: Cluster, model: Transformer, mapping: Parallelism, names: list[str]):
    """The function of one configuration vector → the OUTPUTS."""
    split = [(i, *n.split(".", 1)) for i, n in enumerate(names)]

    def f(x):
        trees = {"hardware": cluster, "mapping": mapping}
        for i, head, path in split:  # hardware.<leaf> / mapping.<leaf>
            trees[head] = set_leaf(trees[head], path, x[i])
        c, m = trees["hardware"], trees["mapping"]
        b = train_step(c, model, m, relax=Exact())
        usd_h = hourly_cost(c, m.chips)
        tokens_per_s = b.tokens / b.total
        usd_m = usd_per_million_tokens(usd_h, tokens_per_s)
        feasible = b.feasible.astype(b.total.dtype)
        return jnp.stack(
            [b.total, b.tokens_per_s_per_gpu, b.memory_per_gpu, feasible, usd_h, usd_m]
        )

    return f


def evaluate(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    names: list[str],
    values: np.ndarray,
    *,
    chunk: int = 65536,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Evaluate configurations in chunks, sharded over local devices.

    Returns:
        (outputs [n, len(OUTPUTS)], timing dict with compile_s, seconds, configs_per_s).
    """
    for n in names:
        if n.startswith("hardware."):
            try:
                get_leaf(cluster, n.split(".", 1)[1])
            except AttributeError:
                raise ValueError(f"unknown hardware leaf in sweep key {n!r}") from None
    devices = jax.local_devices()
    chunk = max(len(devices), chunk - chunk % len(devices))
    mesh = Mesh(np.asarray(devices), ("d",))
    sharding = NamedSharding(mesh, PartitionSpec("d"))
    fn = jax.jit(jax.vmap(_one(cluster, model, mapping, names)))
    dtype = jnp.result_type(float)
    n = len(values)
    t0 = time.perf_counter()
    warm = jax.device_put(jnp.zeros((chunk, len(names)), dtype), sharding)
    jax.block_until_ready(fn(warm + jnp.asarray(values[:1], dtype)))
    compile_s = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        part = values[start : start + chunk]
        padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])
        x = jax.device_put(jnp.asarray(padded, dtype), sharding)
        out.append(np.asarray(fn(x))[: len(part)])
        if progress is not None:
            progress(len(part))
    seconds = time.perf_counter() - t0
    timing = dict(compile_s=compile_s, seconds=seconds, configs_per_s=n / seconds)
    return np.concatenate(out), timing


def pareto_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Points not dominated when minimizing both a and b (ties kept)."""
    order = np.lexsort((b, a))
    keep = np.zeros(len(a), bool)
    best_b = np.inf
    for i in order:
        if b[i] < best_b:
            keep[i] = True
            best_b = b[i]
    return keep


class SweepResult(NamedTuple):
    """A sweep's configurations and outputs (rows in the same order).

    `names` label the columns of `values` (hardware leaves "hardware.chip...." and
    mapping fields "mapping.tp"); `outputs` has one column per `OUTPUTS` entry;
    `pareto` marks the feasible configurations not dominated in (step time,
    $ per million tokens); `best` is the index of the fastest feasible one or None.
    """

    names: list[str]
    values: np.ndarray
    outputs: np.ndarray
    pareto: np.ndarray
    best: int | None
    invalid_mappings: int
    timing: dict[str, float]


def sweep(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    *,
    grid: dict[str, list] | None = None,
    random: dict[str, list] | None = None,
    samples: int = 10000,
    seed: int = 0,
    chunk: int = 65536,
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Evaluate a grid / random sweep of hardware leaves and mapping fields.

    The configurations are those of `sweep_configs`; they are evaluated by `evaluate`
    (jit + vmap, chunked, sharded over the local devices) with the Exact model.
    `progress(done, total)` is called after each chunk with the configurations just
    evaluated and the total.

    Raises:
        ValueError: an unknown path or a bad range (see `sweep_configs`).
    """
    names, values, invalid = sweep_configs(
        model, mapping, grid or {}, random or {}, samples=samples, seed=seed
    )
    tick = None if progress is None else (lambda k: progress(k, len(values)))
    outputs, timing = evaluate(
        cluster, model, mapping, names, values, chunk=chunk, progress=tick
    )
    feasible = outputs[:, OUTPUTS.index("feasible")] > 0.5
    time_s = outputs[:, OUTPUTS.index("step_time_s")]
    usd_m = outputs[:, OUTPUTS.index("usd_per_million_tokens")]
    front = np.zeros(len(values), bool)
    best = None
    if feasible.any():
        idx = np.flatnonzero(feasible)
        front[idx[pareto_mask(time_s[idx], usd_m[idx])]] = True
        best = int(idx[np.argmin(time_s[idx])])
    return SweepResult(names, values, outputs, front, best, int(invalid), timing)
