"""Hierarchical calibration: global, family, device and software-stack levels, jointly.

`calibrate` (analysis/calibrate.py) fits one device at a time, so every fitted leaf
absorbs whatever its device's rows share (framework overheads included) and a device
without rows inherits nothing. Here every row of every device is fitted at once, and
each leaf of a row is a sum of levels in log space:

    hardware leaf p (efficiencies, half-dims):
        log x_ip = g_p + Σ_{F ∈ families(i)} f_{F,p} + d_{device(i),p}
    software leaf q (launch, host and step overheads):
        log x_iq = g_q + s_{stack(i),q}

with `families(i)` the architecture-family chain of the row's device, root first
(hardware/families/: blackwell, then blackwell_ultra for a GB300), and `stack(i)` the
software-stack profile the row ran (hardware/stacks/). The MAP objective is

    L = Σ_i w_i r_i² + (σ_r² / N) · [ Σ_p ((g_p − μ_p)/σ_p)²
        + Σ_{F,p} (f_{F,p}/τ_F)² + Σ_{D,p} (d_{D,p}/τ_D)² + Σ_{S,q} (s_{S,q}/τ_S)² ]

(`r_i` and the source-balanced `w_i` as in analysis/calibrate.py; μ_p, σ_p the global
priors of `PRIORS`; τ the shrinkage widths `SHRINK`). A family or device residual is a
Gaussian with mean 0: without rows it stays 0 and the level above speaks for it, which
is how a new SKU is predicted from its datasheet and its family. Each value is clipped
to its prior's box [lower, upper] (physical range); a leaf that ends on a bound is
reported (`at_bound`), as a defect of the model, not a result.

Held-out folds (all in one vmapped optimization, as in `calibrate`): leave one device
out (its residuals see no row: the family and stacks predict it), one source, one
stack, or k-fold.
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core.paths import set_leaf
from ..core.relax import Exact, Smooth
from .calibrate import (
    NOISE,
    Prior,
    Row,
    kfold_folds,
    reported_ape,
    row_time,
    source_balanced,
    source_folds,
    static_groups,
)

__all__ = [
    "ROBUST",
    "SHRINK",
    "RowLevels",
    "calibrate_hierarchy",
    "level_folds",
]

ROBUST = 0.1
"""δ of the rows' pseudo-Huber loss (log units): rows within ~10% weigh as squared
errors, beyond as absolute ones. Published tables carry software-release outliers
(the same Megatron-Bridge Qwen3-30B-A3B H100 layout at 118 TFLOP/s/GPU in NeMo 26.02
and 208 in 26.02.01); a squared loss lets such a row drag a whole family or stack."""

SHRINK = {
    "family": math.log(1.5),
    "device": math.log(1.25),
    "stack": math.log(3.0),
}
"""τ: log-widths of the residual levels. A family differs from the global value by
about ×/÷ 1.5 (one σ), a device from its family by ×/÷ 1.25 (same microarchitecture,
other memory, clocks and power); software stacks differ by ×/÷ 3 (launch and host
costs vary by an order of magnitude between eager PyTorch, Megatron and XLA)."""


class RowLevels(NamedTuple):
    """Where a row sits in the hierarchy."""

    families: tuple[str, ...]  # architecture-family chain, root first (may be empty)
    device: str  # the chip spec (systems count for the chip they extend)
    stack: str  # the software-stack profile


def _keys(path: str, lv: RowLevels, stack_paths) -> list[str]:
    if path in stack_paths:
        return ["global", f"stack:{lv.stack}"]
    return ["global", *(f"family:{f}" for f in lv.families), f"device:{lv.device}"]


class _Table(NamedTuple):
    keys: list[str]  # parameter names of one leaf, "global" first
    member: np.ndarray  # [N, K] 0/1: the parameters a row's value sums
    mu: np.ndarray  # [K] prior means (log)
    sigma: np.ndarray  # [K] prior widths (log)


def _tables(rows, levels, priors, stack_paths) -> dict[str, _Table]:
    out = {}
    for p, pr in priors.items():
        keys = ["global"]
        for lv in levels:
            for k in _keys(p, lv, stack_paths):
                if k not in keys:
                    keys.append(k)
        member = np.zeros((len(rows), len(keys)))
        for i, lv in enumerate(levels):
            for k in _keys(p, lv, stack_paths):
                member[i, keys.index(k)] = 1.0
        mu = np.array([math.log(pr.center)] + [0.0] * (len(keys) - 1))
        sigma = np.array([pr.sigma] + [SHRINK[k.split(":", 1)[0]] for k in keys[1:]])
        out[p] = _Table(keys, member, mu, sigma)
    return out


def _log_values(u, member, lo, hi):
    """Log x [.., n] of the rows of `member` under parameters u [.., K], clipped."""
    return {p: jnp.clip(u[p] @ member[p].T, lo[p], hi[p]) for p in u}


def _residual(values, metric, cluster, job, target, relax):
    for path, v in values.items():
        cluster = set_leaf(cluster, path, jnp.exp(v))
    return jnp.log(row_time(metric, cluster, job, relax)) - jnp.log(target)


def robust_loss(r, delta):
    """Pseudo-Huber ρ(r) = 2δ²(√(1 + (r/δ)²) − 1) of a log residual r (no units).

    ρ ≈ r² for |r| ≪ δ (the Gaussian likelihood of a row's log error) and ≈ 2δ|r|
    for |r| ≫ δ (a Laplace likelihood: a row's error grows the loss linearly, so a
    run that a software release slowed ×2 pulls the shared leaves no harder than a
    row 2δ off). Charbonnier / pseudo-Huber loss (Hartley & Zisserman, Multiple View
    Geometry, 2nd ed., A6.8); δ = ∞ gives the squared loss back.
    """
    if delta is None or math.isinf(delta):
        return r**2
    return 2.0 * delta**2 * (jnp.sqrt(1.0 + (r / delta) ** 2) - 1.0)


@eqx.filter_jit
def _group_grad(u, member, lo, hi, metric, trees, weights, relax, delta):
    """∂/∂u of Σ_i w[f, i]·ρ(r[f, i]) of one group, for every fold f."""

    def loss(uf, wf):
        vals = _log_values(uf, member, lo, hi)
        r = jax.vmap(lambda v, c, j, t: _residual(v, metric, c, j, t, relax))(
            vals, *trees
        )
        return jnp.sum(wf * robust_loss(r, delta))

    return jax.vmap(jax.grad(loss))(u, weights)


@eqx.filter_jit
def _group_residuals(u, member, lo, hi, metric, trees, relax):
    def one(uf):
        vals = _log_values(uf, member, lo, hi)
        return jax.vmap(lambda v, c, j, t: _residual(v, metric, c, j, t, relax))(
            vals, *trees
        )

    return jax.vmap(one)(u)


def level_folds(
    rows: Sequence[Row], levels: Sequence[RowLevels], holdout: str, *, min_rows=1
) -> tuple[list[str], np.ndarray]:
    """(fold names, held-out masks [F, N]) of a hold-out scheme.

    "device" (leave one device out; devices with at least `min_rows` rows),
    "source", "stack", or "kfold:K".
    """
    if holdout == "source":
        return source_folds(list(rows))
    if holdout.startswith("kfold:"):
        try:
            k = int(holdout.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--holdout={holdout!r}: K must be an integer") from None
        return kfold_folds(list(rows), k)
    if holdout not in ("device", "stack"):
        raise ValueError(
            f"--holdout={holdout!r} must be device, source, stack or kfold:K"
        )
    keys = [getattr(lv, holdout) for lv in levels]
    names = sorted(k for k in set(keys) if keys.count(k) >= min_rows)
    if len(set(keys)) < 2:
        raise ValueError(f"--holdout {holdout} needs rows of at least 2 {holdout}s")
    held = np.array([[k == n for k in keys] for n in names], dtype=bool)
    return names, held.reshape(len(names), len(keys))


def calibrate_hierarchy(
    rows: Sequence[Row],
    levels: Sequence[RowLevels],
    priors: dict[str, Prior],
    *,
    stack_paths: Sequence[str] = (),
    holdout: str | Sequence[str] | None = None,
    min_rows: int = 1,
    steps: int = 200,
    lr: float = 0.05,
    noise: float = NOISE,
    robust: float | None = ROBUST,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Fit global, family, device and stack levels of `priors`' leaves to `rows`.

    Args:
        rows: resolved measured rows (`Row`), of any devices and stacks.
        levels: where each row sits (`RowLevels`), in the rows' order.
        priors: leaf path → global `Prior` (center, box, log-width σ).
        stack_paths: the leaves of `priors` that belong to software stacks (the
            others are hardware leaves: global, families, device).
        holdout: None, "device", "source", "stack" or "kfold:K" (`level_folds`), or
            a list of them: all their folds run in one vmapped optimization.
        min_rows: leave-one-device-out folds only for devices with this many rows.
        steps: Adam steps.
        lr: Adam learning rate [log units].
        noise: σ_r, the assumed relative error of the model on one row (log units):
            the weight of the priors is σ_r² / N.
        robust: δ of the rows' pseudo-Huber loss (`robust_loss`, log units); None
            for the squared loss (a Gaussian likelihood).
        progress: `progress(done, total)` after each Adam step.

    Returns:
        dict with `values` (level → key → path → fitted value: "global", "families",
        "devices", "stacks"), `residuals` (the same, as log residuals of the level),
        `at_bound` (list of dicts: level, key, path, value, bound), `train_mape`,
        `uncalibrated_mape`, `heldout_mape`, `heldout` (per fold: name, rows, mape,
        the fold's `values`),
        `row_ape`, `row_heldout_ape`, `row_uncalibrated_ape`; `schemes` (hold-out
        scheme → its `heldout_mape`, `heldout`, `row_heldout_ape`); with several
        schemes, the top-level held-out keys are empty.

    Raises:
        ValueError: no rows, mismatched levels, or an unsupported hold-out scheme.
    """
    if not rows:
        raise ValueError("no rows to calibrate on")
    if len(levels) != len(rows):
        raise ValueError(f"levels has {len(levels)} entries for {len(rows)} rows")
    stack_paths = set(stack_paths)
    n = len(rows)
    schemes = [holdout] if isinstance(holdout, str) else list(holdout or ())
    names, held, scheme_of = [], np.zeros((0, n), dtype=bool), []
    for scheme in schemes:  # every scheme's folds in one vmapped optimization
        nm, hd = level_folds(rows, levels, scheme, min_rows=min_rows)
        names, held = names + nm, np.vstack([held, hd])
        scheme_of += [scheme] * len(nm)
    masks = np.vstack([np.ones((1, n), dtype=bool), ~held])
    weights = np.stack([source_balanced(list(rows), m) for m in masks])
    folds = weights.shape[0]
    tab = _tables(rows, levels, priors, stack_paths)
    lo = {p: math.log(pr.lower) for p, pr in priors.items()}
    hi = {p: math.log(pr.upper) for p, pr in priors.items()}
    groups = static_groups(list(rows))
    g_member = [
        {p: jnp.asarray(t.member[g.index]) for p, t in tab.items()} for g in groups
    ]
    g_weights = [jnp.asarray(weights[:, g.index]) for g in groups]
    start = {
        p: np.array(
            [math.log(priors[p].start or priors[p].center)] + [0.0] * (len(t.keys) - 1)
        )
        for p, t in tab.items()
    }
    u = {p: jnp.asarray(np.tile(start[p], (folds, 1))) for p in tab}
    mu = {p: jnp.asarray(t.mu)[None, :] for p, t in tab.items()}
    inv_var = {p: jnp.asarray(1.0 / t.sigma**2)[None, :] for p, t in tab.items()}
    prior_w = jnp.asarray(noise**2 / np.maximum((weights > 0).sum(axis=1), 1))[:, None]
    relax = Smooth(32.0)
    opt = optax.adam(lr)
    state = opt.init(u)
    for step in range(steps):
        grads = {p: 2.0 * prior_w * (u[p] - mu[p]) * inv_var[p] for p in u}
        for g, mem, w in zip(groups, g_member, g_weights, strict=True):
            gg = _group_grad(u, mem, lo, hi, g.metric, g.trees, w, relax, robust)
            grads = {p: grads[p] + gg[p] for p in u}
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grads, state)
        u = optax.apply_updates(u, updates)
        if progress is not None:
            progress(step + 1, steps)
    # Exact errors of every fold, plus the prior values (one more "fold")
    u_prior = {p: jnp.asarray(tab[p].mu)[None] for p in u}
    u_all = {p: jnp.concatenate([u[p], u_prior[p]]) for p in u}
    r = np.zeros((folds + 1, n))
    for g, mem in zip(groups, g_member, strict=True):
        r[:, g.index] = np.asarray(
            _group_residuals(u_all, mem, lo, hi, g.metric, g.trees, Exact())
        )
    inverse = np.array([row.inverse for row in rows])
    ape = reported_ape(r, inverse)
    per_scheme = {}
    for scheme in schemes:
        row_held, fold_out = np.full(n, np.nan), []
        for f, name in enumerate(names):
            if scheme_of[f] != scheme:
                continue
            out = held[f]
            row_held[out] = ape[1 + f, out]
            mape = float(ape[1 + f, out].mean())
            uf = {p: np.asarray(u[p][1 + f]) for p in u}
            fold_out.append(
                dict(name=name, rows=int(out.sum()), mape=mape,
                     values=_levels(uf, tab, priors)[0])
            )  # fmt: skip
        per_scheme[scheme] = dict(
            heldout_mape=float(np.nanmean(row_held)) if fold_out else None,
            heldout=fold_out,
            row_heldout_ape=row_held.tolist(),
        )
    u_hat = {p: np.asarray(u[p][0]) for p in u}
    values, residuals, at_bound = _levels(u_hat, tab, priors)
    return dict(
        values=values,
        residuals=residuals,
        at_bound=at_bound,
        rows=n,
        train_mape=float(ape[0].mean()),
        uncalibrated_mape=float(ape[-1].mean()),
        row_ape=ape[0].tolist(),
        row_uncalibrated_ape=ape[-1].tolist(),
        schemes=per_scheme,
        **(
            per_scheme[schemes[0]]
            if len(schemes) == 1
            else dict(heldout_mape=None, heldout=[], row_heldout_ape=[math.nan] * n)
        ),
    )


def _levels(u_hat, tab, priors):
    """Combined values and residuals at every level; leaves on a bound.

    A level's value sums the global term and the residuals above and at it along the
    keys of a row that contains it (a row's keys run root first: global, families,
    then its device or stack).
    """
    plural = {"family": "families", "device": "devices", "stack": "stacks"}
    values = {"global": {}, "families": {}, "devices": {}, "stacks": {}}
    residuals = {"global": {}, "families": {}, "devices": {}, "stacks": {}}
    at_bound = []

    def record(level, key, p, total):
        pr = priors[p]
        x = min(max(math.exp(total), pr.lower), pr.upper)
        values[level].setdefault(key, {})[p] = x
        if x <= pr.lower * 1.001 or x >= pr.upper * 0.999:
            bound = "lower" if x <= pr.lower * 1.001 else "upper"
            at_bound.append(dict(level=level, key=key, path=p, value=x, bound=bound))

    for p, t in tab.items():
        u = np.asarray(u_hat[p], dtype=float)
        for i, k in enumerate(t.keys):
            if k == "global":
                residuals["global"][p] = float(u[0])
                continue
            level, key = k.split(":", 1)
            residuals[plural[level]].setdefault(key, {})[p] = float(u[i])
            row = t.member[np.nonzero(t.member[:, i])[0][0]]
            record(plural[level], key, p, float(row[: i + 1] @ u[: i + 1]))
        pr = priors[p]
        values["global"][p] = math.exp(float(u[0]))
        x = values["global"][p]
        if x <= pr.lower * 1.001 or x >= pr.upper * 0.999:
            bound = "lower" if x <= pr.lower * 1.001 else "upper"
            at_bound.append(
                dict(level="global", key="global", path=p, value=x, bound=bound)
            )
    return values, residuals, at_bound
