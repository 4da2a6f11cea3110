"""`diffperf trace train|infer` (Chrome/Perfetto timeline) and `diffperf roofline`."""

import json
from pathlib import Path

from . import jobs as _cli

__all__ = [
    "add_trace",
    "run_trace",
    "print_trace",
    "add_roofline",
    "run_roofline",
    "print_roofline",
]


def add_trace(sub):
    """The `trace train|infer` subcommands."""
    p = sub.add_parser("trace", help="Chrome/Perfetto trace of one step")
    jobs = p.add_subparsers(dest="job", required=True, parser_class=type(p))
    for job, add, what in (
        ("train", _cli.train_arguments, "one training step"),
        ("infer", _cli.infer_arguments, "one prefill and one decode step"),
    ):
        q = jobs.add_parser(job, help=f"trace of {what}")
        add(q)
        q.add_argument("--out", required=True, help="trace JSON (chrome://tracing)")
        q.add_argument("--png", help="stacked-bar PNG of the per-term breakdown")
        q.add_argument(
            "--vs", action="append", default=[], metavar="FLAG=VALUE[,FLAG=VALUE]",
            help="another bar in --png: these flags changed, e.g. 'tp=4,pp=4' or "
            "'hardware=gb200' (repeatable)",
        )  # fmt: skip
        q.add_argument("--json", action="store_true")
        q.set_defaults(parser=q)


def _writable(flag: str, path: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise _cli.UsageError(f"{flag}={path!r}: folder {str(out.parent)!r} not found")
    return out


def _write_json(flag: str, path: Path, obj: dict):
    try:
        path.write_text(json.dumps(obj))
    except OSError as e:
        raise _cli.UsageError(
            f"{flag}={str(path)!r}: cannot write: {e.strerror}"
        ) from None


def _variant(args, text: str):
    """A copy of `args` with the flags of one --vs item changed (parsed as flags)."""
    import copy

    tokens = ["--hardware", args.hardware, "--model", args.model, "--gpus",
              str(args.gpus), "--out", args.out]  # fmt: skip
    for item in text.split(","):
        flag, eq, value = item.strip().partition("=")
        if not flag or flag in ("out", "png", "vs", "json"):
            raise _cli.UsageError(
                f"each item must be FLAG=VALUE with FLAG a {args.job} flag (without "
                "--), e.g. tp=4"
            )
        tokens += [f"--{flag}"] + ([value] if eq else [])
    base = copy.copy(args)
    base.vs = []
    base.set = list(args.set)  # --vs set=... appends: not to the original's list
    return args.parser.parse_args(tokens, namespace=base)


def _with_vs(text: str, fn, *a):
    """fn(*a), with errors reported against the --vs item that caused them."""
    try:
        return fn(*a)
    except ValueError as e:  # UsageError, or a mapping that does not fit the model
        raise _cli.UsageError(f"--vs={text!r}: {e}") from None


def _train_terms(args):
    from ..model.train import train_step

    cluster, model, mapping = _cli.train_job(args)
    b = train_step(cluster, model, mapping)
    return {k: float(v) for k, v in b.terms().items()}


def _infer_terms(args):
    from ..model.phases import decode_step, prefill

    cluster, model, serving, _ = _cli.infer_job(args)
    _cli.check_serving(model, serving)
    return (
        {k: float(v) for k, v in prefill(cluster, model, serving).terms().items()},
        {k: float(v) for k, v in decode_step(cluster, model, serving).terms().items()},
    )


def run_trace(args) -> dict:
    """Write the trace (and the bar chart); return the summary."""
    from ..model.trace import infer_trace, train_trace
    from ..viz import plots

    out = _writable("--out", args.out)
    png = _writable("--png", args.png) if args.png else None
    variants = [(text, _with_vs(text, _variant, args, text)) for text in args.vs]
    if args.job == "train":
        cluster, model, mapping = _cli.train_job(args)
        trace, b = train_trace(cluster, model, mapping)
        terms = {k: float(v) for k, v in b.terms().items()}
        hidden = {f"{k} (overlapped)": float(v) for k, v in b.overlapped().items()}
        columns = [("step (exposed)", terms), ("hidden comm", hidden)]
        if variants:
            columns = [("as given", terms)]
            columns += [(t, _with_vs(t, _train_terms, v)) for t, v in variants]
        summary = dict(step_time_s=float(b.total), breakdown=terms, overlapped=hidden)
        unit, unit_name, shares = 1.0, "s", False
    else:
        cluster, model, serving, _ = _cli.infer_job(args)
        trace, pre, dec = infer_trace(cluster, model, serving)
        pt = {k: float(v) for k, v in pre.terms().items()}
        dt = {k: float(v) for k, v in dec.terms().items()}
        columns = [("prefill", pt), ("decode step", dt)]
        for text, v in variants:
            vp, vd = _with_vs(text, _infer_terms, v)
            columns += [(f"{text}\nprefill", vp), (f"{text}\ndecode step", vd)]
        summary = dict(
            step_time_s=float(pre.total + dec.total),
            ttft_s=float(pre.total),
            tpot_s=float(dec.total),
            breakdown={"prefill": pt, "decode_step": dt},
        )
        unit, unit_name, shares = 1e-3, "ms", True
    _write_json("--out", out, trace)
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    critical = sum(e["dur"] for e in events if e["args"]["critical"]) * 1e-6
    summary = (
        dict(out=str(out), n_events=len(events), critical_path_s=critical)
        | trace["otherData"]
        | summary
    )
    if png is not None:
        title = f"{model.name} on {cluster.name}: {args.job} step breakdown"
        columns = [(c, t) for c, t in columns if any(v > 0 for v in t.values())]
        plots.breakdown_bars(
            columns,
            title=title,
            path=png,
            unit=unit,
            unit_name=unit_name,
            shares=shares,
        )
        summary["png"] = str(png)
        summary["png_bars"] = [label for label, _ in columns]
    return summary


def print_trace(out: dict):
    """Human-readable trace summary."""
    print(
        f"{out['model']} on {out['hardware']}: wrote {out['n_events']} events to "
        f"{out['out']} (open in https://ui.perfetto.dev or chrome://tracing)"
    )
    if "schedule" in out:
        print(
            f"  {out['schedule']} schedule, pp={out['pp']}, vpp={out['vpp']}, "
            f"{out['microbatches']} microbatches; stages drawn: "
            f"{', '.join(map(str, out['stages_drawn']))}"
        )
    else:
        print(f"  TTFT {1e3 * out['ttft_s']:.4g} ms, TPOT {1e3 * out['tpot_s']:.4g} ms")
    print(
        f"  step time {out['step_time_s']:.6g} s; critical-path events add up to "
        f"{out['critical_path_s']:.6g} s"
    )
    if "png" in out:
        print(f"  breakdown chart: {out['png']}")


def add_roofline(sub):
    """The `roofline` subcommand."""
    from ..model.roofline import PHASES

    p = sub.add_parser("roofline", help="roofline of a device with the model's ops")
    _cli.infer_arguments(p)
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)} (train: a microbatch of --batch "
        "sequences of --input-len tokens)",
    )
    p.add_argument("--out", required=True, help="roofline PNG")
    p.add_argument("--json", action="store_true")


def run_roofline(args) -> dict:
    """The roofline points and ceilings; write the PNG."""
    from ..model.roofline import PHASES, ceilings, roofline_points
    from ..viz import plots

    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        raise _cli.UsageError(
            f"--phases={args.phases!r} must be a comma-separated list of "
            f"{', '.join(PHASES)}"
        )
    out = _writable("--out", args.out)
    cluster, model, serving, _ = _cli.infer_job(args)
    _cli.check_serving(model, serving)
    points = roofline_points(cluster, model, serving, phases)
    ceil = ceilings(cluster, model.precision.math)
    plots.roofline(
        points,
        ceil,
        path=out,
        title=f"{model.name} on {cluster.name} (tp={args.tp}, batch={args.batch}, "
        f"{args.input_len} in / {args.output_len} out), one layer on one chip",
    )
    return dict(
        out=str(out),
        hardware=cluster.name,
        model=model.name,
        ceilings=ceil,
        points=points,
    )


def print_roofline(out: dict):
    """Human-readable roofline table."""
    c = out["ceilings"]
    print(
        f"{out['model']} on {out['hardware']}: ridge at "
        f"{c['ridge_intensity']:.4g} FLOP/B ({c['math_dtype']}); wrote {out['out']}"
    )
    print(f"  {'phase':<8} {'op':<12} {'FLOP/B':>9} {'TFLOP/s':>9}  bound")
    for p in out["points"]:
        print(
            f"  {p['phase']:<8} {p['op']:<12} {p['intensity']:9.4g} "
            f"{p['achieved_flops_per_s'] / 1e12:9.4g}  {p['bound']}"
        )
