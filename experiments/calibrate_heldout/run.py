"""Held-out accuracy of the calibrated model (the VALIDATION.md tables of issue #6).

For every device with measured rows, fits the default leaves (`diffperf calibrate`'s)
starting from and regularized toward the project-default priors (never from the
bundled, already calibrated values, which have seen every row), and reports for every
row three errors on the Exact model:
  - uncalibrated: the prior (datasheet + project default) values,
  - train: the full-data fit (in-sample),
  - held-out: the fit of the fold that did not see the row (leave-one-source-out when
    the device has rows from ≥ 2 sources, else 5-fold).
Training rows count for the chip their spec extends (dgx_a100_40gb → a100_sxm4_40gb);
serving rows for their own spec (Splitwise's vLLM DGX-A100 and TensorRT-LLM's A100
are different software, with different host costs). Serving fits keep the chip
efficiency leaves of the bundled specs (fitted on training rows, other data).

Usage:
    python experiments/calibrate_heldout/run.py [--kind training|inference|both]
        [--steps 150] [--holdout auto|kfold] [--devices h100_sxm,...]

Writes results_training.json / results_inference.json next to this file and prints
the markdown tables.
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = {
    "training": ROOT / "data" / "training_calibration.csv",
    "inference": ROOT / "data" / "inference_calibration.csv",
}


def heldout(kind: str, *, steps: int, scheme: str = "auto", only=None) -> dict:
    """Per-device fits and per-row errors of one CSV (`only`: these devices)."""
    _, csv_rows = dp.read_measurements(DATA[kind])
    rows, index, skipped = dp.measured_rows(kind, csv_rows)
    per_row, fits = [], {}
    devices = dp.rows_by_device(rows, by_family=kind == "training")
    for device, ks in devices.items():
        if only and device not in only:
            continue
        t0 = time.perf_counter()
        dev_rows = [rows[k] for k in ks]
        n_src = len({r.source for r in dev_rows})
        kfold = f"kfold:{min(5, len(ks))}"
        holdout = "source" if n_src >= 2 and scheme == "auto" else kfold
        paths = dp.default_leaves(kind, dev_rows)
        priors = dp.leaf_priors(
            kind, paths, dp.load_hardware(device), center="defaults"
        )
        fit = dp.calibrate(dev_rows, priors, holdout=holdout, steps=steps)
        for j, k in enumerate(ks):
            csv = csv_rows[index[k]]
            per_row.append(
                dict(
                    row=index[k], device=device, gpu=rows[k].spec,
                    source=rows[k].source, family=dp.model_family(csv["model"]),
                    uncalibrated=fit["row_uncalibrated_ape"][j],
                    train=fit["row_ape"][j], heldout=fit["row_heldout_ape"][j],
                )
            )  # fmt: skip
        fits[device] = {
            k: fit[k]
            for k in (
                "rows",
                "leaves",
                "train_mape",
                "uncalibrated_mape",
                "heldout_mape",
                "heldout",
            )  # fmt: skip
        } | dict(holdout=holdout)
        print(
            f"{device:<16} {len(ks):4d} rows {holdout:<7} uncal "
            f"{100 * fit['uncalibrated_mape']:5.1f}%  train "
            f"{100 * fit['train_mape']:5.1f}%  held-out "
            f"{100 * fit['heldout_mape']:5.1f}%  ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return dict(rows=per_row, fits=fits, skipped=len(skipped))


def tables(result: dict) -> str:
    """Markdown: overall, per source, per GPU, per model family."""
    rows = result["rows"]
    out = []
    for title, key in (
        ("source", "source"),
        ("GPU", "gpu"),
        ("model family", "family"),
    ):
        groups = defaultdict(list)
        for r in rows:
            groups[r[key]].append(r)
        groups["**all**"] = rows
        out += [
            f"| {title} | rows | uncalibrated | calibrated, held-out | "
            "calibrated, in-sample |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, rs in sorted(groups.items(), key=lambda kv: kv[0] == "**all**"):
            m = {c: 100 * np.mean([r[c] for r in rs]) for c in
                 ("uncalibrated", "heldout", "train")}  # fmt: skip
            out.append(
                f"| {name[:60]} | {len(rs)} | {m['uncalibrated']:.1f}% | "
                f"{m['heldout']:.1f}% | {m['train']:.1f}% |"
            )
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("training", "inference", "both"), default="both")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument(
        "--holdout", choices=("auto", "kfold"), default="auto",
        help="auto: leave-one-source-out where ≥ 2 sources, else 5-fold",
    )  # fmt: skip
    ap.add_argument(
        "--devices", help="comma-separated devices to fit (default all); the JSON "
        "file name then ends with them",
    )  # fmt: skip
    args = ap.parse_args(argv)
    only = args.devices.split(",") if args.devices else None
    for kind in ("training", "inference") if args.kind == "both" else (args.kind,):
        result = heldout(kind, steps=args.steps, scheme=args.holdout, only=only)
        result |= dict(steps=args.steps)
        suffix = "" if args.holdout == "auto" else "_kfold"
        suffix += "_" + "_".join(only) if only else ""
        (HERE / f"results_{kind}{suffix}.json").write_text(json.dumps(result, indent=1))
        print(f"## {kind}\n\n{tables(result)}")


if __name__ == "__main__":
    main()
