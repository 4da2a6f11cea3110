"""Validation of the serving model against measured inference runs.

Rows use the long format of `data/inference_calibration.csv`: one metric per row
(`metric`, `value`, `unit`). Each row is resolved to hardware, a workload (names as
people write them, `io.names`; architecture columns define or change the model,
`io.architecture`), a `Serving` mapping and precisions, predicted with the Exact
model, and compared on its metric:

| metric | prediction |
|---|---|
| ttft, prefill_latency, prefill_latency_median | TTFT of the batch |
| tpot_median, decode_latency_per_token | TPOT at the mean context |
| e2e_latency, e2e_latency_median | TTFT + (S_out − 1)·TPOT |
| output_throughput | B·S_out / e2e at the stated batch |
| total_output_throughput | the same at the largest batch that fits, for all |
| | replicas of `num_gpus` |
| offline_tokens_per_s, offline_samples_per_s | MLPerf Offline: the saturated rate of |
| | the load model (`validation.mlperf`) |
| output_throughput, total_output_throughput | the same Offline rate when the row |
| without a batch, of an in-flight batching | has no batch and its engine batches |
| engine (`mlperf.in_flight`) | continuously (TensorRT-LLM ≥ 0.10, trtllm-bench, vLLM, |
| | SGLang), under the benchmark's limits (`mlperf.bench_scheduler`) |
| server_completed_tokens_per_s, _samples_per_s | MLPerf Server/Interactive: the |
| | largest Poisson rate meeting the p99 limits |
| server_ttft_mean, _p99, server_tpot_mean, _p99 | the load model at the run's rate |

Units are honoured: a latency's `unit` must be a time (s, ms, us); a throughput's
scope is read from it: "per GPU" (also per chip/accelerator/device), "per node"
(per server/host: num_gpus over the hardware's chips per node), "per replica"
(per instance/engine: one tp·pp group), and otherwise the whole `num_gpus` system;
"not stated" is read as per GPU (the TensorRT-LLM performance tables whose unit leaves
per GPU vs total open, like the H100 rows of the same page). Throughput metrics need
`output_len` (samples/s without it would be read as tokens/s): such a row is refused.

Not predicted (listed with the reason): models without a spec or architecture
columns; MLPerf Server rows of a benchmark whose latency limits are neither known
(`validation.mlperf.LIMITS`) nor given in the row. Rows that
contradict the same source's other metrics (`_inconsistent`) are predicted and scored
but excluded from the headline MAPE; the summaries give the MAPE with and without
them. A row whose run the model says cannot fit at all (no batch fits in memory) is a
miss: predicted zero throughput (APE 1) or, for a latency, APE 1. C++ runtimes
(TensorRT-LLM, FasterTransformer) are taken to hide per-kernel CPU launch cost
(`graphs=True`); Python engines (vLLM) not. Benchmarks that ran past a model's trained
context (GPT-J at 2048 + 2048 tokens) are costed at the context they ran. A blank
`dtype` takes the format a quantized checkpoint's name states (`...-FP8`), else bf16;
the KV cache is bf16 unless the dtype says otherwise (`fp8 kv`) or the checkpoint sets
it (NVIDIA's ModelOpt `nvidia/...-FP8` and `-FP4` checkpoints: fp8, `io.names`; fp8
and fp4 rows of TensorRT-LLM v0.10 on, which serves ModelOpt checkpoints: `_modelopt`).
"""

import math
import re

import equinox as eqx

from .. import io
from ..analysis.calibrate import Row
from ..model.fidelity import tier
from ..model.phases import OPS, layer_op_times
from ..model.serving import serve
from ..specs.mapping import Serving, check_serving
from ..specs.workload import Precision
from . import mlperf
from .common import number, score_rows, short_source, summarize, throughput_scope
from .training import row_stack

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


_TIME = {"s": 1.0, "sec": 1.0, "ms": 1e3, "us": 1e6, "µs": 1e6}


def _measured_value(row: dict) -> float:
    """The row's `value`, a positive number (ValueError naming the column)."""
    value = number(row, "value")
    if value is None or not value > 0:
        raise ValueError(f"column value={row.get('value')!r} must be a number > 0")
    return value


def _time_scale(unit: str) -> float:
    """Units per second of a latency's `unit` cell (first word: s, ms, us)."""
    word = (unit.strip().split() or [""])[0].lower()
    if word not in _TIME:
        raise ValueError(f"unit {unit!r} of a latency must be s, ms or us")
    return _TIME[word]


def predict_infer_row(row: dict, *, fidelity: str = "detailed") -> dict:
    """Prediction for one inference row (ValueError with the reason if unresolvable)."""
    metric = row.get("metric", "").strip()
    if "_op_latency:" in metric:
        return _predict_op_row(row, metric, fidelity)
    known = (*_LATENCY, *_MAX_LOAD, "output_throughput", *mlperf.METRICS)
    if metric not in known:
        raise ValueError(f"metric {metric!r} is not in the inference vocabulary")
    unit = row.get("unit", "")
    if metric in mlperf.LATENCY_METRICS:
        _time_scale(unit)  # a latency's unit must be a time
    elif metric not in _LATENCY:
        if not number(row, "output_len"):
            raise ValueError(
                f"{metric} needs output_len (tokens per request) to be predicted"
            )
        if not re.search(r"/\s*s\b|per second", unit.lower()):
            raise ValueError(f"unit {unit!r} of {metric} must be a rate per second")
    if metric in mlperf.METRICS:
        return _predict_mlperf(row, metric, unit)
    if (
        metric in ("output_throughput", *_MAX_LOAD)
        and not row.get("batch", "").strip()
        and mlperf.in_flight(row.get("framework", ""))
    ):  # an in-flight batching table: every request queued at once (Offline)
        out = _predict_mlperf(row, "offline_tokens_per_s", unit)
        return out | dict(metric=metric, scenario="offline (in-flight batching)")
    cluster, model, serving, names = resolve_infer_row(row, with_names=True)
    measured = _measured_value(row)
    out = _resolved(metric, measured, cluster, model, names)
    if float(serving.batch) < 1:  # not even one request fits next to the weights
        return out | dict(
            predicted=0.0, ape=1.0, feasible=False, memory_per_gpu_bytes=None,
            miss="no batch fits in memory although the run ran",
        )  # fmt: skip
    r = serve(cluster, model, serving, fidelity=fidelity)
    if metric in _LATENCY:
        predicted = _time_scale(unit) * float(getattr(r, _LATENCY[metric]))
    else:
        predicted = _scoped(row, cluster, serving, float(r.output_tokens_per_s))
    if not math.isfinite(predicted) or predicted <= 0:
        raise ValueError(f"the model gives no finite {metric} for this row")
    out |= dict(
        predicted=predicted, ape=abs(predicted - measured) / measured,
        feasible=bool(r.feasible), memory_per_gpu_bytes=float(r.memory_per_gpu),
    )  # fmt: skip
    if not out["feasible"]:
        out["miss"] = "predicted out of memory although the run ran"
    return out


def _resolved(metric: str, measured: float, cluster, model, names: dict) -> dict:
    """The fields every scored inference row reports: what it resolved to."""
    return dict(
        metric=metric, measured=measured, hardware=cluster.name, model=model.name,
        stack=names["stack"], resolved_hardware=names["hardware"],
        resolved_model=names["model"],
    )  # fmt: skip


def _scoped(row: dict, cluster, serving, per_replica: float) -> float:
    """A replica's throughput counted over the row's `unit` scope.

    `common.throughput_scope`: per GPU, per node, per replica or the whole system.
    """
    gpus = number(row, "num_gpus", 1.0)
    total = per_replica * gpus / float(serving.chips)
    node = min(float(cluster.host.chips_per_node), gpus)
    scope = throughput_scope(row.get("unit", ""))
    return {"gpu": total / gpus, "node": total * node / gpus,
            "replica": per_replica, "system": total}[scope]  # fmt: skip


def _predict_mlperf(row: dict, metric: str, unit: str) -> dict:
    """An MLPerf Offline/Server/Interactive row, or an engine's own offline table.

    `validation.mlperf`; the engine is sized as its offline benchmark sizes it
    (`mlperf.bench_scheduler`).
    """
    for key in ("input_len", "output_len"):
        if not number(row, key):
            raise ValueError(
                f"{metric} needs {key} (the benchmark dataset's mean tokens per query)"
            )
    which = "offline" if metric.startswith("offline_") else mlperf.scenario(row)
    row = row | {"model": mlperf.model_text(row), "batch": "1", "scenario": which}
    cluster, model, serving, names = resolve_infer_row(row, with_names=True)
    measured = _measured_value(row)
    spec = (names["model"] or {}).get("spec")
    replicas = number(row, "num_gpus", 1.0) / float(serving.chips)
    framework = row.get("framework", "")
    sched = mlperf.bench_scheduler(framework, cluster, model, serving)
    value, miss = mlperf.replica_value(
        cluster, model, serving, metric, row, spec, replicas, scheduler=sched
    )
    if metric in mlperf.LATENCY_METRICS:
        predicted = _time_scale(unit) * value
    else:
        predicted = _scoped(row, cluster, serving, value)
    out = _resolved(metric, measured, cluster, model, names) | dict(
        scenario=which, feasible=True, memory_per_gpu_bytes=None
    )
    if miss is not None or not (math.isfinite(predicted) and predicted > 0):
        return out | dict(predicted=0.0, ape=1.0, miss=miss or "no finite prediction")
    return out | dict(predicted=predicted, ape=abs(predicted - measured) / measured)


def resolve_infer_row(row: dict, *, with_names: bool = False):
    """(cluster, model, serving) of an inference row, checked; ValueError if not.

    Rows without a batch, and max-load metrics, run at the largest batch that fits
    (0 when none does). With `with_names`, also what the gpu and model text resolved
    to. Shared by the validation and the serving calibration (experiments/).
    """
    cluster = io.load_hardware(row["gpu"], stack=row_stack(row, "serving"))
    hw = io.resolve_hardware(row["gpu"])
    try:
        found = io.resolve_workload(row["model"])
    except ValueError:
        found = None  # unknown: the architecture columns must define it
    model = io.load_workload(row["model"], row)
    dtype = row.get("dtype", "")
    if not dtype.strip() and found and found.precision:
        dtype = found.precision
    prec = _precision(dtype)
    kv = found.kv_cache if found else None
    if kv is None and prec.weights in ("fp8", "fp4") and _modelopt(row):
        kv = "fp8"
    if kv and "kv" not in dtype.lower() and prec.weights != "bf16":
        # a quantized checkpoint that sets its KV cache (`io.names.WorkloadName`)
        prec = Precision(math=prec.math, weights=prec.weights, kv_cache=kv)
    model = eqx.tree_at(lambda m: m.precision, model, prec)
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
    if row.get("metric", "").strip() in _MAX_LOAD or not row.get("batch", "").strip():
        best = serve(cluster, model, serving).max_batch
        serving = eqx.tree_at(lambda s: s.batch, serving, best.astype(float))
    names = dict(
        hardware=hw.as_dict(),
        model=found.as_dict() if found else None,
        stack=row_stack(row, "serving"),
    )
    return (cluster, model, serving, names) if with_names else (cluster, model, serving)


def _modelopt(row: dict) -> bool:
    """Whether a row's fp8/fp4 weights come from an NVIDIA ModelOpt checkpoint.

    TensorRT-LLM with in-flight batching (v0.10 on, and in NVIDIA's MLPerf Inference
    submissions) serves fp8 and fp4 weights from ModelOpt checkpoints (its documented
    quantization path, and the models of its performance tables), which set an fp8 KV
    cache.
    """
    framework = row.get("framework", "")
    mlperf_row = row.get("metric", "").strip() in mlperf.METRICS
    return mlperf.is_trtllm(framework) and (mlperf.in_flight(framework) or mlperf_row)


def _predict_op_row(row: dict, metric: str, fidelity: str) -> dict:
    """A per-operator latency row: one layer's op on one chip (per-operator tier)."""
    phase_text, op = metric.split("_layer_op_latency:")
    if op not in OPS:
        raise ValueError(f"operator {op!r} is not one of {', '.join(OPS)}")
    stack = row_stack(row, "serving")  # the harness that timed the op
    cluster, _ = tier(fidelity, io.load_hardware(row["gpu"], stack=stack))
    name = re.split(r",\s*one transformer layer", row["model"])[0]
    model = io.load_workload(name, row)
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
    measured = _measured_value(row)
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


def validate_infer_rows(
    rows: list[dict], *, fidelity: str = "detailed", progress=None
) -> dict:
    """Per-row predictions and error summary of inference CSV rows.

    Rows that contradict their own source are predicted and scored but marked
    `excluded` (with the reason); the summary gives every MAPE without and with them.
    """
    rows = mlperf.with_server_rates(rows)
    results = score_rows(
        rows,
        lambda row: predict_infer_row(row, fidelity=fidelity),
        columns=("metric",),
        excluded=_inconsistent(rows),
        progress=progress,
    )
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
            if metric in mlperf.METRICS:
                raise ValueError("MLPerf scenario rows are not fitted")
            res = predict_infer_row(row)
            if not res["predicted"] > 0:
                raise ValueError(res["miss"])
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
                res["stack"],
            )
        )
    return out, skipped
