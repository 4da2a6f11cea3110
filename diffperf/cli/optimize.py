"""`diffperf optimize`: co-design of hardware leaves (and the mapping) under budgets."""

import dataclasses

from . import jobs as _cli

__all__ = ["add_optimize", "run_optimize", "print_optimize"]

_BUDGET_FLAGS = {
    "max_area_mm2": "area_mm2",
    "max_power_w": "power_w",
    "max_usd_per_hour": "usd_per_hour",
    "max_capex_usd": "capex_usd",
}


def add_optimize(sub):
    """The `optimize train|infer` subcommands (the job's flags give the start)."""
    from ..analysis.optimize import OBJECTIVES, SERVE_OBJECTIVES

    p = sub.add_parser("optimize", help="co-design hardware and mapping by gradient")
    jobs = p.add_subparsers(dest="job", required=True, parser_class=type(p))
    for job, add, objectives in (
        ("train", _cli.train_arguments, OBJECTIVES),
        ("infer", _cli.infer_arguments, SERVE_OBJECTIVES),
    ):
        q = jobs.add_parser(job, help=f"co-design for a {job} job")
        add(q)
        _design_arguments(q, list(objectives))
        _cli.emit_argument(q, job)


def _design_arguments(p, objectives: list[str]):
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="PATH:LOW:HIGH",
        help="a hardware leaf and its bounds, e.g. chip.hbm_bandwidth:1e12:8e12",
    )
    p.add_argument("--objective", choices=objectives, default=objectives[0])
    p.add_argument("--max-area-mm2", type=float, help="die area budget per chip")
    p.add_argument("--max-power-w", type=float, help="TDP budget per chip [W]")
    p.add_argument("--max-usd-per-hour", type=float, help="job $/h budget")
    p.add_argument("--max-capex-usd", type=float, help="job capital budget [USD]")
    p.add_argument(
        "--search-mapping",
        action="store_true",
        help="also choose the mapping: tp, pp, dp, microbatch, vpp on --gpus (train) "
        "or the batch (infer)",
    )
    p.add_argument("--mode", choices=("enumerate", "softmin"), default="enumerate")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--grid", type=int, default=0, metavar="N", help="also search N points per leaf"
    )
    p.add_argument("--json", action="store_true")


def _vary(items: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for item in items:
        parts = item.split(":")
        try:
            path, lo, hi = parts[0], float(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise _cli.UsageError(
                f"--vary {item!r} must be PATH:LOW:HIGH with numbers LOW < HIGH"
            ) from None
        out[path.removeprefix("hardware.")] = (lo, hi)
    return out


def run_optimize(args) -> dict:
    """Run `dp.optimize` on the job of the train/infer flags."""
    from ..analysis.optimize import optimize
    from .progress import progress

    if args.job == "train":
        cluster, model, mapping = _cli.train_job(args)
    else:
        cluster, model, mapping, _ = _cli.infer_job(args)
    budgets = {
        name: getattr(args, flag)
        for flag, name in _BUDGET_FLAGS.items()
        if getattr(args, flag) is not None
    }
    stages = ["optimizing", "re-scoring", "baseline"] + (["grid"] if args.grid else [])
    with progress(args, "optimizing", total=len(stages)) as update:
        out = _optimize(args, cluster, model, mapping, budgets, optimize, stages,
                        update)  # fmt: skip
    if args.emit and out["best"] is not None:
        best = dataclasses.replace(
            mapping, **{k: float(v) for k, v in out["best"]["mapping"].items()}
        )
        if args.job == "train":
            out["launch"] = _cli.train_launch(args, cluster, model, best)
        else:
            out["launch"] = _cli.serve_launch(args, model, best)
    return out


def _optimize(args, cluster, model, mapping, budgets, optimize, stages, update):
    def stage(name):
        update(completed=stages.index(name), label=name)

    return optimize(
        cluster,
        model,
        mapping,
        vary=_vary(args.vary),
        objective=args.objective,
        budgets=budgets,
        search_mapping=args.search_mapping,
        steps=args.steps,
        starts=args.starts,
        seed=args.seed,
        grid_points=args.grid,
        mode=args.mode,
        progress=stage,
    )


def _line(label: str, d: dict | None, goal: str) -> str:
    if d is None:
        return f"{label:<10} none within budget"
    hw = ", ".join(f"{k}={v:.4g}" for k, v in d["hardware"].items())
    mp = " ".join(f"{k}{v}" for k, v in d["mapping"].items() if k != "cp")
    return f"{label:<10} {d['value']:.5g}  [{mp}] {hw}"


def print_optimize(out: dict):
    """Human-readable optimizer report."""
    if "launch" in out:
        _cli.print_launch(out["launch"])
    goal = out["goal"]
    print(
        f"{goal}imize {out['objective']} over {out['mappings']} mapping(s): "
        f"{out['evaluations']} Exact-evaluation equivalents (a gradient step costs "
        f"{out['cost']['gradient_cost']:.2f}) in {out['seconds']:.2f} s"
    )
    print(_line("initial", out["initial"], goal))
    print(_line("optimized", out["best"], goal))
    print(_line("random", out["baseline"]["design"], goal) + "  (same cost, start)")
    if "exhaustive" in out:
        ex = out["exhaustive"]
        print(_line(f"grid {ex['points_per_leaf']}^d", ex["design"], goal)
              + f"  ({ex['evaluations']} evaluations)")  # fmt: skip
    best = out["best"]
    if best:
        budgets = ", ".join(best["binding_budgets"]) or "none"
        bounds = ", ".join(f"{p} at {s}" for p, s in best["bounds_hit"].items())
        print(
            f"binding budgets: {budgets}; bounds hit: {bounds or 'none'}; binding "
            f"resource: {best['binding_resource']} "
            f"(elasticity {best['binding_elasticity']:+.2f})"
        )
