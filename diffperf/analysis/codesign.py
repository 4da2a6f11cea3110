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

`retrodict` runs a whole retrodiction study (issue #13): from a chip as built, on
the process of the chip its makers built next, `codesign` each job of a workload mix,
pick the robust design for the mix (nominally and on samples of the model's
uncertain efficiency leaves), and describe every answer leaf by leaf against the real
next chip.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..core.paths import get_leaf, scale_leaf, set_leaf
from ..model.design import DESIGN_CHOICES, apply_design, check_design
from ..model.economics import capex_per_chip, chip_price, chip_tdp, die_area
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving
from ..specs.workload import Precision, Transformer
from .hierarchy import SHRINK
from .optimize import OBJECTIVES, SERVE_OBJECTIVES, DesignScorer, optimize

__all__ = [
    "Job",
    "enumerate_designs",
    "codesign",
    "design_cluster",
    "score_jobs",
    "robust_design",
    "narrowest_precision",
    "RETRODICT_METRICS",
    "retrodict",
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


def narrowest_precision(
    wanted: list[str] | tuple[str, ...], *, training: bool
) -> Callable[[tuple[str, ...]], Precision]:
    """A `Job.precision`: the first of `wanted` ("fp8", "fp4") the chip supports.

    Training: `Precision.training(format)` (bf16 where none is supported). Serving:
    weights and GEMMs in that format, the KV cache in bf16 (TensorRT-LLM's fp8/NVFP4
    checkpoints); `Precision()` where none is supported.
    """
    wanted = tuple(wanted)
    bad = [f for f in wanted if f not in ("fp8", "fp4")]
    if bad:
        raise ValueError(f"formats={bad[0]!r} must be among fp8, fp4")

    def precision(formats: tuple[str, ...]) -> Precision:
        f = next((f for f in wanted if f in formats), "bf16")
        if training:
            return Precision.training(f)
        return Precision() if f == "bf16" else Precision(math=f, weights=f)

    return precision


RETRODICT_METRICS: dict[str, Callable[[Cluster], object]] = {
    "peak bf16 [PFLOP/s]": lambda c: c.chip.flops_bf16 / 1e15,
    "HBM bandwidth [TB/s]": lambda c: c.chip.hbm_bandwidth / 1e12,
    "L2 SRAM [MB]": lambda c: c.chip.sram_capacity / 1e6,
    "scale-up bandwidth [GB/s]": lambda c: c.scale_up.bandwidth / 1e9,
    "dies": lambda c: c.cost.dies,
    "fp8 peak / bf16 peak": lambda c: c.chip.flops_fp8 / c.chip.flops_bf16,
    "fp4 peak / bf16 peak": lambda c: c.chip.flops_fp4 / c.chip.flops_bf16,
    "die area [mm²]": lambda c: die_area(c) * 1e6,
    "modelled TDP [W]": chip_tdp,
    "chip price [USD]": chip_price,
    "FLOP/s per B/s of HBM": lambda c: c.chip.flops_bf16 / c.chip.hbm_bandwidth,
    "SRAM MB per PFLOP/s": lambda c: 1e9 * c.chip.sram_capacity / c.chip.flops_bf16,
    "scale-up B/s per kFLOP": lambda c: 1e3 * c.scale_up.bandwidth / c.chip.flops_bf16,
    "HBM capacity [GB]": lambda c: c.chip.hbm_capacity / 1e9,
}  # fmt: skip
"""What `retrodict` reports of every design: name → f(cluster), in display units."""

_PEAKS = ("flops_fp32", "flops_tf32", "flops_fp8", "flops_int8", "flops_fp4")


def _describe(c: Cluster) -> dict[str, float]:
    return {k: float(f(c)) for k, f in RETRODICT_METRICS.items()}


def _retrodict_tie(start: Cluster, vary: dict) -> dict[str, str]:
    """Every peak follows the bf16 peak; a torus's axes follow the ICI bandwidth."""
    tie = {f"chip.{leaf}": "chip.flops_bf16" for leaf in _PEAKS}
    if "scale_up.bandwidth" in vary:
        for i in range(len(start.scale_up.dims)):
            tie[f"scale_up.dims.{i}.bandwidth"] = "scale_up.bandwidth"
    return tie


def _efficiency_sample(factors: dict[str, float]) -> Callable[[Cluster], Cluster]:
    def adjust(c):
        for path, f in factors.items():
            c = set_leaf(c, path, jnp.minimum(get_leaf(c, path) * f, 1.0))
        return c

    return adjust


def retrodict(
    start: Cluster,
    reference: Cluster,
    jobs: dict[str, Job],
    *,
    chips: dict[str, int],
    choices: dict[str, list],
    vary: dict[str, tuple[float, float]],
    budgets: dict[str, float],
    mix: dict[str, float],
    process_leaves: tuple[str, ...] = (),
    efficiency_leaves: tuple[str, ...] = (),
    labels: tuple[str, str] = ("reference", "start"),
    steps: int = 30,
    starts: int = 2,
    uncertainty: dict | None = None,
    explain: str | None = "train",
    then: dict[str, list] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """A retrodiction: what would the optimizer have built instead of `reference`?

    The design origin is `start` with `reference`'s `cost.<leaf>` for every leaf of
    `process_leaves` (the process and price structure its makers had) and
    `reference`'s value of every path of `efficiency_leaves` (achieved kernel
    efficiencies are not design variables: the comparison is of balance). Each job is
    `codesign`ed under `budgets` plus a capex envelope of the reference's
    `capex_per_chip` × `chips[job]`; every peak (fp32, tf32, fp8, int8, fp4) keeps
    its ratio to the bf16 peak, and where `scale_up.bandwidth` is varied on a tier
    given as dims (a torus) every dimension's links keep their ratio to it. The
    robust design for the `mix` (`robust_design`, relative to `reference`) is chosen
    among `reference`, `start` as built and every within-budget combination of every
    job.

    Args:
        start: the chip its makers started from, as built.
        reference: the chip they built next (the answer the optimizer is compared to).
        jobs: name → `Job`.
        chips: job name → chips it runs on (sizes its capex envelope).
        choices: as for `codesign`.
        vary: as for `codesign`.
        budgets: as for `optimize`, per chip (e.g. "die_mm2", "power_w").
        mix: job name → share of fleet time (`robust_design` weights).
        process_leaves: `Cost` leaf names taken from `reference`.
        efficiency_leaves: dotted paths taken from `reference`.
        labels: (reference, start) names in the robust comparison.
        steps: `optimize`'s, for every combination.
        starts: `optimize`'s, for every combination.
        uncertainty: {"samples", "seed", "leaves"}: also pick the robust design with
            every job replicated over `samples` draws of the efficiency `leaves`
            (log-normal, σ = SHRINK["device"], capped at 1; the job's weight shared
            among its draws; the same draw adjusts every candidate). None: skip.
        explain: the name of a training job whose optimum, at the robust design's
            discrete choices, is re-optimized (a) as is, (b) with its TP collectives
            hidden behind the GEMMs (`tp_overlap` = 1) and (c) with scale-up bandwidth
            priced 3x: what moves its scale-up bandwidth. None: skip.
        then: choices enumerated in a second stage, at each job's best first-stage
            choices (e.g. the scale-up domain size or a torus's dims, which would
            multiply the first stage's grid), each optimized from the first
            stage's start and from its optimum (the better kept, "start" 0 or 1):
            the job's `codesign` over them is
            "then" of its entry and its best is the job's answer ("best"); its
            within-budget designs join the robust candidates as "<job>#then<k>".
        progress: progress(text) as each step finishes.

    Returns:
        {"capex_per_chip_usd", "jobs": {name: {"codesign", "budgets", "best"}},
        "reference", "start" (`RETRODICT_METRICS` of each), "robust": {"expected",
        "gain", "values", "best", "best_per_job", "labels", "design"}, "uncertain",
        "explain"}; candidates of the robust comparison are labelled "<job>#<k>"
        (combination k of that job's codesign).

    Raises:
        ValueError: mix or chips that do not name the jobs, an unknown explain job,
            and as `codesign` and `robust_design`.
    """
    say = progress or (lambda s: None)
    for name, table in (("chips", chips), ("mix", mix)):
        if set(table) != set(jobs):
            raise ValueError(f"{name} must name the jobs {sorted(jobs)}")
    if explain is not None and explain not in jobs:
        raise ValueError(f"explain={explain!r} is not a job ({', '.join(jobs)})")
    ref_label, start_label = labels
    origin = start
    for leaf in process_leaves:
        origin = set_leaf(origin, f"cost.{leaf}", get_leaf(reference, f"cost.{leaf}"))
    for path in efficiency_leaves:
        origin = set_leaf(origin, path, get_leaf(reference, path))
    tie = _retrodict_tie(origin, vary)
    capex_chip = float(capex_per_chip(reference))
    results = dict(capex_per_chip_usd=capex_chip, jobs={}, reference={}, start={})
    for name, job in jobs.items():
        job_budgets = {**budgets, "capex_usd": capex_chip * chips[name]}
        r = codesign(
            origin, job, choices=choices, vary=vary, budgets=job_budgets, tie=tie,
            steps=steps, starts=starts, progress=lambda s, n=name: say(f"{n} {s}"),
        )  # fmt: skip
        best = r["designs"][r["best"]]
        entry = dict(codesign=r, budgets=job_budgets)
        if then:
            kept = {k: v for k, v in best["choices"].items() if k not in then}
            fixed = {k: [tuple(v) if isinstance(v, list) else v]
                     for k, v in kept.items()}  # fmt: skip
            # every second-stage combination is optimized from the first stage's
            # start and from its optimum, and keeps the better answer: the values
            # then differ by the choice, not by where the optimizer started
            warm = design_cluster(origin, kept, best["hardware"], tie=tie)
            runs = [
                codesign(
                    c0,
                    job,
                    choices={**fixed, **then},
                    vary=vary,
                    budgets=job_budgets,
                    tie=tie,
                    steps=steps,
                    starts=starts,
                    progress=lambda s, n=name, w=w: say(f"{n} then ({w}) {s}"),
                )  # fmt: skip
                for w, c0 in (("cold", origin), ("warm", warm))
            ]
            r2 = _better_of(runs)
            entry["then"] = r2
            best = r2["designs"][r2["best"]]
        c = design_cluster(origin, best["choices"], best["hardware"], tie=tie)
        results["jobs"][name] = dict(entry, best=_describe(c))
        say(f"{name} {best['choices']} {best['hardware']} {best['value']}")

    candidates = {ref_label: reference, start_label: start}
    designs = {}  # label -> codesign entry
    for name in jobs:
        for stage in ("codesign", "then"):
            tag = "#" if stage == "codesign" else "#then"
            found = results["jobs"][name].get(stage, {}).get("designs", [])
            for k, d in enumerate(found):
                if d["within_budget"]:
                    designs[f"{name}{tag}{k}"] = d
                    candidates[f"{name}{tag}{k}"] = design_cluster(
                        origin, d["choices"], d["hardware"], tie=tie
                    )
    robust = robust_design(candidates, jobs, mix, reference=ref_label)
    stage = "then" if then else "codesign"
    tag = "#then" if then else "#"
    label = {f"{n}{tag}{results['jobs'][n][stage]['best']}": f"best for {n}"
             for n in jobs}  # fmt: skip
    results["robust"] = dict(
        expected=robust["expected"],
        gain=robust["gain"],
        values=robust["values"],
        best=robust["best"],
        best_per_job=robust["best_per_job"],
        labels=label,
        design=_describe(candidates[robust["best"]]),
    )
    say(f"robust: {robust['best']} {robust['expected'][robust['best']]}")
    if uncertainty is not None:
        results["uncertain"] = _uncertain(
            candidates, jobs, mix, robust["best"], uncertainty, ref_label, say
        )
    if explain is not None:
        results["explain"] = _explain(
            origin, jobs, explain, designs.get(robust["best"]), results, vary, tie,
            steps, starts, say,
        )  # fmt: skip
    results["reference"] = _describe(reference)
    results["start"] = _describe(start)
    return results


def _better_of(runs: list[dict]) -> dict:
    """The better of `codesign` runs over the same combinations.

    Per combination the better within-budget entry (tagged "start": its run's index),
    and the best of those.
    """
    sign = 1.0 if runs[0]["goal"] == "min" else -1.0
    designs = []
    for entries in zip(*(r["designs"] for r in runs), strict=True):
        ok = [(i, e) for i, e in enumerate(entries) if e["within_budget"]]
        i, e = (min(ok, key=lambda t: sign * t[1]["value"]) if ok
                else (0, entries[0]))  # fmt: skip
        designs.append(dict(e, start=i))
    ok = [i for i, e in enumerate(designs) if e["within_budget"]]
    best = min(ok, key=lambda i: sign * designs[i]["value"]) if ok else None
    return dict(runs[0], designs=designs, best=best)


def _uncertain(candidates, jobs, mix, best, u, ref_label, say) -> dict:
    """The mix's robust choice with each job scored on efficiency samples."""
    rng = np.random.default_rng(u["seed"])
    shape = (u["samples"], len(u["leaves"]))
    draws = np.exp(SHRINK["device"] * rng.standard_normal(shape))
    sampled, weights = {}, {}
    for k, row in enumerate(draws):
        adjust = _efficiency_sample(
            dict(zip(u["leaves"], map(float, row), strict=True))
        )
        for name, job in jobs.items():
            sampled[f"{name}@{k}"] = Job(
                job.model, job.mapping, job.objective, precision=job.precision,
                adjust=adjust,
            )  # fmt: skip
            weights[f"{name}@{k}"] = mix[name] / u["samples"]
    r = robust_design(candidates, sampled, weights, reference=ref_label)
    say(f"uncertain: robust {r['best']} (nominal {best})")
    return dict(
        draws=draws.tolist(),
        leaves=list(u["leaves"]),
        expected=r["expected"],
        best=r["best"],
        nominal_best=best,
        moved=r["best"] != best,
        gain=r["gain"],
    )


def _explain(origin, jobs, train_name, d, results, vary, tie, steps, starts, say):
    """What moves the training optimum's scale-up bandwidth (diagnostics, not fits)."""
    if d is None:  # the reference or the start chip won
        return {}
    choices = {n: [tuple(v) if isinstance(v, list) else v]
               for n, v in d["choices"].items()}  # fmt: skip
    train = jobs[train_name]
    budgets = results["jobs"][train_name]["budgets"]
    overlap = eqx.tree_at(lambda m: m.tp_overlap, train.mapping, jnp.asarray(1.0))
    pricier = scale_leaf(origin, "cost.scale_up_cost", 3.0)
    out = {}
    for label, c, job in (
        ("as in the study", origin, train),
        ("tp_overlap = 1", origin, Job(train.model, overlap, train.objective,
                                       precision=train.precision)),
        ("scale-up priced 3x", pricier, train),
    ):  # fmt: skip
        r = codesign(c, job, choices=choices, vary=vary, budgets=budgets, tie=tie,
                     steps=steps, starts=starts)  # fmt: skip
        e = r["designs"][0]
        out[label] = dict(hardware=e.get("hardware"), value=e["value"])
        say(f"explain: {label} {e.get('hardware')}")
    return out
