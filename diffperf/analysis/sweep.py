"""Batch evaluation of training configurations: grids and random ranges, vmapped.

A sweep varies float leaves of the hardware ("hardware.chip.hbm_bandwidth") and of the
mapping ("mapping.tp"). Configurations are evaluated with `jax.jit(jax.vmap(...))` in
fixed-size chunks (bounded memory, one compilation), each chunk sharded over all local
devices along its batch axis (`jax.sharding.NamedSharding`).

Many processes (JAX's multi-controller runtime): after `jax.distributed.initialize`,
every process builds the same configurations (same spec, same seed), evaluates the
chunks i with i mod P = its process index on its own devices, and the outputs are
gathered to every process (`multihost_utils.process_allgather`), so the rows are those
of a one-process run: each row is computed by the same compiled function on the same
padded chunk shape.

A `ChunkStore` keeps each finished chunk's outputs (e.g. `diffperf.io.SweepCheckpoint`
on disk): an interrupted sweep restarted with the same store computes only the chunks
it does not hold.

Outputs per configuration: step time [s], tokens/s per GPU, memory per GPU [B],
feasibility, $/h of the chips and $ per million tokens (`hourly_cost`).
"""

import hashlib
import itertools
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

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
    "fingerprint",
    "ChunkStore",
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


class ChunkStore(Protocol):
    """Where finished chunks are kept (see `diffperf.io.SweepCheckpoint`)."""

    def begin(self, fingerprint: str, chunks: list[int]) -> None:
        """Called once before evaluation with the sweep's identity and own chunks."""

    def load(self, index: int) -> np.ndarray | None:
        """The outputs of chunk `index` if kept, else None."""

    def save(self, index: int, outputs: np.ndarray) -> None:
        """Keep the outputs of chunk `index` (atomically)."""


def fingerprint(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    names: list[str],
    values: np.ndarray,
    chunk: int,
) -> str:
    """A hash of everything that decides a sweep's rows (specs, configurations, chunk).

    A kept chunk is reused only by a sweep with the same fingerprint.
    """
    h = hashlib.sha256()
    for tree in (cluster, model, mapping):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        h.update(str(treedef).encode())
        for leaf in leaves:
            h.update(np.asarray(leaf, dtype=np.float64).tobytes())
    h.update(
        repr((names, int(chunk), values.shape, str(jnp.result_type(float)))).encode()
    )
    h.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return h.hexdigest()


def evaluate(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    names: list[str],
    values: np.ndarray,
    *,
    chunk: int = 65536,
    progress: Callable[[int], None] | None = None,
    store: ChunkStore | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Evaluate configurations in chunks of `chunk` rows, sharded over local devices.

    With several JAX processes (`jax.distributed`), process p evaluates the chunks
    i ≡ p (mod P) and every process returns all rows (gathered). With a `store`,
    chunks it already holds are loaded instead of computed, and each computed chunk is
    saved as soon as it is done.

    Returns:
        (outputs [n, len(OUTPUTS)], timing dict with compile_s, seconds, configs_per_s,
        chunks, chunks_computed, chunks_loaded, processes).
    """
    for n in names:
        if n.startswith("hardware."):
            try:
                get_leaf(cluster, n.split(".", 1)[1])
            except AttributeError:
                raise ValueError(f"unknown hardware leaf in sweep key {n!r}") from None
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    n = len(values)
    n_chunks = -(-n // chunk)
    index, count = jax.process_index(), jax.process_count()
    mine = list(range(index, n_chunks, count))
    if store is not None:
        store.begin(fingerprint(cluster, model, mapping, names, values, chunk), mine)
    devices = jax.local_devices()
    padded_rows = -(-chunk // len(devices)) * len(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("d",)), PartitionSpec("d"))
    fn = jax.jit(jax.vmap(_one(cluster, model, mapping, names)))
    dtype = jnp.result_type(float)
    compile_s, computed, loaded, rows_computed = 0.0, 0, 0, 0
    out = np.zeros((len(mine), chunk, len(OUTPUTS)), dtype)
    t0 = time.perf_counter()
    for k, i in enumerate(mine):
        part = values[i * chunk : (i + 1) * chunk]
        kept = None if store is None else store.load(i)
        if kept is not None and kept.shape == (len(part), len(OUTPUTS)):
            out[k, : len(part)] = kept
            loaded += 1
        else:
            if computed == 0:  # compile once, outside the timed loop
                tc = time.perf_counter()
                warm = jax.device_put(
                    jnp.zeros((padded_rows, len(names)), dtype), sharding
                )
                jax.block_until_ready(fn(warm + jnp.asarray(values[:1], dtype)))
                compile_s = time.perf_counter() - tc
            pad = np.repeat(part[-1:], padded_rows - len(part), 0)
            x = jax.device_put(
                jnp.asarray(np.concatenate([part, pad]), dtype), sharding
            )
            rows = np.asarray(fn(x))[: len(part)]
            out[k, : len(part)] = rows
            computed += 1
            rows_computed += len(part)
            if store is not None:
                store.save(i, rows)
        if progress is not None:
            progress(len(part))
    seconds = max(time.perf_counter() - t0 - compile_s, 1e-12)
    if count > 1:
        out = _gather(out, n_chunks, count, chunk)
    outputs = out.reshape(-1, len(OUTPUTS))[:n]
    timing = dict(
        compile_s=compile_s,
        seconds=seconds,
        configs_per_s=rows_computed / seconds,
        chunks=n_chunks,
        chunks_computed=computed,
        chunks_loaded=loaded,
        processes=count,
    )
    return outputs, timing


def _gather(out: np.ndarray, n_chunks: int, count: int, chunk: int) -> np.ndarray:
    """All processes' chunks in global order: chunk i lives on process i mod count."""
    from jax.experimental import multihost_utils

    per = -(-n_chunks // count)
    local = np.zeros((per, chunk, out.shape[-1]), out.dtype)
    local[: len(out)] = out
    every = np.asarray(multihost_utils.process_allgather(local))  # [count, per, ...]
    ordered = every.transpose(1, 0, 2, 3).reshape(per * count, chunk, -1)
    return ordered[:n_chunks]


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
    store: ChunkStore | None = None,
) -> SweepResult:
    """Evaluate a grid / random sweep of hardware leaves and mapping fields.

    The configurations are those of `sweep_configs`; they are evaluated by `evaluate`
    (jit + vmap, chunked, sharded over the local devices; split over the processes of
    `jax.distributed` when there are several) with the Exact model. `progress(done,
    total)` is called after each of this process's chunks with the configurations just
    evaluated (or loaded from `store`) and this process's total. `store` keeps finished
    chunks so that an interrupted sweep resumes without recomputing them.

    Raises:
        ValueError: an unknown path or a bad range (see `sweep_configs`).
    """
    names, values, invalid = sweep_configs(
        model, mapping, grid or {}, random or {}, samples=samples, seed=seed
    )
    n_chunks = -(-len(values) // max(chunk, 1))
    own = range(jax.process_index(), n_chunks, jax.process_count())
    total = sum(min(chunk, len(values) - i * chunk) for i in own)
    tick = None if progress is None else (lambda k: progress(k, total))
    outputs, timing = evaluate(
        cluster, model, mapping, names, values, chunk=chunk, progress=tick, store=store
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
