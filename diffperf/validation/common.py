"""What the training and serving validators share: cells, grouping, summaries."""

import re

__all__ = ["number", "short_source", "summarize", "model_family"]


def number(row, key, default=None):
    """A numeric CSV cell; `default` when blank; ValueError naming the column."""
    v = (row.get(key) or "").strip()
    if not v:
        return default
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"column {key}={v!r} must be a number") from None


def summarize(results: list[dict]) -> dict:
    """rows, rows_predicted, mape, median_ape overall, by source, GPU and model, MoE."""
    done = [r for r in results if "ape" in r]

    def stats(rs):
        apes = sorted(r["ape"] for r in rs)
        n = len(apes)
        med = (apes[(n - 1) // 2] + apes[n // 2]) / 2 if n else None
        return dict(rows=n, mape=sum(apes) / n if n else None, median_ape=med)

    by_source, by_gpu, by_model = {}, {}, {}
    for r in done:
        by_source.setdefault(short_source(r["source"]), []).append(r)
        by_gpu.setdefault(r["hardware"], []).append(r)
        by_model.setdefault(r["model"], []).append(r)
    moe = [r for r in done if r.get("moe")]
    overall = stats(done)
    return dict(
        kind="training",
        rows=len(results),
        rows_predicted=len(done),
        mape=overall["mape"],
        median_ape=overall["median_ape"],
        by_source={k: stats(v) for k, v in sorted(by_source.items())},
        by_gpu={k: stats(v) for k, v in sorted(by_gpu.items())},
        by_model={k: stats(v) for k, v in sorted(by_model.items())},
        moe=stats(moe),
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
