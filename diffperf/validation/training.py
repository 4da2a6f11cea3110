"""Validation of the training model against measured runs (`diffperf validate`).

Each CSV row (columns of `data/training_calibration.csv`) is resolved to hardware, a
workload and a mapping, predicted with the Exact model, and compared on the metric the
source measured most directly, in this order: tokens/s/GPU, step time, model
TFLOP/s/GPU. Throughputs scale as 1/step time, so for every metric

    APE = |predicted − measured| / measured

is computed from our step time and the source's own FLOP or token count. A row that
cannot be resolved is reported with the reason, never guessed.

Defaults for columns a source leaves blank (documented in VALIDATION.md):
  - Narayanan et al. SC'21 and the Megatron-LM 2020 README: full activation
    recomputation (the paper's FLOP formula counts it; the 2020 scripts pass
    --checkpoint-activations), ZeRO 0, no sequence parallelism, no FlashAttention and no
    overlap of the gradient all-reduce with the backward pass (all predate 2022).
  - MosaicML llm-foundry: FSDP FULL_SHARD (ZeRO-3), tp = pp = 1.
  - Attention kernel (`_attention_kernel`), from the row's `framework` column (else its
    source): Megatron-LM 2020/2021 unfused; Composer/llm-foundry FlashAttention-2
    ("fa2": the benchmark README says the models use Flash Attention, and its tables
    were measured in 2023 with flash-attn 2, before FlashAttention-3 appeared in July
    2024); NeMo / Megatron-Bridge the chip's best fused kernel ("fa3": Transformer
    Engine's cuDNN fused attention on Hopper/Blackwell).
  - NVIDIA NeMo / Megatron-Bridge: distributed optimizer (ZeRO-1), sequence
    parallelism when tp > 1, no recompute; MoE all-to-all overlapped with compute for
    the layouts whose published recipe enables it (`_A2A_OVERLAP`); "(tokendrop)"
    rows route with capacity factor 1 (padded), others dropless;
    "(w/ MTP)" adds one multi-token-prediction module.
"""

import re

import equinox as eqx

from .. import io
from ..analysis.calibrate import Row
from ..model.train import train_step
from ..specs.mapping import Parallelism, check_mapping
from ..specs.workload import Precision
from .common import number, short_source, summarize

__all__ = [
    "validate_rows",
    "predict_row",
    "calibration_rows",
    "spec_family",
]

_DTYPES = [
    (r"nvfp4|fp4", "fp4"),
    (r"fp8", "fp8"),
    (r"bf16|fp16|amp_bf16", "bf16"),
]
_SUFFIXES = r"\s*(\((tokendrop|dropless|w/ mtp)\)|sft)\s*$"


def _source_kind(source: str) -> str:
    s = source.lower()
    if "narayanan" in s:
        return "sc21"
    if "megatron-lm readme" in s:
        return "megatron2020"
    if "mosaicml" in s:
        return "mosaic"
    return "nvidia"


def _dtype(text: str) -> str:
    t = text.lower()
    for pattern, dtype in _DTYPES:
        if re.search(pattern, t):
            return dtype
    raise ValueError(f"dtype {text!r} is not one of bf16/fp16/fp8/fp4 variants")


def _model(row):
    name = row["model"].strip()
    if re.search(r"\blora\b", name, re.I):
        raise ValueError(
            "LoRA fine-tuning is not modeled "
            "(frozen base weights skip weight gradients)"
        )
    lower = name.lower()
    base = re.sub(_SUFFIXES, "", name, flags=re.I)
    model = io.load_workload(base)
    if "mtp" in lower:  # DeepSeek-V3 multi-token prediction: one MTP module
        model = eqx.tree_at(lambda m: m.n_mtp_layers, model, 1.0)
    if (
        "tokendrop" in lower
    ):  # Megatron-Bridge token dropping: capacity factor 1, padded
        model = eqx.tree_at(lambda m: m.capacity_factor, model, 1.0)
    return model


# Layouts whose Megatron-Bridge performance recipe overlaps the MoE all-to-all with
# computation (`moe_a2a_overlap=True`: overlap_moe_expert_parallel_comm and delayed
# expert wgrad), keyed by (workload, gpu, tp, pp, vpp, ep). Source:
# github:NVIDIA-NeMo/Megatron-Bridge scripts/performance/configs/{deepseek,qwen}/
# *_workload_base_configs.py (DEEPSEEK_V3_PRETRAIN_CONFIG_B200_FP8_MX_V2,
# QWEN3_235B_A22B_PRETRAIN_CONFIG_H100_*_V1/V2, and the Qwen3-30B-A3B H100 PP2/VPP12
# launch with --moe_a2a_overlap True); every other MoE recipe there sets it False.
_A2A_OVERLAP = {
    ("deepseek_v3", "b200", 1, 8, 2, 32),
    ("qwen3_235b_a22b", "h100_sxm", 2, 8, 4, 32),
    ("qwen3_30b_a3b", "h100_sxm", 1, 2, 12, 8),
    ("qwen3_30b_a3b", "h100_sxm", 1, 2, 24, 8),
}


def _ep_overlap(row, kind: str, model, degrees: tuple) -> float:
    """1.0 for a Megatron-Bridge layout with the all-to-all overlap, else 0.0."""
    if kind != "nvidia" or not float(model.n_experts):
        return 0.0
    key = (model.name, io.load_hardware(row["gpu"]).name, *degrees)
    return 1.0 if key in _A2A_OVERLAP else 0.0


def _attention_kernel(row, kind: str) -> str:
    """The row's attention kernel (module docstring): "unfused", "fa2" or "fa3"."""
    framework = (row.get("framework") or "").lower()
    if kind in ("sc21", "megatron2020") or re.search(r"megatron-lm \(20", framework):
        return "unfused"
    if kind == "mosaic" or re.search(r"llm-foundry|composer", framework):
        return "fa2"
    return "fa3"


def _mapping(row, kind: str, model) -> tuple[Parallelism, int]:
    gpus = int(number(row, "num_gpus"))
    tp = int(number(row, "tp") or 1)
    pp = int(number(row, "pp") or 1)
    cp = int(number(row, "cp") or 1)
    dp = int(number(row, "dp") or gpus // (tp * pp * cp))
    rec = (row.get("recompute") or "").strip().lower()
    if not rec:
        rec = "full" if kind in ("sc21", "megatron2020") else "none"
    sp_text = (row.get("seq_parallel") or "").strip().lower()
    if sp_text:
        sp = sp_text in ("y", "yes", "true", "1")
    else:
        sp = tp > 1 and kind in ("nvidia",)
    zero = {"mosaic": 3, "nvidia": 1}.get(kind, 0)
    legacy = kind in ("sc21", "megatron2020")
    ep, vpp = number(row, "ep") or 1, number(row, "vpp") or 1
    overlap = _ep_overlap(row, kind, model, (tp, pp, round(vpp), round(ep)))
    mapping = Parallelism(
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        ep=ep,
        vpp=vpp,
        microbatch=number(row, "microbatch") or 1,
        global_batch=number(row, "global_batch"),
        seq_len=number(row, "seq_len") or 0,
        recompute=rec,
        sequence_parallel=sp,
        zero=zero,
        attention_kernel=_attention_kernel(row, kind),
        dp_overlap=0.0 if legacy else 1.0,
        ep_overlap=overlap,
    )
    check_mapping(model, mapping, gpus=gpus)
    return mapping, gpus


def _source_flops(row, kind, model, mapping) -> float:
    """FLOP per step by the source's own formula (for rows reporting TFLOP/s only)."""
    b, s = float(mapping.batch()), float(mapping.tokens(model))
    L, h, V = float(model.n_layers), float(model.d_model), float(model.vocab_size)
    if kind == "sc21":  # Narayanan et al. 2021, eq. (3): with recompute
        return 96 * b * s * L * h**2 * (1 + s / (6 * h) + V / (16 * L * h))
    # NeMo's llama formula (nemo/utils/flops_formulas.py): GQA, gated FFN, full attn.
    g = float(model.n_kv_heads) / float(model.n_heads)
    f = float(model.d_ff)
    return b * s * L * h**2 * (12 + 12 * g + 18 * f / h + 12 * s / h + 6 * V / (L * h))


def _resolve_row(row: dict, cluster=None):
    """(kind, cluster, model with the row's precision, mapping, gpus) of a row."""
    kind = _source_kind(row.get("source", ""))
    cluster = cluster or io.load_hardware(row["gpu"])
    model = _model(row)
    dtype = _dtype(row.get("dtype", "bf16"))
    if float(cluster.chip.peak_flops(dtype)) <= 0:
        raise ValueError(f"{cluster.name} has no {dtype} tensor throughput")
    model = eqx.tree_at(lambda m: m.precision, model, Precision.training(dtype))
    mapping, gpus = _mapping(row, kind, model)
    return kind, cluster, model, mapping, gpus


def predict_row(row: dict, *, hardware_override=None, fidelity="detailed") -> dict:
    """The prediction for one training row (ValueError if it cannot be resolved)."""
    kind, cluster, model, mapping, gpus = _resolve_row(row, hardware_override)
    b = train_step(cluster, model, mapping, fidelity=fidelity)
    step = float(b.total)
    tokens = float(b.tokens)
    tok, step_m = (
        number(row, "measured_tokens_per_s_per_gpu"),
        number(row, "measured_step_time_s"),
    )
    tfl = number(row, "measured_tflops_per_gpu")
    if tok:
        metric, measured, predicted = (
            "tokens_per_s_per_gpu",
            tok,
            tokens / (step * gpus),
        )
    elif step_m:
        metric, measured, predicted = "step_time_s", step_m, step
    elif tfl:
        flops = _source_flops(row, kind, model, mapping)
        metric, measured, predicted = (
            "tflops_per_gpu",
            tfl,
            flops / (step * gpus) / 1e12,
        )
    else:
        raise ValueError("row has no measured throughput, step time or TFLOP/s")
    return dict(
        metric=metric,
        measured=measured,
        predicted=predicted,
        ape=abs(predicted - measured) / measured,
        step_time_s=step,
        feasible=bool(b.feasible),
        memory_per_gpu_bytes=float(b.memory_per_gpu),
        hardware=cluster.name,
        model=model.name,
        moe=bool(float(model.n_experts) > 0),
    )


def spec_family(stem: str) -> tuple[str, ...]:
    """The spec and the specs it extends, nearest first (dgx_a100 → a100_sxm4_80gb)."""
    base = io.meta("hardware", stem).get("extends")
    return (stem, *spec_family(base)) if base else (stem,)


def calibration_rows(rows: list[dict]) -> tuple[list[Row], dict[int, str]]:
    """Training rows resolved for calibration, and the reasons of those that are not.

    The target is the step time the measurement implies: the model's step time scaled
    by measured/predicted of the source's metric (inverted for throughputs).
    """
    out, skipped = [], {}
    for i, row in enumerate(rows):
        try:
            res = predict_row(row)
            _, cluster, model, mapping, _ = _resolve_row(row)
        except ValueError as e:
            skipped[i] = str(e).splitlines()[0]
            continue
        ratio = res["measured"] / res["predicted"]
        inverse = res["metric"] != "step_time_s"
        target = res["step_time_s"] * (1.0 / ratio if inverse else ratio)
        source = short_source(row.get("source", ""))
        out.append(
            Row(
                cluster.name,
                source,
                cluster,
                (model, mapping),
                target,
                "train",
                inverse,
            )
        )
    return out, skipped


def validate_rows(
    rows: list[dict], *, fidelity: str = "detailed", progress=None
) -> dict:
    """Per-row predictions and the error summary of a list of training CSV rows."""
    results = []
    for i, row in enumerate(rows):
        if progress is not None:
            progress(i, len(rows))
        entry = dict(
            row=i,
            source=row.get("source", ""),
            gpu=row.get("gpu", ""),
            model_name=row.get("model", ""),
        )
        try:
            entry |= predict_row(row, fidelity=fidelity)
        except ValueError as e:
            entry["reason"] = str(e).splitlines()[0]
        results.append(entry)
    return summarize(results)
