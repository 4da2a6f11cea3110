"""`diffperf sensitivity`: elasticities, binding resource, tornado, uncertainty."""

import equinox as eqx

from . import cli as _cli
from ._infer import serve
from ._relax import Exact, Smooth
from ._sensitivity import binding_resource, elasticities, uncertainty
from ._train import train_step

__all__ = ["add_sensitivity", "run_sensitivity"]

_METRICS = {"train": ("step_time",), "infer": ("ttft", "tpot")}
_SMOOTH = Smooth()


def add_sensitivity(sub):
    """The `sensitivity train|infer` subcommands."""
    p = sub.add_parser("sensitivity", help="elasticities of a metric to every leaf")
    kinds = p.add_subparsers(dest="job", required=True, parser_class=type(p))
    for job, add in (("train", _cli.train_arguments), ("infer", _cli.infer_arguments)):
        q = kinds.add_parser(job, help=f"sensitivity of a {job} metric")
        add(q)
        q.add_argument("--metric", choices=_METRICS[job], default=_METRICS[job][0])
        q.add_argument("--top", type=int, default=15, help="leaves in the table/chart")
        q.add_argument(
            "--range", type=float, default=0.2, help="± change of each leaf (tornado)"
        )
        q.add_argument(
            "--spread", type=float, default=0.0, help="1-sigma spread of resources"
        )
        q.add_argument(
            "--spread-leaf",
            action="append",
            default=[],
            metavar="PATH=SIGMA",
            help="spread of one leaf (repeatable)",
        )
        q.add_argument("--samples", type=int, default=2000, help="Monte Carlo samples")
        q.add_argument("--tornado", metavar="PNG", help="write a tornado chart")
        q.add_argument("--json", action="store_true")


def _spreads(args, paths: list[str]) -> dict[str, float]:
    from ._sensitivity import RESOURCES

    out = {}
    if args.spread:
        if not 0 < args.spread < 1:
            raise _cli.UsageError(f"--spread={args.spread} must be in (0, 1)")
        out |= {
            f"hardware.{r}": args.spread for r in RESOURCES if f"hardware.{r}" in paths
        }
    for item in args.spread_leaf:
        path, _, sigma = item.partition("=")
        if path not in paths:
            raise _cli.UsageError(f"--spread-leaf {path!r}: unknown leaf path")
        try:
            out[path] = float(sigma)
        except ValueError:
            raise _cli.UsageError(
                f"--spread-leaf {item!r}: SIGMA must be a number"
            ) from None
    return out


def run_sensitivity(args) -> dict:
    """Elasticities of the chosen metric w.r.t. every hardware and workload leaf."""
    if args.job == "train":
        cluster, model, mapping = _cli.train_job(args)

        def metric(tree, relax=_SMOOTH):
            return train_step(
                tree["hardware"], tree["workload"], mapping, relax=relax
            ).total
    else:
        cluster, model, serving, _ = _cli.infer_job(args)
        _cli.check_serving(model, serving)

        def metric(tree, relax=_SMOOTH):
            r = serve(tree["hardware"], tree["workload"], serving, relax=relax)
            return getattr(r, args.metric)

    tree = {"hardware": cluster, "workload": model}
    el = elasticities(metric, tree)
    ranked = sorted(el.items(), key=lambda kv: -abs(kv[1]))
    nominal = float(metric(tree, Exact()))
    binding, e_bind = binding_resource(el, prefix="hardware.")
    out = dict(
        metric=args.metric,
        value=nominal,
        elasticities=el,
        binding_resource={"leaf": binding, "elasticity": e_bind},
        top=[{"leaf": p, "elasticity": e} for p, e in ranked[: args.top]],
    )
    spreads = _spreads(args, list(el))
    if spreads:
        out["uncertainty"] = uncertainty(metric, tree, spreads, samples=args.samples)
    if args.tornado:
        rows = []
        # jitted: relaxed (non-integer) workload sizes are evaluated, not rejected
        exact = eqx.filter_jit(lambda t: metric(t, Exact()))
        for path, _ in ranked[: args.top]:
            lo = float(exact(_scaled(tree, path, 1 - args.range)))
            hi = float(exact(_scaled(tree, path, 1 + args.range)))
            rows.append((path, lo, hi))
        from .plots import tornado

        written = tornado(
            rows,
            nominal,
            path=args.tornado,
            title=f"{args.metric} of {model.name} on {cluster.name}: each leaf ±"
            f"{100 * args.range:.0f}%",
            xlabel=f"{args.metric} [s]",
        )
        out["tornado"] = str(written)
    return out


def _scaled(tree, path, factor):
    parts = path.split(".")

    def get(t):
        t = t[parts[0]]
        for p in parts[1:]:
            t = getattr(t, p)
        return t

    return eqx.tree_at(get, tree, get(tree) * factor)


def print_sensitivity(out: dict):
    """Human-readable sensitivity report."""
    print(f"{out['metric']} = {out['value']:.4g} s")
    b = out["binding_resource"]
    print(f"binding resource: {b['leaf']} (elasticity {b['elasticity']:+.3f})")
    print("largest elasticities d log metric / d log leaf:")
    for row in out["top"]:
        print(f"  {row['leaf']:<40} {row['elasticity']:+.4f}")
    if "uncertainty" in out:
        u = out["uncertainty"]
        print(
            f"uncertainty: ±{100 * u['first_order_rel_std']:.2f}% (first order), "
            f"±{100 * u['monte_carlo_rel_std']:.2f}% (Monte Carlo); 95% band "
            f"[{u['p025']:.4g}, {u['p975']:.4g}] s"
        )
    if "tornado" in out:
        print(f"tornado chart: {out['tornado']}")
