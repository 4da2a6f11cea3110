"""Co-design over the discrete choices architects make, and over a workload mix.

`codesign` enumerates the discrete design choices (`model.design.DESIGN_CHOICES`:
dies per package, HBM generation and stacks, numeric formats, scale-up domain, NICs)
the way `optimize` enumerates mappings: every buildable combination is applied to the
cluster (`apply_design`) and its continuous leaves (e.g. peak FLOP/s, SRAM, scale-up
bandwidth) are optimized by `optimize` under the budgets; each combination's answer is
re-scored with the Exact model, and the best one that meets every budget and fits in
memory wins. Combinations that cannot be built (more HBM stacks than the dies have
sites) are skipped and listed; a value that no design allows is a `ValueError`.

`robust_design` picks, among candidate designs, the one that maximizes the expected
log objective over several jobs (a workload mix, or the same job under samples of
the model's uncertain leaves), each job j with weight w_j:

    E(x) = Σ_j w_j · g_j · log(f_j(x) / f_j(x_ref))

with g_j = +1 for objectives to maximize and −1 for those to minimize, and x_ref a
reference design (so each job counts by its relative gain; the weights say how much
of the fleet's time each job gets). Candidates are typically the per-job optima of
`codesign`, so the robust choice is the best compromise among designs that are each
optimal for something.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..core.paths import get_leaf, set_leaf
from ..model.design import DESIGN_CHOICES, apply_design, check_design
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving
from ..specs.workload import Precision, Transformer
from .optimize import OBJECTIVES, SERVE_OBJECTIVES, DesignScorer, optimize

__all__ = [
    "Job",
    "enumerate_designs",
    "codesign",
    "design_cluster",
    "score_jobs",
    "robust_design",
]


@dataclass(frozen=True)
class Job:
    """One job of a workload mix: a model, its mapping and the objective that counts.

    `precision(formats)` (optional) gives the job's `Precision` on a chip that supports
    `formats` (a tuple of "fp8"/"fp4"), e.g. fp8 math where the chip has it; None keeps
    the model's. `adjust(cluster)` (optional) is applied to every design before the
    job scores or optimizes it: one sample of uncertain leaves (e.g. efficiencies
    drawn from the calibration's spread), so a mix of jobs can carry the model's own
    uncertainty.
    """

    model: Transformer
    mapping: Parallelism | Serving
    objective: str
    search_mapping: bool = False
    precision: Callable[[tuple[str, ...]], Precision] | None = None
    adjust: Callable[[Cluster], Cluster] | None = None

    def hardware_for(self, cluster: Cluster) -> Cluster:
        return cluster if self.adjust is None else self.adjust(cluster)

    def model_for(self, formats: tuple[str, ...]) -> Transformer:
        if self.precision is None:
            return self.model
        return eqx.tree_at(lambda m: m.precision, self.model, self.precision(formats))


def _goal(objective: str) -> str:
    """The goal ("min" or "max") of a training or serving objective."""
    table = OBJECTIVES if objective in OBJECTIVES else SERVE_OBJECTIVES
    if objective not in table:
        raise ValueError(f"objective={objective!r} is not an optimize objective")
    return table[objective][0]


def _formats(cluster: Cluster) -> tuple[str, ...]:
    c = cluster.chip
    return tuple(f for f in ("fp8", "fp4") if float(getattr(c, f"flops_{f}")) > 0)


def _validate_option(name: str, value, sites_per_die: int) -> None:
    one = {name: value}
    if name == "hbm_stacks":  # checked alone: with any generation, enough dies
        one.update(hbm_generation="hbm3", dies=max(1, int(value)))
    if name == "hbm_generation":
        one.update(hbm_stacks=1)
    check_design(one, sites_per_die=sites_per_die)


def enumerate_designs(
    cluster: Cluster, choices: dict[str, list], *, sites_per_die: int = 6
) -> tuple[list[tuple[dict, Cluster]], list[tuple[dict, str]]]:
    """Every buildable combination of the choices, applied to `cluster`.

    Args:
        cluster: the starting hardware.
        choices: a `DESIGN_CHOICES` name → the values to try.
        sites_per_die: HBM PHYs per compute die.

    Returns:
        (designs, skipped): [(choice dict, Cluster)] in product order, and
        [(choice dict, why)] for combinations that cannot be built.

    Raises:
        ValueError: an unknown choice, an empty list, or a value no design allows.
    """
    for name, values in choices.items():
        if name not in DESIGN_CHOICES:
            raise ValueError(
                f"unknown design choice {name!r}; allowed: {', '.join(DESIGN_CHOICES)}"
            )
        if not list(values):
            raise ValueError(f"design choice {name!r}: give at least one value")
        for v in values:
            _validate_option(name, v, sites_per_die)
    designs, skipped = [], []
    names = list(choices)
    for combo in itertools.product(*(list(choices[n]) for n in names)):
        ch = dict(zip(names, combo, strict=True))
        try:
            designs.append((ch, apply_design(cluster, ch, sites_per_die=sites_per_die)))
        except ValueError as e:
            skipped.append((ch, str(e)))
    return designs, skipped


def _jsonable(ch: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ch.items()}


def codesign(
    cluster: Cluster,
    job: Job,
    *,
    choices: dict[str, list],
    vary: dict[str, tuple[float, float]],
    budgets: dict[str, float] | None = None,
    tie: dict[str, str] | None = None,
    steps: int = 60,
    starts: int = 2,
    seed: int = 0,
    sites_per_die: int = 6,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The best design over discrete choices × continuous leaves for one job.

    Args:
        cluster: the starting hardware.
        job: the job and its objective (`Job`).
        choices: discrete choices to enumerate (`enumerate_designs`).
        vary: continuous leaves → (low, high), optimized for every combination.
        budgets: as for `optimize` (e.g. "die_mm2" for a reticle per die).
        tie: as for `optimize` (leaves that keep their ratio to a varied leaf); a
            tie whose leaf is 0 in a combination (an unsupported format) stays 0.
        steps: `optimize`'s, for every combination.
        starts: `optimize`'s, for every combination.
        seed: `optimize`'s, for every combination.
        sites_per_die: HBM PHYs per compute die.
        progress: progress(text) before each combination.

    Returns:
        {"objective", "goal", "designs": [one entry per buildable combination:
        choices, value, within_budget, hardware (the varied leaves), mapping,
        budgets, binding_budgets, bounds_hit], "skipped": [[choices, why]], "best":
        the index of the best feasible entry (None if none)}.

    Raises:
        ValueError: as `enumerate_designs` and `optimize`.
    """
    goal = _goal(job.objective)
    designs, skipped = enumerate_designs(cluster, choices, sites_per_die=sites_per_die)
    out = []
    for k, (ch, c) in enumerate(designs):
        if progress:
            progress(f"{k + 1}/{len(designs)} {ch}")
        r = optimize(
            job.hardware_for(c), job.model_for(_formats(c)), job.mapping, vary=vary,
            objective=job.objective, budgets=budgets, search_mapping=job.search_mapping,
            steps=steps, starts=starts, seed=seed, tie=tie, baseline=False,
        )  # fmt: skip
        b = r["best"]
        entry = dict(choices=_jsonable(ch), value=None, within_budget=False)
        if b is not None:
            entry.update(
                value=b["value"],
                within_budget=b["within_budget"],
                hardware=b["hardware"],
                mapping=b["mapping"],
                budgets=b["budgets"],
                binding_budgets=b["binding_budgets"],
                bounds_hit=b["bounds_hit"],
            )
        out.append(entry)
    sign = 1.0 if goal == "min" else -1.0
    ok = [i for i, e in enumerate(out) if e["within_budget"]]
    best = min(ok, key=lambda i: sign * np.log(out[i]["value"])) if ok else None
    return dict(
        objective=job.objective,
        goal=goal,
        designs=out,
        skipped=[[_jsonable(ch), why] for ch, why in skipped],
        best=best,
    )


def design_cluster(
    cluster: Cluster,
    choices: dict,
    hardware: dict[str, float],
    *,
    tie: dict[str, str] | None = None,
    sites_per_die: int = 6,
) -> Cluster:
    """The cluster of one `codesign` entry.

    The choices applied, then the varied leaves set (and tied leaves moved with them,
    at their ratio after the choices).
    """
    c = apply_design(cluster, choices, sites_per_die=sites_per_die)
    tie = tie or {}
    ratios = {p: float(get_leaf(c, p)) / float(get_leaf(c, s)) for p, s in tie.items()}
    for p, v in hardware.items():
        c = set_leaf(c, p, jnp.asarray(v))
    for p, s in tie.items():
        c = set_leaf(c, p, ratios[p] * get_leaf(c, s))
    return c


def score_jobs(cluster: Cluster, jobs: dict[str, Job]) -> dict[str, float]:
    """Each job's Exact objective on `cluster`.

    At the job's best mapping when it searches mappings; inf (goal "min") or 0 ("max")
    when it does not fit in memory.
    """
    out = {}
    probe = "chip.flops_bf16"
    for name, job in jobs.items():
        c = job.hardware_for(cluster)
        x = float(get_leaf(c, probe))
        scorer = DesignScorer(
            c, job.model_for(_formats(c)), job.mapping,
            vary={probe: (0.5 * x, 2.0 * x)}, objective=job.objective,
            search_mapping=job.search_mapping,
        )  # fmt: skip
        r = scorer(np.asarray([[x]]))
        fits = bool(r["ok"][0])
        bad = np.inf if scorer.goal == "min" else 0.0
        out[name] = float(r["value"][0]) if fits else bad
    return out


def robust_design(
    candidates: dict[str, Cluster],
    jobs: dict[str, Job],
    weights: dict[str, float],
    *,
    reference: str,
) -> dict:
    """The candidate with the best expected log objective over the jobs.

    Args:
        candidates: label → hardware.
        jobs: name → `Job`.
        weights: name → w_j ≥ 0 (normalized to sum 1).
        reference: the candidate label whose values are x_ref (module docstring).

    Returns:
        {"values": {label: {job: f_j}}, "gain": {label: {job: g_j·log(f_j/f_ref)}},
        "expected": {label: E}, "best": label, "best_per_job": {job: label}}.

    Raises:
        ValueError: weights that do not name the jobs, negative or all-zero weights,
            an unknown reference.
    """
    if set(weights) != set(jobs):
        raise ValueError(f"weights must name the jobs {sorted(jobs)}")
    w = {k: float(v) for k, v in weights.items()}
    if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError("weights must be >= 0 and not all 0")
    if reference not in candidates:
        raise ValueError(f"reference {reference!r} is not a candidate")
    total = sum(w.values())
    values = {k: score_jobs(c, jobs) for k, c in candidates.items()}
    sign = {
        j: (1.0 if _goal(job.objective) == "max" else -1.0) for j, job in jobs.items()
    }
    ref = values[reference]
    gain = {
        k: {j: sign[j] * float(np.log(v[j] / ref[j])) for j in jobs}
        for k, v in values.items()
    }
    expected = {k: sum(w[j] / total * g[j] for j in jobs) for k, g in gain.items()}
    finite = {k: e for k, e in expected.items() if np.isfinite(e)}
    best = max(finite, key=finite.get) if finite else None
    per_job = {j: max(gain, key=lambda k, j=j: gain[k][j]) for j in jobs}
    return dict(
        values=values, gain=gain, expected=expected, best=best, best_per_job=per_job
    )
