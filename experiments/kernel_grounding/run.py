"""Kernel-level grounding: fit the op model's leaves to measured kernel tables.

For each system, `dp.fit_kernels` fits the efficiency leaves to the measured GEMM,
attention, MoE and NCCL tables of aiconfigurator-core (the optional extra
`diffperf[kernels]`), and the training rows of that device in
data/training_calibration.csv are scored end to end with the committed leaves and
with the kernel-fitted leaves substituted (all of them, and one at a time), so that
the study says which leaves transfer from kernels to training steps.

    python experiments/kernel_grounding/run.py            # fit, score, write JSON
    python experiments/kernel_grounding/run.py --report   # README table from JSON

The package's end-to-end `silicon_sample.csv` is never read.
"""

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRAINING = ROOT / "data" / "training_calibration.csv"
SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm")
BACKEND = "trtllm"
STEPS = 200


def _device_rows(stem: str):
    """(kind, CSV rows, resolved Rows) of the training rows of `stem`'s family.

    Each distinct `gpu` text is resolved once from one of its rows, then only the rows
    of the device are resolved (resolving all 338 rows is slow).
    """
    kind, csv_rows = dp.read_measurements(TRAINING)
    family = {}
    for row in csv_rows:
        gpu = row.get("gpu", "")
        if gpu not in family:
            rows, _, _ = dp.measured_rows(kind, [row])
            family[gpu] = stem in dp.rows_by_device(rows, by_family=True)
    mine = [row for row in csv_rows if family[row.get("gpu", "")]]
    if not mine:
        return kind, [], []
    rows, index, _ = dp.measured_rows(kind, mine)
    keep = dp.rows_by_device(rows, by_family=True).get(stem, [])
    return kind, [mine[index[k]] for k in keep], [rows[k] for k in keep]


def _e2e(stem: str, leaves: dict) -> dict:
    """Training MAPE of the device's rows: committed, all fitted, stage by stage."""
    _, csv_rows, rows = _device_rows(stem)
    if not rows:
        return dict(rows=0)
    # dp.validate on this device's CSV rows: the committed model's own figure
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        columns = list(csv_rows[0])
        lines = [",".join(columns)]
        for row in csv_rows:
            lines.append(",".join(_cell(row.get(c, "")) for c in columns))
        path.write_text("\n".join(lines) + "\n")
        validated = dp.validate(str(path))

    def mape(values: dict) -> float:
        apes = []
        for r in rows:
            c = r.cluster
            for p, v in values.items():
                c = dp.set_leaf(c, p, v)
            t = float(dp.train_step(c, *r.job, relax=dp.Exact()).total)
            ratio = r.target / t if r.inverse else t / r.target
            apes.append(abs(ratio - 1.0))
        return float(np.mean(apes))

    fitted = {p: v["fitted"] for p, v in leaves.items()}
    stages = {}
    for p, v in leaves.items():
        stages.setdefault(v["stage"], {})[p] = v["fitted"]
    return dict(
        rows=len(rows),
        validate_mape=validated["mape"],
        validate_scored=validated["rows_predicted"],
        committed=mape({}),
        kernel_fitted=mape(fitted),
        one_stage={name: dict(leaves=list(vals), mape=mape(vals))
                   for name, vals in stages.items()},
    )  # fmt: skip


def _bucket(op: str, r) -> str:
    """The residual bucket of a kernel row (what one value per chip cannot follow)."""
    if op == "gemm":
        flops = 2 * r.m * r.k * r.n
        size = "< 1e9" if flops < 1e9 else "< 1e12" if flops < 1e12 else ">= 1e12"
        return f"{r.dtype}, 2MKN {size}"
    if op == "context_attention":
        s = "S <= 256" if r.seq <= 256 else "S <= 2048" if r.seq <= 2048 else "S > 2048"
        return f"head_dim {int(r.head_dim)}, {s}"
    if op == "generation_attention":
        return (
            "L <= 64" if r.seq <= 64 else "L <= 1024" if r.seq <= 1024 else "L > 1024"
        )
    if op == "moe":
        return "tokens <= 64" if r.m <= 64 else "tokens > 64"
    return f"{int(r.gpus)} GPUs, {'< 1 MB' if r.nbytes < 1e6 else '>= 1 MB'}"


def _residuals(cluster, rows) -> list[dict]:
    """Geometric-mean predicted / measured per op and bucket (fitted leaves)."""
    pred = dp.predict_kernels(cluster, rows)
    groups = {}
    for r, p in zip(rows, pred, strict=True):
        groups.setdefault((r.op, _bucket(r.op, r)), []).append(math.log(p / r.seconds))
    return [
        dict(op=op, bucket=b, rows=len(v), ratio=math.exp(float(np.mean(v))))
        for (op, b), v in sorted(groups.items())
    ]


def _decode_fixed_cost(rows) -> dict:
    """Relative least squares T = c0 + c1·B·H_kv on decode rows with L <= 64.

    (Little KV traffic at L <= 64.) Minimizes Σ (T̂/T − 1)²; the op model has no
    term in sequences × KV heads; c1 is the measured cost of one.
    """
    sel = [r for r in rows if r.op == "generation_attention" and r.seq <= 64]
    if len(sel) < 3:
        return {}
    x = np.array([r.batch * r.kv_heads for r in sel])
    t = np.array([r.seconds for r in sel])
    a = np.stack([np.ones_like(x), x], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)
    fit = a @ np.array([c0, c1])
    return dict(
        rows=len(sel), c0_s=float(c0), c1_s_per_seq_kv_head=float(c1),
        mape=float(np.mean(np.abs(fit / t - 1.0))),
    )  # fmt: skip


def _cell(value) -> str:
    text = str(value)
    return (
        '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
    )


def run(previous: dict) -> dict:
    """Fit every system; the e2e scores of `previous` are reused only for a system
    whose fitted leaves are identical (they depend on nothing else)."""
    results = dict(
        backend=BACKEND,
        steps=STEPS,
        training_data=str(TRAINING.relative_to(ROOT)),
        systems={},
    )
    for system in SYSTEMS:
        t0 = time.time()
        rows, tables = dp.read_kernel_tables(system, backend=BACKEND)
        stem = dp.KERNEL_SYSTEMS[system]
        cluster = dp.load_hardware(stem)
        fit = dp.fit_kernels(cluster, rows, steps=STEPS)
        fitted = fit.pop("cluster")
        entry = dict(hardware=stem, rows=len(rows), tables=tables, **fit)
        entry["residuals"] = _residuals(fitted, rows)
        entry["decode_fixed_cost"] = _decode_fixed_cost(rows)
        entry["gemm_by_dtype"] = {
            d: dict(
                before=dp.kernel_mape(cluster, sub)["gemm"],
                after=dp.kernel_mape(fitted, sub)["gemm"],
            )
            for d in sorted({r.dtype for r in rows if r.op == "gemm"})
            for sub in [[r for r in rows if r.op == "gemm" and r.dtype == d]]
        }
        print(system, "fitted in", round(time.time() - t0, 1), "s", flush=True)
        old = previous.get("systems", {}).get(system, {})
        if old.get("leaves") == fit["leaves"] and "e2e" in old:
            entry["e2e"] = old["e2e"]
        else:
            entry["e2e"] = _e2e(stem, fit["leaves"])
        entry["seconds"] = round(time.time() - t0, 1)
        results["systems"][system] = entry
        print(system, "done in", entry["seconds"], "s", flush=True)
    return results


def _pct(x) -> str:
    return (
        "n/a"
        if x is None or (isinstance(x, float) and math.isnan(x))
        else (f"{100 * x:.1f}%")
    )


def report(results: dict) -> str:
    """The generated part of README.md (tables from results.json)."""
    out = []
    for system, s in results["systems"].items():
        out.append(f"### {system} (diffperf hardware `{s['hardware']}`)\n")
        out.append("Tables read (aiconfigurator-core 0.12.0):\n")
        for t in s["tables"]:
            ex = sum(t["excluded"].values())
            note = (
                f"; {ex} not scored: "
                + ", ".join(f"{k} {v}" for k, v in t["excluded"].items())
                if ex
                else ""
            )
            newer = t.get("newer_without_scored_rows") or {}
            if newer:
                note += "; newer version(s) without a scored row: " + ", ".join(
                    f"{v} ({', '.join(f'{k} {n}' for k, n in ex.items())})"
                    for v, ex in newer.items()
                )
            out.append(
                f"- `{t['file']}` ({t['backend']} {t['version']}, provenance "
                f"{t['provenance'] or 'n/a'}): {t['rows']} rows{note}"
            )
        out.append("\n| op | rows | MAPE committed | MAPE kernel-fitted | bias after |")
        out.append("|---|---:|---:|---:|---:|")
        for op, b in s["before"].items():
            a = s["after"][op]
            out.append(
                f"| {op} | {b['rows']} | {_pct(b['mape'])} | {_pct(a['mape'])} | "
                f"{a['bias']:.2f} |"
            )
        out.append("\n| leaf | committed | kernel-fitted | stage | on bound |")
        out.append("|---|---:|---:|---|---|")
        for p, v in s["leaves"].items():
            out.append(
                f"| {p} | {v['committed']:.4g} | {v['fitted']:.4g} | {v['stage']} | "
                f"{'yes' if v['at_bound'] else ''} |"
            )
        out.append("\n| GEMM dtype | rows | MAPE committed | MAPE kernel-fitted |")
        out.append("|---|---:|---:|---:|")
        for d, g in s["gemm_by_dtype"].items():
            out.append(
                f"| {d} | {g['before']['rows']} | {_pct(g['before']['mape'])} | "
                f"{_pct(g['after']['mape'])} |"
            )
        if s["diagnostics"]:
            out.append("\nDiagnostics (not merged): values a family needs alone\n")
            for name, d in s["diagnostics"].items():
                vals = ", ".join(f"{p} = {v:.4g}" for p, v in d["leaves"].items())
                mp = ", ".join(f"{o} {_pct(m['mape'])}" for o, m in d["mape"].items())
                bad = "; " + "; ".join(d["defects"]) if d["defects"] else ""
                out.append(f"- {name}: {vals} (MAPE {mp}){bad}")
        out.append(
            "\nResiduals with the kernel-fitted leaves (geometric mean of predicted / "
            "measured):\n"
        )
        out.append("| op | bucket | rows | predicted / measured |")
        out.append("|---|---|---:|---:|")
        for r in s["residuals"]:
            out.append(
                f"| {r['op']} | {r['bucket']} | {r['rows']} | {r['ratio']:.2f} |"
            )
        d = s["decode_fixed_cost"]
        if d:
            out.append(
                f"\nDecode attention at L <= 64 ({d['rows']} rows) follows "
                f"T = {1e6 * d['c0_s']:.2f} µs + "
                f"{1e9 * d['c1_s_per_seq_kv_head']:.1f} ns "
                f"× sequences × KV heads (MAPE {_pct(d['mape'])}); the op model has no "
                "such term."
            )
        e = s["e2e"]
        if e.get("rows"):
            out.append(
                f"\nEnd to end, {e['rows']} training rows of `{s['hardware']}` in "
                f"`{results['training_data']}`: `dp.validate` MAPE "
                f"{_pct(e['validate_mape'])} (committed leaves); committed "
                f"{_pct(e['committed'])}, all kernel-fitted leaves "
                f"{_pct(e['kernel_fitted'])}. One stage's kernel-fitted leaves at a "
                "time (the others committed):\n"
            )
            out.append("| stage | leaves substituted | training MAPE |")
            out.append("|---|---|---:|")
            for name, v in e["one_stage"].items():
                out.append(f"| {name} | {', '.join(v['leaves'])} | {_pct(v['mape'])} |")
        else:
            out.append(f"\nNo training rows of `{s['hardware']}` in the data.")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="README from the JSON only")
    args = ap.parse_args()
    path = HERE / "results.json"
    if not args.report:
        results = run(json.loads(path.read_text()) if path.exists() else {})
        path.write_text(json.dumps(results, indent=1) + "\n")
    results = json.loads(path.read_text())
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- generated -->", "<!-- /generated -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = (
            head + start + "\n" + report(results) + "\n" + end + rest.split(end, 1)[1]
        )
    else:
        text = text + f"\n{start}\n{report(results)}\n{end}\n"
    readme.write_text(text)


if __name__ == "__main__":
    main()
