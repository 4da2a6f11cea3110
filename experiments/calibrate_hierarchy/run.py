"""Hierarchical calibration of every training row: families, devices and stacks.

Fits, jointly over data/training_calibration.csv and data/training_tpu_calibration.csv,
the hardware leaves of `dp.HIERARCHY_HARDWARE` at three levels (global, architecture
family, device) and the software leaves of `dp.HIERARCHY_STACK` at two (global,
software-stack profile), starting from and shrunk toward the project-default priors
(never from the bundled values, which have seen every row): `dp.calibrate_hierarchy`.
Then the serving engines: the leaves of `dp.HIERARCHY_SERVE_STACK` of every serving
stack on data/inference_calibration.csv, with the chip leaves of the training fit.

Reports every row's error under the full fit (in-sample) and held out:
  - leave one device out: the device's residuals see none of its rows, so its family
    (and the global level) and its stack predict it: what a user meets on a new SKU;
  - leave one source out: what a user meets on a new publication / software release;
  - leave one stack out (training and serving).

Usage:
    python experiments/calibrate_hierarchy/run.py [--steps 200] [--write]

`--write` patches hardware/families/*.toml, hardware/stacks/*.toml and the device files
with the full-data fit (a device file keeps its own value only where its residual
moves the leaf by more than 2%). Writes results.json next to this file.
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRAINING = ["training_calibration.csv", "training_tpu_calibration.csv"]
SERVING = "inference_calibration.csv"
NOTE = "experiments/calibrate_hierarchy"
ENGINE_FIT = "calibrated: experiments/calibrate_engines"
ENGINE_LEAVES = ("host.serve_overhead", "chip.kernel_overhead")


def load_rows(kind: str, files: list[str]):
    """(Rows, CSV labels) of the CSV files of one kind; refusals are counted."""
    rows, labels, refused = [], [], 0
    for name in files:
        _, csv_rows = dp.read_measurements(ROOT / "data" / name)
        got, index, skipped = dp.measured_rows(kind, csv_rows)
        refused += len(skipped)
        rows += got
        for k, i in enumerate(index):
            labels.append(
                dict(csv=name, row=i, model=dp.model_family(csv_rows[i]["model"]),
                     source=got[k].source, kind=model_kind(got[k].job[0]))
            )  # fmt: skip
    return rows, labels, refused


def model_kind(model) -> str:
    """dense, moe or hybrid (Mamba layers), for the per-kind tables."""
    if float(model.ssm_fraction) > 0:
        return "hybrid"
    return "moe" if float(model.n_experts) > 0 else "dense"


def fit(rows, levels, paths, stack_paths, *, steps, holdout=(), min_rows=1,
        kind="training"):  # fmt: skip
    t0 = time.perf_counter()
    priors = dp.hierarchy_priors(paths, kind)
    out = dp.calibrate_hierarchy(
        rows, levels, priors, stack_paths=stack_paths, holdout=holdout,
        min_rows=min_rows, steps=steps,
    )  # fmt: skip
    held = ", ".join(
        f"{k} {100 * v['heldout_mape']:.1f}%" for k, v in out["schemes"].items()
    )
    print(
        f"  train {100 * out['train_mape']:.1f}%, held out: {held} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return out


def grouped(values, keys):
    """MAPE and rows of `values` per key."""
    acc = defaultdict(list)
    for v, k in zip(values, keys, strict=True):
        if v is not None and not math.isnan(v):
            acc[k].append(v)
    return {
        k: dict(rows=len(v), mape=float(np.mean(v))) for k, v in sorted(acc.items())
    }


def study(rows, labels, levels, paths, stack_paths, schemes, *, steps, kind):
    """One optimization: the full fit and every hold-out scheme's folds."""
    full = fit(rows, levels, paths, stack_paths, steps=steps, holdout=schemes,
               min_rows=10, kind=kind)  # fmt: skip
    result = dict(
        rows=len(rows), paths=list(paths), stack_paths=list(stack_paths),
        values=full["values"], residuals=full["residuals"],
        at_bound=full["at_bound"], train_mape=full["train_mape"],
        uncalibrated_mape=full["uncalibrated_mape"], heldout={},
    )  # fmt: skip
    per_row = [
        dict(lab, device=lv.device, families=list(lv.families), stack=lv.stack,
             uncalibrated=full["row_uncalibrated_ape"][i], train=full["row_ape"][i])
        for i, (lab, lv) in enumerate(zip(labels, levels, strict=True))
    ]  # fmt: skip
    for scheme, out in full["schemes"].items():
        held = out["row_heldout_ape"]
        for i, r in enumerate(per_row):
            r[f"heldout_{scheme}"] = None if math.isnan(held[i]) else held[i]
        result["heldout"][scheme] = dict(
            mape=out["heldout_mape"],
            rows=int(sum(not math.isnan(h) for h in held)),
            folds=out["heldout"],
            by_device=grouped(held, [lv.device for lv in levels]),
            by_family=grouped(held, [(lv.families or ("-",))[0] for lv in levels]),
            by_model=grouped(held, [lab["model"] for lab in labels]),
            by_kind=grouped(held, [lab["kind"] for lab in labels]),
            by_stack=grouped(held, [lv.stack for lv in levels]),
        )
    result["train_by_device"] = grouped(full["row_ape"], [lv.device for lv in levels])
    result["train_by_kind"] = grouped(full["row_ape"], [lab["kind"] for lab in labels])
    result["uncalibrated_by_device"] = grouped(
        full["row_uncalibrated_ape"], [lv.device for lv in levels]
    )
    result["per_row"] = per_row
    return result


def write(result: dict):
    """Patch families, stacks and device files with the full-data fit."""
    vals = result["values"]
    fam_dir, stack_dir = ROOT / "hardware" / "families", ROOT / "hardware" / "stacks"
    n = result["rows"]
    for fam, leaves in vals["families"].items():
        dp.patch_toml(
            fam_dir / f"{fam}.toml", leaves, f"{NOTE} (family level, {n} rows)"
        )
    for stack, leaves in vals["stacks"].items():
        dp.patch_toml(stack_dir / f"{stack}.toml", leaves, f"{NOTE} ({n} rows)")
    hardware = [p for p in result["paths"] if p not in result["stack_paths"]]
    for dev, leaves in vals["devices"].items():
        drop_leaves(ROOT / "hardware" / f"{dev}.toml", hardware)
        res = result["residuals"]["devices"][dev]
        own = {p: v for p, v in leaves.items() if abs(res[p]) > math.log(1.02)}
        if own:
            dp.patch_toml(
                ROOT / "hardware" / f"{dev}.toml", own,
                f"{NOTE} (device residual over its family)",
            )  # fmt: skip
    # families without rows take the global level
    fitted = set(vals["families"])
    for fam in dp.family_names():
        if fam not in fitted and not _extends(fam_dir / f"{fam}.toml"):
            dp.patch_toml(
                fam_dir / f"{fam}.toml",
                {p: v for p, v in vals["global"].items() if p in result["paths"]
                 and p not in result["stack_paths"]},
                f"{NOTE} (no rows: the global level)",
            )  # fmt: skip
    for stack in dp.stack_names():  # stacks of this kind without rows
        kind = dp.stack_meta(stack).get("kind")
        if stack not in vals["stacks"] and kind == result.get("kind", "training"):
            path = stack_dir / f"{stack}.toml"
            # leaves fitted on the engine's own rows (experiments/calibrate_engines)
            # are better than the global level
            own = ENGINE_FIT in path.read_text()
            dp.patch_toml(
                path,
                {p: v for p, v in vals["global"].items() if p in result["stack_paths"]
                 and not (own and p in ENGINE_LEAVES)},
                f"{NOTE} (no rows: the global level)",
            )  # fmt: skip


def merge(old: dict | None, new: dict, schemes: list[str], *, base: bool) -> dict:
    """Combine two runs of the same fit (same rows, leaves and steps).

    `base`: this run's full fit is the one written to the TOMLs (--write); it keeps
    the other run's hold-out schemes. Otherwise the earlier run stays the base and
    takes this run's schemes (their folds are fitted in another vmapped batch, so the
    full-fit values agree to float precision, not bit for bit).
    """
    same = old and old["rows"] == new["rows"] and old["paths"] == new["paths"]
    if not same:
        return new
    keep, add = (new, old) if base else (old, new)
    for scheme, block in add["heldout"].items():
        if base and scheme in schemes:
            continue
        if not base and scheme not in schemes:
            continue
        keep["heldout"][scheme] = block
        for a, b in zip(keep["per_row"], add["per_row"], strict=True):
            a[f"heldout_{scheme}"] = b.get(f"heldout_{scheme}")
    return keep


def drop_leaves(path: Path, paths: list[str]):
    """Remove the lines of `paths` (table.key) from a TOML: the family speaks."""
    out, table = [], None
    for line in path.read_text().split("\n"):
        head = line.strip()
        if head.startswith("[") and head.endswith("]"):
            table = head.strip("[]")
        key = head.split("=", 1)[0].strip() if "=" in head else None
        if key and not head.startswith("#") and f"{table}.{key}" in paths:
            continue
        out.append(line)
    path.write_text("\n".join(out))


def _extends(path: Path) -> bool:
    return "\nextends" in "\n" + path.read_text()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--kind", choices=["training", "serving", "both"], default="both")
    ap.add_argument(
        "--schemes", default="device,source,stack",
        help="hold-out schemes (comma-separated); with a subset, results.json keeps "
        "the other schemes' entries from an earlier run of the same fit",
    )  # fmt: skip
    ap.add_argument(
        "--apply", choices=["training", "serving"],
        help="only patch the TOMLs from results.json's fit of that kind (no fit)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    path = HERE / "results.json"
    if args.apply:
        write(json.loads(path.read_text())[args.apply])
        return
    old = json.loads(path.read_text()) if path.exists() else {}
    results = {}
    t0 = time.perf_counter()
    if args.kind in ("training", "both"):
        print("training", flush=True)
        rows, labels, refused = load_rows("training", TRAINING)
        levels = dp.hierarchy_levels(rows)
        paths = dp.HIERARCHY_HARDWARE + dp.HIERARCHY_STACK
        schemes = [x for x in args.schemes.split(",") if x]
        res = study(
            rows, labels, levels, paths, dp.HIERARCHY_STACK, schemes,
            steps=args.steps, kind="training",
        )  # fmt: skip
        res["refused"], res["kind"] = refused, "training"
        results["training"] = merge(old.get("training"), res, schemes, base=args.write)
        if args.write:
            write(res)
    if args.kind in ("serving", "both"):
        print("serving", flush=True)
        rows, labels, refused = load_rows("inference", [SERVING])
        levels = dp.hierarchy_levels(rows)
        paths = dp.HIERARCHY_SERVE_STACK
        schemes = [x for x in args.schemes.split(",") if x and x != "device"]
        res = study(rows, labels, levels, paths, paths, schemes, steps=args.steps,
                    kind="inference")  # fmt: skip
        res["refused"], res["kind"] = refused, "serving"
        results["serving"] = merge(old.get("serving"), res, schemes, base=args.write)
        if args.write:
            write(res)
    results["steps"] = args.steps
    # another run (e.g. --kind serving) may have written its part meanwhile
    latest = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(latest | results, indent=1, sort_keys=True))
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
