"""Validation against AIConfigurator's silicon measurements (its own CSV format).

AIConfigurator (ai-dynamo/aiconfigurator, `systems/silicon_sample.csv`) records
end-to-end serving benchmarks: one row per run of a `backend` (trtllm, vllm, sglang)
at `backend_version`, serving `model_path` (a Hugging Face id) on `system`, with
`isl` prompt and `osl` output tokens per request and the measured mean
`silicon_ttft_ms` and `silicon_tpot_ms`. A file is recognised by its columns
(`COLUMNS`). Each row is predicted twice, TTFT and TPOT, with `load.serve_load`:

- `mode = agg` (one engine serves prefill and decode): a closed loop of N clients in
  synchronized waves (`serve_load(phases="synchronized")`: AIConfigurator's benchmark
  starts its clients together with fixed `isl`/`osl`, so all N prompts arrive at
  once, are prefilled chunk after chunk and decode together; with mixed steps the
  later requests drift into a rolling pipeline, and the mean TTFT averages the first
  wave with it over `ROUNDS` requests per client) on one replica,
  `Serving(tp=tp_size, pp=pp_size, attention_dp=attention_dp_size, ep=moe_ep_size,
  etp=moe_tp_size)` (tp·attention_dp = moe_tp·moe_ep GPUs).
  AIConfigurator's `batch_size` is the concurrency of one attention rank, so N =
  batch_size · attention_dp_size (the `silicon_concurrency` of `silicon_data_source`
  where the two differ only by that factor). The engine's scheduler admits every
  client (`max_batch` = N) with the default token budgets of
  `specs.scheduler.Scheduler`, mixed steps for vLLM and TensorRT-LLM and prefill-only
  steps for SGLang (`_MIXED`), capped by the KV cache at the tokens a request holds
  (`_RESERVED`): isl + osl for TensorRT-LLM (GUARANTEED_NO_EVICT reserves them at
  admission), isl + osl/2 for vLLM and SGLang (pages allocated as tokens come).
- `mode = disagg` with worker counts (`prefill_num_workers` x prefill layout,
  `decode_num_workers` x decode layout) and the concurrency N of
  `silicon_data_source` (else N = decode_batch_size · decode_num_workers ·
  decode_attention_dp_size, the relation every row that gives both satisfies): the
  decode pool holds the N requests, N/y per decode worker, whose TPOT is the decode
  step of `serve` at that batch (capped by the KV cache) and the mean context; each
  prefill worker sees an open loop of X/x prompts per second and TTFT is its
  `serve_load` TTFT at that rate plus the KV-cache transfer of
  `model.serving.disaggregated`, with X = N/(TTFT + (osl − 1)·TPOT) solved by
  fixed-point iteration (`_predict_disagg`); the clients start together, so the
  mean TTFT averages that rolling state with the prefill pool's first wave (N/x
  prompts at once per worker, prefill-only steps) over `ROUNDS` requests per client.

Engine settings: all three engines replay decode steps as CUDA graphs in these
versions (TensorRT-LLM's PyTorch backend `cuda_graph_config`, vLLM V1's default
compilation config, SGLang's `--cuda-graph-max-bs`), so `graphs=True`. Precisions
(`precision`): gemm/moe `fp8` and `fp8_block` → fp8 weights and math; `nvfp4` → NVFP4
weights and math; `int4_wo` → INT4 weights with bf16 math (weight-only); blank or
`bf16` → bf16; gpt-oss checkpoints are MXFP4 (the file labels them fp4): MXFP4
weights, with MXFP4 math on chips with FP4 tensor cores and bf16 math (w4a16)
otherwise. The KV cache is fp8 with fp8, NVFP4 and MXFP4 weights and bf16 otherwise.
The file does not say; quantized checkpoints (NVIDIA ModelOpt's FP8/NVFP4 ones) set an
fp8 KV cache (`kv_cache_quant_algo`), which the engines read, and the measured TTFTs
agree: runs whose clients a bf16 cache cannot hold (Llama-3.1-70B fp8 on one B200 at
64 clients of 1024 + 8192 tokens: 35 in bf16, 70 in fp8) show no queueing.

Refused rows (each with its reason, counted in `refused`): disaggregated rows without
worker counts (the file does not say how many prefill and decode workers served the
run); layouts the model does not admit (tp not dividing the heads, moe_tp·moe_ep not
dividing tp·attention_dp, ...), unknown systems or models, precisions without tensor
cores on the chip.

Costs: rows are grouped by the static structure of their (cluster, model, serving,
scheduler) pytrees (names dropped) and each group is evaluated by one jit-compiled
`vmap` of `serve_load` over chunks of `CHUNK` rows.
"""

import dataclasses
import functools
import math
import re
from collections import defaultdict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..core.paths import get_leaf, set_leaf
from ..model.load import serve_load
from ..model.serving import disaggregated, kv_capacity, serve
from ..specs.mapping import Serving, check_serving
from ..specs.scheduler import Scheduler
from ..specs.workload import Precision
from .common import number

__all__ = [
    "COLUMNS",
    "SYSTEMS",
    "MODELS",
    "is_aiconfigurator",
    "resolve_aic_row",
    "validate_aic_rows",
    "print_aic_report",
    "aic_linearized",
]

COLUMNS = (
    "backend", "backend_version", "model_path", "system", "precision", "mode", "isl",
    "osl", "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size",
    "attention_dp_size", "moe_tp_size", "moe_ep_size", "silicon_ttft_ms",
    "silicon_tpot_ms", "silicon_data_source",
)  # fmt: skip
"""The columns that identify AIConfigurator's silicon CSV (plus `prefill_*`,
`decode_*` worker layouts)."""

SYSTEMS = {
    "h100_sxm": "h100_sxm",  # HGX/DGX H100, 8 GPUs per NVLink domain
    "h200_sxm": "h200_sxm",  # HGX/DGX H200
    "b200_sxm": "b200",  # HGX/DGX B200, 8 GPUs at 1000 W
    "gb200": "gb200",  # B200 GPU in a GB200 NVL72 rack (72-GPU NVLink domain)
    "b300_sxm": "b300",  # HGX B300
    "gb300": "gb300",  # Blackwell Ultra GPU in a GB300 NVL72 rack
}
"""AIConfigurator `system` names → hardware specs (hardware/)."""

MODELS = {
    "deepseek-ai/DeepSeek-R1": "deepseek_v3",
    "deepseek-ai/DeepSeek-V3": "deepseek_v3",
    "nvidia/DeepSeek-R1-NVFP4": "deepseek_v3",
    "nvidia/DeepSeek-V3.1-NVFP4": "deepseek_v3",
    "moonshotai/Kimi-K2.5": "kimi_k2_5",
    "MiniMaxAI/MiniMax-M2.5": "minimax_m2_5",
    "Qwen/Qwen3-32B": "qwen3_32b",
    "nvidia/Qwen3-32B-NVFP4": "qwen3_32b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3_235b_a22b",
    "Qwen/Qwen3.5-397B-A17B": "qwen3_5_397b_a17b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama3_1_8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama3_1_8b",
    "meta-llama/Llama-3.1-70B": "llama3_1_70b",
    "openai/gpt-oss-120b": "gpt_oss_120b",
    "zhipuai/GLM-5": "glm5",
}
"""AIConfigurator `model_path` ids → workload specs; other ids go through
`io.resolve_workload` (names as people write them)."""

CHUNK = 64
"""Rows per vmapped evaluation (a group's last chunk is padded to this size)."""

_GRAPHS = {"trtllm": True, "vllm": True, "sglang": True}
_FP8 = ("fp8", "fp8_block")


def is_aiconfigurator(columns) -> bool:
    """True when a CSV's columns are AIConfigurator's silicon format (`COLUMNS`)."""
    return set(COLUMNS) <= set(columns)


def _precision(row: dict, chip) -> Precision:
    """The `Precision` of a row's gemm/moe quant modes (module docstring)."""
    cells = (row.get("gemm_quant_mode", ""), row.get("moe_quant_mode", ""))
    modes = {c.strip().lower() for c in cells} - {""}
    label = row.get("precision", "").strip().lower()
    fp4_cores = float(chip.flops_fp4) > 0
    if "gpt-oss" in row.get("model_path", "").lower() and (
        "nvfp4" in modes or label == "fp4"
    ):
        return Precision(math="mxfp4" if fp4_cores else "bf16", weights="mxfp4",
                         kv_cache="fp8")  # fmt: skip
    if "nvfp4" in modes or (not modes and label == "fp4"):
        if not fp4_cores:
            raise ValueError(f"nvfp4 math on {row.get('system')}: no FP4 cores")
        return Precision(math="nvfp4", weights="nvfp4", kv_cache="fp8")
    if modes & set(_FP8) or (not modes and label == "fp8"):
        return Precision(math="fp8", weights="fp8", kv_cache="fp8")
    if "int4_wo" in modes or (not modes and label == "int4"):
        return Precision(math="bf16", weights="int4")
    if not modes and label in ("", "bf16", "fp16", "float16"):
        return Precision()
    raise ValueError(
        f"precision {label!r} with quant modes {sorted(modes)} is not one of fp8, "
        "fp8_block, nvfp4, int4_wo, bf16"
    )


def _whole(row: dict, key: str, default=None) -> float | None:
    """A whole-number cell (ValueError naming the column when it is not)."""
    v = number(row, key, default)
    if v is not None and v != round(v):
        raise ValueError(f"column {key}={row.get(key)!r} must be a whole number")
    return v


def silicon_concurrency(row: dict) -> float | None:
    """The run's total concurrency from `silicon_data_source`, or None."""
    found = re.search(r"silicon_concurrency=(\d+)", row.get("silicon_data_source", ""))
    return float(found.group(1)) if found else None


@functools.cache
def _hardware(stem: str, backend: str):
    """The cluster of a spec with the engine's software-stack profile, loaded once.

    `hardware/stacks/`: trtllm, vllm, sglang; else the chip's default serving stack
    (pytrees are immutable, so one load serves every row).
    """
    stack = io.stack_for_framework(backend) or io.default_stack(stem, "serving")
    return io.load_hardware(stem, stack=stack)


@functools.cache
def _model(path: str):
    """(spec stem, Transformer) of a `model_path`, loaded once."""
    stem = MODELS.get(path) or io.resolve_workload(path).spec
    return stem, io.load_workload(stem)


def _layout(row: dict, prefix: str, model, isl: float, osl: float) -> Serving:
    """The replica of a row's (prefixed) layout columns, checked against the model."""
    tp = _whole(row, f"{prefix}tp_size")
    if tp is None or tp < 1:
        raise ValueError(f"column {prefix}tp_size must be a whole number >= 1")
    heads = float(model.n_heads)
    if tp > heads:  # no engine splits fewer heads over more ranks: the row is wrong
        raise ValueError(
            f"column {prefix}tp_size={tp:g} exceeds the model's {heads:g} attention "
            f"heads: the row contradicts itself (id {row.get('id', '')})"
        )
    pp = _whole(row, f"{prefix}pp_size", 1.0) or 1.0
    dp = _whole(row, f"{prefix}attention_dp_size", 1.0) or 1.0
    moe = float(model.n_experts) > 0
    ep = (_whole(row, f"{prefix}moe_ep_size", 1.0) or 1.0) if moe else 1.0
    etp = (_whole(row, f"{prefix}moe_tp_size", 1.0) or 1.0) if moe else 1.0
    if ep * etp > tp * dp:
        raise ValueError(
            f"columns {prefix}moe_tp_size·{prefix}moe_ep_size={ep * etp:g} exceed "
            f"{prefix}tp_size·{prefix}attention_dp_size={tp * dp:g} GPUs: the row "
            f"contradicts itself (id {row.get('id', '')})"
        )
    serving = Serving(
        tp=tp, pp=pp, ep=ep, etp=etp, attention_dp=dp, input_len=isl, output_len=osl,
        graphs=_GRAPHS.get(row.get("backend", "").strip().lower(), True),
    )  # fmt: skip
    check_serving(model, serving)
    return serving


def resolve_aic_row(row: dict) -> dict:
    """What predicting a row needs, checked; ValueError with the reason otherwise.

    Returns a dict with `kind` ("agg" or "disagg"), `cluster`, `model`, the spec
    names, and for agg `serving` and `concurrency`; for disagg `prefill`, `decode`
    (Serving), `workers` (x, y) and `concurrency` (total).
    """
    system = row.get("system", "").strip()
    if system not in SYSTEMS:
        raise ValueError(f"system {system!r} is not one of {', '.join(SYSTEMS)}")
    cluster = _hardware(SYSTEMS[system], row.get("backend", "").strip())
    stem, model = _model(row.get("model_path", "").strip())
    model = eqx.tree_at(lambda m: m.precision, model, _precision(row, cluster.chip))
    isl, osl = _whole(row, "isl"), _whole(row, "osl")
    if not isl or not osl or isl < 1 or osl < 2:
        raise ValueError("columns isl >= 1 and osl >= 2 are needed")
    mode = row.get("mode", "").strip()
    out = dict(kind=mode, cluster=cluster, model=model, hardware=SYSTEMS[system],
               spec=stem, backend=row.get("backend", "").strip().lower())  # fmt: skip
    if mode == "agg":
        n = _whole(row, "batch_size")
        if not n or n < 1:
            raise ValueError("column batch_size (the concurrency) must be >= 1")
        serving = _layout(row, "", model, isl, osl)
        n = n * float(serving.attention_dp)  # batch_size is per attention rank
        return out | dict(serving=serving, concurrency=n)
    if mode != "disagg":
        raise ValueError(f"mode {mode!r} must be agg or disagg")
    x = _whole(row, "prefill_num_workers")
    y = _whole(row, "decode_num_workers")
    if not x or not y:
        raise ValueError(
            "disaggregated run without worker counts (prefill_num_workers, "
            "decode_num_workers)"
        )
    n = silicon_concurrency(row)
    if not n:
        raise ValueError("disaggregated run without silicon_concurrency")
    prefill = _layout(row, "prefill_", model, isl, osl)
    decode = _layout(row, "decode_", model, isl, osl)
    return out | dict(prefill=prefill, decode=decode, workers=(x, y), concurrency=n)


# ---- batched evaluation --------------------------------------------------------------


def _strip(cluster, model):
    """Cluster and model with their static names blanked: one compile serves many."""
    return dataclasses.replace(cluster, name=""), dataclasses.replace(model, name="")


@eqx.filter_jit
def _closed(cluster, model, serving, n, scheduler, rounds):
    return jax.vmap(_closed_one)(cluster, model, serving, n, scheduler, rounds)


def _closed_one(cluster, model, serving, n, scheduler, rounds):
    r = serve_load(cluster, model, serving, concurrency=n, scheduler=scheduler,
                   phases="synchronized", rounds=rounds)  # fmt: skip
    held = serving.input_len + scheduler.reserved_output * serving.output_len
    return jnp.stack([r.ttft, r.tpot, kv_capacity(cluster, model, serving, held)])


@eqx.filter_jit
def _open(cluster, model, serving, rate, scheduler):
    def one(c, m, s, lam, sch):
        r = serve_load(c, m, s, request_rate=lam, scheduler=sch)
        return jnp.stack([r.ttft, r.utilization])

    return jax.vmap(one)(cluster, model, serving, rate, scheduler)


def _batched(fn, jobs: list[tuple], tick=None) -> np.ndarray:
    """Results of `fn` over jobs (pytree tuples), grouped by static structure."""
    groups = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[jax.tree_util.tree_structure(job)].append(i)
    out = [None] * len(jobs)
    for idx in groups.values():
        for start in range(0, len(idx), CHUNK):
            part = idx[start : start + CHUNK]
            pad = part + [part[0]] * (min(CHUNK, len(idx)) - len(part))
            stacked = jax.tree_util.tree_map(
                lambda *xs: jnp.stack([jnp.asarray(x, dtype=float) for x in xs]),
                *[jobs[i] for i in pad],
            )
            res = np.asarray(fn(*stacked))
            for k, i in enumerate(part):
                out[i] = res[k]
            if tick is not None:
                tick(len(part))
    return out


_RESERVED = {"trtllm": 1.0, "vllm": 0.5, "sglang": 0.5}
"""KV tokens an admitted request holds, as a share of its output
(`Scheduler.reserved_output`): TensorRT-LLM's GUARANTEED_NO_EVICT reserves them all;
vLLM and SGLang allocate pages as tokens come (the mean held over a request's life)."""


_MIXED = {"trtllm": True, "vllm": True, "sglang": False}
"""Whether the engine's steps mix prompt chunks with decodes by default: vLLM V1's
chunked prefill and TensorRT-LLM's in-flight batching do; SGLang runs a step with
prompt work as a prefill-only step unless `--enable-mixed-chunk` is given."""

ROUNDS = 5.0
"""Requests each client sends in a measured run (`serve_load(rounds=)`). The file
does not say. AIConfigurator's current benchmark template
(`generator/config/backend_templates/benchmark/bench_run.sh.j2`) runs `aiperf profile
--concurrency N --num-requests 50·N --warmup-request-count 2·N`, but the rows of the
engines with mixed steps (vLLM, TensorRT-LLM) imply about 5: per row, (measured −
rolling)/(first wave − rolling) estimates 1/R, and its median is 0.20-0.24 in every
concurrency bin from 4 to 128 clients for both engines (2,300 rows;
experiments/calibrate_engines `rounds_evidence`); genai-perf scripts commonly send
`--request-count 5·N`."""


def _scheduler(n, backend: str = "") -> Scheduler:
    """The engine admits every client (max_batch = N) with default token budgets.

    Its KV cache admits by the tokens a request holds (`_RESERVED`); its steps mix
    prompt chunks with decodes as the engine does by default (`_MIXED`).
    """
    return Scheduler(max_batch=max(float(n), 1.0),
                     reserved_output=_RESERVED.get(backend, 1.0),
                     mixed=_MIXED.get(backend, True))  # fmt: skip


def _agg_jobs(resolved: dict[int, dict]) -> dict[int, tuple]:
    jobs = {}
    for i, r in resolved.items():
        c, m = _strip(r["cluster"], r["model"])
        jobs[i] = (c, m, r["serving"], jnp.asarray(r["concurrency"], dtype=float),
                   _scheduler(r["concurrency"], r["backend"]),
                   jnp.asarray(ROUNDS, dtype=float))  # fmt: skip
    return jobs


def _predict_agg(resolved: dict[int, dict], tick=None) -> dict[int, dict]:
    jobs = _agg_jobs(resolved)
    keys = list(jobs)
    res = _batched(_closed, [jobs[k] for k in keys], tick)
    return {
        k: dict(ttft=float(v[0]), tpot=float(v[1]), kv_capacity=float(v[2]))
        for k, v in zip(keys, res, strict=True)
    }


@eqx.filter_jit
def _decode_pool(cluster, model, serving, n):
    """TPOT of decode workers holding n requests each (capped by the KV cache)."""

    def one(c, m, s, k):
        cap = serve(c, m, eqx.tree_at(lambda x: x.batch, s, 1.0)).max_batch
        b = jnp.clip(k, 1.0, jnp.maximum(cap, 1.0))
        return jnp.stack([serve(c, m, eqx.tree_at(lambda x: x.batch, s, b)).tpot, cap])

    return jax.vmap(one)(cluster, model, serving, n)


def _predict_disagg(
    resolved: dict[int, dict], iters: int = 12, tick=None
) -> dict[int, dict]:
    """Disaggregated rows (module docstring): decode pool, then the prefill fixed point.

    TPOT is the decode step of N/y sequences at the mean context (`serve`); TTFT the
    prefill worker's mean TTFT under an open loop of X/x prompts/s (`serve_load` with
    `output_len` 2: the worker emits the first token and hands the request over) plus
    the KV transfer of `disaggregated`; X = N/(TTFT + (osl − 1)·TPOT) is iterated
    (damped by half) from the TTFT of one prompt alone; while the prefill pool is
    saturated at the rate (no finite open-loop TTFT) the TTFT estimate doubles. The
    mean TTFT is that rolling state's averaged with the first wave's over `ROUNDS`
    requests per client: each prefill worker gets N/x prompts at once
    (`serve_load(phases="synchronized")` with prefill-only steps).
    """
    if not resolved:
        return {}
    keys = list(resolved)
    dec_jobs = []
    for k in keys:
        r = resolved[k]
        c, m = _strip(r["cluster"], r["model"])
        per = max(r["concurrency"] / r["workers"][1], 1.0)
        dec_jobs.append((c, m, r["decode"], jnp.asarray(per, dtype=float)))
    dec = _batched(_decode_pool, dec_jobs, tick)
    tpot = {k: float(v[0]) for k, v in zip(keys, dec, strict=True)}
    cap = {k: float(v[1]) for k, v in zip(keys, dec, strict=True)}
    ttft, kv = {}, {}
    for k in keys:
        r = resolved[k]
        x, y = r["workers"]
        d = disaggregated(
            r["cluster"], r["model"], eqx.tree_at(lambda s: s.batch, r["prefill"], 1.0),
            eqx.tree_at(lambda s: s.batch, r["decode"], 1.0),
            prefill_chips=x * float(r["prefill"].chips),
            decode_chips=y * float(r["decode"].chips),
        )  # fmt: skip
        kv[k], ttft[k] = float(d.kv_transfer), float(d.ttft)
    for _ in range(iters):
        jobs = []
        for k in keys:
            r = resolved[k]
            c, m = _strip(r["cluster"], r["model"])
            osl = float(r["decode"].output_len)
            cycle = ttft[k] + (osl - 1.0) * tpot[k]
            rate = r["concurrency"] / cycle / r["workers"][0]
            pre = eqx.tree_at(lambda s: s.output_len, r["prefill"], 2.0)
            jobs.append((c, m, pre, jnp.asarray(rate, dtype=float), Scheduler()))
        for k, v in zip(keys, _batched(_open, jobs), strict=True):
            t = float(v[0]) + kv[k]
            # saturated prefill pool (no finite open-loop TTFT): the closed loop slows
            # its clients down, so lower the rate by doubling the TTFT estimate
            ttft[k] = 0.5 * (ttft[k] + t) if math.isfinite(t) else 2.0 * ttft[k]
    # the benchmark's clients start together: the prefill pool's first wave, then the
    # rolling state (the open loop above), averaged over the `ROUNDS` requests each
    # client sends (serve_load(rounds=) for the same average in one engine)
    wave_jobs = []
    for k in keys:
        r = resolved[k]
        c, m = _strip(r["cluster"], r["model"])
        per = max(r["concurrency"] / r["workers"][0], 1.0)
        pre = eqx.tree_at(lambda s: s.output_len, r["prefill"], 2.0)
        sched = Scheduler(max_batch=per, mixed=False)  # its requests leave at once
        wave_jobs.append((c, m, pre, jnp.asarray(per, dtype=float), sched,
                          jnp.asarray(1.0)))  # fmt: skip
    first = {k: float(v[0]) for k, v in
             zip(keys, _batched(_closed, wave_jobs), strict=True)}  # fmt: skip
    for k in keys:
        rolling = ttft[k] - kv[k]
        ttft[k] = kv[k] + rolling + (first[k] - rolling) / ROUNDS
    return {k: dict(ttft=ttft[k], tpot=tpot[k], kv_capacity=cap[k]) for k in keys}


# ---- scoring and summaries -----------------------------------------------------------


def _measured(row: dict, key: str) -> float:
    v = number(row, key)
    if v is None or not v > 0:
        raise ValueError(f"column {key}={row.get(key)!r} must be a number > 0")
    return v


def validate_aic_rows(rows: list[dict], *, progress=None) -> dict:
    """TTFT and TPOT predictions of every row, refusals with reasons, and summaries.

    `results` holds two entries per predicted CSV row (`metric` "ttft" and "tpot",
    milliseconds, `row` its index) and one per refused row (`reason`).
    `progress(done, total)` is called as chunks of rows finish.
    """
    resolved, refused = {}, {}
    for i, row in enumerate(rows):
        try:
            _measured(row, "silicon_ttft_ms")
            _measured(row, "silicon_tpot_ms")
            resolved[i] = resolve_aic_row(row)
        except ValueError as e:
            refused[i] = str(e).splitlines()[0]
    agg = {i: r for i, r in resolved.items() if r["kind"] == "agg"}
    dis = {i: r for i, r in resolved.items() if r["kind"] == "disagg"}
    done = [len(refused)]

    def tick(n):  # rows finished, for a progress bar
        done[0] += n
        if progress is not None:
            progress(done[0], len(rows))

    pred = _predict_agg(agg, tick) | _predict_disagg(dis, tick=tick)
    results = []
    for i, row in enumerate(rows):
        base = dict(
            row=i, backend=row.get("backend", ""), system=row.get("system", ""),
            model_path=row.get("model_path", ""), mode=row.get("mode", ""),
        )  # fmt: skip
        if i in refused:
            results.append(base | dict(reason=refused[i]))
            continue
        p, r = pred[i], resolved[i]
        base |= dict(hardware=r["hardware"], model=r["spec"],
                     concurrency=r["concurrency"],
                     silicon_concurrency=silicon_concurrency(row))  # fmt: skip
        for metric, key in (("ttft", "silicon_ttft_ms"), ("tpot", "silicon_tpot_ms")):
            measured = _measured(row, key)
            predicted = 1e3 * p[metric]
            if not math.isfinite(predicted) or predicted <= 0:
                why = f"the model gives no finite {metric}"
                results.append(base | dict(metric=metric, measured=measured))
                results[-1]["reason"] = why
                continue
            results.append(
                base | dict(
                    metric=metric, measured=measured, predicted=predicted,
                    ape=abs(predicted - measured) / measured,
                    feasible=p["kv_capacity"] >= 1.0,
                )
            )  # fmt: skip
    return summarize_aic(results, len(rows))


def _mape(rs):
    apes = sorted(r["ape"] for r in rs)
    if not apes:
        return None, None
    n = len(apes)
    return sum(apes) / n, (apes[(n - 1) // 2] + apes[n // 2]) / 2


def _bias(rs):
    """Median signed error (predicted/measured − 1)."""
    s = sorted(r["predicted"] / r["measured"] - 1.0 for r in rs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2 if s else None


def _table(done, key):
    out = {}
    for g in sorted({str(r[key]) for r in done}):
        sub = [r for r in done if str(r[key]) == g]
        entry = {"rows": len({r["row"] for r in sub})}
        for metric in ("ttft", "tpot"):
            m = [r for r in sub if r["metric"] == metric]
            mape, med = _mape(m)
            entry[metric] = dict(mape=mape, median_ape=med, median_bias=_bias(m))
        out[g] = entry
    return out


def summarize_aic(results: list[dict], n_rows: int) -> dict:
    """Coverage, TTFT/TPOT MAPE overall and by system, backend, model and mode."""
    done = [r for r in results if "ape" in r]
    predicted_rows = {r["row"] for r in done}
    refused = defaultdict(int)
    for r in results:
        if "ape" not in r and r["row"] not in predicted_rows:
            refused[_reason_class(r["reason"])] += 1
    overall = {}
    for metric in ("ttft", "tpot"):
        m = [r for r in done if r["metric"] == metric]
        mape, med = _mape(m)
        overall[metric] = dict(rows=len(m), mape=mape, median_ape=med,
                               median_bias=_bias(m))  # fmt: skip
    return dict(
        kind="aiconfigurator",
        rows=n_rows,
        rows_predicted=len(predicted_rows),
        rows_refused=n_rows - len(predicted_rows),
        coverage=len(predicted_rows) / n_rows if n_rows else None,
        rows_with_layout=len(
            {
                r["row"]
                for r in results
                if r["row"] in predicted_rows
                or "without worker counts" not in r.get("reason", "")
            }
        ),
        refused=dict(sorted(refused.items(), key=lambda kv: -kv[1])),
        rows_infeasible=len({r["row"] for r in done if r.get("feasible") is False}),
        ttft=overall["ttft"],
        tpot=overall["tpot"],
        by_system=_table(done, "system"),
        by_backend=_table(done, "backend"),
        by_model=_table(done, "model_path"),
        by_mode=_table(done, "mode"),
        results=results,
    )


def _reason_class(reason: str) -> str:
    """A refusal reason without its row-specific numbers (for counting)."""
    return re.sub(r"=\s*[\d.]+", "=N", re.sub(r"\s*\(id [^)]*\)$", "", reason))


def print_aic_report(out: dict):
    """Human-readable summary of `validate_aic_rows`."""
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(
        f"rows {out['rows']}: predicted {out['rows_predicted']} "
        f"({pct(out['coverage'])}; {out['rows_with_layout']} with a complete layout), "
        f"refused {out['rows_refused']}; out of KV memory {out['rows_infeasible']}"
    )
    for m in ("ttft", "tpot"):
        s = out[m]
        print(f"{m.upper()} MAPE {pct(s['mape'])}, median APE {pct(s['median_ape'])}, "
              f"median bias {pct(s['median_bias'])}")  # fmt: skip
    for title in ("system", "backend", "model", "mode"):
        print(f"\nby {title}:{'':<40}rows  TTFT MAPE  TPOT MAPE")
        for k, v in out[f"by_{title}"].items():
            print(f"  {k:<46} {v['rows']:5d}  {pct(v['ttft']['mape']):>9}  "
                  f"{pct(v['tpot']['mape']):>9}")  # fmt: skip
    if out["refused"]:
        print("\nrefused:")
        for reason, n in out["refused"].items():
            print(f"  {n:5d}  {reason}")


# ---- linearized predictions (engine calibration) -------------------------------------


@eqx.filter_jit
def _closed_lin(cluster, model, serving, n, scheduler, rounds, paths):
    """(TTFT, TPOT) of each row, their derivatives by the leaves at `paths`, by 1/R.

    R is the rows' `rounds` (last column).
    """

    def one(c, m, s, k, sch, rr):
        def f(x):
            cc = c
            for j, path in enumerate(paths):
                cc = set_leaf(cc, path, x[j])
            return _closed_one(cc, m, s, k, sch, 1.0 / x[-1])[:2]

        x0 = [jnp.asarray(get_leaf(c, p), dtype=float) for p in paths]
        x0 = jnp.stack(x0 + [1.0 / rr])
        return jnp.concatenate([f(x0)[:, None], jax.jacfwd(f)(x0)], axis=1)

    return jax.vmap(one)(cluster, model, serving, n, scheduler, rounds)


def aic_linearized(rows: list[dict], leaves: tuple[str, ...], *, progress=None):
    """TTFT and TPOT of the aggregated rows and their derivatives by software leaves.

    For each resolvable `mode = agg` row with positive measurements: a dict with
    `row` (index), `backend`, `system`, `hardware`, `model`, `concurrency`, `isl`,
    `osl`, `measured` (TTFT, TPOT in s), `predicted` (s), `x0` (the leaves' values
    in the row's cluster) and `jacobian` (2 × len(leaves), ∂prediction/∂leaf in s per
    leaf unit), with one more column: ∂/∂(1/rounds), the first wave's TTFT over the
    rolling pipeline's (`ROUNDS`). The synchronized-wave TTFT and TPOT are sums of
    step times, and each step time is affine in the per-step serving cost and the
    per-kernel cost (CUDA graphs: no host dispatch term), so prediction(x) =
    predicted + jacobian·(x − x0) is exact for those leaves (checked in
    tests/test_calibrate_engines.py).
    """
    paths = tuple(leaves)
    resolved = {}
    for i, row in enumerate(rows):
        try:
            ttft = _measured(row, "silicon_ttft_ms")
            tpot = _measured(row, "silicon_tpot_ms")
            r = resolve_aic_row(row)
        except ValueError:
            continue
        if r["kind"] == "agg":
            resolved[i] = r | dict(measured=(ttft / 1e3, tpot / 1e3))
    jobs = _agg_jobs(resolved)
    keys = list(jobs)
    done = [0]

    def tick(k):
        done[0] += k
        if progress is not None:
            progress(done[0], len(keys))

    res = _batched(lambda *a: _closed_lin(*a, paths), [jobs[k] for k in keys], tick)
    out = []
    for k, v in zip(keys, res, strict=True):
        r, row = resolved[k], rows[k]
        v = np.asarray(v)
        x0 = [float(get_leaf(r["cluster"], p)) for p in paths]
        out.append(dict(
            row=k, backend=r["backend"], system=row.get("system", "").strip(),
            hardware=r["hardware"], model=r["spec"], concurrency=r["concurrency"],
            isl=float(r["serving"].input_len), osl=float(r["serving"].output_len),
            measured=r["measured"], predicted=(float(v[0, 0]), float(v[1, 0])),
            x0=x0, jacobian=v[:, 1:].tolist(),
        ))  # fmt: skip
    return out
