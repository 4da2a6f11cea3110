"""Validation of the training model against measured runs (`diffperf validate`).

Each CSV row (columns of `data/training_calibration.csv`) is resolved to hardware, a
workload and a mapping, predicted with the Exact model, and compared on the metric the
source measured most directly, in this order: tokens/s/GPU, tokens/s of the job, step
time, model TFLOP/s/GPU (or MFU × its peak basis). Throughputs scale as 1/step time, so
for every metric

    APE = |predicted − measured| / measured

is computed from our step time and the source's own FLOP or token count. A row that
cannot be resolved is reported with the reason, never guessed; a row the model calls
out of memory although it ran is scored (its APE as for any row), flagged
`feasible: false` and counted as `infeasible` in every summary.

Names: `gpu` and `model` as people write them (`io.names`); architecture columns
(`io.architecture`) define a model the name does not, or change a named one. Run
settings: the row's columns, else the documented defaults of its `framework`
(`validation.frameworks`). Other fixed rules:
  - NVIDIA NeMo / Megatron-Bridge (profile "megatron"): MoE all-to-all overlapped with
    compute for the layouts whose published recipe enables it (`_A2A_OVERLAP`);
    models named "(tokendrop)" route with capacity factor 1 (padded), others
    dropless; "(w/ MTP)" adds one multi-token-prediction module; the selective
    recompute modules of the published recipe (`_RECOMPUTE_MODULES`).
  - dtype blank: bf16; otherwise the math dtype and scaling recipe of
    `frameworks.dtype_recipe` (e.g. FP8-CS: per-tensor current scaling, MXFP8: mx,
    NVFP4: nvfp4 with the last 16% of layers in bf16).
"""

import math

import equinox as eqx

from .. import io
from ..analysis.calibrate import Row
from ..model.train import train_step
from ..specs.mapping import Parallelism, check_mapping
from ..specs.workload import LOW_PRECISION, RECIPES, Precision
from .common import number, score_rows, short_source, summarize
from .frameworks import (
    PROFILES,
    dtype_recipe,
    lora_settings,
    parse_mesh,
    profile,
    source_flops,
)

__all__ = [
    "validate_rows",
    "predict_row",
    "calibration_rows",
    "spec_family",
    "resolve_training_row",
]


def _precision(row, cluster) -> Precision:
    """The row's `Precision`.

    Its `dtype` (and the optional `recipe` and `bf16_layers` columns) by
    `frameworks.dtype_recipe`. Gradients stay fp32 for every stack: the
    Megatron-Bridge performance recipes reduce them in bf16
    (`grad_reduce_in_fp32 = False`), but with bf16 gradients the fitted model misses
    the GPT-OSS-120B B200 rows by more (VALIDATION.md, MoE section), so that setting
    waits for the cause of those rows' low throughput.
    """
    mx = float(cluster.chip.flops_fp4) > 0  # Blackwell-class: MX/NVFP4 tensor cores
    dtype, recipe = dtype_recipe(row.get("dtype", ""), row.get("framework", ""), mx)
    if float(cluster.chip.peak_flops(dtype)) <= 0:
        raise ValueError(f"{cluster.name} has no {dtype} tensor throughput")
    if dtype not in LOW_PRECISION:
        return Precision.training(dtype)
    recipe = (row.get("recipe") or "").strip().lower() or recipe
    if recipe not in RECIPES:
        allowed = ", ".join(RECIPES)
        raise ValueError(f"column recipe={recipe!r} must be one of {allowed}")
    share = number(row, "bf16_layers")
    if share is not None and not 0.0 <= share <= 1.0:
        raise ValueError(f"column bf16_layers={share:g} must be in [0, 1]")
    return Precision.training(dtype, recipe=recipe, bf16_layers=share)


def _model(row):
    """(model with the row's architecture and variants, WorkloadName or None)."""
    name = row["model"].strip()
    try:
        found = io.resolve_workload(name)
    except ValueError:
        found = None  # unknown: the architecture columns must define it
    model = io.load_workload(name, row)
    if found and "mtp" in found.variants:  # DeepSeek-V3 multi-token prediction
        model = eqx.tree_at(lambda m: m.n_mtp_layers, model, 1.0)
    if found and "tokendrop" in found.variants:  # token dropping: capacity 1, padded
        model = eqx.tree_at(lambda m: m.capacity_factor, model, 1.0)
    return model, found


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


# Megatron-Bridge performance recipes that recompute modules selectively
# (`recompute_modules`, Megatron-core `--recompute-modules`), keyed by (workload, gpu,
# tp, pp, vpp, ep). Source: github:NVIDIA-NeMo/Megatron-Bridge
# scripts/performance/configs/gpt_oss/gpt_oss_workload_base_configs.py
# (GPT_OSS_120B_PRETRAIN_CONFIG_{B200,H100}_BF16_V1/V2: ["layernorm", "moe_act"]) and
# deepseek/deepseek_workload_base_configs.py (DEEPSEEK_V3_PRETRAIN_CONFIG_B200_V1:
# ["mla_up_proj"]; B200_FP8_MX_V2 and H100_V1/V2: ["mla_up_proj", "mlp"]); the Qwen3
# recipes set no recompute (`set_qwen3_common_configs`).
_RECOMPUTE_MODULES = {
    ("gpt_oss_120b", "b200", 1, 1, 1, 8): ("layernorm", "moe_act"),
    ("gpt_oss_120b", "b200", 1, 1, 1, 64): ("layernorm", "moe_act"),
    ("gpt_oss_120b", "h100_sxm", 1, 4, 1, 8): ("layernorm", "moe_act"),
    ("deepseek_v3", "b200", 1, 16, 1, 8): ("mla_up_proj",),
    ("deepseek_v3", "b200", 1, 8, 2, 32): ("mla_up_proj", "mlp"),
    ("deepseek_v3", "h100_sxm", 2, 8, 4, 64): ("mla_up_proj", "mlp"),
}


def _recompute_modules(kind: str, cluster, model, degrees: tuple) -> tuple:
    """The selective recompute modules of a Megatron-Bridge recipe's layout, else ()."""
    if kind != "megatron":
        return ()
    return _RECOMPUTE_MODULES.get((model.name, cluster.name, *degrees), ())


def _ep_overlap(kind: str, cluster, model, degrees: tuple) -> float:
    """1.0 for a Megatron-Bridge layout with the all-to-all overlap, else 0.0."""
    if kind != "megatron" or not float(model.n_experts):
        return 0.0
    return 1.0 if (model.name, cluster.name, *degrees) in _A2A_OVERLAP else 0.0


def _tpu_host(hw) -> bool:
    """The name resolved to a TPU host spec (whose family has a pod spec)."""
    return hw.spec.startswith("tpu_") and not hw.spec.endswith("_pod")


def _flag(row, key) -> bool | None:
    text = (row.get(key) or "").strip().lower()
    if not text:
        return None
    if text in ("y", "yes", "true", "1"):
        return True
    if text in ("n", "no", "false", "0"):
        return False
    raise ValueError(f"column {key}={text!r} must be y or n")


def _degrees(row, found, gpus_text: float):
    """(gpus, tp, pp, cp, ep, dp, microbatch, mesh) in chips (count_unit, mesh)."""
    unit = (row.get("count_unit") or "chip").strip().lower().rstrip("s")
    if unit not in ("chip", "device", "core"):
        raise ValueError(f"column count_unit={unit!r} must be chip, device or core")
    devices = found.devices_per_chip
    lnc = number(row, "lnc")  # Trainium2's logical NeuronCore config (1 or 2)
    if lnc is not None:
        if lnc not in (1.0, 2.0) or found.cores_per_chip < 8:
            raise ValueError(f"column lnc={lnc:g} must be 1 or 2, on Trainium2 only")
        devices = found.cores_per_chip / lnc
    per_chip = {"chip": 1.0, "device": devices, "core": found.cores_per_chip}[unit]
    mesh = parse_mesh(row["mesh"]) if (row.get("mesh") or "").strip() else None
    deg = {k: number(row, k) for k in ("tp", "pp", "cp", "ep", "dp")}
    if mesh:
        for k in ("tp", "pp", "cp", "ep", "dp"):
            if deg[k] is not None and deg[k] != mesh[k]:
                raise ValueError(
                    f"column {k}={deg[k]:g} contradicts mesh {row['mesh']!r} "
                    f"({k}={mesh[k]})"
                )
            deg[k] = mesh[k]
    tp, pp, cp = (deg[k] or 1.0 for k in ("tp", "pp", "cp"))
    ep = deg["ep"] or 1.0
    micro = number(row, "microbatch") or 1.0
    gpus = gpus_text
    dp = deg["dp"] or gpus / (tp * pp * cp)
    if per_chip != 1.0:  # devices of one chip: TP inside it first, the rest is DP
        inner = min(tp, per_chip)
        rest = per_chip / inner
        gpus, tp, dp, micro = gpus / per_chip, tp / inner, dp / rest, micro * rest
        if mesh:
            mesh = mesh | {"ici": mesh["ici"] / per_chip, "fsdp": mesh["fsdp"] / rest}
    return gpus, tp, pp, cp, ep, dp, micro, mesh


def resolve_training_row(row: dict, cluster=None):
    """(profile, cluster, model, mapping, gpus, names) of a training row, checked.

    `names` holds what the gpu and model text resolved to (for `resolved_*`).
    Raises ValueError with the reason when the row cannot be resolved.
    """
    kind = profile(row.get("framework", ""))
    defaults = PROFILES[kind]
    hw = io.resolve_hardware(row["gpu"])
    model, found = _model(row)
    gpus_text = number(row, "num_gpus")
    if not gpus_text and hw.slice_chips:
        gpus_text = float(hw.slice_chips)
    if not gpus_text:
        raise ValueError("column num_gpus is blank and the gpu names no slice size")
    cores = hw.slice_chips and hw.cores_per_chip > 1
    if (
        cores
        and gpus_text == hw.slice_chips * hw.cores_per_chip
        and not row.get("count_unit", "").strip()
    ):  # num_gpus repeats the slice name's TensorCore count (v5p-512: 512)
        gpus_text = float(hw.slice_chips)
    gpus, tp, pp, cp, ep, dp, micro, mesh = _degrees(row, hw, gpus_text)
    if cluster is None:
        slice_chips = int(mesh["ici"]) if mesh and mesh["ici"] > 1 else None
        if slice_chips is None and not hw.slice_chips and _tpu_host(hw):
            # a TPU job without a mesh or slice name: one slice of all its chips
            slice_chips = round(gpus)
        cluster = io.load_hardware(
            row["gpu"], ici_chips=slice_chips, stack=row_stack(row, "training")
        )
    model = eqx.tree_at(lambda m: m.precision, model, _precision(row, cluster))
    rec = (row.get("recompute") or "").strip().lower()
    layout = (tp, pp, round(number(row, "vpp") or 1.0), round(ep))
    modules = () if rec else _recompute_modules(kind, cluster, model, layout)
    rec = "selective" if modules else (rec or defaults["recompute"])
    sp = _flag(row, "seq_parallel")
    if sp is None:
        sp = tp > 1 if defaults["sp"] is None else defaults["sp"]
    zero = number(row, "zero")
    zero = int(zero) if zero is not None else defaults["zero"]
    shard = 0.0
    if mesh and mesh["fsdp"] > 1:
        zero, shard = 3, float(mesh["fsdp"])
    elif kind == "maxtext" and mesh:  # pure data parallelism: replicated weights
        zero = 0
    vpp = number(row, "vpp") or 1.0
    trainable, rank, targets = lora_settings(row, found.finetune if found else None)
    overlap = _ep_overlap(kind, cluster, model, (tp, pp, round(vpp), round(ep)))
    dp_overlap = number(row, "dp_overlap", defaults["dp_overlap"])
    kernel = (row.get("attention_kernel") or "").strip().lower() or defaults["kernel"]
    mapping = Parallelism(
        tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp, microbatch=micro,
        global_batch=number(row, "global_batch") or 0.0,
        seq_len=number(row, "seq_len") or 0.0, recompute=rec,
        recompute_modules=modules, sequence_parallel=sp,
        zero=zero, shard_group=shard, attention_kernel=kernel,
        dp_overlap=dp_overlap, ep_overlap=overlap, trainable=trainable,
        lora_rank=rank, lora_targets=targets,
    )  # fmt: skip
    check_mapping(model, mapping, gpus=round(gpus))
    names = dict(hardware=hw.as_dict(), model=found.as_dict() if found else None)
    return kind, cluster, model, mapping, round(gpus), names


def _measured(row, kind, model, mapping, b, gpus):
    """(metric, measured, predicted) of the row's most direct measurement."""
    step, tokens = float(b.total), float(b.tokens)
    for key, value in row.items():
        if key and key.startswith("measured_") and number(row, key, 0.0) < 0:
            raise ValueError(f"column {key}={value!r} must be >= 0")
    tok = number(row, "measured_tokens_per_s_per_gpu")
    if tok:
        return "tokens_per_s_per_gpu", tok, tokens / (step * gpus)
    job = number(row, "measured_tokens_per_s")
    if job:
        return "tokens_per_s", job, tokens / step
    step_m = number(row, "measured_step_time_s")
    if step_m:
        return "step_time_s", step_m, step
    tfl = number(row, "measured_tflops_per_gpu")
    mfu, basis = number(row, "measured_mfu"), number(row, "mfu_peak_tflops_basis")
    if not tfl and mfu and basis:
        tfl = mfu * basis
    if tfl:
        formula = (row.get("flops_formula") or "").strip() or PROFILES[kind]["formula"]
        flops = source_flops(
            formula, model, float(mapping.batch()), float(mapping.tokens(model))
        )
        return "tflops_per_gpu", tfl, flops / (step * gpus) / 1e12
    raise ValueError("row has no measured throughput, step time, TFLOP/s or MFU")


def predict_row(row: dict, *, hardware_override=None, fidelity="detailed") -> dict:
    """The prediction for one training row (ValueError if it cannot be resolved)."""
    kind, cluster, model, mapping, gpus, names = resolve_training_row(
        row, hardware_override
    )
    b = train_step(cluster, model, mapping, fidelity=fidelity)
    metric, measured, predicted = _measured(row, kind, model, mapping, b, gpus)
    if not math.isfinite(predicted) or predicted <= 0:
        raise ValueError(f"the model gives no finite {metric} for this row")
    out = dict(
        metric=metric,
        measured=measured,
        predicted=predicted,
        ape=abs(predicted - measured) / measured,
        step_time_s=float(b.total),
        feasible=bool(b.feasible),
        memory_per_gpu_bytes=float(b.memory_per_gpu),
        hardware=cluster.name,
        model=model.name,
        moe=bool(float(model.n_experts) > 0),
        framework_profile=kind,
        stack=row_stack(row, "training"),
        resolved_hardware=names["hardware"],
        resolved_model=names["model"],
    )
    if not out["feasible"]:
        out["miss"] = "predicted out of memory although the run ran"
    return out


def spec_family(stem: str) -> tuple[str, ...]:
    """The spec and the specs it extends, nearest first (dgx_a100 → a100_sxm4_80gb).

    Architecture families (`hardware/families/`) are not specs and end the chain.
    """
    base = io.meta("hardware", stem).get("extends")
    if not base or base in io.family_names():
        return (stem,)
    return (stem, *spec_family(base))


def row_stack(row: dict, kind: str) -> str:
    """The software stack of a row.

    Its `stack` column (a stack name), else the stack whose framework patterns
    match its `framework` column (`io.stack_for_framework`), else the hardware's
    default for `kind` ("training" or "serving").
    """
    named = (row.get("stack") or "").strip()
    if named:
        if named not in io.stack_names():
            raise ValueError(
                f"column stack = {named!r} is not a software stack; allowed: "
                f"{', '.join(io.stack_names())}"
            )
        return named
    found = io.stack_for_framework(row.get("framework", ""))
    return found or io.default_stack(row["gpu"], kind)


def calibration_rows(rows: list[dict]) -> tuple[list[Row], dict[int, str]]:
    """Training rows resolved for calibration, and the reasons of those that are not.

    The target is the step time the measurement implies: the model's step time scaled
    by measured/predicted of the source's metric (inverted for throughputs).
    """
    out, skipped = [], {}
    for i, row in enumerate(rows):
        try:
            res = predict_row(row)
            _, cluster, model, mapping, _, _ = resolve_training_row(row)
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
                res["stack"],
            )  # fmt: skip
        )
    return out, skipped


def validate_rows(
    rows: list[dict], *, fidelity: str = "detailed", progress=None
) -> dict:
    """Per-row predictions and the error summary of a list of training CSV rows."""
    results = score_rows(
        rows, lambda row: predict_row(row, fidelity=fidelity), progress=progress
    )
    return summarize(results)
