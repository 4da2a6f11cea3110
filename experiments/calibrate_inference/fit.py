"""Fit the serving-overhead leaves of each inference device to measured runs.

For every hardware spec named by rows of data/inference_calibration.csv (the system file
when a row names a system, e.g. dgx_a100 for Splitwise's DGX-A100), fits

    host.serve_overhead, host.dispatch_overhead

(the same values for every row of that spec, never per row) by minimizing the mean
squared log error of each row's metric (TTFT, TPOT, end-to-end latency or throughput),
with optax Adam in log space under the Smooth model and box bounds. Chip efficiency
leaves keep their training calibration. The CPU launch cost starts at 30 µs per op,
where it binds, since a gradient cannot discover a cost that is hidden at the start;
it is not fitted for specs whose rows all replay captured graphs.

Usage:
    python experiments/calibrate_inference/fit.py [--steps 100] [--write]

Writes fitted.json next to this file; --write patches hardware/<spec>.toml.
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import diffperf as dp
from diffperf import _validate_infer as vi
from diffperf import io

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "calibrate_training"))
from fit import patch_toml  # noqa: E402

LEAVES = {
    "host.serve_overhead": (1e-4, 5e-2),
    "host.dispatch_overhead": (1e-6, 6e-5),
}


def _prepared(rows):
    """(spec, cluster, model, serving, metric, measured/predicted) per fitted row."""
    out = []
    bad = vi._inconsistent(rows)
    for i, row in enumerate(rows):
        if i in bad or "_op_latency:" in row.get("metric", ""):
            continue  # contradicts its own source / per-operator rows: not fitted
        try:
            res = vi.predict_infer_row(row)
        except ValueError:
            continue
        cluster, model, serving = vi.resolve_infer_row(row)  # as validate does
        scale = res["measured"] / res["predicted"]  # measured in the model's own units
        out.append((cluster.name, cluster, model, serving, res["metric"], scale))
    return out


def _metric(r, metric):
    if metric in vi._LATENCY:
        return getattr(r, vi._LATENCY[metric])
    return 1.0 / r.output_tokens_per_s  # throughputs: compare 1/throughput


@eqx.filter_jit
def _loss_grad(u, cluster, model, serving, target, metric, relax):
    def loss(u):
        c = cluster
        for path, v in u.items():
            c = dp.set_leaf(c, path, jnp.exp(v))
        r = dp.serve(c, model, serving, relax=relax)
        return (jnp.log(_metric(r, metric)) - jnp.log(target)) ** 2

    return jax.value_and_grad(loss)(u)


def fit_spec(items, *, steps):
    relax = dp.Smooth(32.0)
    leaves = dict(LEAVES)
    if all(item[3].graphs for item in items):  # launch cost hidden in every row
        del leaves["host.dispatch_overhead"]
    lo = {p: math.log(b[0]) for p, b in leaves.items()}
    hi = {p: math.log(b[1]) for p, b in leaves.items()}
    cluster0 = items[0][1]
    u = {p: jnp.clip(jnp.log(dp.get_leaf(cluster0, p)), lo[p], hi[p]) for p in leaves}
    if "host.dispatch_overhead" in u:  # start where it binds (module docstring)
        u["host.dispatch_overhead"] = jnp.maximum(
            u["host.dispatch_overhead"], math.log(3e-5)
        )
    # targets: the metric the measurement implies, in model units
    targets = []
    for _, cluster, model, serving, metric, scale in items:
        r = dp.serve(cluster, model, serving)
        m = _metric(r, metric)
        # latencies scale with measured/predicted; 1/throughput with its inverse
        targets.append(m * (scale if metric in vi._LATENCY else 1.0 / scale))
    opt = optax.adam(0.05)
    state = opt.init(u)
    for _ in range(steps):
        grads = jax.tree_util.tree_map(jnp.zeros_like, u)
        for (_, cluster, model, serving, metric, _), t in zip(
            items, targets, strict=True
        ):
            _, g = _loss_grad(u, cluster, model, serving, t, metric, relax)
            grads = jax.tree_util.tree_map(lambda a, b: a + b / len(items), grads, g)
        updates, state = opt.update(grads, state)
        u = optax.apply_updates(u, updates)
        u = {p: jnp.clip(v, lo[p], hi[p]) for p, v in u.items()}
    return {p: float(jnp.exp(v)) for p, v in u.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "inference_calibration.csv"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    _, rows = io.read_csv(args.data)
    t0 = time.perf_counter()
    groups = defaultdict(list)
    for item in _prepared(rows):
        groups[item[0]].append(item)
    fitted = {}
    for spec, items in sorted(groups.items()):
        values = fit_spec(items, steps=args.steps)
        fitted[spec] = dict(rows=len(items), values=values)
        print(f"{spec:<16} {len(items):4d} rows  " + "  ".join(
            f"{p}={v:.4g}" for p, v in values.items()), flush=True)  # fmt: skip
        if args.write:
            note = f"experiments/calibrate_inference ({len(items)} rows)"
            patch_toml(ROOT / "hardware" / f"{spec}.toml", values, note)
    (HERE / "fitted.json").write_text(json.dumps(fitted, indent=1, sort_keys=True))
    print(
        f"fitted {len(fitted)} specs in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
