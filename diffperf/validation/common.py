"""What the training and serving validators share: cells, grouping, summaries.

Every row of a CSV ends in exactly one of three states, and `summarize` counts each:
  - scored: it has a prediction and an APE (`rows_predicted`);
  - scored but excluded from the headline error because its source contradicts
    itself (`excluded` gives the reason): its APE is reported, and every MAPE is
    given without (`mape`) and with (`mape_with_excluded`) such rows;
  - refused: it cannot be predicted, with the reason (`reason`; `refused` counts them
    by reason).
A scored row the model calls out of memory although it ran (`feasible: false`) keeps
its APE and is counted as `infeasible`; no group's error is ever left out because of
one row.
"""

import math
import re
from collections import Counter

__all__ = [
    "score_rows",
    "number",
    "short_source",
    "summarize",
    "model_family",
    "throughput_scope",
]


def throughput_scope(unit: str) -> str:
    """What a throughput is counted over: "gpu", "node", "replica" or "system"."""
    u = unit.lower()
    if "not stated" in u or re.search(r"per[\s-]*(gpu|chip|accelerator|device)", u):
        return "gpu"
    if re.search(r"per[\s-]*(node|server|host)", u):
        return "node"
    if re.search(r"per[\s-]*(replica|instance|engine)", u):
        return "replica"
    return "system"


def number(row, key, default=None):
    """A numeric CSV cell; `default` when blank; ValueError naming the column."""
    v = (row.get(key) or "").strip()
    if not v:
        return default
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"column {key}={v!r} must be a number") from None


def score_rows(
    rows: list[dict], predict, *, columns=(), excluded=None, progress=None
) -> list[dict]:
    """Predict every row; one entry per row, scored or with its one-line reason.

    Each entry has the row's index, source, gpu and model text (plus `columns`) and
    either `predict(row)`'s fields or `reason` (its ValueError's first line). Rows in
    `excluded` (index -> why) are scored and marked `excluded`. `progress(done,
    total)` is called after each row.
    """
    results = []
    for i, row in enumerate(rows):
        entry = dict(
            row=i,
            source=row.get("source", ""),
            gpu=row.get("gpu", ""),
            model_name=row.get("model", ""),
        ) | {c: row.get(c, "") for c in columns}
        try:
            entry |= predict(row)
            if excluded and i in excluded:
                entry["excluded"] = excluded[i]
        except ValueError as e:
            entry["reason"] = str(e).splitlines()[0]
        results.append(entry)
        if progress is not None:
            progress(i + 1, len(rows))
    return results


def _stats(rs: list[dict]) -> dict:
    """rows, mape, median_ape over non-excluded rows; infeasible, excluded counts."""

    def mape_median(rows):
        apes = sorted(r["ape"] for r in rows)
        n = len(apes)
        if not n:
            return None, None
        return sum(apes) / n, (apes[(n - 1) // 2] + apes[n // 2]) / 2

    counted = [r for r in rs if not r.get("excluded")]
    mape, median = mape_median(counted)
    out = dict(
        rows=len(counted),
        mape=mape,
        median_ape=median,
        infeasible=sum(1 for r in counted if r.get("feasible") is False),
        excluded=len(rs) - len(counted),
    )
    if out["excluded"]:
        out["mape_with_excluded"], out["median_ape_with_excluded"] = mape_median(rs)
    return out


def summarize(results: list[dict]) -> dict:
    """rows, rows_predicted, mape, median_ape overall, by source, GPU and model, MoE.

    Also the counts of refused (by reason), excluded and infeasible rows, and the MAPE
    with the excluded rows (module docstring).
    """
    done = [r for r in results if "ape" in r]
    for r in done:
        if not math.isfinite(r["ape"]):
            raise ValueError(f"row {r.get('row')}: non-finite APE {r['ape']}")
    by_source, by_gpu, by_model = {}, {}, {}
    for r in done:
        by_source.setdefault(short_source(r["source"]), []).append(r)
        by_gpu.setdefault(r["hardware"], []).append(r)
        by_model.setdefault(r["model"], []).append(r)
    moe = [r for r in done if r.get("moe")]
    overall = _stats(done)
    refused = Counter(r["reason"] for r in results if "ape" not in r)
    return dict(
        kind="training",
        rows=len(results),
        rows_predicted=len(done),
        rows_refused=len(results) - len(done),
        rows_excluded=overall["excluded"],
        rows_infeasible=overall["infeasible"],
        mape=overall["mape"],
        median_ape=overall["median_ape"],
        mape_with_excluded=overall.get("mape_with_excluded", overall["mape"]),
        median_ape_with_excluded=overall.get(
            "median_ape_with_excluded", overall["median_ape"]
        ),
        refused=dict(refused.most_common()),
        by_source={k: _stats(v) for k, v in sorted(by_source.items())},
        by_gpu={k: _stats(v) for k, v in sorted(by_gpu.items())},
        by_model={k: _stats(v) for k, v in sorted(by_model.items())},
        moe=_stats(moe),
        results=results,
    )


def model_family(name: str) -> str:
    """The family of a CSV model name (mpt, llama, gpt3, ...) for per-family tables."""
    n = name.lower()
    for key in ("mpt", "llama", "gpt-2", "gpt3", "gpt oss", "qwen3", "deepseek",
                "nemotron"):  # fmt: skip
        if key in n:
            return key
    return re.sub(r"[-\s(].*", "", n) or n


def short_source(source: str) -> str:
    """The name of a source without its bracketed details (the first 60 chars)."""
    s = re.split(r"[\[(,]", source)[0].strip()
    return s[:60]
