"""`diffperf validate`: read a measurement CSV, detect its kind, validate, report."""

from .. import io
from .aiconfigurator import COLUMNS as AIC_COLUMNS
from .aiconfigurator import is_aiconfigurator, print_aic_report, validate_aic_rows
from .kernels import validate_kernel_rows
from .serving import validate_infer_rows
from .training import validate_rows

__all__ = ["validate_file", "read_measurements", "print_report"]


def validate_file(path, *, fidelity: str = "detailed", progress=None) -> dict:
    """Validate against a measurement CSV; detects training vs inference columns.

    `fidelity` picks the model tier ("detailed" or "roofline"); `progress(done,
    total)` is called after each row (for a progress bar). AIConfigurator's silicon
    CSV (`validation.aiconfigurator`) is predicted with the detailed tier.
    """
    kind, rows = read_measurements(path)
    if kind == "aiconfigurator":
        return validate_aic_rows(rows, progress=progress)
    if kind == "training":
        return validate_rows(rows, fidelity=fidelity, progress=progress)
    if kind == "kernel":
        return validate_kernel_rows(rows)
    return validate_infer_rows(rows, fidelity=fidelity, progress=progress)


def read_measurements(path) -> tuple[str, list[dict]]:
    """(kind, rows) of a measurement CSV, by its columns.

    kind is "training", "inference", "kernel" or "aiconfigurator" (AIConfigurator's
    silicon serving format: `validation.aiconfigurator.COLUMNS`).
    """
    columns, rows = io.read_csv(path)
    if is_aiconfigurator(columns):
        return "aiconfigurator", rows
    if "silicon_ttft_ms" in columns:
        missing = [c for c in AIC_COLUMNS if c not in columns]
        raise ValueError(f"--data: AIConfigurator CSV lacks the column {missing[0]!r}")
    measured = (
        "measured_tflops_per_gpu",
        "measured_tokens_per_s_per_gpu",
        "measured_tokens_per_s",
        "measured_step_time_s",
        "measured_mfu",
    )
    if any(c in columns for c in measured):
        kind, need = "training", ("gpu", "model")
    elif {"metric", "value"} <= set(columns):
        kind, need = "inference", ("gpu", "model", "num_gpus", "unit")
    elif {"M", "K", "N", "time_ms"} <= set(columns):
        kind, need = "kernel", ("gpu", "op", "dtype")
    else:
        raise ValueError(
            "--data: unrecognized CSV; expected the training columns "
            "(measured_tokens_per_s_per_gpu, ...), the inference ones (metric, value), "
            "a kernel table (M, K, N, time_ms) or AIConfigurator's silicon format "
            "(silicon_ttft_ms, silicon_tpot_ms, ...)"
        )
    for col in need:
        if col not in columns:
            raise ValueError(f"--data: {kind} CSV lacks the column {col!r}")
    return kind, rows


def print_report(out: dict):
    """Human-readable summary of `validate_file`: every row is accounted for."""
    if out.get("kind") == "aiconfigurator":
        return print_aic_report(out)
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(
        f"rows {out['rows']}: scored {out['rows_predicted']}, refused "
        f"{out['rows_refused']}; excluded from the MAPE {out['rows_excluded']}, "
        f"predicted out of memory {out['rows_infeasible']}"
    )
    print(
        f"MAPE {pct(out['mape'])}, median APE {pct(out['median_ape'])}; with the "
        f"excluded rows {pct(out['mape_with_excluded'])}"
    )
    for title, table in (("source", out["by_source"]), ("gpu", out["by_gpu"])):
        print(f"\nby {title}:")
        for k, v in table.items():
            extra = (
                f" (+{v['excluded']} excluded: {pct(v['mape_with_excluded'])})"
                if v["excluded"]
                else ""
            )
            print(f"  {k:<62} {v['rows']:4d}  MAPE {pct(v['mape']):>6}{extra}")
    for key, title in (("reason", "not predicted"), ("excluded", "excluded"),
                       ("miss", "predicted out of memory (scored)")):  # fmt: skip
        rows = [r for r in out["results"] if r.get(key)]
        if rows:
            print(f"\n{title}:")
            for r in rows:
                print(f"  row {r['row']}: {r['model_name']} on {r['gpu']}: {r[key]}")
