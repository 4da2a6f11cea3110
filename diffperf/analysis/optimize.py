"""Gradient-driven co-design of hardware leaves and the parallel mapping.

The job is training (`train_step`, a `Parallelism`) or serving one replica at a static
batch (`serve`, a `Serving`). Design variables are hardware leaves x_i ∈ [lo_i, hi_i],
optimized in the unit box z_i = (log x_i − log lo_i) / (log hi_i − log lo_i) with Adam
(its update written out in `minimize_box`, so it runs under strict dtype promotion) and
projected back onto [0, 1] after every step (so bounds hold at every iterate). For
mapping m the loss of a design is

    J_m(x) = s·log f_m(x) + w·relu(mem_m/cap − 1) + μ·Σ_j relu(log(B_j/limit_j) + δ)²

with f_m the objective under `Smooth(p)` (s = +1 to minimize, −1 to maximize), a
penalty on memory overflow (w = `MEMORY_PENALTY`, bent over `MEMORY_PENALTY_WIDTH`),
and a quadratic penalty on each budget B_j (die area, chip power, $/h, capex) with a
small margin δ. The integer mapping choice is handled in one
of two ways: "enumerate" (default) gives every valid mapping its own starts, i.e.
min over m of min over x, all in one vmapped scan; "softmin" optimizes one design
against the soft-min −τ⁻¹·logsumexp(−τ·J_m) over the mappings (a relaxation of the
integer choice). The sharpness p of the smooth model, the soft-min temperature τ and
the penalty weight μ are annealed geometrically, so the early landscape is smooth and
the late one matches `Exact`. The starts (the given design plus random points) run
together under `vmap`; the whole loop is one `lax.scan`.

The last iterates of every start are then re-scored with the `Exact` model (at their
own mapping, or over every mapping for "softmin"); the best one that satisfies all
budgets and fits in memory is the answer, so the reported design never violates a
budget.

Cost is counted in Exact evaluations of one design at one mapping (a pair). A gradient
step of a pair costs `gradient_cost` of them: measured in each call, unless given, as
the CPU time (all threads) of one compiled optimization step per pair over the CPU
time per pair of a compiled Exact evaluation in random search's chunks of 4096 pairs
(where evaluations are cheapest). So

    evaluations = steps · pairs · gradient_cost + tail · pairs

with pairs = starts × mappings. The random-search baseline gets that many Exact
evaluations from the same start: the given design at every mapping first, then
log-uniform random designs at uniformly drawn mappings.
"""

import itertools
import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core.paths import get_leaf, leaf_paths, set_leaf
from ..core.relax import Exact, Smooth
from ..model.economics import (
    capex_per_chip,
    chip_tdp,
    die_area,
    hourly_cost,
    joules_per_token,
    usd_per_million_tokens,
)
from ..model.serving import serve
from ..model.train import train_step
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving, check_mapping, check_serving
from ..specs.workload import Transformer
from .sensitivity import RESOURCES, binding_resource

MARGIN = 3e-4
"""Budgets are met with this relative margin during the search (the Exact re-score
then checks them without margin)."""

MEMORY_PENALTY = 10.0
"""w: the memory-overflow penalty per unit of relative excess, in units of the log
objective. A design that overflows HBM by 10% scores like one e (2.7×) worse, so the
search leaves infeasible regions well before a typical objective gain of a few tens of
percent could pay for them. A search weight, not a physical constant: the reported
design is re-scored with `Exact` and must fit in memory (`_Problem.exact`)."""

MEMORY_PENALTY_WIDTH = 0.01
"""The `relax.relu` bending scale of the memory penalty, as a fraction of capacity:
under Smooth(p) the penalty exceeds the exact relu by at most 0.01·ln2/p (≤ 0.09% of
capacity at the first sharpness p = 8), and its gradient (a sigmoid of p·excess/0.01)
rises over the last few 0.01/p of capacity, ahead of the wall."""

SCHEDULE = (
    ("sharpness", 8.0, 256.0),
    ("temperature", 4.0, 400.0),
    ("penalty", 1.0, 1e4),
)
"""Annealing of the smooth model's sharpness, the soft-min temperature and the
budget penalty weight (geometric, first to last step)."""

__all__ = [
    "OBJECTIVES",
    "SERVE_OBJECTIVES",
    "enumerate_servings",
    "BUDGETS",
    "minimize_box",
    "enumerate_mappings",
    "optimize",
    "random_search",
    "grid_search",
    "DesignScorer",
]


def _tokens_per_s(c, b):
    return b.tokens / b.total


def _usd_per_mtok(c, b):
    return usd_per_million_tokens(hourly_cost(c, b.chips), _tokens_per_s(c, b))


OBJECTIVES: dict[str, tuple[str, Callable]] = {
    "step_time": ("min", lambda c, b: b.total),
    "tokens_per_s": ("max", _tokens_per_s),
    "tokens_per_usd": ("max", lambda c, b: 1e6 / _usd_per_mtok(c, b)),
    "usd_per_million_tokens": ("min", _usd_per_mtok),
    "joules_per_token": ("min", joules_per_token),
}
"""Training objectives: name → (goal, f(cluster, breakdown)) in SI units."""


def _serve_usd_per_mtok(c, r):
    return usd_per_million_tokens(hourly_cost(c, r.chips), r.output_tokens_per_s)


SERVE_OBJECTIVES: dict[str, tuple[str, Callable]] = {
    "ttft": ("min", lambda c, r: r.ttft),
    "tpot": ("min", lambda c, r: r.tpot),
    "e2e_latency": ("min", lambda c, r: r.e2e_latency),
    "output_tokens_per_s_per_gpu": ("max", lambda c, r: r.output_tokens_per_s_per_gpu),
    "serve_usd_per_million_tokens": ("min", _serve_usd_per_mtok),
}
"""Serving objectives of one replica at a static batch (`dp.serve`): name → (goal,
f(cluster, ServeResult)) in SI units."""


def _objective(name: str) -> tuple[str, Callable]:
    return OBJECTIVES[name] if name in OBJECTIVES else SERVE_OBJECTIVES[name]


BUDGETS: dict[str, Callable] = {
    "area_mm2": lambda c, chips: die_area(c) * 1e6,
    "die_mm2": lambda c, chips: die_area(c) / c.cost.dies * 1e6,
    "power_w": lambda c, chips: chip_tdp(c),
    "usd_per_hour": hourly_cost,
    "capex_usd": lambda c, chips: chips * capex_per_chip(c),
}
"""Budgets: name → B(cluster, chips); die area [mm²] (all dies), area per compute die
[mm²] (a reticle limit) and TDP [W] are per chip, $/h and capex [USD] are for the
whole job."""


class BoxResult(NamedTuple):
    """Output of `minimize_box`: trajectories in z (unit box) and losses."""

    z: jax.Array  # [steps, starts, d] iterates after each projected step
    loss: jax.Array  # [steps, starts] smooth loss at each iterate


def minimize_box(
    loss: Callable,
    z0: jax.Array,
    aux=None,
    *,
    steps: int = 150,
    lr: float = 0.05,
    schedule: tuple[tuple[str, float, float], ...] = (),
) -> BoxResult:
    """Projected Adam on a penalized objective, from several starts at once.

    Minimizes f(z) subject to g_j(z) ≤ 0 on the unit box: each step takes an Adam
    step (Kingma & Ba 2015; update written out so it runs under strict dtype
    promotion) on L = f + μ·Σ_j max(0, g_j)², then projects z back onto [0, 1]^d.
    The penalty weight μ grows geometrically (a penalty continuation: feasible in
    the limit), and Adam's second-moment memory is short (β₂ = 0.9) so a step size
    inflated by the penalty wall recovers within a few steps.

    Args:
        loss: loss(z [d], aux, knobs) → (f, g [J]); the knobs (e.g. sharpness,
            temperature, "penalty" = μ) are annealed geometrically from the first to
            the second value of `schedule` over the steps.
        z0: starting points [starts, d] in [0, 1]^d.
        aux: per-start data (leading axis = starts) passed to `loss`, e.g. the index
            of the mapping a start optimizes for; None for none.
        steps: Adam steps.
        lr: initial Adam step size in unit-box coordinates (decays to lr/50).
        schedule: (knob name, start, end) triples ("penalty" is μ, default 1).
    """
    frac = jnp.linspace(0.0, 1.0, steps)

    def geometric(a, b):
        return jnp.exp(
            jnp.log(float(a)) + frac * (jnp.log(float(b)) - jnp.log(float(a)))
        )

    knobs = {k: geometric(a, b) for k, a, b in schedule}
    # The step size decays geometrically to lr/50: large early moves across the box,
    # fine ones near the optimum (the Exact re-score sees the last iterates).
    rates = geometric(lr, lr / 50.0)
    aux = jnp.zeros(len(z0)) if aux is None else aux
    b1, b2, eps = 0.9, 0.9, 1e-8  # short second-moment memory: budgets switch on/off

    def penalized(z, a, knob):
        f, g = loss(z, a, knob)
        return f + knob.get("penalty", 1.0) * jnp.sum(jnp.maximum(g, 0.0) ** 2), f

    grad = jax.vmap(jax.value_and_grad(penalized, has_aux=True), (0, 0, None))

    def step(carry, knob_rate):
        (z, m, v, t), (knob, rate) = carry, knob_rate
        (_, f), dz = grad(z, aux, knob)
        dz = jnp.where(jnp.isfinite(dz), dz, 0.0)
        m, v, t = b1 * m + (1 - b1) * dz, b2 * v + (1 - b2) * dz**2, t + 1.0
        direction = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
        z = jnp.clip(z - rate * direction, 0.0, 1.0)
        return (z, m, v, t), (z, f)

    z0 = jnp.clip(jnp.asarray(z0, jnp.result_type(float)), 0.0, 1.0)
    init = (z0, jnp.zeros_like(z0), jnp.zeros_like(z0), jnp.zeros(()))
    _, (zs, values) = jax.lax.scan(step, init, (knobs, rates))
    return BoxResult(zs, values)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_mappings(
    model: Transformer,
    base: Parallelism,
    gpus: int,
    *,
    max_tp: int = 64,
    microbatches: tuple[int, ...] = (1, 2, 4, 8),
) -> list[Parallelism]:
    """Every valid (tp, pp, dp, microbatch) on `gpus` chips, other fields from `base`.

    tp runs over powers of two up to `max_tp`, pp over the divisors of gpus/(tp·cp),
    dp = gpus/(tp·pp·cp); vpp is kept when it divides the layers per stage (else 1);
    each candidate must pass `check_mapping` (heads, layers, experts, batch).
    """
    cp = int(base.cp)
    out = []
    for tp in (2**i for i in range(int(np.log2(max_tp)) + 1)):
        if gpus % (tp * cp):
            continue
        for pp in _divisors(gpus // (tp * cp)):
            dp = gpus // (tp * cp * pp)
            for mb, vpp in itertools.product(microbatches, {1, int(base.vpp)}):
                if vpp > 1 and pp == 1:
                    continue
                m = eqx.tree_at(
                    lambda t: (t.tp, t.pp, t.dp, t.microbatch, t.vpp),
                    base,
                    tuple(jnp.asarray(float(v)) for v in (tp, pp, dp, mb, vpp)),
                )
                try:
                    check_mapping(model, m, gpus)
                except ValueError:
                    continue
                out.append(m)
    if not out:
        raise ValueError(f"no valid mapping of the model on --gpus={gpus}")
    return out


def _stack(mappings: list[Parallelism]) -> Parallelism:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *mappings)


class _Problem(eqx.Module):
    """A co-design problem: the functions of a design vector x [d] (all jit-able)."""

    cluster: Cluster
    model: Transformer
    mappings: Parallelism  # batched over M mappings
    paths: tuple[str, ...] = eqx.field(static=True)
    objective: str = eqx.field(static=True)
    budget_names: tuple[str, ...] = eqx.field(static=True)
    limits: jax.Array
    lo: jax.Array
    hi: jax.Array
    chips: float = eqx.field(static=True)
    tied: tuple[tuple[str, int], ...] = eqx.field(static=True, default=())
    tie_ratio: jax.Array = eqx.field(default_factory=lambda: jnp.zeros(0))

    @property
    def sign(self) -> float:
        return 1.0 if _objective(self.objective)[0] == "min" else -1.0

    def x(self, z):
        return jnp.exp(jnp.log(self.lo) + z * (jnp.log(self.hi) - jnp.log(self.lo)))

    def z(self, x):
        return (jnp.log(x) - jnp.log(self.lo)) / (jnp.log(self.hi) - jnp.log(self.lo))

    def hardware(self, x) -> Cluster:
        c = self.cluster
        for i, path in enumerate(self.paths):
            c = set_leaf(c, path, x[i])
        for (path, i), r in zip(self.tied, self.tie_ratio, strict=True):
            c = set_leaf(c, path, r * x[i])
        return c

    def budgets(self, x):
        """Log ratios log(B_j / limit_j) [J] (≤ 0 within budget)."""
        c = self.hardware(x)
        vals = [BUDGETS[n](c, self.chips) for n in self.budget_names]
        return jnp.log(jnp.stack(vals) / self.limits) if vals else jnp.zeros(0)

    def _one(self, c: Cluster, m, relax):
        if isinstance(m, Serving):
            b = serve(c, self.model, m, relax=relax)
        else:
            b = train_step(c, self.model, m, relax=relax)
        value = _objective(self.objective)[1](c, b)
        return value, b.memory_per_gpu / b.memory_capacity - 1.0

    def per_mapping(self, x, relax):
        """(objective value [M], memory excess ratio [M]) over all the mappings."""
        c = self.hardware(x)
        return jax.vmap(lambda m: self._one(c, m, relax))(self.mappings)

    def at_mapping(self, x, i, relax):
        """(objective value, memory excess ratio) at mapping number i."""
        m = jax.tree.map(lambda a: a[i.astype(int)], self.mappings)
        return self._one(self.hardware(x), m, relax)

    def _penalized(self, value, excess, relax):
        """s·log f plus a memory-overflow penalty (per mapping)."""
        penalty = MEMORY_PENALTY * relax.relu(excess, MEMORY_PENALTY_WIDTH)
        return self.sign * jnp.log(value) + penalty

    def loss_softmin(self, z, aux, knob):
        """(Soft-min over all mappings of the penalized log objective, budgets)."""
        x, relax = self.x(z), Smooth(knob["sharpness"])
        per_m = self._penalized(*self.per_mapping(x, relax), relax)
        tau = knob["temperature"]
        return -jax.nn.logsumexp(-tau * per_m) / tau, self.budgets(x) + MARGIN

    def loss_mapping(self, z, i, knob):
        """(Penalized log objective at mapping number i, budgets)."""
        x, relax = self.x(z), Smooth(knob["sharpness"])
        return self._penalized(*self.at_mapping(x, i, relax), relax), (
            self.budgets(x) + MARGIN
        )

    def exact(self, x):
        """(best value over mappings that fit, its index, within budgets), Exact."""
        value, excess = self.per_mapping(x, Exact())
        score = jnp.where(excess <= 0, self.sign * jnp.log(value), jnp.inf)
        i = jnp.argmin(score)
        ok = jnp.all(self.budgets(x) <= 0) & jnp.isfinite(score[i])
        return value[i], i, ok

    def exact_at(self, x, i):
        """(value, i, fits and within budgets) at mapping number i, Exact."""
        value, excess = self.at_mapping(x, i, Exact())
        ok = jnp.all(self.budgets(x) <= 0) & (excess <= 0) & jnp.isfinite(value)
        return value, i, ok


@eqx.filter_jit
def _exact_all(prob: _Problem, xs):
    return jax.vmap(prob.exact)(xs)


@eqx.filter_jit
def _exact_at(prob: _Problem, xs, idx):
    return jax.vmap(prob.exact_at)(xs, idx)


@eqx.filter_jit
def _box(prob: _Problem, z0, aux, steps: int, lr: float, mode: str, schedule):
    loss = prob.loss_mapping if mode == "enumerate" else prob.loss_softmin
    return minimize_box(loss, z0, aux, steps=steps, lr=lr, schedule=schedule)


@eqx.filter_jit
def _grad_metric(prob: _Problem, c: Cluster, i):
    def metric(cl):
        m = jax.tree.map(lambda a: a[i], prob.mappings)
        return prob._one(cl, m, Smooth(256.0))[0]

    return jax.value_and_grad(metric)(c)


def enumerate_servings(model: Transformer, base: Serving) -> list[Serving]:
    """Every valid static batch 1, 2, 4, …, 1024 of a serving mapping (tp·pp fixed)."""
    out = []
    for batch in (2**i for i in range(11)):
        s = eqx.tree_at(lambda t: t.batch, base, jnp.asarray(float(batch)))
        try:
            check_serving(model, s)
        except ValueError:
            continue
        out.append(s)
    return out


def _problem(
    cluster, model, mapping, vary, objective, budgets, search_mapping, tie=None
):
    serving = isinstance(mapping, Serving)
    table = SERVE_OBJECTIVES if serving else OBJECTIVES
    if objective not in table:
        job = "serving" if serving else "training"
        raise ValueError(
            f"objective={objective!r} must be one of {', '.join(table)} for a {job} job"
        )
    if not vary:
        raise ValueError("--vary: give at least one PATH:LOW:HIGH design variable")
    for path, (lo, hi) in vary.items():
        try:
            get_leaf(cluster, path)
        except AttributeError:
            raise ValueError(
                f"--vary {path!r}: unknown hardware leaf (see `diffperf sensitivity`)"
            ) from None
        if not 0 < lo < hi:
            raise ValueError(f"--vary {path}: bounds must satisfy 0 < low < high")
    for name, limit in budgets.items():
        if name not in BUDGETS:
            raise ValueError(f"budget {name!r} must be one of {', '.join(BUDGETS)}")
        if not limit > 0:
            raise ValueError(f"budget {name}={limit!r} must be > 0")
    gpus = int(round(float(mapping.chips)))
    if serving:
        check_serving(model, mapping)
        maps = enumerate_servings(model, mapping) if search_mapping else [mapping]
    else:
        check_mapping(model, mapping, gpus)
        maps = enumerate_mappings(model, mapping, gpus) if search_mapping else [mapping]
    lo = jnp.asarray([v[0] for v in vary.values()], float)
    hi = jnp.asarray([v[1] for v in vary.values()], float)
    tied, ratio = [], []
    for path, src in (tie or {}).items():
        if src not in vary:
            raise ValueError(f"tie {path!r} -> {src!r}: {src!r} is not a --vary leaf")
        if path in vary:
            raise ValueError(f"tie {path!r}: a varied leaf cannot also be tied")
        try:
            value = float(get_leaf(cluster, path))
        except AttributeError:
            raise ValueError(f"tie {path!r}: unknown hardware leaf") from None
        tied.append((path, list(vary).index(src)))
        ratio.append(value / float(get_leaf(cluster, src)))
    prob = _Problem(
        cluster=cluster,
        model=model,
        mappings=_stack(maps),
        paths=tuple(vary),
        objective=objective,
        budget_names=tuple(budgets),
        limits=jnp.asarray(list(budgets.values()), float),
        lo=lo,
        hi=hi,
        chips=float(gpus),
        tied=tuple(tied),
        tie_ratio=jnp.asarray(ratio, float),
    )
    return prob, maps


def _pick(prob: _Problem, xs, values, idx, ok):
    """The best design among candidates that satisfy every budget (or None)."""
    values, idx, ok = map(np.asarray, (values, idx, ok))
    if not ok.any():
        return None
    score = np.where(ok, prob.sign * np.log(values), np.inf)
    j = int(np.argmin(score))
    return np.asarray(xs[j]), float(values[j]), int(idx[j])


def _chunked(prob: _Problem, xs, idx=None, chunk: int = 4096):
    """Exact (values, mapping index, ok) of designs xs [n, d] in fixed-size chunks.

    With `idx` [n], design k is scored at mapping idx[k] only; without it, at its
    best mapping. Chunks are padded to one shape, so there is one compilation.
    """
    xs = np.asarray(xs)
    n = len(xs)
    chunk = min(chunk, max(n, 1))
    out = []
    for a in range(0, n, chunk):
        part = xs[a : a + chunk]
        pad = chunk - len(part)
        part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
        if idx is None:
            res = _exact_all(prob, jnp.asarray(part))
        else:
            ip = np.asarray(idx)[a : a + chunk]
            ip = np.concatenate([ip, np.repeat(ip[-1:], pad, 0)])
            res = _exact_at(prob, jnp.asarray(part), jnp.asarray(ip))
        out.append([np.asarray(r)[: chunk - pad] for r in res])
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))


def _cpu_seconds(fn, repeats: int = 5) -> float:
    """Median CPU seconds of the process (all threads) over `repeats` calls of fn."""
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        out.append(time.process_time() - t0)
    return float(np.median(out))


def _exact_cost(prob: _Problem, rng, chunk: int = 4096) -> float:
    """CPU seconds of one Exact evaluation of a (design, mapping) pair.

    Measured as random search evaluates: compiled chunks of `chunk` random pairs
    (median of 5 calls).
    """
    z = rng.random((chunk, len(prob.paths)))
    xs = jax.vmap(prob.x)(jnp.asarray(z))
    idx = jnp.asarray(rng.integers(0, _n_mappings(prob), chunk))
    jax.block_until_ready(_exact_at(prob, xs, idx))  # compiled once per problem shape
    return _cpu_seconds(lambda: _exact_at(prob, xs, idx)) / chunk


def _n_mappings(prob: _Problem) -> int:
    return len(jax.tree_util.tree_leaves(prob.mappings)[0])


def random_search(prob: _Problem, evaluations: int, *, seed: int = 0, start=None):
    """Best Exact design among `evaluations` (hardware, mapping) pairs.

    With `start` (a design x [d]), the first pairs are that design at every mapping
    (as many as the budget allows); the others draw hardware leaves log-uniformly in
    their bounds and mappings uniformly. Returns (x, value, mapping index) or None
    when no pair was within budget.
    """
    rng = np.random.default_rng(seed)
    n_map = _n_mappings(prob)
    z = rng.random((evaluations, len(prob.paths)))
    pick = rng.integers(0, n_map, evaluations)
    if start is not None:
        k = min(n_map, evaluations)
        z[:k] = np.clip(np.asarray(prob.z(jnp.asarray(start, float))), 0.0, 1.0)
        pick[:k] = np.arange(k)
    xs = np.asarray(jax.vmap(prob.x)(jnp.asarray(z)))
    return _pick(prob, xs, *_chunked(prob, xs, pick))


def grid_search(prob: _Problem, points: int):
    """Best Exact design on a log-spaced grid of `points` per leaf × every mapping.

    Returns ((x, value, mapping index) or None, number of hardware points).
    """
    axes = [np.linspace(0.0, 1.0, points)] * len(prob.paths)
    z = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(prob.paths))
    xs = np.asarray(jax.vmap(prob.x)(jnp.asarray(z)))
    return _pick(prob, xs, *_chunked(prob, xs)), len(xs)


class DesignScorer:
    """The Exact objective of hardware designs, as `optimize` scores its answers.

    The problem (leaves, objective, budgets, mappings) is `optimize`'s for the same
    arguments; `mappings` lists them (`enumerate_mappings` for training or
    `enumerate_servings` for serving when `search_mapping`, else the given one).
    Calling the scorer evaluates designs in compiled chunks; built once, it can be
    called many times without recompiling (chunks of one shape).

    Args:
        cluster: the hardware the designs modify.
        model: the workload.
        mapping: the mapping (`Parallelism` or `Serving`), as for `optimize`.
        vary: hardware leaf path → (low, high), as for `optimize`.
        objective: as for `optimize`.
        budgets: as for `optimize`.
        search_mapping: as for `optimize`.
        tie: as for `optimize`.

    Raises:
        ValueError: as `optimize`.
    """

    def __init__(
        self,
        cluster: Cluster,
        model: Transformer,
        mapping: Parallelism,
        *,
        vary: dict[str, tuple[float, float]],
        objective: str = "step_time",
        budgets: dict[str, float] | None = None,
        search_mapping: bool = False,
        tie: dict[str, str] | None = None,
    ):
        self._prob, self.mappings = _problem(
            cluster, model, mapping, vary, objective, dict(budgets or {}),
            search_mapping, tie,
        )  # fmt: skip
        self.goal = _objective(objective)[0]

    def __call__(self, designs, mapping_index=None, *, chunk: int = 4096) -> dict:
        """Exact values of designs [n, d] (the `vary` leaves in their order).

        Args:
            designs: [n, d] leaf values.
            mapping_index: [n] mapping number of each design; None scores each
                design at its best mapping (among those that fit in memory).
            chunk: designs per compiled call.

        Returns:
            {"value": [n], "mapping": [n] mapping numbers, "ok": [n] fits in
            memory and meets every budget (no margin)}.

        Raises:
            ValueError: designs that are not [n, d], or mapping numbers out of range.
        """
        d = len(self._prob.paths)
        xs = np.asarray(designs, dtype=float)
        if xs.ndim != 2 or xs.shape[1] != d:
            raise ValueError(f"designs of shape {xs.shape} must be [n, {d}]")
        idx = mapping_index
        if idx is not None:
            idx = np.asarray(idx, dtype=int)
            n_map = len(self.mappings)
            if idx.shape != (len(xs),) or (
                len(idx) and not (0 <= idx.min() and idx.max() < n_map)
            ):
                raise ValueError(
                    f"mapping_index must be [n] numbers in [0, {n_map - 1}]"
                )
        values, i, ok = _chunked(self._prob, xs, idx, chunk=chunk)
        return dict(value=values, mapping=i.astype(int), ok=ok)


def optimize(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    *,
    vary: dict[str, tuple[float, float]],
    objective: str = "step_time",
    budgets: dict[str, float] | None = None,
    search_mapping: bool = False,
    steps: int = 150,
    starts: int = 4,
    lr: float = 0.05,
    tail: int = 10,
    seed: int = 0,
    grid_points: int = 0,
    mode: str = "enumerate",
    progress: Callable[[str], None] | None = None,
    gradient_cost: float | None = None,
    tie: dict[str, str] | None = None,
    baseline: bool = True,
) -> dict:
    """Co-design hardware leaves (and the mapping) for an objective under budgets.

    Args:
        cluster: the starting hardware.
        model: the workload.
        mapping: the starting mapping: a `Parallelism` (training; the job uses
            mapping.chips GPUs) or a `Serving` (one replica of tp·pp GPUs).
        vary: hardware leaf path (e.g. "chip.hbm_bandwidth") → (low, high) bounds.
        objective: a key of OBJECTIVES (training) or SERVE_OBJECTIVES (serving).
        budgets: a key of BUDGETS → limit.
        search_mapping: also choose (tp, pp, dp, microbatch, vpp) among valid
            training mappings, or the batch (1, 2, 4, …, 1024) of a serving one.
        steps: projected-Adam steps.
        starts: parallel starts (the given design and random points).
        lr: Adam step size in unit-box coordinates.
        tail: iterates per start re-scored with Exact at the end.
        seed: random starts and the random-search baseline.
        grid_points: if > 0, also run an exhaustive grid of this many points per
            leaf (reported under "exhaustive").
        progress: `progress(stage)` as each stage starts ("optimizing",
            "re-scoring", "baseline", "grid"), for a progress display.
        mode: how the integer mapping choice is relaxed: "enumerate" runs every
            start once per valid mapping (min over m of min over x, all in one
            vmapped scan); "softmin" optimizes one design against the soft-min
            over all mappings (module docstring).
        gradient_cost: Exact evaluations that one gradient step of one design
            costs; None measures it in this call (module docstring).
        tie: leaf path → a `vary` path: leaves that keep their ratio to a design
            variable (e.g. "chip.flops_fp8" → "chip.flops_bf16": the fp8 peak
            scales with the bf16 peak), the ratio taken from `cluster`.
        baseline: also run the random-search baseline at equal cost (and measure
            the cost of an Exact evaluation); False skips both (then "baseline" is
            None and "evaluations" counts gradient steps at `gradient_cost`, 1 if
            not given), for callers that run many optimizations.

    Returns:
        A JSON-able dict: objective, goal, initial, best, evaluations (Exact
        evaluation equivalents), cost (how they add up), baseline (random search
        at the same cost from the same start), trajectory, seconds (and
        exhaustive when asked).

    Raises:
        ValueError: unknown objective, budget or leaf path, bad bounds, bad mapping.
    """
    budgets = dict(budgets or {})
    if mode not in ("enumerate", "softmin"):
        raise ValueError(f"mode={mode!r} must be enumerate or softmin")
    if steps < 1 or starts < 1:
        raise ValueError("steps and starts must be >= 1")
    if gradient_cost is not None and not gradient_cost > 0:
        raise ValueError(f"gradient_cost={gradient_cost!r} must be > 0")
    prob, maps = _problem(
        cluster, model, mapping, vary, objective, budgets, search_mapping, tie
    )
    t0 = time.perf_counter()
    d, n_map = len(vary), len(maps)
    x_init = jnp.asarray([float(get_leaf(cluster, p)) for p in vary])
    rng = np.random.default_rng(seed)
    z_init = np.clip(np.asarray(prob.z(x_init)), 0.0, 1.0)
    z0 = np.concatenate([z_init[None], rng.random((starts - 1, d))])
    if mode == "enumerate":  # every start once per mapping
        aux = np.repeat(np.arange(n_map), starts)
        z0 = np.tile(z0, (n_map, 1))
    else:
        aux = np.zeros(starts, int)
    say = progress or (lambda stage: None)
    say("optimizing")
    args = (prob, jnp.asarray(z0), jnp.asarray(aux), steps, lr, mode, SCHEDULE)
    if baseline:
        compiled = _box.lower(*args).compile()
        c1 = time.process_time()
        res = jax.block_until_ready(compiled(*args))
    else:  # the jit cache: no re-tracing across calls of the same shapes
        c1 = time.process_time()
        res = jax.block_until_ready(_box(*args))
    cpu_step = (time.process_time() - c1) / steps
    say("re-scoring")
    tail = min(tail, steps)
    cand_x = np.asarray(jax.vmap(prob.x)(res.z[-tail:].reshape(-1, d)))
    if mode == "enumerate":
        cand_i = np.tile(aux, tail)
        best = _pick(prob, cand_x, *_chunked(prob, cand_x, cand_i))
        pairs = len(aux)  # (design, mapping) pairs per iterate
    else:
        best = _pick(prob, cand_x, *_chunked(prob, cand_x))
        pairs = starts * n_map
    if baseline:  # per pair, as random search evaluates them
        cpu_exact = _exact_cost(prob, rng)
        measured = cpu_step / pairs / cpu_exact
    else:
        cpu_exact = measured = None
    cost = measured if gradient_cost is None else float(gradient_cost)
    cost = 1.0 if cost is None else cost
    evaluations = int(round((steps * cost + tail) * pairs))
    seconds = time.perf_counter() - t0

    key = _map_key(mapping)
    given = next((i for i, m in enumerate(maps) if _map_key(m) == key), None)
    if given is None:  # the given mapping is not among the enumerated ones
        prob0 = eqx.tree_at(lambda p: p.mappings, prob, _stack([mapping]))
        v0, _, ok0 = _chunked(prob0, np.asarray(x_init)[None], np.zeros(1, int))
        initial = _design(prob0, [mapping], np.asarray(x_init), v0[0], 0, ok0[0])
    else:
        v0, _, ok0 = _chunked(prob, np.asarray(x_init)[None], np.asarray([given]))
        initial = _design(prob, maps, np.asarray(x_init), v0[0], given, ok0[0])
    out = dict(
        objective=objective,
        goal=_objective(objective)[0],
        mode=mode,
        mappings=n_map,
        initial=initial,
        evaluations=evaluations,
        cost=dict(
            gradient_cost=cost,
            gradient_cost_measured=measured,
            gradient_steps=steps * pairs,
            exact_evaluations=tail * pairs,
            cpu_seconds_per_step=cpu_step,
            cpu_seconds_per_evaluation=cpu_exact,
        ),
        seconds=seconds,
        trajectory=[float(v) for v in np.asarray(res.loss).min(axis=1)],
    )
    if best is None:
        out["best"] = None
    else:
        x, value, i = best
        out["best"] = _design(prob, maps, x, value, i, True)
        out["best"].update(_binding(prob, i, x))
    out["baseline"] = None
    if baseline:
        say("baseline")
        x_start = np.asarray(prob.x(jnp.asarray(z_init)))
        base = random_search(prob, evaluations, seed=seed + 1, start=x_start)
        out["baseline"] = dict(
            method="random",
            start="the initial design at every mapping, then random",
            evaluations=evaluations,
            value=None if base is None else base[1],
            design=None if base is None else _design(prob, maps, *base, True),
        )
    if grid_points:
        say("grid")
        t1 = time.perf_counter()
        g, n = grid_search(prob, grid_points)
        out["exhaustive"] = dict(
            method="grid",
            points_per_leaf=grid_points,
            evaluations=n * n_map,
            value=None if g is None else g[1],
            design=None if g is None else _design(prob, maps, *g, True),
            seconds=time.perf_counter() - t1,
        )
    return out


_MAP_FIELDS = ("tp", "pp", "dp", "cp", "ep", "vpp", "microbatch")
_SERVE_FIELDS = ("tp", "pp", "ep", "etp", "batch")


def _fields(m) -> tuple[str, ...]:
    return _SERVE_FIELDS if isinstance(m, Serving) else _MAP_FIELDS


def _map_key(m) -> tuple[int, ...]:
    return tuple(int(round(float(getattr(m, f)))) for f in _fields(m))


def _design(prob: _Problem, maps, x, value, i, ok) -> dict:
    c = prob.hardware(jnp.asarray(x))
    budgets = {
        n: float(BUDGETS[n](c, prob.chips)) for n in ("area_mm2", "die_mm2", "power_w",
                                                      "usd_per_hour", "capex_usd")
    }  # fmt: skip
    return dict(
        hardware={p: float(v) for p, v in zip(prob.paths, x, strict=True)},
        mapping=dict(zip(_fields(maps[i]), _map_key(maps[i]), strict=True)),
        value=float(value),
        within_budget=bool(ok),
        budgets=budgets,
    )


def _binding(prob: _Problem, i: int, x) -> dict:
    """Budgets within 1% of their limit, bounds hit, and the binding resource.

    The binding resource is the one whose elasticity of the objective (at mapping
    number i) is largest at the design.
    """
    logs = np.asarray(prob.budgets(jnp.asarray(x)))
    binding = [n for n, g in zip(prob.budget_names, logs, strict=True) if g > -0.01]
    z = np.asarray(prob.z(jnp.asarray(x)))
    at_bound = {
        p: ("low" if zi < 1e-3 else "high")
        for p, zi in zip(prob.paths, z, strict=True)
        if zi < 1e-3 or zi > 1 - 1e-3
    }
    c = prob.hardware(jnp.asarray(x))
    value, grads = _grad_metric(prob, c, i)
    paths = leaf_paths(c)
    el = {
        p: float(get_leaf(c, p) * get_leaf(grads, p) / value)
        for p in paths
        if p in RESOURCES
    }
    res, e = binding_resource(el)
    return dict(
        binding_budgets=binding,
        bounds_hit=at_bound,
        binding_resource=res,
        binding_elasticity=e,
    )
