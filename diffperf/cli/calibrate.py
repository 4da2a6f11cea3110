"""`diffperf calibrate`: fit a device's leaves to a measurement CSV, held-out error.

Reads a training or inference CSV (the columns of `data/training_calibration.csv` or
`data/inference_calibration.csv`), keeps the rows of the hardware H or of specs that
extend it (`[meta] extends`: dgx_a100 rows count for a100_sxm4_80gb), fits the leaves
with `dp.calibrate` and writes a hardware TOML that extends H with the
fitted values (`--out`). The bundled hardware files are never modified by the CLI;
`dp.patch_toml` (used by the experiment scripts' `--write`) rewrites one in place.
The row resolution, grouping, default leaves and priors are
`diffperf.validation.calibration`'s (public as `dp.measured_rows`, ...).

`--kernels SYSTEM` fits instead the op model's efficiency leaves to the measured
kernel tables of `aiconfigurator-core` (the optional extra `diffperf[kernels]`):
`dp.fit_kernels` on `dp.read_kernel_tables(SYSTEM, backend, version)`, for the bundled
hardware of that system (or `--hardware`); it prints the fitted leaves, the per-op
MAPE before and after, the leaves on a bound and the tables read (`--out` writes the
JSON). No hardware file is modified.
"""

import datetime
import json
import math
from pathlib import Path

from .. import io
from ..analysis.calibrate import calibrate
from ..analysis.hierarchy import ROBUST, calibrate_hierarchy
from ..analysis.kernels import fit_kernels
from ..io.kernels import SYSTEMS, read_kernel_tables
from ..validation.calibration import (
    HIERARCHY_HARDWARE,
    HIERARCHY_SERVE_STACK,
    HIERARCHY_STACK,
    default_leaves,
    hierarchy_levels,
    hierarchy_priors,
    leaf_priors,
    measured_rows,
)
from ..validation.run import read_measurements
from ..validation.training import spec_family

__all__ = [
    "add_calibrate",
    "run_calibrate",
    "print_calibrate",
    "fitted_toml",
    "run_kernel_calibrate",
    "print_kernel_calibrate",
]


def add_calibrate(sub):
    """The `calibrate` subcommand."""
    p = sub.add_parser("calibrate", help="fit a device's leaves to measured rows")
    p.add_argument(
        "--data", action="append",
        help="training or inference CSV (repeat --data to fit several files at once "
        "with --hierarchical; not with --kernels)",
    )  # fmt: skip
    p.add_argument("--hardware", help="name, alias or TOML path (per-device fit)")
    p.add_argument(
        "--hierarchical", action="store_true",
        help="fit every row jointly: hardware leaves at global, family and device "
        "levels, software leaves per stack (dp.calibrate_hierarchy)",
    )  # fmt: skip
    p.add_argument(
        "--kernels",
        metavar="SYSTEM",
        help="fit to aiconfigurator-core's kernel tables of SYSTEM (e.g. h100_sxm; "
        "needs the extra diffperf[kernels])",
    )
    p.add_argument(
        "--backend",
        default="trtllm",
        choices=("trtllm", "vllm", "sglang"),
        help="kernel tables' framework (with --kernels)",
    )
    p.add_argument("--version", help="kernel tables' framework version (--kernels)")
    p.add_argument(
        "--leaves", help="comma-separated leaf paths (default: the usual ones)"
    )
    p.add_argument(
        "--holdout",
        default="auto",
        help="source | kfold:K | none (default: source if ≥ 2 sources, else kfold:5);"
        " with --hierarchical also device | stack (default device)",
    )
    p.add_argument(
        "--prior",
        choices=("defaults", "spec"),
        default="defaults",
        help="prior centre and start: project defaults, or the spec's values",
    )
    p.add_argument("--steps", type=int, default=150, help="Adam steps")
    p.add_argument(
        "--robust", type=float, default=ROBUST, metavar="DELTA",
        help="--hierarchical: δ of the rows' pseudo-Huber loss in log units (default "
        f"{ROBUST:g}: squared within ~δ, absolute beyond); 0 for the squared loss",
    )  # fmt: skip
    p.add_argument("--out", help="write the fitted hardware TOML here")
    p.add_argument("--json", action="store_true")


def run_calibrate(args) -> dict:
    """Run `diffperf calibrate` (see the module docstring); the JSON result."""
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be >= 1")
    if args.kernels:
        return run_kernel_calibrate(args)
    if not args.data:
        raise ValueError("calibrate needs --data (or --kernels SYSTEM)")
    if args.hierarchical:
        return run_hierarchy(args)
    if not args.hardware:
        raise ValueError("--hardware is required (or --hierarchical to fit all rows)")
    if len(args.data) > 1:
        raise ValueError("several --data files need --hierarchical")
    args.data = args.data[0]
    cluster = io.load_hardware(args.hardware)
    kind, csv_rows = read_measurements(args.data)
    member = {
        g: _in_family(g, cluster.name) for g in {r.get("gpu", "") for r in csv_rows}
    }
    mine = [i for i, row in enumerate(csv_rows) if member[row.get("gpu", "")]]
    rows, index, _ = measured_rows(kind, [csv_rows[i] for i in mine])
    index = [mine[i] for i in index]  # back to the CSV's row numbers
    keep = [k for k, r in enumerate(rows) if cluster.name in spec_family(r.spec)]
    if not keep:
        raise ValueError(
            f"--hardware={args.hardware!r}: no resolvable {kind} rows of "
            f"{cluster.name} (or of a spec extending it) in {args.data}"
        )
    rows, index = [rows[k] for k in keep], [index[k] for k in keep]
    if args.leaves:
        paths = [p.strip() for p in args.leaves.split(",") if p.strip()]
    else:
        paths = default_leaves(kind, rows)
    priors = leaf_priors(kind, paths, cluster, center=args.prior)
    holdout = args.holdout
    if holdout == "auto":
        holdout = "source" if len({r.source for r in rows}) >= 2 else "kfold:5"
    from .progress import progress

    with progress(args, "calibrating", total=args.steps) as update:
        fit = calibrate(
            rows, priors, holdout=None if holdout == "none" else holdout,
            steps=args.steps, progress=lambda done, total: update(done),
        )  # fmt: skip
    results = [
        dict(
            row=i,
            source=r.source,
            gpu=r.spec,
            ape=a,
            heldout_ape=h,
            uncalibrated_ape=a0,
        )  # fmt: skip
        for i, r, a, h, a0 in zip(
            index,
            rows,
            fit.pop("row_ape"),
            fit.pop("row_heldout_ape"),
            fit.pop("row_uncalibrated_ape"),
            strict=True,
        )  # fmt: skip
    ]
    out = dict(
        hardware=cluster.name, kind=kind, data=str(args.data), holdout=holdout,
        prior=args.prior, **fit, results=results,
    )  # fmt: skip
    if args.out:
        Path(args.out).write_text(fitted_toml(args.hardware, out, index))
        out["out"] = str(args.out)
    return out


def run_hierarchy(args) -> dict:
    """`diffperf calibrate --hierarchical`: all rows of all --data files jointly.

    Hardware leaves (`HIERARCHY_HARDWARE`, or --leaves) at global, family and device
    levels; software leaves (`HIERARCHY_STACK` for training, `HIERARCHY_SERVE_STACK`
    for serving) per stack; priors: the project defaults (`PRIORS`).
    """
    rows, index, kinds = [], [], set()
    for path in args.data:
        kind, csv_rows = read_measurements(path)
        kinds.add(kind)
        got, idx, _ = measured_rows(kind, csv_rows)
        rows += got
        index += [dict(data=str(path), row=i) for i in idx]
    if len(kinds) > 1:
        raise ValueError("--data: training and inference CSVs cannot be fitted jointly")
    if not rows:
        raise ValueError(f"--data: no resolvable rows in {', '.join(args.data)}")
    kind = kinds.pop()
    stack_paths = HIERARCHY_STACK if kind == "training" else HIERARCHY_SERVE_STACK
    if args.leaves:
        hw = [p.strip() for p in args.leaves.split(",") if p.strip()]
    else:
        hw = list(HIERARCHY_HARDWARE) if kind == "training" else []
    paths = list(dict.fromkeys([*hw, *stack_paths]))
    priors = hierarchy_priors(paths, kind)
    if not args.robust >= 0 or math.isinf(args.robust):
        raise ValueError(
            f"--robust={args.robust:g} must be >= 0 and finite (0: the squared loss)"
        )
    robust = args.robust if args.robust > 0 else None
    holdout = {"auto": "device", "none": None}.get(args.holdout, args.holdout)
    levels = hierarchy_levels(rows)
    from .progress import progress

    with progress(args, "calibrating", total=args.steps) as update:
        fit = calibrate_hierarchy(
            rows, levels, priors, stack_paths=stack_paths, holdout=holdout,
            steps=args.steps, robust=robust, progress=lambda done, total: update(done),
        )  # fmt: skip
    results = [
        dict(where, device=lv.device, families=list(lv.families), stack=lv.stack,
             ape=a, heldout_ape=None if h != h else h, uncalibrated_ape=a0)
        for where, lv, a, h, a0 in zip(
            index, levels, fit.pop("row_ape"), fit.pop("row_heldout_ape"),
            fit.pop("row_uncalibrated_ape"), strict=True,
        )
    ]  # fmt: skip
    return dict(
        hierarchical=True, kind=kind, data=[str(d) for d in args.data],
        holdout=holdout, robust=robust, **fit, results=results,
    )  # fmt: skip


def _print_mapes(out: dict):
    """The uncalibrated, train and held-out MAPE lines of a calibration result."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(
        f"\nMAPE: uncalibrated {pct(out['uncalibrated_mape'])}, train "
        f"{pct(out['train_mape'])}, held-out ({out['holdout']}) "
        f"{pct(out['heldout_mape'])}"
    )
    for f in out["heldout"]:
        print(f"  {f['name'][:60]:<60} {f['rows']:4d} rows  MAPE {pct(f['mape'])}")


def print_hierarchy(out: dict):
    """Human-readable summary of `run_hierarchy`'s result."""
    print(f"{out['rows']} {out['kind']} rows from {', '.join(out['data'])}")
    for level in ("global", "families", "devices", "stacks"):
        block = out["values"][level]
        items = {"global": block} if level == "global" else block
        for key, leaves in items.items():
            print(
                f"{level:<9} {key:<18} "
                + "  ".join(f"{p.split('.')[-1]}={v:.4g}" for p, v in leaves.items())
            )
    for b in out["at_bound"]:
        print(f"AT BOUND ({b['bound']}): {b['level']} {b['key']} {b['path']}")
    _print_mapes(out)


def run_kernel_calibrate(args) -> dict:
    """`diffperf calibrate --kernels SYSTEM`: the JSON result (module docstring)."""
    if args.data:
        raise ValueError("--kernels fits kernel tables: drop --data")
    rows, tables = read_kernel_tables(
        args.kernels, backend=args.backend, version=args.version
    )
    hardware = args.hardware or SYSTEMS.get(args.kernels)
    if hardware is None:
        raise ValueError(
            f"--kernels {args.kernels}: no bundled hardware for it; pass --hardware"
        )
    cluster = io.load_hardware(hardware)
    fit = fit_kernels(cluster, rows, steps=args.steps)
    fit.pop("cluster")
    out = dict(
        system=args.kernels, hardware=cluster.name, backend=args.backend,
        version=args.version, rows=len(rows), tables=tables, steps=args.steps, **fit,
    )  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        out["out"] = str(args.out)
    return out


def print_kernel_calibrate(out: dict):
    """Human-readable summary of `run_kernel_calibrate`'s result."""
    print(
        f"{out['hardware']}: {out['rows']} measured kernels of {out['system']} "
        f"({out['backend']})"
    )
    for t in out["tables"]:
        skipped = sum(t["excluded"].values())
        print(
            f"  {t['file']}: {t['rows']} rows"
            + (f", {skipped} not scored {t['excluded']}" if skipped else "")
        )
    print(f"\n{'leaf':<32} {'committed':>10} {'fitted':>10}  stage")
    for path, v in out["leaves"].items():
        flag = "  (at bound)" if v["at_bound"] else ""
        print(
            f"{path:<32} {v['committed']:>10.4g} {v['fitted']:>10.4g}  "
            f"{v['stage']}{flag}"
        )
    print(f"\n{'op':<22} {'rows':>7} {'MAPE before':>12} {'after':>8}")
    for op, b in out["before"].items():
        a = out["after"][op]
        print(
            f"{op:<22} {b['rows']:>7} {100 * b['mape']:>11.1f}% "
            f"{100 * a['mape']:>7.1f}%"
        )
    for d in out["defects"]:
        print(f"defect: {d}")
    for name, d in out["diagnostics"].items():
        vals = ", ".join(f"{p} {v:.4g}" for p, v in d["leaves"].items())
        print(f"diagnostic {name}: {vals}" + "".join(f"; {x}" for x in d["defects"]))
    if out.get("out"):
        print(f"\nwrote {out['out']}")


def _in_family(gpu: str, stem: str) -> bool:
    """Whether a CSV `gpu` text names `stem` or a spec extending it."""
    try:
        return stem in spec_family(io.resolve_path("hardware", gpu).stem)
    except ValueError:
        return False


def _base_ref(hardware: str) -> str:
    """How the fitted file names its base: the bundled stem, else an absolute path."""
    path = io.resolve_path("hardware", hardware)
    if path.parent.resolve() == io.spec_dir("hardware").resolve():
        return path.stem
    return str(path.resolve())


def fitted_toml(hardware: str, out: dict, index: list[int]) -> str:
    """A hardware TOML extending `hardware` with the fitted leaves and a `[meta]`."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    held = out["heldout_mape"]
    note = (
        f"diffperf calibrate --data {out['data']} ({out['rows']} {out['kind']} rows, "
        f"{date}): train MAPE {100 * out['train_mape']:.1f}%"
        + (
            f", held-out ({out['holdout']}) {100 * held:.1f}%"
            if held is not None
            else ""
        )
    )
    lines = [
        "[meta]",
        "schema = 1",
        f'name = "{out["hardware"]}, calibrated"',
        f'source = "{_escape(note)}"',
        f'extends = "{_escape(_base_ref(hardware))}"',
        f'calibrated = "{_escape(note)}"',
        f'calibration_data = "{_escape(out["data"])}"',
        f"calibration_rows = {index}",
        f'calibration_date = "{date}"',
    ]
    tables: dict[str, list[str]] = {}
    for path, leaf in out["leaves"].items():
        table, key = path.rsplit(".", 1)
        if "." in table:
            raise ValueError(f"--leaves: {path!r} is not a [table] key of the TOML")
        tables.setdefault(table, []).append(
            f"{key} = {leaf['fitted']:.6g}  # fitted ± {leaf['std']:.2g} "
            f"(prior {leaf['initial']:.4g}, bounds [{leaf['lower']:.3g}, "
            f"{leaf['upper']:.3g}])"
        )
    for table, entries in tables.items():
        lines += ["", f"[{table}]", *entries]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def print_calibrate(out: dict):
    """Human-readable summary of `run_calibrate`'s result."""
    if out.get("hierarchical"):
        return print_hierarchy(out)
    if "system" in out:
        return print_kernel_calibrate(out)
    print(f"{out['hardware']}: {out['rows']} {out['kind']} rows from {out['data']}")
    print(f"{'leaf':<32} {'prior':>10} {'fitted':>10} {'± std':>9}  bounds")
    for path, v in out["leaves"].items():
        flag = "  (at bound)" if v["at_bound"] else ""
        print(
            f"{path:<32} {v['initial']:>10.4g} {v['fitted']:>10.4g} "
            f"{v['std']:>9.2g}  [{v['lower']:.3g}, {v['upper']:.3g}]{flag}"
        )
    _print_mapes(out)
    if out.get("out"):
        print(f"\nwrote {out['out']}")
