"""Fit the serving-overhead leaves of each inference device to measured runs.

For every hardware spec named by rows of data/inference_calibration.csv (the system file
when a row names a system, e.g. dgx_a100 for Splitwise's DGX-A100), fits

    host.serve_overhead, host.dispatch_overhead

(the same values for every row of that spec, never per row; the CPU launch cost is not
fitted for specs whose rows all replay captured graphs, and starts at 30 µs, where it
binds) with `diffperf calibrate`'s machinery (`dp.calibrate`), on each row's
metric (TTFT, TPOT, end-to-end latency or 1/throughput). Chip efficiency leaves keep
their training calibration. Held-out errors: experiments/calibrate_heldout/run.py.

Usage:
    python experiments/calibrate_inference/fit.py [--steps 100] [--write]

Writes fitted.json next to this file; --write patches hardware/<spec>.toml.
"""

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "calibrate_training"))
from fit import fit_devices, write  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "inference_calibration.csv"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fitted = fit_devices("inference", args.data, steps=args.steps, by_family=False)
    if args.write:
        write(fitted, "experiments/calibrate_inference")
    (HERE / "fitted.json").write_text(json.dumps(fitted, indent=1, sort_keys=True))
    print(
        f"fitted {len(fitted)} specs in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
