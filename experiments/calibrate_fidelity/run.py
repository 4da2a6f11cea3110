"""Speed and accuracy of the two fidelity tiers (roofline vs detailed).

Speed: compile time, evaluations/s (best of `--repeats` calls) and evaluations per
CPU-second (median; robust to other jobs on a shared machine) of
`jax.jit(jax.vmap(train_step))` and of `serve` over a batch of clusters (peak
FLOP/s, HBM and link bandwidths scaled ±20%), Exact model, on this machine's CPU.
Accuracy: `diffperf validate --fidelity T` MAPE on the bundled training and inference
calibration data.

Usage:
    python experiments/calibrate_fidelity/run.py [--batch 65536] [--repeats 10]
        [--skip-accuracy]

Writes (updates) results.json next to this file.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def speed(fidelity: str, batch: int, repeats: int) -> dict:
    """Compile seconds and evaluations/s of a vmapped training step and serving."""
    cluster = dp.load_hardware("h100_sxm")
    model = dp.load_workload("llama3_70b")
    mapping = dp.Parallelism(tp=8, pp=4, dp=8, microbatch=1, global_batch=512,
                             recompute="selective", sequence_parallel=True)  # fmt: skip
    serving = dp.Serving(tp=8, batch=32, input_len=2048, output_len=256)
    scales = jnp.linspace(0.8, 1.2, batch)
    out = {}
    jobs = {
        "train_step": lambda c: (
            dp.train_step(c, model, mapping, fidelity=fidelity).total
        ),  # fmt: skip
        "serve": lambda c: dp.serve(c, model, serving, fidelity=fidelity).e2e_latency,
    }
    for name, f in jobs.items():

        def one(s, f=f):  # every resource varies: nothing can be hoisted
            c = cluster
            for path in ("chip.flops_bf16", "chip.hbm_bandwidth", "scale_up.bandwidth",
                         "scale_out.bandwidth"):  # fmt: skip
                c = dp.scale_leaf(c, path, s)
            return f(c)

        g = jax.jit(jax.vmap(one))
        t0 = time.perf_counter()
        g.lower(scales).compile()
        compile_s = time.perf_counter() - t0
        g(scales).block_until_ready()
        wall, cpu = [], []  # the machine is shared: best wall time, median CPU time
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            g(scales).block_until_ready()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = dict(
            compile_s=compile_s,
            evaluations_per_s=batch / min(wall),
            evaluations_per_cpu_s=batch / float(np.median(cpu)),
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args(argv)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for fidelity in ("roofline", "detailed"):
        results.setdefault(fidelity, {})
        results[fidelity]["speed"] = speed(fidelity, args.batch, args.repeats)
        results[fidelity]["speed_batch"] = args.batch
        if not args.skip_accuracy:
            for kind in ("training", "inference"):
                rep = dp.validate(ROOT / "data" / f"{kind}_calibration.csv",
                                  fidelity=fidelity)  # fmt: skip
                results[fidelity][kind] = dict(
                    rows_predicted=rep["rows_predicted"], mape=rep["mape"],
                    median_ape=rep["median_ape"],
                    by_source={k: v["mape"] for k, v in rep["by_source"].items()},
                )  # fmt: skip
        print(fidelity, json.dumps(results[fidelity], indent=1), flush=True)
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
