"""Validation of the serving model against measured inference runs.

Rows use the long format of `data/inference_calibration.csv`: one metric per row
(`metric`, `value`, `unit`). Each row is resolved to hardware, a workload, a `Serving`
mapping and precisions, predicted with the Exact model, and compared on its metric:

| metric | prediction |
|---|---|
| ttft, prefill_latency, prefill_latency_median | TTFT of the batch [ms] |
| tpot_median, decode_latency_per_token | TPOT at the mean context [ms] |
| e2e_latency, e2e_latency_median | TTFT + (S_out − 1)·TPOT [ms] |
| output_throughput | B·S_out / e2e, per GPU if the unit says so, else per replica |
| total_output_throughput | the same at the largest batch that fits, all replicas |
| offline_tokens_per_s, offline_samples_per_s | MLPerf Offline: the load model's |
| | saturated throughput (`max_request_rate`), all replicas |
| server_completed_tokens_per_s, _samples_per_s | MLPerf Server: the largest Poisson |
| | rate meeting the TTFT/TPOT p99 limits (`mlperf_server`) |
| server_ttft_mean/_p99, server_tpot_mean/_p99 | the load model's at that rate [ms] |

Per-operator latencies (`prefill_layer_op_latency:<op>`) use the per-operator tier
(`layer_op_times`). Not predicted (listed with the reason): MLPerf rows without the
dataset's mean lengths, models without a spec, and rows that contradict the same
source's other metrics (`_inconsistent`). C++ runtimes (TensorRT-LLM,
FasterTransformer) are taken to hide per-kernel CPU launch cost (`graphs=True`); Python
engines (vLLM) not.
The TensorRT-LLM performance tables whose unit leaves "per GPU vs total" open are read
as per GPU, like the H100 rows of the same page. Benchmarks that ran past a model's
trained context (GPT-J at 2048 + 2048 tokens) are costed at the context they ran.
"""

import re

import equinox as eqx

from .. import io
from ..analysis.calibrate import Row
from ..model.fidelity import tier
from ..model.load import capacity, mlperf_server
from ..model.phases import OPS, layer_op_times
from ..model.serving import serve
from ..specs.mapping import Serving, check_serving
from ..specs.scheduler import Scheduler
from ..specs.workload import Precision
from .common import summarize
from .training import number, short_source

__all__ = ["predict_infer_row", "validate_infer_rows", "calibration_infer_rows"]

_LATENCY = {
    "ttft": "ttft",
    "prefill_latency": "ttft",
    "prefill_latency_median": "ttft",
    "tpot_median": "tpot",
    "decode_latency_per_token": "tpot",
    "e2e_latency": "e2e_latency",
    "e2e_latency_median": "e2e_latency",
}
_MAX_LOAD = ("total_output_throughput",)
_MLPERF = (
    "offline_tokens_per_s", "offline_samples_per_s", "server_completed_tokens_per_s",
    "server_completed_samples_per_s", "server_ttft_mean", "server_ttft_p99",
    "server_tpot_mean", "server_tpot_p99",
)  # fmt: skip
MLPERF_LIMITS = {
    "llama2-70b-interactive": (0.45, 0.04),
    "llama2-70b": (2.0, 0.2),
    "llama3.1-405b": (6.0, 0.175),
    "mixtral-8x7b": (2.0, 0.2),
}
"""MLPerf Inference Server latency limits (TTFT p99, TPOT p99) [s] per benchmark:
MLCommons inference_policies (inference_rules.adoc, datacenter table) and the
`ttft_latency` / `tpot_latency` test parameters printed in every Server run's
mlperf_log_summary.txt (e.g. inference_results_v4.1 closed/NVIDIA llama2-70b:
2000000000 ns and 200000000 ns). A row's notes may state others as
"TTFT p99 <= X s" and "TPOT p99 <= Y s"."""


def _precision(text: str) -> Precision:
    t = text.lower()
    if "int4" in t or "w4" in t:
        return Precision(math="bf16", weights="int4", kv_cache="bf16")
    for key, dtype in (("fp8", "fp8"), ("int8", "int8"), ("fp4", "fp4")):
        if key in t:
            kv = dtype if "kv" in t else "bf16"
            return Precision(math=dtype, weights=dtype, kv_cache=kv)
    if re.search(r"fp16|bf16|fp32|^$", t):
        return Precision()
    raise ValueError(f"dtype {text!r} is not a known precision")


def predict_infer_row(row: dict, *, fidelity: str = "detailed") -> dict:
    """Prediction for one inference row (ValueError with the reason if unresolvable)."""
    metric = row.get("metric", "").strip()
    if "_op_latency:" in metric:
        return _predict_op_row(row, metric, fidelity)
    if metric in _MLPERF:
        return _predict_mlperf_row(row, metric, fidelity)
    if metric not in _LATENCY and metric not in _MAX_LOAD + ("output_throughput",):
        raise ValueError(f"metric {metric!r} is not in the inference vocabulary")
    cluster, model, serving = resolve_infer_row(row)
    r = serve(cluster, model, serving, fidelity=fidelity)
    measured = float(row["value"])
    if metric in _LATENCY:
        predicted = 1e3 * float(getattr(r, _LATENCY[metric]))
    else:
        gpus = int(number(row, "num_gpus", 1))
        unit = row.get("unit", "")
        per_gpu = "per gpu" in unit.lower() or "not stated" in unit
        total = float(r.output_tokens_per_s) * gpus / float(serving.chips)
        predicted = total / gpus if per_gpu else total
    return dict(
        metric=metric, measured=measured, predicted=predicted,
        ape=abs(predicted - measured) / measured, feasible=bool(r.feasible),
        memory_per_gpu_bytes=float(r.memory_per_gpu), hardware=cluster.name,
        model=model.name,
    )  # fmt: skip


def resolve_infer_row(row: dict, *, max_load: bool = True):
    """(cluster, model, serving) of an inference row, checked; ValueError if not.

    Rows without a batch, and max-load metrics, run at the largest batch that fits
    (unless `max_load=False`). Shared by the validation and the serving calibration
    (experiments/).
    """
    cluster = io.load_hardware(row["gpu"])
    model = io.load_workload(row["model"])
    model = eqx.tree_at(lambda m: m.precision, model, _precision(row.get("dtype", "")))
    gpus = int(number(row, "num_gpus", 1))
    tp = number(row, "tp") or gpus / (number(row, "pp") or 1)
    framework = row.get("framework", "").lower()
    serving = Serving(
        tp=tp, pp=number(row, "pp", 1.0), ep=number(row, "ep", 1.0),
        batch=number(row, "batch", 1.0), input_len=number(row, "input_len", 1.0),
        output_len=number(row, "output_len", 1.0),
        graphs=any(k in framework for k in ("tensorrt", "fastertransformer")),
    )  # fmt: skip
    context = float(serving.input_len + serving.output_len)
    if context > float(model.max_seq_len):  # the benchmark ran past the context
        model = eqx.tree_at(
            lambda m: m.max_seq_len, model, model.max_seq_len * 0 + context
        )
    check_serving(model, serving)
    at_max = (
        row.get("metric", "").strip() in _MAX_LOAD or not row.get("batch", "").strip()
    )
    if max_load and at_max:
        best = serve(cluster, model, serving).max_batch
        serving = eqx.tree_at(lambda s: s.batch, serving, best.astype(float))
    return cluster, model, serving


def _mlperf_limits(row: dict) -> tuple[float, float]:
    """(TTFT p99, TPOT p99) limits [s] of an MLPerf Server row (notes or benchmark)."""
    notes = row.get("notes", "")
    found = [re.search(rf"{k} p99\s*(?:<=|≤)\s*([\d.]+)\s*s", notes)
             for k in ("TTFT", "TPOT")]  # fmt: skip
    if all(found):
        return float(found[0].group(1)), float(found[1].group(1))
    text = " ".join(row.get(k, "") for k in ("source", "model", "notes")).lower()
    text = text.replace(" ", "-").replace("llama-2", "llama2")
    for name, limits in MLPERF_LIMITS.items():
        if name in text:
            return limits
    raise ValueError(
        "MLPerf Server row without its latency limits (notes 'TTFT p99 <= X s', "
        f"'TPOT p99 <= Y s', or a benchmark of {', '.join(MLPERF_LIMITS)})"
    )


def _predict_mlperf_row(row: dict, metric: str, fidelity: str) -> dict:
    """An MLPerf Offline or Server row from the load model (`model.load`).

    Offline: all samples are queued at once, so the engine runs at its capacity,
    `max_request_rate` (samples/s; ×S_out for tokens/s). Server: the largest Poisson
    rate whose TTFT and TPOT p99 meet the benchmark's limits (`mlperf_server`); the
    latency statistics are the model's at that rate. The engine's `max_batch` is the
    row's `batch` (the submitter's batch size per engine), default 256; every
    replica of tp·pp chips on `num_gpus` serves an equal share. The row must state
    the dataset's mean prompt and output lengths (`input_len`, `output_len`).
    """
    for col in ("input_len", "output_len"):
        if not (row.get(col) or "").strip():
            raise ValueError(
                f"MLPerf row without {col}: the benchmark dataset's mean length is "
                "needed for the arrival model"
            )
    probe = dict(row, metric="total_output_throughput")
    cluster, model, serving = resolve_infer_row(probe, max_load=False)
    cluster, _ = tier(fidelity, cluster)
    batch = number(row, "batch", 256.0)
    sched = Scheduler(max_batch=batch, max_tokens_per_step=max(8192.0, 2.0 * batch),
                      chunked_prefill_budget=max(8192.0, 2.0 * batch))  # fmt: skip
    gpus = int(number(row, "num_gpus", 1))
    replicas = gpus / float(serving.chips)
    s_out = float(serving.output_len)
    if metric.startswith("offline_"):
        rate = float(capacity(cluster, model, serving, scheduler=sched))
        r = None
    else:
        ttft_lim, tpot_lim = _mlperf_limits(row)
        lam, r = mlperf_server(cluster, model, serving, ttft_p99=ttft_lim,
                               tpot_p99=tpot_lim, scheduler=sched)  # fmt: skip
        rate = float(lam)
    stats = {
        "server_ttft_mean": lambda: 1e3 * float(r.ttft),
        "server_ttft_p99": lambda: 1e3 * float(r.ttft_pct[2]),
        "server_tpot_mean": lambda: 1e3 * float(r.tpot),
        "server_tpot_p99": lambda: 1e3 * float(r.tpot_pct[2]),
    }
    if metric in stats:
        predicted = stats[metric]()
    else:
        predicted = rate * replicas * (s_out if "tokens" in metric else 1.0)
    measured = float(row["value"])
    return dict(
        metric=metric, measured=measured, predicted=predicted,
        ape=abs(predicted - measured) / measured, feasible=True,
        memory_per_gpu_bytes=0.0, hardware=cluster.name, model=model.name,
    )  # fmt: skip


def _predict_op_row(row: dict, metric: str, fidelity: str) -> dict:
    """A per-operator latency row: one layer's op on one chip (per-operator tier)."""
    phase_text, op = metric.split("_layer_op_latency:")
    if op not in OPS:
        raise ValueError(f"operator {op!r} is not one of {', '.join(OPS)}")
    cluster, _ = tier(fidelity, io.load_hardware(row["gpu"]))
    name = re.split(r",\s*one transformer layer", row["model"])[0]
    model = io.load_workload(name)
    model = eqx.tree_at(lambda m: m.precision, model, _precision(row.get("dtype", "")))
    serving = Serving(
        tp=number(row, "tp") or number(row, "num_gpus", 1.0),
        batch=number(row, "batch", 1.0),
        input_len=number(row, "input_len", 1.0),
        output_len=number(row, "output_len", 1.0),
    )
    context = _context_from_notes(row) if phase_text == "decode" else None
    seconds = float(
        layer_op_times(cluster, model, serving, phase=phase_text, context=context)[op]
    )
    unit = row.get("unit", "s").strip()
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}.get(unit, 1.0)
    measured = float(row["value"])
    predicted = seconds * scale
    return dict(
        metric=metric, measured=measured, predicted=predicted,
        ape=abs(predicted - measured) / measured, feasible=True,
        memory_per_gpu_bytes=0.0, hardware=cluster.name, model=model.name,
    )  # fmt: skip


def _context_from_notes(row: dict):
    """Cached keys of a decode op row ("KV length ... = N" in the notes), else S_in."""
    found = re.search(r"KV length(?:[^=,;]*=)?\s*(\d+)", row.get("notes", ""))
    return float(found.group(1)) if found else number(row, "input_len", 1.0)


def _inconsistent(rows: list[dict]) -> dict[int, str]:
    """Rows whose e2e latency contradicts the same source's TTFT and TPOT.

    For a configuration (source, model, GPU, TP, batch, lengths) reporting all three,
    e2e should be TTFT + (S_out − 1)·TPOT. Shorter by over 20%: generation ended before
    S_out tokens (a stop token), so the e2e row measures something else. Longer by over
    20%: the three medians do not describe one run, and none of them is used.
    """
    groups = {}
    for i, row in enumerate(rows):
        key = tuple(row.get(k, "") for k in ("source", "model", "gpu", "tp", "batch",
                                             "input_len", "output_len"))  # fmt: skip
        groups.setdefault(key, {})[row.get("metric", "")] = (i, row)
    bad = {}
    for key, metrics in groups.items():
        found = [metrics.get(m) for m in _TRIPLE]
        if any(f is None for f in found):
            continue
        (i_t, ttft), (i_d, tpot), (i_e, e2e) = found
        out = float(key[-1] or 1)
        ratio = float(e2e["value"]) / (
            float(ttft["value"]) + (out - 1.0) * float(tpot["value"])
        )
        if ratio < 0.8:
            bad[i_e] = (
                f"e2e is {ratio:.2f}× the source's own TTFT + (S_out − 1)·TPOT: "
                "generation stopped early"
            )
        elif ratio > 1.2:
            for i in (i_t, i_d, i_e):
                bad[i] = (
                    f"the source's e2e is {ratio:.2f}× its own TTFT + "
                    "(S_out − 1)·TPOT: the medians do not describe one run"
                )
    return bad


_TRIPLE = ("prefill_latency_median", "tpot_median", "e2e_latency_median")


def validate_infer_rows(rows: list[dict], *, fidelity: str = "detailed") -> dict:
    """Per-row predictions and error summary of inference CSV rows."""
    results = []
    bad = _inconsistent(rows)
    for i, row in enumerate(rows):
        entry = dict(
            row=i,
            source=row.get("source", ""),
            gpu=row.get("gpu", ""),
            model_name=row.get("model", ""),
            metric=row.get("metric", ""),
        )
        try:
            if i in bad:
                raise ValueError(bad[i])
            entry |= predict_infer_row(row, fidelity=fidelity)
        except ValueError as e:
            entry["reason"] = str(e).splitlines()[0]
        results.append(entry)
    return summarize(results) | {"kind": "inference"}


def calibration_infer_rows(rows: list[dict]) -> tuple[list[Row], dict[int, str]]:
    """Serving rows resolved for calibration, and the reasons of those that are not.

    Per-operator rows and rows that contradict their own source are not fitted. The
    target is the row's metric in model units (latency, or 1/throughput) scaled by
    measured/predicted, exactly as `validate` compares them.
    """
    out, skipped = [], {}
    bad = _inconsistent(rows)
    for i, row in enumerate(rows):
        metric = row.get("metric", "").strip()
        try:
            if i in bad:
                raise ValueError(bad[i])
            if "_op_latency:" in metric:
                raise ValueError("per-operator rows are not fitted")
            if metric in _MLPERF:
                raise ValueError("MLPerf scenario rows are not fitted (load model)")
            res = predict_infer_row(row)
            cluster, model, serving = resolve_infer_row(row)
        except ValueError as e:
            skipped[i] = str(e).splitlines()[0]
            continue
        r = serve(cluster, model, serving)
        scale = res["measured"] / res["predicted"]
        latency = metric in _LATENCY
        name = _LATENCY[metric] if latency else "inv_throughput"
        t = float(getattr(r, name)) if latency else 1.0 / float(r.output_tokens_per_s)
        target = t * (scale if latency else 1.0 / scale)
        source = short_source(row.get("source", ""))
        out.append(
            Row(
                cluster.name,
                source,
                cluster,
                (model, serving),
                target,
                name,
                not latency,
            )
        )
    return out, skipped
