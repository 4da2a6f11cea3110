"""Calibration: fit a device's efficiency and overhead leaves to measured rows.

Each measured row is a job (training step or serving metric) on a cluster with a
measured time t_i (throughputs enter as 1/throughput, so every target is a time). The
calibratable leaves x_j of the device (the same values for every row, never per row)
are fitted in log space, u_j = log x_j, by maximum a posteriori estimation:

    L(u) = Σ_i w_i · r_i(u)² + (σ_r² / N) · Σ_j ((u_j − μ_j) / σ_j)²
    r_i  = log t̂_i(u) − log t_i

with w_i = 1 / (sources · rows of row i's source) (every source counts the same,
however many rows it published; Σ w_i = 1), a Gaussian prior of log-width σ_j around
the prior value μ_j, σ_r = `NOISE` the assumed relative model error and N the rows.
optax Adam minimizes L under the Smooth model, and the projection onto the box
[log lower_j, log upper_j] keeps every value physical.

Held-out error: the fit is repeated with folds of rows left out (leave-one-source-out or
k-fold), all folds in one vmapped optimization (a leading fold axis on u and on the row
weights), and each row's error is taken from the fold that did not see it. Errors are
reported with the Exact model, on the metric the source measured (throughputs: APE of
the throughput, |t_i/t̂_i − 1|).

Uncertainty (Laplace, Gauss–Newton): at the full-data optimum,
    H = Jᵀ diag(N·w) J / s² + diag(1/σ_j²),   Cov[u] ≈ H⁻¹
with J_ij = ∂r_i/∂u_j and s² = Σ w_i r_i² the residual variance; the standard deviation
of log x_j is sqrt(Cov_jj), of x_j to first order x_j·sqrt(Cov_jj). A leaf that ends at
a bound is reported as such: its Laplace width is not meaningful.
"""

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core.paths import get_leaf, leaf_paths, set_leaf
from ..core.relax import Exact, Smooth
from ..model.serving import serve
from ..model.train import train_step
from ..specs.hardware import Cluster

__all__ = [
    "Prior",
    "Row",
    "PRIORS",
    "TRAIN_LEAVES",
    "SERVE_LEAVES",
    "NOISE",
    "prior_for",
    "calibrate",
    "source_folds",
    "kfold_folds",
    "row_apes",
]

NOISE = 0.1
"""σ_r: assumed relative error of the model on one row (prior strength), log units."""


class Prior(NamedTuple):
    """A Gaussian prior on log x around `center` (log-width `sigma`), box bounds.

    `start` (default: `center`) is where the fit begins: a cost hidden at the start
    (e.g. a CPU launch cost below the GPU time) has no gradient to discover it.
    """

    center: float
    lower: float
    upper: float
    sigma: float = math.log(2.0)
    start: float | None = None


PRIORS = {
    # project defaults of GPU-like parts (hardware/README.md), before any calibration
    "chip.matmul_efficiency": Prior(0.7, 0.3, 0.98),
    "chip.matmul_half_dim": Prior(96.0, 16.0, 512.0),
    "chip.attention_efficiency": Prior(0.8, 0.2, 0.95),
    "chip.fp8_efficiency": Prior(1.0, 0.3, 1.0),
    "chip.fp4_efficiency": Prior(1.0, 0.3, 1.0),
    "chip.memory_efficiency": Prior(0.85, 0.4, 0.98),
    "chip.kernel_overhead": Prior(4e-6, 0.5e-6, 10e-6),
    "scale_up.efficiency": Prior(0.8, 0.3, 0.98),
    "scale_out.efficiency": Prior(0.8, 0.2, 0.95),
    "host.dispatch_overhead": Prior(5e-6, 1e-6, 6e-5),
    "host.sync_overhead": Prior(1e-3, 1e-5, 2e-2),
    "host.step_overhead": Prior(0.02, 1e-3, 0.3),
    "host.serve_overhead": Prior(2e-3, 1e-4, 5e-2),
    "host.moe_host_ops": Prior(40.0, 5.0, 200.0),
}
"""Default prior and bounds of the usual calibratable leaves (datasheet-free values)."""

TRAIN_LEAVES = (
    "chip.matmul_efficiency", "chip.matmul_half_dim", "chip.attention_efficiency",
    "chip.fp8_efficiency", "chip.fp4_efficiency", "chip.kernel_overhead",
    "scale_out.efficiency",
    "host.dispatch_overhead", "host.sync_overhead", "host.step_overhead",
)  # fmt: skip
"""Leaves fitted to training rows by default."""
SERVE_LEAVES = ("host.serve_overhead", "host.dispatch_overhead")
"""Leaves fitted to serving rows by default (chip efficiencies come from training)."""


class Row(NamedTuple):
    """One measured row, resolved: `target` [s] is a time in the model's units.

    `metric` is "train" (step time) or a `ServeResult` latency attribute ("ttft",
    "tpot", "e2e_latency") or "inv_throughput" (1 / output tokens/s); `inverse` says
    the source reported a throughput (∝ 1/time), for the APE; `stack` names the
    software-stack profile of the row (hierarchical calibration fits its leaves).
    """

    spec: str
    source: str
    cluster: Cluster
    job: tuple
    target: float
    metric: str
    inverse: bool
    stack: str = ""  # the software-stack profile the row ran (hardware/stacks/)


def prior_for(path: str, cluster: Cluster, *, center: str = "defaults") -> Prior:
    """The prior of a leaf: `PRIORS`, else the spec's value with ×/÷ 10 bounds.

    Args:
        path: dotted leaf path of a `Cluster` (e.g. "chip.memory_efficiency").
        cluster: the device, for leaves without a default prior.
        center: "defaults" (the project default value, no calibration) or "spec"
            (the value in the hardware file, e.g. an earlier calibration).

    Raises:
        ValueError: unknown path, or a leaf equal to 0 (not fittable in log space).
    """
    if path not in leaf_paths(cluster):
        raise ValueError(
            f"--leaves: {path!r} is not a float leaf of the hardware "
            f"(e.g. {', '.join(TRAIN_LEAVES[:3])}, chip.memory_efficiency)"
        )
    value = float(get_leaf(cluster, path))
    p = PRIORS.get(path)
    if p is None:
        if value <= 0:
            raise ValueError(f"--leaves: {path} = {value} cannot be fitted (not > 0)")
        upper = min(1.0, 10 * value) if path.endswith("efficiency") else 10 * value
        p = Prior(value, value / 10, upper)
    if center == "spec" and value > 0:
        p = p._replace(center=min(max(value, p.lower), p.upper))
    return p


def row_time(metric: str, cluster, job, relax):
    """The model's time of one row [s] (see `Row`)."""
    if metric == "train":
        return train_step(cluster, *job, relax=relax).total
    r = serve(cluster, *job, relax=relax)
    if metric == "inv_throughput":
        return 1.0 / r.output_tokens_per_s
    return getattr(r, metric)


def _with(cluster, values: dict):
    for path, v in values.items():
        cluster = set_leaf(cluster, path, v)
    return cluster


def _residual(u, metric, cluster, job, target, relax):
    values = {p: jnp.exp(v) for p, v in u.items()}
    t = row_time(metric, _with(cluster, values), job, relax)
    return jnp.log(t) - jnp.log(target)


class _Group(NamedTuple):
    metric: str
    index: np.ndarray  # rows of the group, in the caller's order
    trees: tuple  # (cluster, job, target) stacked over the group's rows


def _unnamed(x):
    return dataclasses.replace(x, name="") if hasattr(x, "name") else x


def static_groups(rows: list[Row]) -> list[_Group]:
    """Rows with the same static structure, their leaves stacked for vmap."""
    by_key = defaultdict(list)
    for i, r in enumerate(rows):
        # names are static but cost nothing: dropped, so one compile serves many rows
        job = tuple(_unnamed(x) for x in r.job)
        tree = (_unnamed(r.cluster), job, jnp.asarray(r.target, dtype=float))
        by_key[(r.metric, jax.tree_util.tree_structure(tree))].append((i, tree))
    return [
        _Group(
            key[0],
            np.array([i for i, _ in items]),
            jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[t for _, t in items]),
        )
        for key, items in by_key.items()
    ]


@eqx.filter_jit
def _residuals(u, metric, trees, relax):
    """r[f, i]: residual of every row of a group under every fold's values."""

    def one_fold(uf):
        return jax.vmap(lambda c, j, t: _residual(uf, metric, c, j, t, relax))(*trees)

    return jax.vmap(one_fold)(u) if u else one_fold({})[None]


@eqx.filter_jit
def _data_grad(u, metric, trees, weights, relax):
    """∂/∂u of Σ_i w[f, i]·r[f, i]² for every fold f (a leading fold axis)."""

    def loss(uf, wf):
        r = jax.vmap(lambda c, j, t: _residual(uf, metric, c, j, t, relax))(*trees)
        return jnp.sum(wf * r**2)

    return jax.vmap(jax.grad(loss))(u, weights)


def source_balanced(rows: list[Row], mask: np.ndarray) -> np.ndarray:
    """w_i = 1/(sources · rows of i's source) over the rows in `mask`, else 0."""
    counts = Counter(r.source for r, m in zip(rows, mask, strict=True) if m)
    return np.array(
        [
            1.0 / (len(counts) * counts[r.source]) if m else 0.0
            for r, m in zip(rows, mask, strict=True)
        ]
    )


def source_folds(rows: list[Row]) -> tuple[list[str], np.ndarray]:
    """Leave-one-source-out: (fold names, held-out masks [F, N]); ≥ 2 sources."""
    sources = sorted({r.source for r in rows})
    if len(sources) < 2:
        raise ValueError(
            f"--holdout source needs rows from at least 2 sources (found "
            f"{len(sources)}); use --holdout kfold:K"
        )
    held = np.array([[r.source == s for r in rows] for s in sources])
    return sources, held


def kfold_folds(rows: list[Row], k: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """k-fold: rows shuffled (fixed seed) and dealt into k held-out sets."""
    if not 2 <= k <= len(rows):
        raise ValueError(f"--holdout kfold:{k}: K must be in [2, rows = {len(rows)}]")
    order = np.random.default_rng(seed).permutation(len(rows))
    held = np.zeros((k, len(rows)), dtype=bool)
    for n, i in enumerate(order):
        held[n % k, i] = True
    return [f"fold {f + 1}/{k}" for f in range(k)], held


def _fit(groups, priors, weights, *, steps, lr, relax, progress=None):
    """Adam + box projection in log space, one optimization per row of `weights`.

    `progress(1)` is called after each step.
    """
    paths = list(priors)
    folds = weights.shape[0]
    full = lambda v: jnp.full(folds, v, dtype=float)  # noqa: E731 (not weak-typed)
    lo = {p: full(math.log(priors[p].lower)) for p in paths}
    hi = {p: full(math.log(priors[p].upper)) for p in paths}
    mu = {p: math.log(priors[p].center) for p in paths}
    u = {p: full(math.log(priors[p].start or priors[p].center)) for p in paths}
    prior_w = NOISE**2 / np.maximum((weights > 0).sum(axis=1), 1)  # σ_r² / N per fold
    prior_w = jnp.asarray(prior_w)
    w_groups = [jnp.asarray(weights[:, g.index]) for g in groups]
    opt = optax.adam(lr)
    state = opt.init(u)
    for _ in range(steps):
        grads = {
            p: 2.0 * prior_w * (u[p] - mu[p]) / priors[p].sigma ** 2 for p in paths
        }
        for g, w in zip(groups, w_groups, strict=True):
            gg = _data_grad(u, g.metric, g.trees, w, relax)
            grads = {p: grads[p] + gg[p] for p in paths}
        # optax mixes its int32 step count with floats (bias correction)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grads, state)
        u = optax.projections.projection_box(optax.apply_updates(u, updates), lo, hi)
        if progress is not None:
            progress(1)
    return u


def _all_residuals(groups, u, n, relax) -> np.ndarray:
    """r[f, i] of every row under every fold's values (Exact or Smooth)."""
    folds = next(iter(u.values())).shape[0] if u else 1
    r = np.zeros((folds, n))
    for g in groups:
        r[:, g.index] = np.asarray(_residuals(u, g.metric, g.trees, relax))
    return r


def reported_ape(r: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """APE on the reported metric from log residuals (throughputs: ∝ 1/time)."""
    return np.where(inverse, np.abs(np.exp(-r) - 1.0), np.abs(np.exp(r) - 1.0))


def row_apes(rows: list[Row], values: dict | None = None) -> np.ndarray:
    """Exact-model APE of every row with the leaves set to `values` (None: as is)."""
    u = {p: jnp.log(jnp.asarray([v], dtype=float)) for p, v in (values or {}).items()}
    r = _all_residuals(static_groups(rows), u, len(rows), Exact())
    return reported_ape(r[0], np.array([row.inverse for row in rows]))


def _covariance(rows, groups, priors, u_hat, weights) -> np.ndarray:
    """Gauss–Newton / Laplace covariance of log x at the full-data optimum."""
    paths = list(priors)
    n = len(rows)
    jac = np.zeros((n, len(paths)))
    res = np.zeros(n)
    relax = Smooth(32.0)
    for g in groups:

        def resid(uvec, c, j, t, metric=g.metric):
            return _residual(
                dict(zip(paths, uvec, strict=True)), metric, c, j, t, relax
            )

        def row_jvp(uvec, c, j, t, resid=resid):  # value and Jacobian row, one pass
            tangents = jnp.eye(uvec.shape[0], dtype=uvec.dtype)
            vals, jrow = jax.vmap(
                lambda e: jax.jvp(lambda x: resid(x, c, j, t), (uvec,), (e,))
            )(tangents)
            return vals[0], jrow

        uvec = jnp.stack([u_hat[p] for p in paths])
        f = eqx.filter_jit(jax.vmap(row_jvp, in_axes=(None, 0, 0, 0)))
        r, jrows = f(uvec, *g.trees)
        jac[g.index], res[g.index] = np.asarray(jrows), np.asarray(r)
    s2 = max(float(np.sum(weights * res**2)), 1e-8)
    h = jac.T @ (jac * (n * weights)[:, None]) / s2
    h += np.diag([1.0 / priors[p].sigma ** 2 for p in paths])
    return np.linalg.inv(h)


def calibrate(
    rows: list[Row],
    priors: dict[str, Prior],
    *,
    holdout: str | None = "source",
    steps: int = 150,
    lr: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Fit `priors`' leaves to `rows`; train and held-out error; uncertainty.

    Args:
        rows: resolved measured rows (`Row`), all of one device or device family.
        priors: leaf path → `Prior` (center = starting value, bounds, log-width).
        holdout: "source" (leave-one-source-out), "kfold:K", or None (train only).
        steps: Adam steps.
        lr: Adam learning rate [log units].
        progress: `progress(done, total)` after each Adam step (for a progress bar).

    Returns:
        dict with `leaves` (path → initial, fitted, lower, upper, std, std_log,
        at_bound), `values` (path → fitted), `train_mape`, `uncalibrated_mape` (the
        prior values), `heldout_mape`, `heldout` (per fold: name, rows, mape,
        values), `row_ape` / `row_heldout_ape` (per row, the rows' order).

    Raises:
        ValueError: no rows, or a hold-out scheme the rows cannot support.
    """
    if not rows:
        raise ValueError("no rows to calibrate on")
    n = len(rows)
    names, held = [], np.zeros((0, n), dtype=bool)
    if holdout == "source":
        names, held = source_folds(rows)
    elif holdout and holdout.startswith("kfold:"):
        try:
            k = int(holdout.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--holdout={holdout!r}: K must be an integer") from None
        names, held = kfold_folds(rows, k)
    elif holdout:
        raise ValueError(f"--holdout={holdout!r} must be source or kfold:K")
    masks = np.vstack([np.ones((1, n), dtype=bool), ~held])
    weights = np.stack([source_balanced(rows, m) for m in masks])
    groups = static_groups(rows)
    tick = None if progress is None else (lambda k: progress(k, steps))
    u = _fit(groups, priors, weights, steps=steps, lr=lr, relax=Smooth(32.0),
             progress=tick)  # fmt: skip
    inverse = np.array([r.inverse for r in rows])
    # the prior values ride along as one more fold: one compiled Exact evaluation
    u_all = {
        p: jnp.concatenate([v, jnp.full(1, math.log(priors[p].center), dtype=float)])
        for p, v in u.items()
    }
    ape_all = reported_ape(_all_residuals(groups, u_all, n, Exact()), inverse)
    ape, ape0 = ape_all[:-1], ape_all[-1]  # [1 + F, N], [N]
    u_hat = {p: v[0] for p, v in u.items()}
    cov = _covariance(rows, groups, priors, u_hat, weights[0])
    leaves = {}
    for j, (p, pr) in enumerate(priors.items()):
        x = float(jnp.exp(u_hat[p]))
        sd = math.sqrt(max(cov[j, j], 0.0))
        leaves[p] = dict(
            initial=pr.center, fitted=x, lower=pr.lower, upper=pr.upper, std=x * sd,
            std_log=sd, at_bound=bool(x <= pr.lower * 1.001 or x >= pr.upper * 0.999),
        )  # fmt: skip
    folds, row_held = [], np.full(n, np.nan)
    for f, name in enumerate(names):
        out = held[f]
        row_held[out] = ape[1 + f, out]
        folds.append(
            dict(
                name=name,
                rows=int(out.sum()),
                mape=float(ape[1 + f, out].mean()),
                values={p: float(jnp.exp(v[1 + f])) for p, v in u.items()},
            )
        )
    return dict(
        leaves=leaves,
        values={p: v["fitted"] for p, v in leaves.items()},
        rows=n,
        train_mape=float(ape[0].mean()),
        uncalibrated_mape=float(ape0.mean()),
        heldout_mape=float(np.nanmean(row_held)) if names else None,
        heldout=folds,
        row_ape=ape[0].tolist(),
        row_heldout_ape=row_held.tolist(),
        row_uncalibrated_ape=ape0.tolist(),
    )
