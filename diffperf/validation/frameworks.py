"""Settings of a measured training row: its columns, else its framework's defaults.

A row's run settings come from its columns; a blank column takes the documented
default of the row's `framework` column (never the wording of `source`). Profiles,
matched on `framework` (the year is the one in the text, e.g. "Megatron-LM (2020)",
"NeMo 24.07" = 2024):

| profile | frameworks | recompute | SP | ZeRO | attention | DP overlap | FLOPs |
|---|---|---|---|---|---|---|---|
| megatron_legacy | Megatron-LM ≤ 2021 | full | no | 0 | unfused | 0 | m._recompute |
| megatron | Megatron-LM 2022+, NeMo, Bridge | none | tp > 1 | 1 | fa3 | 1 | megatron |
| llm_foundry | Composer / llm-foundry | none | no | 3 | fa2 | 1 | megatron |
| maxtext | MaxText | full | no | 3 (mesh fsdp) | fa3 | 1 | 6n_attn |
| generic | anything else or blank | none | tp > 1 | 1 | fa3 | 1 | megatron |

(SP: sequence parallelism; m._recompute: megatron_recompute; "Megatron-LM 2022+"
includes Megatron-Core.)

Sources of the defaults: Megatron-LM's 2020/2021 scripts pass
`--checkpoint-activations` and predate sequence parallelism, the distributed
optimizer, fused attention and gradient-reduce overlap (Narayanan et al. SC'21; Megatron
-LM README of Sept 2020); the Megatron-LM README of 2024 and NeMo / Megatron-Bridge
recipes run the distributed optimizer with `--overlap-grad-reduce
--overlap-param-gather`, sequence parallelism with TP, Transformer Engine fused
attention and no recompute unless stated; llm-foundry's benchmark YAMLs use FSDP
FULL_SHARD with flash-attn 2 (2023); MaxText's `base.yml` has `remat_policy: full` and
shards parameters over its `fsdp` mesh axes.

Columns read (blank = default): recompute (none|selective|full), seq_parallel (y/n),
zero (0-3), attention_kernel (fa3|fa2|unfused), dp_overlap (0..1), flops_formula,
mesh, count_unit (chip|device|core), lnc (Trainium2's logical NeuronCore config,
1 or 2; default 2), finetune (full|sft|lora|frozen), lora_rank, lora_targets.

FLOP formulas for rows that report TFLOP/s or MFU only (the source's own count):
  - `megatron`: Megatron-LM's `num_floating_point_operations`: 3 passes of the
    model's GEMMs, per its MLP (gated or not), GQA and MoE routing, and non-causal
    attention scores: 6·T·(L·P_gemm + V·D) + 12·B·S²·L_attn·N·H, with P_gemm the
    weights a token multiplies per layer;
  - `megatron_recompute`: Narayanan et al. 2021 eq. (3), which also counts the
    recomputed forward: the layer terms ×4/3;
  - `6n`: 6·P·T (P all parameters), MaxText before its attention term;
  - `6n_attn`: 6·P·T + 12·B·S²·L·N·H (MaxText `calculate_tflops_training_per_device`).
`measured_mfu` × `mfu_peak_tflops_basis` gives the TFLOP/s when only MFU is printed.

`mesh` is a MaxText-style mesh, "ici_fsdp=64, dcn_data=2" (ICI axes inside a slice,
DCN axes across slices; names with or without `_parallelism`): tp = tensor axes, cp =
sequence/context, ep = expert, pp = stage, dp = data·fsdp, and the ZeRO-3 shard group is
the fsdp axes; the product of the ICI axes is the slice (the ICI domain).

A TPU row without a mesh or a slice name runs in one slice of all its chips (up to
the pod; MaxText's single-slice jobs); a `num_gpus` equal to a slice name's TensorCore
count (512 with v5p-512) counts TensorCores.

Precision (`dtype_recipe`): the `dtype` cell names the math dtype and, where the source
says, the scaling recipe (`specs.workload.RECIPES`); a bare FP8 takes the framework's
default recipe. Matched in this order on the lowercased cell:

| dtype cell | math | recipe |
|---|---|---|
| NVFP4, fp4 | fp4 | nvfp4 (last 16% of layers in bf16, `TRAINING_BF16_LAYERS`) |
| FP8-MX, MXFP8 | fp8 | mx |
| FP8-CS | fp8 | current |
| FP8-SC, FP8-block | fp8 | block |
| FP8-DS, FP8-delayed | fp8 | delayed |
| FP8-... [value in parentheses: alt quantization granularity] | fp8 | alt |
| fp8, FP8, amp_fp8, FP8-presumed-unstated [primary value] | fp8 | framework |
| BF16, bf16, amp_bf16, fp16 mixed | bf16 | none |

alt: mx on Blackwell (a chip with an FP4 peak), block on Hopper; framework: current
scaling for Megatron-Bridge, delayed scaling for any other framework.

Sources: Megatron-Bridge names its performance recipes fp8_cs (per-tensor current
scaling), fp8_mx, fp8_sc (blockwise: 128×128 weights, 1×128 activations), fp8_ds and
nvfp4 (github:NVIDIA-NeMo/Megatron-Bridge scripts/performance/utils/precision.py); its
25.11 tables print "FP8-CS (FP8-MX)" where 25.09 printed an unlabelled "x (y)", whose
page note says the parenthesised value is "GB200/B200: MXFP8 32x32 blocks; H100:
128x128 weights / 1x128 activations" (the rows' notes), so a bare FP8 of Megatron-
Bridge is current scaling. NeMo 24.x (`MegatronMixedPrecision(fp8_recipe="delayed")`),
Composer/llm-foundry's `amp_fp8` and Transformer Engine itself default to delayed
scaling (TE `fp8_autocast` without a recipe: `DelayedScaling`). The optional columns
`recipe` (delayed|current|block|mx|nvfp4) and `bf16_layers` (share of layers in bf16,
0..1) override the table.

`count_unit` says what num_gpus, the degrees and the microbatch count: chips (default),
framework devices (`device`: Trainium NeuronCores at the logical NeuronCore config,
MI250X GCDs, TPU v2/v3 TensorCores) or physical cores (`core`), converted to chips with
`io.names.COUNTING`.
"""

import re

from ..specs.mapping import LORA_TARGETS

__all__ = [
    "dtype_recipe",
    "DTYPE_RECIPES",
    "profile",
    "PROFILES",
    "parse_mesh",
    "lora_settings",
    "source_flops",
    "FORMULAS",
]

PROFILES = {
    "megatron_legacy": dict(recompute="full", sp=False, zero=0, kernel="unfused",
                            dp_overlap=0.0, formula="megatron_recompute"),
    "megatron": dict(recompute="none", sp=None, zero=1, kernel="fa3", dp_overlap=1.0,
                     formula="megatron"),
    "llm_foundry": dict(recompute="none", sp=False, zero=3, kernel="fa2",
                        dp_overlap=1.0, formula="megatron"),
    "maxtext": dict(recompute="full", sp=False, zero=3, kernel="fa3", dp_overlap=1.0,
                    formula="6n_attn"),
    "generic": dict(recompute="none", sp=None, zero=1, kernel="fa3", dp_overlap=1.0,
                    formula="megatron"),
}  # fmt: skip
"""Documented defaults per framework profile (module docstring); sp None: tp > 1."""

FORMULAS = ("megatron", "megatron_recompute", "6n", "6n_attn")

DTYPE_RECIPES = (
    (r"nvfp4|fp4", "fp4", "nvfp4"),
    (r"fp8-mx|mxfp8", "fp8", "mx"),
    (r"fp8-cs", "fp8", "current"),
    (r"fp8-sc|fp8-block", "fp8", "block"),
    (r"fp8-ds|fp8-delayed", "fp8", "delayed"),
    (r"fp8.*alt quantization granularity", "fp8", "alt"),
    (r"fp8", "fp8", "framework"),
    (r"bf16|fp16", "bf16", "none"),
)
"""(pattern, math, recipe) of a `dtype` cell, first match wins (module docstring);
"alt": mx on Blackwell, block on Hopper; "framework": the framework's FP8 default."""


def dtype_recipe(text: str, framework: str, mx_capable: bool) -> tuple[str, str]:
    """(math dtype, scaling recipe) of a `dtype` cell (module docstring's table).

    Args:
        text: the cell ("" = bf16).
        framework: the row's `framework` cell (a bare FP8's default recipe).
        mx_capable: the chip has MX/NVFP4 tensor cores (Blackwell: an FP4 peak).

    Raises:
        ValueError: a cell no pattern matches.
    """
    t = (text or "").lower().strip()
    if not t:
        return "bf16", "none"
    for pattern, math, recipe in DTYPE_RECIPES:
        if re.search(pattern, t):
            if recipe == "alt":
                recipe = "mx" if mx_capable else "block"
            elif recipe == "framework":
                bridge = "bridge" in (framework or "").lower()
                recipe = "current" if bridge else "delayed"
            return math, recipe
    raise ValueError(f"dtype {text!r} is not one of bf16/fp16/fp8/fp4 variants")


def _year(text: str) -> int | None:
    found = re.search(r"(?<!\d)(20\d\d)(?!\d)", text)
    if found:
        return int(found.group(1))
    found = re.search(r"(?:nemo|bridge)[^\d]*(\d\d)\.\d\d", text)
    return 2000 + int(found.group(1)) if found else None


def profile(framework: str) -> str:
    """The profile name of a `framework` cell (module docstring)."""
    t = (framework or "").lower()
    if "maxtext" in t:
        return "maxtext"
    if re.search(r"llm-foundry|composer", t):
        return "llm_foundry"
    if re.search(r"megatron|nemo", t):
        year = _year(t)
        legacy = "megatron-lm" in t and year is not None and year <= 2021
        return "megatron_legacy" if legacy else "megatron"
    return "generic"


_AXES = {
    "data": "dp",
    "fsdp": "fsdp",
    "fsdp_transpose": "fsdp",
    "sequence": "cp",
    "context": "cp",
    "tensor": "tp",
    "tensor_transpose": "tp",
    "tensor_sequence": "tp",
    "expert": "ep",
    "stage": "pp",
    "pipeline": "pp",
    "autoregressive": "dp",
}


def parse_mesh(text: str) -> dict:
    """Degrees of a MaxText mesh: tp, pp, cp, ep, dp (incl. fsdp), fsdp, ici (slice).

    Raises:
        ValueError: a malformed entry or an unknown axis.
    """
    out = dict(tp=1, pp=1, cp=1, ep=1, dp=1, fsdp=1, ici=1)
    for part in re.split(r"[,;]\s*|\s+x\s+|\s+", text.strip()):
        if not part:
            continue
        found = re.fullmatch(r"(ici|dcn)_([a-z_]+?)(?:_parallelism)?=(\d+)", part)
        if not found or found.group(2) not in _AXES:
            raise ValueError(
                f"column mesh={text!r}: {part!r} must be ici_<axis>=N or dcn_<axis>=N "
                f"with axis one of {', '.join(_AXES)}"
            )
        tier, axis, n = found.group(1), _AXES[found.group(2)], int(found.group(3))
        out[axis] *= n
        if axis == "fsdp":
            out["dp"] *= n
        if tier == "ici":
            out["ici"] *= n
    return out


_TARGET_WORDS = {
    "qkv": ("qkv",),
    "q": ("qkv",),
    "k": ("qkv",),
    "v": ("qkv",),
    "attention_qkv": ("qkv",),
    "linear_qkv": ("qkv",),
    "qkv_proj": ("qkv",),
    "o": ("attn_out",),
    "o_proj": ("attn_out",),
    "dense": ("attn_out",),
    "attention_dense": ("attn_out",),
    "linear_proj": ("attn_out",),
    "attn_out": ("attn_out",),
    "attention": ("qkv", "attn_out"),
    "fc1": ("mlp_up",),
    "mlp_fc1": ("mlp_up",),
    "linear_fc1": ("mlp_up",),
    "up": ("mlp_up",),
    "gate": ("mlp_up",),
    "mlp_up": ("mlp_up",),
    "fc2": ("mlp_down",),
    "mlp_fc2": ("mlp_down",),
    "linear_fc2": ("mlp_down",),
    "down": ("mlp_down",),
    "mlp_down": ("mlp_down",),
    "mlp": ("mlp_up", "mlp_down"),
    "all": LORA_TARGETS,
}
LORA_DEFAULT = (16.0, ("qkv", "attn_out"))
"""r and targets when a LoRA row leaves them blank: the MLPerf Training Llama 2 70B
LoRA reference (github:mlcommons/training llama2_70b_lora/run_llama_70B_scrolls_r16.sh:
--lora_r 16 --lora_target_modules qkv_proj,o_proj)."""


def lora_settings(row: dict, hint: str | None) -> tuple[float, float, tuple]:
    """(trainable, lora_rank, lora_targets) of a row.

    From the `finetune` column, else the model name's hint (`LLAMA2-7B LoRA`); a LoRA
    row's blank rank and targets are `LORA_DEFAULT`.

    Raises:
        ValueError: an unknown finetune mode or LoRA target.
    """
    mode = (row.get("finetune") or "").strip().lower() or (hint or "full")
    if mode in ("full", "sft", "pretrain", "pretraining"):
        return 1.0, 0.0, ()
    if mode == "frozen":
        return 0.0, 0.0, ()
    if mode != "lora":
        raise ValueError(f"column finetune={mode!r} must be full, sft, lora or frozen")
    rank_text = (row.get("lora_rank") or "").strip()
    rank = float(rank_text) if rank_text else LORA_DEFAULT[0]
    words = re.split(r"[,;+\s]+", (row.get("lora_targets") or "").strip().lower())
    targets = []
    for w in filter(None, words):
        if w not in _TARGET_WORDS:
            raise ValueError(
                f"column lora_targets: {w!r} must be one of {', '.join(_TARGET_WORDS)}"
            )
        targets += [t for t in _TARGET_WORDS[w] if t not in targets]
    return 0.0, rank, tuple(targets) or LORA_DEFAULT[1]


def source_flops(formula: str, model, batch: float, seq: float) -> float:
    """FLOP per step by a source's formula (module docstring) for B sequences of S."""
    if formula not in FORMULAS:
        raise ValueError(
            f"column flops_formula={formula!r} must be one of {', '.join(FORMULAS)}"
        )
    m = model
    tokens = batch * seq
    L, D, V = float(m.n_layers), float(m.d_model), float(m.vocab_size)
    a = float(m.attention_fraction)
    attn_scores = 12.0 * batch * seq**2 * L * a * float(m.n_heads) * float(m.head_dim)
    if formula in ("6n", "6n_attn"):
        total = 6.0 * float(m.params()) * tokens
        return total + (attn_scores if formula == "6n_attn" else 0.0)
    routed = float(m.moe_fraction) * float(m.top_k) * float(m.expert_params())
    moe_rest = float(m.moe_fraction) * float(m.moe_dense_params())
    per_layer = (
        a * float(m.attention_params())
        + float(m.ssm_fraction) * float(m.ssm_params())
        + float(m.dense_mlp_fraction) * float(m.dense_mlp_params())
        + moe_rest
        + routed
    )
    layers = 6.0 * tokens * L * per_layer + attn_scores
    if formula == "megatron_recompute":
        layers *= 4.0 / 3.0
    return layers + 6.0 * tokens * V * D
