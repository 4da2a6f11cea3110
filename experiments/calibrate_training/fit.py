"""Fit the calibratable leaves of each training device to measured runs.

For every chip spec with rows in data/training_calibration.csv, fits the leaves of
`dp.default_leaves` (`diffperf.analysis.calibrate.TRAIN_LEAVES`)

    chip.matmul_efficiency, chip.matmul_half_dim, chip.attention_efficiency,
    chip.fp8_efficiency, chip.fp4_efficiency, chip.kernel_overhead,
    scale_out.efficiency, host.dispatch_overhead, host.sync_overhead,
    host.step_overhead

(`chip.matmul_efficiency` only for devices with fewer than 20 rows), the same values
for every row of a device, with `diffperf calibrate`'s machinery (`dp.calibrate`:
source-balanced MAP fit in log space, optax Adam on the Smooth model, box bounds),
starting from and regularized toward the values in the spec. Rows of systems that
extend a chip file (e.g. dgx_a100_40gb → a100_sxm4_40gb) count for that chip.
Held-out errors: experiments/calibrate_heldout/run.py.

Usage:
    python experiments/calibrate_training/fit.py            # fit and report
    python experiments/calibrate_training/fit.py --write    # also patch hardware/*.toml

Writes fitted.json next to this file.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def fit_devices(kind: str, data, *, steps: int, by_family: bool) -> dict:
    """{device: {rows, values, train_mape}} for every device with rows."""
    _, csv_rows = dp.read_measurements(data)
    rows, _, _ = dp.measured_rows(kind, csv_rows)
    fitted = {}
    for device, ks in dp.rows_by_device(rows, by_family=by_family).items():
        items = [rows[k] for k in ks]
        paths = dp.default_leaves(kind, items)
        priors = dp.leaf_priors(kind, paths, dp.load_hardware(device), center="spec")
        fit = dp.calibrate(items, priors, holdout=None, steps=steps)
        fitted[device] = dict(
            rows=len(items), values=fit["values"], train_mape=fit["train_mape"]
        )
        print(
            f"{device:<18} {len(items):4d} rows  MAPE {100 * fit['train_mape']:.1f}%  "
            + "  ".join(
                f"{p.split('.')[-1]}={v:.4g}" for p, v in fit["values"].items()
            ),
            flush=True,
        )
    return fitted


def write(fitted: dict, note: str):
    """Patch the fitted values into hardware/<device>.toml (`# calibrated:` notes)."""
    for device, fit in fitted.items():
        path = ROOT / "hardware" / f"{device}.toml"
        dp.patch_toml(path, fit["values"], f"{note} ({fit['rows']} rows)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "training_calibration.csv"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--write", action="store_true", help="patch hardware/*.toml")
    ap.add_argument(
        "--apply", action="store_true", help="only patch TOMLs from fitted.json"
    )
    args = ap.parse_args(argv)
    note = "experiments/calibrate_training"
    if args.apply:
        write(json.loads((HERE / "fitted.json").read_text()), note)
        return
    t0 = time.perf_counter()
    fitted = fit_devices("training", args.data, steps=args.steps, by_family=True)
    if args.write:
        write(fitted, note)
    (HERE / "fitted.json").write_text(json.dumps(fitted, indent=1, sort_keys=True))
    print(
        f"fitted {len(fitted)} devices in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
