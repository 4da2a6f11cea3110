"""Co-design benchmarks: optimizer quality (issue #7 (e)) and mapping search (f).

    python benchmarks/optimizer.py [--quick]

(e) Optimizer quality over 24 scenarios (2 models × 3 objectives × 4 budget sets),
    each small enough to enumerate: 4 hardware leaves on a 16-point log grid per leaf
    (65,536 designs) × every valid mapping of the job. For each scenario it reports
    the exhaustive grid optimum, `optimize` (4 starts per mapping, 150 steps), and
    random search with exactly as many Exact evaluations as `optimize` used, then
    the share of scenarios where `optimize` is within 1% of the grid optimum, its
    evaluations as a share of the grid's, and the ratio of random search's mean gap
    to the optimum over `optimize`'s.
(f) The parallel-mapping search for Megatron-Turing NLG 530B on 4,480 A100s (560
    DGX A100 nodes, as trained; global batch 1920, sequence 2048): every valid
    (tp, pp, dp, microbatch, vpp, recompute) evaluated with one vmapped Exact call
    per recompute policy, against the same enumeration one configuration at a time
    (as a Python loop over a scalar model does).
Prints one JSON object.
"""

import argparse
import json
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffperf as dp
from diffperf.analysis.optimize import enumerate_mappings, optimize

VARY = {
    "chip.flops_bf16": (2e14, 4e15),
    "chip.hbm_bandwidth": (1e12, 1e13),
    "chip.sram_capacity": (1e7, 4e8),
    "scale_up.bandwidth": (1e11, 2e12),
}
# (capex $, chip TDP W, die mm²): tight capex / tight power / tight area / all medium
BUDGET_SETS = {
    "capex": {"capex_usd": 0.55e6, "power_w": 2000.0, "area_mm2": 2000.0},
    "power": {"capex_usd": 2e6, "power_w": 600.0, "area_mm2": 2000.0},
    "area": {"capex_usd": 2e6, "power_w": 2000.0, "area_mm2": 600.0},
    "medium": {"capex_usd": 0.8e6, "power_w": 800.0, "area_mm2": 800.0},
}
OBJECTIVES = ("step_time", "tokens_per_usd", "joules_per_token")
JOBS = {
    "llama3_8b": dp.Parallelism(
        tp=8, dp=1, microbatch=1, global_batch=16, seq_len=4096
    ),
    "gpt3_5b": dp.Parallelism(tp=4, dp=2, microbatch=1, global_batch=16, seq_len=2048),
}


def _gap(goal: str, value: float, best: float) -> float:
    """Relative shortfall of value from best (≥ 0 when worse; < 0 when better)."""
    return (value - best) / best if goal == "min" else (best - value) / best


def optimizer_quality(quick: bool) -> dict:
    cluster = dp.load_hardware("dgx_h100")
    rows = []
    jobs = dict(list(JOBS.items())[:1]) if quick else JOBS
    for name, mapping in jobs.items():
        model = dp.load_workload(name)
        for objective in OBJECTIVES[:1] if quick else OBJECTIVES:
            for bname, budgets in BUDGET_SETS.items():
                t0 = time.perf_counter()
                r = optimize(cluster, model, mapping, vary=VARY, objective=objective,
                             budgets=budgets, search_mapping=True, steps=150,
                             starts=4, tail=10, grid_points=16)  # fmt: skip
                best, grid = r["best"], r["exhaustive"]
                rand = r["baseline"]
                row = dict(
                    model=name, objective=objective, budgets=bname, goal=r["goal"],
                    mappings=r["mappings"], grid=grid["value"],
                    optimize=best and best["value"], random=rand["value"],
                    optimize_evaluations=r["evaluations"],
                    grid_evaluations=grid["evaluations"],
                    optimize_s=r["seconds"], grid_s=grid["seconds"],
                    wall_s=time.perf_counter() - t0,
                )  # fmt: skip
                if grid["value"] is not None and best and rand["value"] is not None:
                    row["gap_optimize"] = _gap(r["goal"], best["value"], grid["value"])
                    row["gap_random"] = _gap(r["goal"], rand["value"], grid["value"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    """Shares and gaps over the scenarios (gaps ≥ 0 are shortfalls from a reference).

    Against the grid optimum: share of scenarios where `optimize` is within 1%.
    Against the best design any method found (grid, optimize, random): the mean gap
    of `optimize` and of random search at the same number of evaluations.
    """
    scored = [r for r in rows if "gap_optimize" in r]

    def best_known(r):
        vals = [r["grid"], r["optimize"], r["random"]]
        return min(vals) if r["goal"] == "min" else max(vals)

    g_opt = [_gap(r["goal"], r["optimize"], best_known(r)) for r in scored]
    g_rand = [_gap(r["goal"], r["random"], best_known(r)) for r in scored]
    return dict(
        scenarios=len(rows),
        scenarios_scored=len(scored),
        share_within_1pct_of_grid=float(
            np.mean([r["gap_optimize"] <= 0.01 for r in scored])
        ),
        share_better_than_grid=float(np.mean([r["gap_optimize"] < 0 for r in scored])),
        evaluations_share_of_grid=float(
            np.max([r["optimize_evaluations"] / r["grid_evaluations"] for r in scored])
        ),
        mean_gap_to_best_known_optimize=float(np.mean(g_opt)),
        mean_gap_to_best_known_random=float(np.mean(g_rand)),
        optimize_better_than_random=int(
            sum(
                r["optimize"] != r["random"] and a < b
                for r, a, b in zip(scored, g_opt, g_rand, strict=True)
            )
        ),  # fmt: skip
        median_optimize_s_after_compile=float(
            np.median([r["optimize_s"] for r in scored])
        ),
        rows=rows,
    )


def mapping_search_530b() -> dict:
    cluster = dp.load_hardware("dgx_a100")
    model = dp.load_workload("megatron_gpt_530b")
    gpus = 4480
    out = dict(model="megatron_gpt_530b", hardware="dgx_a100", gpus=gpus)
    best = None
    t_enum = t_eval = t_compile = 0.0
    n_total = 0
    same = True
    loop_s = 0.0
    for recompute in ("none", "selective", "full"):
        base = dp.Parallelism(tp=8, pp=35, dp=16, microbatch=1, global_batch=1920,
                              seq_len=2048, vpp=3, recompute=recompute)  # fmt: skip
        t0 = time.perf_counter()
        maps = enumerate_mappings(model, base, gpus, max_tp=8,
                                  microbatches=(1, 2, 4, 8))  # fmt: skip
        t_enum += time.perf_counter() - t0
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *maps)

        def one(m):
            b = dp.train_step(cluster, model, m)
            t = jnp.where(b.feasible, b.total, jnp.inf)
            return t

        fn = eqx.filter_jit(jax.vmap(one))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(stacked))
        t_compile += time.perf_counter() - t0
        t0 = time.perf_counter()
        times = np.asarray(jax.block_until_ready(fn(stacked)))
        t_eval += time.perf_counter() - t0
        n_total += len(maps)
        i = int(np.argmin(times))
        if best is None or times[i] < best[0]:
            best = (float(times[i]), maps[i], recompute)
        # the same search one configuration at a time (jitted scalar model, Python loop)
        scalar = eqx.filter_jit(one)
        jax.block_until_ready(scalar(maps[0]))
        t0 = time.perf_counter()
        loop = [float(scalar(m)) for m in maps]
        loop_s += time.perf_counter() - t0
        same = same and int(np.argmin(loop)) == i
    t, m, rc = best
    out |= dict(
        configurations=n_total,
        enumerate_s=t_enum,
        evaluate_s=t_eval,
        search_s=t_enum + t_eval,
        compile_s=t_compile,
        one_at_a_time_s=loop_s,
        speedup_vs_loop=loop_s / t_eval,
        best=dict(
            step_time_s=t,
            recompute=rc,
            **{
                f: int(round(float(getattr(m, f))))
                for f in ("tp", "pp", "dp", "microbatch", "vpp")
            },
        ),  # fmt: skip
        same_optimum_as_loop=same,
    )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 scenarios only")
    args = ap.parse_args(argv)
    out = dict(
        device=str(jax.devices()[0]),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        jax=jax.__version__,
        x64=bool(jax.config.jax_enable_x64),
    )
    out["mapping_search_530b"] = mapping_search_530b()
    out["optimizer_quality"] = optimizer_quality(args.quick)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
