"""Fit the few calibratable leaves of each training device to measured runs.

For every chip spec with rows in data/training_calibration.csv, fits

    chip.matmul_efficiency, chip.matmul_half_dim, chip.attention_efficiency,
    chip.low_precision_efficiency, chip.kernel_overhead, scale_out.efficiency,
    host.dispatch_overhead, host.sync_overhead, host.step_overhead

(the same values for every row of a device, never per row; a leaf no row depends on,
such as the fp8 efficiency of a device measured only in bf16, keeps its prior) by
minimizing the source-balanced mean squared log error of the predicted step time, with
optax Adam in log space under the Smooth model and box bounds that keep the values
physical. Rows of
systems that extend a chip file (e.g. dgx_a100_40gb → a100_sxm4_40gb) count for that
chip. Rows with the same static structure are stacked and vmapped.

Usage:
    python experiments/calibrate_training/fit.py            # fit and report
    python experiments/calibrate_training/fit.py --write    # also patch hardware/*.toml

Writes fitted.json next to this file.
"""

import argparse
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import diffperf as dp
from diffperf import _validate, io

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LEAVES = {  # path: (lower, upper) bound
    "chip.matmul_efficiency": (0.3, 0.98),
    "chip.matmul_half_dim": (16.0, 512.0),
    "chip.attention_efficiency": (0.2, 0.95),
    "chip.low_precision_efficiency": (0.3, 1.0),
    "chip.kernel_overhead": (0.5e-6, 10e-6),
    "scale_out.efficiency": (0.2, 0.95),
    "host.dispatch_overhead": (1e-6, 50e-6),
    "host.sync_overhead": (1e-5, 2e-2),
    "host.step_overhead": (1e-3, 0.3),
}
MIN_ROWS_FOR_ALL = 20  # fewer rows: fit matmul_efficiency only


def _root(stem: str) -> str:
    """The chip file a hardware spec extends (itself if none)."""
    base = io.meta("hardware", stem).get("extends")
    return _root(base) if base else stem


def prepared_rows(rows):
    """(root chip, cluster, model, mapping, measured step time, row) per row."""
    out = []
    for row in rows:
        try:
            res = _validate.predict_row(row)
        except ValueError:
            continue
        cluster = io.load_hardware(row["gpu"])
        model = _validate._model(row)
        dtype = _validate._dtype(row.get("dtype", "bf16"))
        model = eqx.tree_at(lambda m: m.precision, model, dp.Precision.training(dtype))
        kind = _validate._source_kind(row.get("source", ""))
        mapping, _ = _validate._mapping(row, kind, model)
        # measured step time: the model's step time scaled by measured/predicted metric
        ratio = res["measured"] / res["predicted"]
        t_meas = res["step_time_s"] * (
            ratio if res["metric"] == "step_time_s" else 1 / ratio
        )
        t_meas = jnp.asarray(t_meas, dtype=jnp.result_type(float))  # a leaf: no retrace
        out.append((_root(cluster.name), cluster, model, mapping, t_meas, row))
    return out


def _row_loss(values, cluster, model, mapping, t_meas, relax):
    for path, v in values.items():
        cluster = dp.set_leaf(cluster, path, v)
    t = dp.train_step(cluster, model, mapping, relax=relax).total
    return (jnp.log(t) - jnp.log(t_meas)) ** 2


def _stacked_groups(items):
    """Rows grouped by static structure, their leaves stacked for vmap.

    Each row is weighted by 1 / (rows of its source on this device), so that every
    source counts the same, however many rows it published.
    """
    per_source = Counter(_validate._short_source(item[5]["source"]) for item in items)
    groups = defaultdict(list)
    for _, cluster, model, mapping, t_meas, row in items:
        w = 1.0 / per_source[_validate._short_source(row["source"])]
        tree = (cluster, model, mapping, t_meas, jnp.asarray(w / len(per_source)))
        groups[jax.tree_util.tree_structure(tree)].append(tree)
    return [
        jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
        for trees in groups.values()
    ]


@eqx.filter_jit
def _group_loss_and_grad(u, stacked, relax):
    def loss(u):
        values = {k: jnp.exp(v) for k, v in u.items()}
        *trees, weights = stacked
        per_row = jax.vmap(lambda c, m, mp, t: _row_loss(values, c, m, mp, t, relax))(
            *trees
        )
        return jnp.sum(weights * per_row)

    return jax.value_and_grad(loss)(u)


def fit_device(items, paths, *, steps=150, lr=0.05):
    """Adam in log space over the chosen leaves, shared by all rows of one device."""
    relax = dp.Smooth(32.0)
    lo = {p: math.log(LEAVES[p][0]) for p in paths}
    hi = {p: math.log(LEAVES[p][1]) for p in paths}
    u = {p: jnp.log(dp.get_leaf(items[0][1], p)) for p in paths}
    u = {p: jnp.clip(v, lo[p], hi[p]) for p, v in u.items()}
    opt = optax.adam(lr)
    state = opt.init(u)
    groups = _stacked_groups(items)
    for _ in range(steps):
        grads = jax.tree_util.tree_map(jnp.zeros_like, u)
        for stacked in groups:
            _, g = _group_loss_and_grad(u, stacked, relax)
            grads = jax.tree_util.tree_map(jnp.add, grads, g)
        updates, state = opt.update(grads, state)
        u = optax.apply_updates(u, updates)
        u = {p: jnp.clip(v, lo[p], hi[p]) for p, v in u.items()}
    return {p: float(jnp.exp(v)) for p, v in u.items()}


_TABLE = re.compile(r"^\s*\[(\w+)\]\s*$")


def patch_toml(path: Path, values: dict, note: str):
    """Rewrite the `key = value` lines of the given [table].key paths in place."""
    lines = path.read_text().splitlines()
    table, done = None, set()
    for i, line in enumerate(lines):
        m = _TABLE.match(line)
        if m:
            table = m.group(1)
            continue
        for full, v in values.items():
            t, key = full.split(".")
            if t == table and re.match(rf"^\s*{key}\s*=", line):
                lines[i] = f"{key} = {v:.4g}  # calibrated: {note}"
                done.add(full)
    for full in set(values) - done:  # inherited: add to the table (create if needed)
        t, key = full.split(".")
        header = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{t}]"), None)
        if header is None:
            lines += ["", f"[{t}]"]
            header = len(lines) - 1
        lines.insert(header + 1, f"{key} = {values[full]:.4g}  # calibrated: {note}")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "training_calibration.csv"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--write", action="store_true", help="patch hardware/*.toml")
    ap.add_argument(
        "--apply", action="store_true", help="only patch TOMLs from fitted.json"
    )
    args = ap.parse_args(argv)
    if args.apply:
        for root, fit in json.loads((HERE / "fitted.json").read_text()).items():
            note = f"experiments/calibrate_training ({fit['rows']} rows)"
            patch_toml(ROOT / "hardware" / f"{root}.toml", fit["values"], note)
        return
    _, rows = io.read_csv(args.data)
    t0 = time.perf_counter()
    groups = defaultdict(list)
    for item in prepared_rows(rows):
        groups[item[0]].append(item)
    fitted = {}
    for root, items in sorted(groups.items()):
        paths = (
            list(LEAVES)
            if len(items) >= MIN_ROWS_FOR_ALL
            else ["chip.matmul_efficiency"]
        )
        values = fit_device(items, paths, steps=args.steps)
        fitted[root] = dict(rows=len(items), values=values)
        print(
            f"{root:<18} {len(items):4d} rows  "
            + "  ".join(f"{p.split('.')[-1]}={v:.4g}" for p, v in values.items()),
            flush=True,
        )
        if args.write:
            note = f"experiments/calibrate_training ({len(items)} rows)"
            patch_toml(ROOT / "hardware" / f"{root}.toml", values, note)
    (HERE / "fitted.json").write_text(json.dumps(fitted, indent=1, sort_keys=True))
    print(
        f"fitted {len(fitted)} devices in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
