"""MLPerf Inference LLM rows: Offline, Server and Interactive, from the load model.

MLPerf Inference (MLCommons) scores an LLM benchmark per scenario with its LoadGen:

- **Offline**: every query is issued at once and the score is the completed tokens (or
  samples) per second. A continuous-batching engine with a backlog that never empties
  runs at its saturated rate, the largest stable request rate of the replica
  (`model.load.max_request_rate`): λ_max·S_out tokens/s per replica.
- **Server**: queries arrive as a Poisson process at the submitter's target rate; the
  run is valid when the 99th percentiles of TTFT and of TPOT (per query: (latency −
  TTFT)/(tokens − 1)) meet the benchmark's limits, or for GPT-J the 99th percentile of
  the query latency; the score is that rate: `model.load.mlperf_server`.
- **Interactive**: a Server scenario with tighter limits (its own benchmark,
  `llama2-70b-interactive`, ...).

Limits [s] (`LIMITS`) are LoadGen's `ttft_latency`, `tpot_latency` and
`target_latency` (ms) of `loadgen/mlperf.conf`, mlcommons/inference @001712e9. A
benchmark outside the table needs the row's `ttft_limit_ms` and `tpot_limit_ms`
(either may be given alone; they also override the table).

Row columns (the long format of `data/inference_calibration.csv`, vocabulary in
`data/README.md`): `metric` one of `METRICS`; the scenario is the `scenario` column
(server | interactive), else "interactive" as a word of the `model` cell (MLPerf's
benchmark names, e.g. `llama2-70b-interactive`), else server. `num_gpus` GPUs run
num_gpus / (tp·pp·...) replicas of the row's layout, each with its own engine. The
Server latency statistics (`server_ttft_mean`, `_p99`, `server_tpot_mean`, `_p99`) are
taken at the system's query rate: the row's `target_qps` column (whole system,
queries/s), else the same run's `server_completed_samples_per_s` row (or
`server_completed_tokens_per_s` / `output_len`; `with_server_rates` fills it in),
else the model's own Server rate. `input_len` and `output_len` are the dataset's mean
tokens per query (the load model runs fixed lengths at those means).

Engine: sized as its own offline benchmark sizes it (`bench_scheduler`: TensorRT-LLM
as many requests as the KV cache holds, up to 4096, as `trtllm-bench` does; vLLM its
offline batch defaults; others the defaults of `specs.scheduler.Scheduler`), with KV
admission by engine: TensorRT-LLM reserves S_in + S_out tokens per request at
admission, other engines hold S_in + S_out/2 on average (as
`validation.aiconfigurator`). Submissions tune their engines for the benchmark; the
KV-limited batch is that tuning's aim.
"""

import math
import re

from ..model.load import capacity, mlperf_server, served
from ..model.serving import kv_capacity
from ..specs.scheduler import Scheduler
from .common import throughput_scope

__all__ = [
    "LIMITS",
    "METRICS",
    "LATENCY_METRICS",
    "scenario",
    "benchmark_limits",
    "model_text",
    "scheduler_for",
    "is_trtllm",
    "in_flight",
    "bench_scheduler",
    "replica_value",
    "with_server_rates",
]

LIMITS = {
    # workload spec: {scenario: (TTFT p99, TPOT p99, query latency p99) [s]}
    "llama2_70b": {"server": (2.0, 0.2, None), "interactive": (0.45, 0.04, None)},
    "mixtral_8x7b": {"server": (2.0, 0.2, None)},
    "llama3_1_405b": {"server": (6.0, 0.175, None), "interactive": (4.5, 0.08, None)},
    "llama3_1_8b": {"server": (2.0, 0.1, None), "interactive": (0.5, 0.03, None)},
    "deepseek_v3": {"server": (2.0, 0.08, None), "interactive": (1.5, 0.015, None)},
    "gpt_j_6b": {"server": (None, None, 20.0)},
}
"""MLPerf Inference latency limits by workload spec and scenario (module docstring)."""

THROUGHPUT_METRICS = (
    "offline_tokens_per_s",
    "offline_samples_per_s",
    "server_completed_tokens_per_s",
    "server_completed_samples_per_s",
)
LATENCY_METRICS = {
    "server_ttft_mean": ("ttft", None),
    "server_ttft_p99": ("ttft_pct", 2),
    "server_tpot_mean": ("tpot", None),
    "server_tpot_p99": ("tpot_pct", 2),
}
METRICS = THROUGHPUT_METRICS + tuple(LATENCY_METRICS)
"""The MLPerf metrics of the inference vocabulary."""

_INTERACTIVE = re.compile(r"[\s_(-]interactive\b\)?", re.IGNORECASE)


def scenario(row: dict) -> str:
    """The scenario: the `scenario` column, else the model cell's word, else server."""
    given = row.get("scenario", "").strip().lower()
    if given:
        if given not in ("server", "interactive", "offline"):
            raise ValueError(
                f"column scenario={given!r} must be server, interactive or offline"
            )
        return "server" if given == "offline" else given
    return "interactive" if _INTERACTIVE.search(row.get("model", "")) else "server"


def model_text(row: dict) -> str:
    """The `model` cell without MLPerf's "-interactive" benchmark suffix."""
    return _INTERACTIVE.sub("", row.get("model", "")).strip()


def _limit_column(row: dict, key: str):
    """A p99 limit column [ms] in seconds, or None when blank."""
    value = _number(row, key, unit=" (ms)")
    return None if value is None else value / 1e3


def benchmark_limits(row: dict, spec: str | None) -> tuple:
    """(TTFT p99, TPOT p99, query p99) limits [s] of the row's benchmark and scenario.

    Raises:
        ValueError: no limits are known and the row gives none.
    """
    which = scenario(row)
    table = LIMITS.get(spec or "", {}).get(which)
    ttft = _limit_column(row, "ttft_limit_ms")
    tpot = _limit_column(row, "tpot_limit_ms")
    if ttft is None and tpot is None:
        if table is None:
            known = ", ".join(f"{k} ({', '.join(v)})" for k, v in LIMITS.items())
            raise ValueError(
                f"MLPerf {which} limits of model {spec or row.get('model')!r} are not "
                f"known (known: {known}): give columns ttft_limit_ms and tpot_limit_ms"
            )
        return table
    return (ttft, tpot, None)


def scheduler_for(framework: str) -> Scheduler:
    """The engine's scheduler: defaults, KV admission by engine (module docstring)."""
    return Scheduler(reserved_output=1.0 if is_trtllm(framework) else 0.5)


def is_trtllm(framework: str) -> bool:
    """Whether a row's framework is TensorRT-LLM (TensorRT-LLM, TRT-LLM, trtllm...)."""
    f = framework.lower()
    return any(k in f for k in ("tensorrt", "trt-llm", "trtllm"))


def in_flight(framework: str) -> bool:
    """Whether this framework's throughput tables batch in flight, not statically.

    In-flight (continuous) batching with every request queued at once.
    TensorRT-LLM's performance tables changed methodology in v0.10 ("to utilize
    in-flight batching and no longer utilize static benchmarking", `trtllm-bench
    throughput`: "an offline maximum throughput scenario such that all requests are
    queued in rapid succession"; docs/source/performance/perf-overview.md); vLLM's
    and SGLang's offline benchmarks batch continuously as well.
    """
    f = framework.lower()
    if any(k in f for k in ("vllm", "sglang", "trtllm-bench")):
        return True
    m = re.search(r"(?:tensorrt-llm|trt-llm)\D{0,4}(\d+)\.(\d+)", f)
    return m is not None and (int(m[1]), int(m[2])) >= (0, 10)


def bench_scheduler(framework: str, cluster, model, serving) -> Scheduler:
    """The scheduler limits an offline benchmark of `framework` runs with.

    `trtllm-bench` (TensorRT-LLM in-flight tables) sizes the engine from the KV cache
    (`tensorrt_llm/bench/build/tuning.py`, `calc_engine_setting`/`finetune_setting`):
    R = the requests of S_in + S_out tokens the KV cache holds, raw batch b =
    min(R, 4096)/pp and raw tokens n = min(b·(1 + S_in/S_out), 32768);
    max_batch_size = max(64, 32⌈b/32⌉) below 256, 128⌈b/128⌉ below 1024, else
    256⌈b/256⌉; max_num_tokens = max(2048, 256⌈n/256⌉) below 4096, 512⌈n/512⌉ below
    8192, else 1024⌈n/1024⌉, prompts chunked in the budget the decodes leave; the
    batch stays below the token budget (the rounding can make them equal: 128/2048).
    vLLM's offline benchmark (the `LLM` class, `vllm bench throughput`) takes the V1
    engine's batch defaults for that usage context (`EngineArgs.get_batch_defaults`,
    vllm/engine/arg_utils.py): 1024 sequences and 16384 tokens per step on GPUs with
    at least 70 GiB that are not A100s, else 256 and 8192. Other engines:
    `scheduler_for` (their defaults).
    """
    sched = scheduler_for(framework)
    f = framework.lower()
    if "vllm" in f:
        big = float(cluster.chip.hbm_capacity) >= 70 * 2**30
        big = big and "a100" not in cluster.name.lower()
        return Scheduler(max_batch=1024.0 if big else 256.0,
                         max_tokens_per_step=16384.0 if big else 8192.0,
                         chunked_prefill_budget=16384.0 if big else 8192.0,
                         reserved_output=float(sched.reserved_output))  # fmt: skip
    if not is_trtllm(framework):
        return sched
    s_in, s_out = float(serving.input_len), float(serving.output_len)
    held = kv_capacity(cluster, model, serving, serving.input_len + serving.output_len)
    raw_bs = min(float(held), 4096.0) / float(serving.pp)
    raw_tok = min(raw_bs * (1.0 + s_in / s_out), 32768.0)
    if raw_bs < 256:
        bs = max(64.0, 32.0 * math.ceil(raw_bs / 32))
    else:
        step = 128.0 if raw_bs < 1024 else 256.0
        bs = step * math.ceil(raw_bs / step)
    if raw_tok < 4096:
        tok = max(2048.0, 256.0 * math.ceil(raw_tok / 256))
    else:
        step = 512.0 if raw_tok < 8192 else 1024.0
        tok = step * math.ceil(raw_tok / step)
    # a step holds at most max_num_tokens tokens, decodes first: the batch stays
    # below it (the load model then splits each step's budget between decodes and
    # prompt chunks, `model.load`)
    bs = min(bs, tok - 1.0)
    return Scheduler(max_batch=bs, max_tokens_per_step=tok,
                     chunked_prefill_budget=tok, reserved_output=1.0)  # fmt: skip


def replica_value(
    cluster, model, serving, metric: str, row: dict, spec, replicas, scheduler=None
):
    """One replica's value of an MLPerf metric (SI: tokens/s, queries/s or s).

    `scheduler` overrides the engine's default limits (`scheduler_for`).

    Throughputs are per replica; latencies at the system rate / `replicas`. Returns
    (value, note) with note None, or a reason when the model saturates at the row's
    rate (a miss to score, not a refusal).
    """
    sched = scheduler or scheduler_for(row.get("framework", ""))
    s_out = float(serving.output_len)
    per_query = s_out if metric.endswith("tokens_per_s") else 1.0
    if metric.startswith("offline_"):
        lam = float(capacity(cluster, model, serving, scheduler=sched))
        return lam * per_query, None
    limits = benchmark_limits(row, spec)
    if metric in THROUGHPUT_METRICS:
        ttft, tpot, e2e = limits
        lam, _ = mlperf_server(
            cluster, model, serving, ttft_p99=ttft, tpot_p99=tpot, e2e_p99=e2e,
            scheduler=sched,
        )  # fmt: skip
        return lam * per_query, None
    rate = _number(row, "target_qps")
    if rate is not None:
        lam = rate / replicas
    else:
        ttft, tpot, e2e = limits
        lam, _ = mlperf_server(
            cluster, model, serving, ttft_p99=ttft, tpot_p99=tpot, e2e_p99=e2e,
            scheduler=sched,
        )  # fmt: skip
    r = served(cluster, model, serving, request_rate=lam, scheduler=sched)
    field, index = LATENCY_METRICS[metric]
    value = getattr(r, field)
    value = float(value if index is None else value[index])
    if bool(r.saturated) or not math.isfinite(value):
        return value, (
            f"the model saturates at {lam:.3g} queries/s per replica, the run's rate"
        )
    return value, None


def _number(row: dict, key: str, unit: str = ""):
    """A positive, finite number cell, or None when blank (ValueError naming it)."""
    text = row.get(key, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"column {key}={text!r} must be a number > 0{unit}")
    return value


_RUN = ("source", "model", "gpu", "num_gpus", "tp", "pp", "ep", "dtype", "input_len",
        "output_len", "framework", "scenario")  # fmt: skip


def with_server_rates(rows: list[dict]) -> list[dict]:
    """Rows whose Server latency statistics get their run's rate as `target_qps`.

    The run is the rows sharing `_RUN`'s columns; its rate [queries/s, whole system]
    is its `server_completed_samples_per_s` row, else its
    `server_completed_tokens_per_s` row / `output_len`, counted over the row's unit
    scope (a per-GPU rate times `num_gpus`; per-node and per-replica rates need the
    hardware and are not used). Rows with their own `target_qps` keep it; others are
    returned unchanged (the same dicts).
    """
    rates = {}
    for row in rows:
        key = tuple(row.get(k, "") for k in _RUN)
        metric = row.get("metric", "").strip()
        scope = throughput_scope(row.get("unit", ""))
        try:
            value = float(row.get("value", ""))
            out = float(row.get("output_len", "") or "nan")
            gpus = float(row.get("num_gpus", "") or "1")
        except ValueError:
            continue
        if scope not in ("gpu", "system") or not value > 0:
            continue
        value *= gpus if scope == "gpu" else 1.0
        if metric == "server_completed_samples_per_s":
            rates[key] = value
        elif metric == "server_completed_tokens_per_s" and out > 0:
            rates.setdefault(key, value / out)
    found = []
    for row in rows:
        key = tuple(row.get(k, "") for k in _RUN)
        if (
            row.get("metric", "").strip() in LATENCY_METRICS
            and not row.get("target_qps", "").strip()
            and key in rates
        ):
            row = row | {"target_qps": repr(rates[key])}
        found.append(row)
    return found
