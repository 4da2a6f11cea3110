"""`diffperf sensitivity`: elasticities, binding resource, tornado, uncertainty."""

import contextlib
import os
import sys

import equinox as eqx

from ..analysis.sensitivity import sensitivity, uncertainty
from ..core.paths import scale_leaf
from ..core.relax import Exact, Smooth
from ..model.serving import serve
from ..model.train import train_step
from . import jobs as _cli

__all__ = ["add_sensitivity", "run_sensitivity"]

_METRICS = {"train": ("step_time",), "infer": ("ttft", "tpot")}


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
    from ..analysis.sensitivity import RESOURCES

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
    smooth = Smooth()  # not at import: importing diffperf must not start JAX
    if args.job == "train":
        cluster, model, mapping = _cli.train_job(args)

        def metric(tree, relax=smooth):
            return train_step(
                tree["hardware"], tree["workload"], mapping, relax=relax
            ).total
    else:
        cluster, model, serving, _ = _cli.infer_job(args)
        _cli.check_serving(model, serving)

        def metric(tree, relax=smooth):
            r = serve(tree["hardware"], tree["workload"], serving, relax=relax)
            return getattr(r, args.metric)

    tree = {"hardware": cluster, "workload": model}
    job = mapping if args.job == "train" else serving
    out = sensitivity(cluster, model, job, metric=args.metric, relax=smooth)
    el, nominal = out["elasticities"], out["value"]
    ranked = sorted(el.items(), key=lambda kv: -abs(kv[1]))
    out["top"] = [{"leaf": p, "elasticity": e} for p, e in ranked[: args.top]]
    spreads = _spreads(args, list(el))
    if spreads:
        out["uncertainty"] = uncertainty(metric, tree, spreads, samples=args.samples)
    if args.tornado:
        rows = []
        # jitted: relaxed (non-integer) workload sizes are evaluated, not rejected
        exact = eqx.filter_jit(lambda t: metric(t, Exact()))
        for path, _ in ranked[: args.top]:
            lo = float(exact(scale_leaf(tree, path, 1 - args.range)))
            hi = float(exact(scale_leaf(tree, path, 1 + args.range)))
            rows.append((path, lo, hi))
        from ..viz.plots import tornado

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


_SPEC_KEYS = {"hardware", "model", "dtype", "samples", "chunk", "seed", "mapping",
              "grid", "random", "out"}  # fmt: skip


def add_sweep(sub):
    """The `sweep` subcommand."""
    p = sub.add_parser("sweep", help="batch evaluation of a grid / random sweep")
    p.add_argument("--spec", required=True, help="sweep TOML (see README)")
    p.add_argument("--out", help="CSV of every configuration (default: next to spec)")
    p.add_argument(
        "--resume", action="store_true",
        help="reuse the finished chunks of an interrupted run of the same sweep",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", metavar="DIR",
        help="folder of finished chunks (default: OUT with the suffix .chunks)",
    )  # fmt: skip
    p.add_argument(
        "--coordinator", metavar="HOST:PORT",
        help="jax.distributed coordinator (process 0's address); 'auto' lets JAX "
        "detect Slurm / TPU / Open MPI",
    )  # fmt: skip
    p.add_argument("--num-processes", type=_cli.positive_int("--num-processes"))
    p.add_argument("--process-id", type=int)
    p.add_argument("--json", action="store_true")


def _distributed(args) -> tuple[int, int]:
    """Start jax.distributed when asked; (process index, process count)."""
    import jax

    given = [args.num_processes is not None, args.process_id is not None]
    if args.coordinator is None:
        if any(given):
            raise _cli.UsageError(
                "--num-processes/--process-id need --coordinator HOST:PORT"
            )
        return 0, 1
    if args.coordinator == "auto":
        if any(given):
            raise _cli.UsageError(
                "--coordinator auto detects the processes; drop --num-processes "
                "and --process-id"
            )
        jax.distributed.initialize()
        return jax.process_index(), jax.process_count()
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _cli.UsageError(
            f"--coordinator={args.coordinator!r} must be HOST:PORT (port 1..65535) "
            "or auto"
        )
    if not all(given):
        raise _cli.UsageError(
            "--coordinator HOST:PORT needs --num-processes N and --process-id I"
        )
    if not 0 <= args.process_id < args.num_processes:
        raise _cli.UsageError(
            f"--process-id={args.process_id} must be in [0, "
            f"--num-processes={args.num_processes})"
        )
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    return args.process_id, args.num_processes


def _sweep_spec(args) -> tuple:
    """(spec path, spec dict, cluster, model, mapping) of --spec, checked."""
    import tomllib
    from pathlib import Path

    from .. import io
    from ..specs.mapping import Parallelism
    from ..specs.workload import Precision

    spec_path = Path(args.spec)
    try:
        spec = tomllib.loads(spec_path.read_text())
    except OSError as e:
        raise _cli.UsageError(
            f"--spec={args.spec!r}: cannot read: {e.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise _cli.UsageError(f"--spec={args.spec!r}: malformed TOML: {e}") from None
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise _cli.UsageError(
            f"sweep spec: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_SPEC_KEYS))}"
        )
    for key in ("hardware", "model"):
        if key not in spec:
            raise _cli.UsageError(f"sweep spec: missing key {key!r}")
    cluster = io.load_hardware(spec["hardware"])
    model = io.load_workload(spec["model"])
    model = _cli.with_precision(model, Precision.training(spec.get("dtype", "bf16")))
    try:
        mapping = Parallelism(**spec.get("mapping", {}))
    except TypeError as e:
        raise _cli.UsageError(f"sweep spec [mapping]: {e}") from None
    return spec_path, spec, cluster, model, mapping


def run_sweep(args) -> dict:
    """Evaluate the sweep of a TOML spec; write the CSV and its Pareto front.

    With --coordinator the sweep is split over jax.distributed processes; process 0
    writes the CSV. Finished chunks are kept in the checkpoint folder until the CSV is
    written; --resume reuses them.
    """
    index, count = _distributed(args)  # before any JAX computation
    with _stdout_to_stderr(count > 1):  # Gloo prints its connection log on stdout
        return _run_sweep(args, index, count)


def _run_sweep(args, index: int, count: int) -> dict:
    from pathlib import Path

    import numpy as np

    from ..analysis.sweep import OUTPUTS, sweep
    from ..io import SweepCheckpoint
    from .progress import progress

    spec_path, spec, cluster, model, mapping = _sweep_spec(args)
    out_path = Path(args.out or spec.get("out") or spec_path.with_suffix(".csv"))
    store = SweepCheckpoint(
        args.checkpoint or out_path.with_suffix(".chunks"), resume=args.resume
    )
    try:
        with progress(args, "evaluating") as update:
            res = sweep(
                cluster, model, mapping, grid=spec.get("grid", {}),
                random=spec.get("random", {}), samples=int(spec.get("samples", 10000)),
                seed=int(spec.get("seed", 0)), chunk=int(spec.get("chunk", 65536)),
                progress=lambda k, total: update(k, total=total), store=store,
            )  # fmt: skip
    except KeyboardInterrupt:
        held = len(store.held())
        raise _cli.Interrupted(
            f"interrupted: {held} finished chunk(s) kept in {store.path}; run the "
            "same command with --resume to complete the sweep"
        ) from None
    names, values, outputs, front = res.names, res.values, res.outputs, res.pareto
    header = names + list(OUTPUTS)
    rows = np.concatenate([values, outputs], axis=1)
    pareto_path = out_path.with_name(out_path.stem + ".pareto.csv")
    if index == 0:
        _write_csv(out_path, header, rows)
        _write_csv(pareto_path, header, rows[front])
    if count == 1:
        store.clear(last=True)  # the CSV is written: the chunks are not needed
    else:  # each process clears its chunks once process 0 has written the CSV,
        from jax.experimental import multihost_utils  # then process 0 the folder

        multihost_utils.sync_global_devices("diffperf sweep: csv written")
        store.clear(last=False)
        multihost_utils.sync_global_devices("diffperf sweep: chunks cleared")
        if index == 0:
            store.clear(last=True)
    best = None
    if res.best is not None:
        best = {h: float(v) for h, v in zip(header, rows[res.best], strict=True)}
    feasible = outputs[:, OUTPUTS.index("feasible")] > 0.5
    timing, invalid = res.timing, res.invalid_mappings
    return dict(
        n_configs=int(len(values)),
        n_invalid_mappings=int(invalid),
        n_feasible=int(feasible.sum()),
        configs_per_s=timing["configs_per_s"],
        seconds=timing["seconds"],
        compile_s=timing["compile_s"],
        chunks=timing["chunks"],
        chunks_computed=timing["chunks_computed"],
        chunks_resumed=timing["chunks_loaded"],
        process_id=index,
        num_processes=count,
        devices=[str(d) for d in _local_devices()],
        best=best,
        pareto_size=int(front.sum()),
        out=str(out_path) if index == 0 else None,
        pareto=str(pareto_path) if index == 0 else None,
    )


@contextlib.contextmanager
def _stdout_to_stderr(active: bool):
    """Send file descriptor 1 to stderr (C libraries' prints) so --json stays clean."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _local_devices():
    import jax

    return jax.local_devices()


def _write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows.tolist())


def print_sweep(out: dict):
    """Human-readable sweep summary."""
    print(
        f"{out['n_configs']} configurations ({out['n_invalid_mappings']} invalid "
        f"mappings dropped), {out['n_feasible']} fit in memory; "
        f"{out['configs_per_s']:.3g} configs/s after {out['compile_s']:.2f} s "
        f"compile on {', '.join(out['devices'])}"
        + (f" (process {out['process_id']} of {out['num_processes']})"
           if out["num_processes"] > 1 else "")
        + (f"; {out['chunks_resumed']} of {out['chunks']} chunks resumed"
           if out["chunks_resumed"] else "")
    )  # fmt: skip
    if out["best"]:
        best = ", ".join(f"{k}={v:.4g}" for k, v in out["best"].items())
        print(f"fastest feasible: {best}")
    if out["out"] is None:
        print("process 0 writes the CSV")
        return
    print(f"wrote {out['out']} and its Pareto front (time vs $/M tokens, "
          f"{out['pareto_size']} points) {out['pareto']}")  # fmt: skip
