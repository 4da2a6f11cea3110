"""`diffperf validate` of a measurement CSV, for VALIDATION.md's in-sample tables.

    python experiments/validation_report/tables.py [--data
    data/training_calibration.csv]

Prints the overall figures, MAPE per source, per (source, GPU), per model family, per
MoE model (and GPU), and the rows with the largest errors, and writes
report_<kind>.json next to this file (`dp.validate`'s result, each row labelled with
its short source name and model family); `make report` (benchmarks/report.py) renders
VALIDATION.md's tables from it.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _table(title, groups):
    lines = [
        f"| {title} | rows | MAPE | median APE | max APE |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, rows in sorted(groups.items()):
        apes = sorted(r["ape"] for r in rows)
        n = len(apes)
        med = (apes[(n - 1) // 2] + apes[n // 2]) / 2
        lines.append(
            f"| {key} | {n} | {100 * sum(apes) / n:.1f}% | {100 * med:.1f}% | "
            f"{100 * apes[-1]:.1f}% |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "data" / "training_calibration.csv"))
    args = ap.parse_args(argv)
    rep = dp.validate(args.data)
    # rows excluded because their source contradicts itself are reported apart
    done = [r for r in rep["results"] if "ape" in r and not r.get("excluded")]
    print(
        f"rows {rep['rows']}, predicted {rep['rows_predicted']} "
        f"({100 * rep['rows_predicted'] / rep['rows']:.1f}%), MAPE "
        f"{100 * rep['mape']:.1f}%, median APE {100 * rep['median_ape']:.1f}%; "
        f"{rep['rows_excluded']} rows excluded (MAPE with them "
        f"{100 * rep['mape_with_excluded']:.1f}%), {rep['rows_infeasible']} predicted "
        "out of memory (scored)\n"
    )
    by = defaultdict(lambda: defaultdict(list))
    for r in done:
        src = dp.short_source(r["source"])
        by["source"][src].append(r)
        by["source, GPU"][f"{src} · {r['hardware']}"].append(r)
        by["GPU"][r["hardware"]].append(r)
        by["model family"][dp.model_family(r["model_name"])].append(r)
        if r.get("moe"):
            by["MoE model, GPU"][f"{r['model']} · {r['hardware']}"].append(r)
            by["MoE model"][r["model"]].append(r)
    for title in ("source", "source, GPU", "GPU", "model family", "MoE model"):
        print(_table(title, by[title]) + "\n")
    moe = [r for r in done if r.get("moe")]
    if moe:
        print(f"MoE rows: {len(moe)}, MAPE {100 * rep['moe']['mape']:.1f}%\n")
        print(_table("MoE model, GPU", by["MoE model, GPU"]) + "\n")
    worst = sorted(done, key=lambda r: -r["ape"])[:15]
    print("| row | model | GPU | metric | measured | predicted | APE |")
    print("|---:|---|---|---|---:|---:|---:|")
    for r in worst:
        print(
            f"| {r['row']} | {r['model_name']} | {r['hardware']} | {r['metric']} | "
            f"{r['measured']:.4g} | {r['predicted']:.4g} | {100 * r['ape']:.1f}% |"
        )
    for r in rep["results"]:
        r["short_source"] = dp.short_source(r["source"])
        if "model_name" in r:
            r["family"] = dp.model_family(r["model_name"])
    (HERE / f"report_{rep['kind']}.json").write_text(json.dumps(rep, indent=1) + "\n")


if __name__ == "__main__":
    main()
