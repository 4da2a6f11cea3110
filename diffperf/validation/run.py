"""`diffperf validate`: read a measurement CSV, detect its kind, validate, report."""

from .. import io
from .serving import validate_infer_rows
from .training import validate_rows

__all__ = ["validate_file", "read_measurements", "print_report"]


def validate_file(path, *, fidelity: str = "detailed", progress=None) -> dict:
    """Validate against a measurement CSV; detects training vs inference columns.

    `fidelity` picks the model tier ("detailed" or "roofline"); `progress(done,
    total)` is called after each row (for a progress bar).
    """
    kind, rows = read_measurements(path)
    if kind == "training":
        return validate_rows(rows, fidelity=fidelity, progress=progress)
    return validate_infer_rows(rows, fidelity=fidelity, progress=progress)


def read_measurements(path) -> tuple[str, list[dict]]:
    """("training" | "inference", rows) of a measurement CSV, by its columns."""
    columns, rows = io.read_csv(path)
    if (
        "measured_tflops_per_gpu" in columns
        or "measured_tokens_per_s_per_gpu" in columns
    ):
        kind, need = "training", ("gpu", "model", "num_gpus")
    elif {"metric", "value"} <= set(columns):
        kind, need = "inference", ("gpu", "model", "num_gpus", "unit")
    else:
        raise ValueError(
            "--data: unrecognized CSV; expected the training columns "
            "(measured_tokens_per_s_per_gpu, ...) or the inference ones (metric, value)"
        )
    for col in need:
        if col not in columns:
            raise ValueError(f"--data: {kind} CSV lacks the column {col!r}")
    return kind, rows


def print_report(out: dict):
    """Human-readable summary of `validate_file`'s result."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(
        f"rows {out['rows']}, predicted {out['rows_predicted']}, "
        f"MAPE {pct(out['mape'])}, median APE {pct(out['median_ape'])}"
    )
    for title, table in (("source", out["by_source"]), ("gpu", out["by_gpu"])):
        print(f"\nby {title}:")
        for k, v in table.items():
            print(f"  {k:<62} {v['rows']:4d}  MAPE {pct(v['mape']):>6}")
    missing = [r for r in out["results"] if "reason" in r]
    if missing:
        print("\nnot predicted:")
        for r in missing:
            print(f"  row {r['row']}: {r['model_name']} on {r['gpu']}: {r['reason']}")
