"""One representative transformer layer on one chip: per-class forward time and comms.

Shared by the training step (`train.py`) and the serving model (`phases.py`). A
`LayerShape` holds the per-chip sizes of one layer's work: T tokens through the GEMMs,
queries attending to a mean of `kv_tokens` keys each, degrees t (tensor), c (context),
e (expert), and the bytes of each tensor class.
"""

import jax
import jax.numpy as jnp

from ..core.checks import concrete
from ..core.relax import AbstractRelax, as_float
from ..specs.hardware import Cluster
from ..specs.workload import LOW_PRECISION, Transformer
from .comm import Collective
from .ops import (
    GROUPED_TILE_M,
    SERVING_TILE_M,
    attention_time,
    attention_work,
    gemm_time,
    gemm_work,
    memory_time,
    ssm_scan_time,
)

__all__ = [
    "PASS_FACTORS",
    "RECOMPUTED",
    "DGRAD",
    "WGRAD",
    "LayerShape",
    "layer_forward",
    "layer_collectives",
    "kv_elems",
    "head_time",
    "LOW_PRECISION",
    "BF16_OPS",
    "QUANT_RECIPES",
    "quant_bytes_per_element",
    "quantize_bytes",
    "permute_bytes",
    "low_shares",
    "GROUPED_OPS",
    "hit_experts",
]

GROUPED_OPS = ("expert_up", "expert_down")
"""GEMMs of `_gemm_shapes` that run as a grouped GEMM over the chip's local experts:
each expert's rows are padded to the M tile (`ops.padded_rows`,
`ops.GROUPED_TILE_M`)."""

BF16_OPS = ("router",)
"""GEMMs of `_gemm_shapes` that stay in bf16 when the layers' linear GEMMs run in a
low-precision dtype: the MoE router, a plain `torch.nn.Linear` in Megatron-core's
`TopKRouter` (bf16 or, with `--moe-router-dtype fp32`, fp32), never a Transformer
Engine module, so no FP8/FP4 recipe reaches it. Outside the op arrays the core
attention (`attention_time`, FlashAttention / cuDNN in bf16 unless FP8 attention is
explicitly enabled), the Mamba-2 scan, the embedding and the output logits GEMM
(`head_time`) are costed at the bf16 peak as well."""

QUANT_RECIPES = {
    "delayed": (1.0, 0.0),
    "current": (2.0, 0.0),
    "block": (1.0, 4.0 / 128.0),
    "mx": (1.0, 1.0 / 32.0),
    "nvfp4": (2.0, 1.0 / 16.0),
}
"""(passes reading the bf16 tensor, scale bytes per element) of each scaling recipe's
quantize kernel (`quant_bytes_per_element`; recipes: `specs.workload.RECIPES`):
  - delayed: one pass; the cast kernel records the amax for the next iterations'
    scale (TE `DelayedScaling`, amax history), one fp32 scale per tensor;
  - current: two passes, an amax reduction over the tensor, then the cast with the
    scale it gives (TE `Float8CurrentScaling`);
  - block: one pass; each 1×128 tile gets an fp32 scale (4/128 B per element; TE
    `Float8BlockScaling`, DeepSeek-V3 §3.3.2);
  - mx: one pass; each 32-element block gets an E8M0 byte (1/32 B; OCP MX v1.0, TE
    `MXFP8BlockScaling`);
  - nvfp4: two passes, the tensor amax for the fp32 global scale, then the 16-element
    blocks with an E4M3 byte each (1/16 B; TE `NVFP4BlockScaling`:
    s_global = amax / (448·6), s_block = block_amax / 6 / s_global). The random
    Hadamard transform of the wgrad operands works on 16×16 tiles in registers: no
    extra bytes.
A pass where TE fuses the amax into the producing kernel (its LayerNormLinear) is
counted as a separate one: an upper bound of these kernels' traffic."""


def quant_bytes_per_element(
    recipe: str, b_in: float, b_out: float, copies: float, passes: float | None = None
):
    """HBM bytes per element of one quantize kernel [B/element].

        q = passes·b_in + copies·(b_out + scale)

    with (passes, scale) from `QUANT_RECIPES` (`passes` given: instead of the
    table's), b_in the bytes of the bf16 source,
    b_out of the low-precision value (1 for FP8, 0.5 for FP4), `copies` the quantized
    layouts written: 2 in training (row-wise for the forward/dgrad GEMM, column-wise,
    i.e. transposed, for the wgrad GEMM: Hopper FP8 GEMMs take only the TN layout, and
    MXFP8/NVFP4 scale blocks run along the contraction dimension, so each operand
    needs its own copy; TE docs, "Handling transposes"), 1 in inference.
    """
    if recipe not in QUANT_RECIPES:
        raise ValueError(f"recipe={recipe!r} must be one of {', '.join(QUANT_RECIPES)}")
    table_passes, scale = QUANT_RECIPES[recipe]
    passes = table_passes if passes is None else passes
    return passes * b_in + copies * (b_out + scale)


class LayerShape:
    """Per-chip sizes of one layer's work (plain container, not a pytree).

    Args:
        model: the workload.
        relax: Exact() or Smooth(p).
        tp, cp, ep, etp: tensor, context, expert, expert-tensor parallel degrees.
        batch: B, sequences on the chip.
        q_len: query tokens per sequence on the chip (S/c in training, 1 in decode).
        seq: keys held by one sequence (S, or the context length in decode).
        causal: queries see half the keys on average (prefill / training), else all
            `seq` keys (decode of one new token).
        sequence_parallel: norms and residuals sharded over t.
        flash: fused attention.
        fa2: the fused kernel is FlashAttention-2 (`Chip.attention_fa2_efficiency`),
            not the chip's best.
        weight_bytes: bytes per weight element read by the GEMMs (default: GEMM dtype).
        backward: the layer also runs a backward pass (training): low-precision GEMM
            operands are quantized in both layouts, and the output gradients too.
    """

    def __init__(
        self,
        model: Transformer,
        relax: AbstractRelax,
        *,
        tp,
        cp,
        ep,
        etp,
        batch,
        q_len,
        seq,
        causal: bool,
        sequence_parallel: bool,
        flash: bool,
        fa2: bool = False,
        weight_bytes: float | None = None,
        backward: bool = False,
    ):
        m = model
        self.t, self.c, self.ep, self.etp = tp, cp, ep, etp
        self.seq = seq
        self.batch = batch
        self.tokens = batch * q_len  # T, tokens on one chip
        self.sp_tokens = self.tokens / tp if sequence_parallel else self.tokens
        with jax.ensure_compile_time_eval():  # a concrete 0 for dense models
            self.moe = m.moe_fraction
        self.heads = m.n_heads / tp
        mla = m.attention == "mla"
        # MLA decode runs the absorbed form (DeepSeek-V3 inference, FlashMLA): queries
        # are projected into the latent space, and every head attends to the shared
        # latent cache of c + Hr elements per token (one "KV head", as in MQA).
        self.absorbed = mla and not causal
        self.recurrent = not causal  # SSM layers step their state one token at a time
        if self.absorbed:
            c, hr = m.kv_lora_rank, m.qk_rope_head_dim
            self.kv_heads = as_float(1.0)
            self.h_qk, self.h_v, self.kv_width = c + hr, c, c + hr
        else:
            self.kv_heads = relax.max(m.n_kv_heads / tp, 1.0)  # replicated below 1
            self.h_qk = m.head_dim
            self.h_v = m.v_head_dim if mla else m.head_dim
            self.kv_width = self.h_qk + self.h_v
        window = jnp.where(m.sliding_window > 0, m.sliding_window, seq)
        mean = seq / 2.0 if causal else seq
        f = m.sliding_fraction
        self.kv_tokens = (1.0 - f) * mean + f * relax.min(window, mean)
        self.b_act = m.precision.bytes("activations")
        self.b_kv = m.precision.bytes("kv_cache")
        self.low = m.precision.low
        self.recipe = m.precision.scaling  # "none" for 16/32-bit math
        self.bf16_layers = m.precision.bf16_layers if self.low else 0.0
        self.b_gemm = m.precision.bytes("math") if self.low else self.b_act
        self.b_weight = self.b_gemm if weight_bytes is None else weight_bytes
        self.flash = flash
        self.fa2 = fa2 and flash
        self.backward = backward


def hit_experts(local, routed, capacity_factor) -> jax.Array:
    """Local experts that receive at least one token (the grouped GEMM's `count`).

    E_hit = E_l·(1 − exp(−R/E_l)) for R routed tokens spread uniformly over the chip's
    E_l = n_experts/ep experts (the expected number of occupied bins, Poisson limit;
    Feller, An Introduction to Probability Theory, Vol. I, §IV.2): a grouped GEMM
    skips empty experts, so a decode step of a few sequences reads the weights of the
    experts its tokens hit, not all local ones (DeepSeek-R1 at batch 4 on EP8: about 4
    of 32). E_hit → E_l when R ≫ E_l (training, prefill). Token dropping (capacity
    factor > 0) pads every expert's buffer, so all run. At least 1 (no division by 0
    for a dense model's absent experts).
    """
    loc = jnp.maximum(as_float(local), 1.0)
    hit = loc * -jnp.expm1(-as_float(routed) / loc)
    hit = jnp.where(as_float(capacity_factor) > 0, loc, hit)
    return jnp.maximum(hit, 1.0)


def _gemm_shapes(model: Transformer, s: LayerShape):
    """(M, K, N, count, weight) arrays and the names of the layer's forward GEMMs.

    `weight` is the share of layers that contain the op (attention, Mamba-2, dense MLP
    and MoE layers by their fractions). The grouped expert GEMMs run the `hit_experts`
    of the chip's local ones with M = T/t·k·etp·load/E_hit rows each at the busiest
    chip (load = capacity factor or imbalance), so small per-expert batches fall down
    the efficiency curve and a small decode batch reads only the experts it hits.
    """
    m, t, T = model, s.t, s.tokens
    d, n, h = m.d_model, m.n_heads, m.head_dim
    a = m.attention_fraction
    if m.attention == "mla":
        c, q, hr = m.kv_lora_rank, m.q_lora_rank, m.qk_rope_head_dim
        attn = [
            ("q_down", T, d, q, 1.0, a),
            ("q_up", T, q, n * h / t, 1.0, a),
            ("kv_down", T, d, c + hr, 1.0, a),
        ]
        if s.absorbed:  # W_UK into the query, W_UV after attention, per head
            attn += [
                ("q_absorb", T, h - hr, c, n / t, a),  # q_nope · W_UK
                ("v_absorb", T, c, m.v_head_dim, n / t, a),  # latent output · W_UV
            ]
        else:
            attn += [("kv_up", T, c, n * (h - hr + m.v_head_dim) / t, 1.0, a)]
        attn += [("attn_out", T, n * m.v_head_dim / t, d, 1.0, a)]
    else:
        attn = [
            ("qkv", T, d, (n + 2.0 * m.n_kv_heads) * h / t, 1.0, a),
            ("attn_out", T, n * h / t, d, 1.0, a),
        ]
    ssm = m.ssm_fraction
    mixer = [
        ("ssm_in", T, d, m.ssm_in_proj_width() / t, 1.0, ssm),
        ("ssm_out", T, m.ssm_inner / t, d, 1.0, ssm),
    ]
    up = m.mlp_mats - 1.0
    moe = s.moe
    local = m.n_experts / s.ep
    routed = T / t * m.top_k * s.etp * m.expert_load  # tokens at the busiest chip
    hit = hit_experts(local, T / t * m.top_k * s.etp, m.capacity_factor)
    per_expert = routed / hit
    fe, fs, ell = m.d_ff_expert, m.shared_width, m.expert_input_dim
    with jax.ensure_compile_time_eval():  # concrete weights of a concrete model
        dense = m.dense_mlp_fraction
        latent = moe * jnp.where(m.moe_latent_dim > 0, 1.0, 0.0)
    mlp = [
        ("mlp_up", T, d, up * m.d_ff / t, 1.0, dense),  # (+gate)
        ("mlp_down", T, m.d_ff / t, d, 1.0, dense),
        ("router", T / t, d, m.n_experts, 1.0, moe),
        ("latent_down", T / t, d, ell, 1.0, latent),  # LatentMoE
        ("expert_up", per_expert, ell, up * fe / s.etp, hit, moe),  # grouped
        ("expert_down", per_expert, fe / s.etp, ell, hit, moe),  # grouped
        ("latent_up", T / t, ell, d, 1.0, latent),  # LatentMoE
        ("shared_up", T, d, up * fs / t, 1.0, moe),
        ("shared_down", T, fs / t, d, 1.0, moe),
    ]
    # an op in no layer (weight a concrete 0: the MoE GEMMs of a dense model, say)
    # costs nothing; dropping it skips its work in every evaluation (and the [N, 13]
    # op arrays of a vmapped sweep shrink to [N, 4] for a dense transformer)
    rows = [r for r in attn + mixer + mlp if concrete(r[5]) != 0.0] or attn
    arrays = [jnp.stack([as_float(r[i]) for r in rows]) for i in range(1, 6)]
    return arrays, tuple(r[0] for r in rows)


def _elementwise_bytes(model: Transformer, s: LayerShape):
    """HBM bytes of the forward non-GEMM, non-attention ops of one layer on one chip.

    Per token: a norm (read + write D) and a residual add (3·D) per block (attention,
    Mamba-2, MLP) on the SP shard; the MLP activation (read up·F, write F); rotary on
    Q and K, 4·(N + K)·H: an estimate between Transformer Engine's fused RoPE kernel
    (read + write, 2 passes) and Megatron-core's unfused `apply_rotary_pos_emb` (9
    passes: the rotate_half copy, two products and their sum); the Mamba-2 causal conv
    (read + write d_in + 2·G·Ns) and gated norm (read y and z, write y). The quantize
    kernels of low-precision GEMMs are `quantize_bytes`.
    """
    m, t = model, s.t
    up = m.mlp_mats - 1.0
    mlp_dense = (up + 1.0) * m.d_ff / t
    routed = m.d_ff_expert * m.top_k * m.expert_load + m.shared_width
    mlp_moe = (up + 1.0) * routed / t
    act = m.dense_mlp_fraction * mlp_dense + s.moe * mlp_moe
    rope = m.attention_fraction * 4.0 * (m.n_heads + m.n_kv_heads) * m.head_dim / t
    conv = m.ssm_inner + 2.0 * m.ssm_groups * m.ssm_state_dim
    ssm = m.ssm_fraction * (2.0 * conv + 3.0 * m.ssm_inner) / t
    b = s.b_act
    norms = s.sp_tokens * 5.0 * m.d_model * b * m.sublayers
    return norms + s.tokens * (act + rope + ssm) * b


def low_shares(s: LayerShape, names):
    """Share of each GEMM of `_gemm_shapes` (by name) run in the low-precision dtype.

    λ_i = 1 − bf16_layers for a linear GEMM, 0 for `BF16_OPS`; all 0 for 16/32-bit
    math.
    """
    if not s.low:
        return jnp.zeros(len(names))
    keep = 1.0 - s.bf16_layers
    return jnp.array([0.0 if n in BF16_OPS else keep for n in names])


def quantize_bytes(model: Transformer, s: LayerShape):
    """HBM bytes of one layer's quantize kernels on one chip, per microbatch.

    For each GEMM i of `_gemm_shapes` (input M_i × K_i, output M_i × N_i, `count`
    c_i, share of layers w_i, low-precision share λ_i of `low_shares`):
        forward  = Σ_i w_i·λ_i·c_i·M_i·K_i · q     [B]  (the input X, both layouts)
        backward = Σ_i w_i·λ_i·c_i·M_i·N_i · q     [B]  (the output gradient dY)
        kernels  = Σ_i w_i·λ_i · passes             (forward; one per quantized input)
    with q = `quant_bytes_per_element`(recipe, b_act, b_low, copies), copies 2 with a
    backward pass (training) and 1 without (inference: row-wise only, no dY; NVFP4
    inference takes its fp32 tensor scale from the checkpoint's calibrated
    `input_scale` (NVIDIA ModelOpt NVFP4 checkpoints), so one pass, not two).
    Elementwise work, memory bound: time = bytes / (β·η) (`ops.memory_time`).
    Weights are not counted: Transformer Engine quantizes a weight once per
    optimizer step and reuses it across microbatches (`is_first_microbatch`), or
    keeps FP8 primary weights (`fp8_param_gather`); inference loads them quantized.

    Returns:
        (forward [B], backward [B], forward kernels); zeros for 16/32-bit math.
    """
    (mm, kk, nn, count, weight), names = _gemm_shapes(model, s)
    zero = jnp.zeros(())
    if not s.low:
        return zero, zero, 0.0
    lam = low_shares(s, names) * weight
    copies = 2.0 if s.backward else 1.0
    passes = QUANT_RECIPES[s.recipe][0]
    if s.recipe == "nvfp4" and not s.backward:
        passes = 1.0  # inference: the checkpoint's calibrated tensor scale
    q = quant_bytes_per_element(s.recipe, s.b_act, s.b_gemm, copies, passes)
    fwd = jnp.sum(lam * count * mm * kk) * q
    bwd = jnp.sum(lam * count * mm * nn) * q if s.backward else zero
    kernels = jnp.sum(lam) * passes
    return fwd, bwd, kernels


def permute_bytes(model: Transformer, s: LayerShape):
    """HBM bytes of one layer's MoE token permutation and unpermutation on one chip.

    Megatron-core's token dispatchers (`moe_utils.permute` / `unpermute`, the TE fused
    kernels of `--moe-permute-fusion`) move every routed copy of a token through HBM
    around the expert GEMMs. With S = T/t tokens routed by the chip (the sequence
    shard of its TP group), k copies each at the experts' input width ℓ (the latent
    of a LatentMoE), c the padded capacity factor under token dropping (1 dropless),
    b the activation bytes, and f_moe the share of MoE layers:
        forward  = f_moe·ℓ·b·S·(3·c·k + 1)    [B]
                   (permute: gather k·S rows, read + write; unpermute: read the k·S
                   expert outputs, write the S prob-weighted sums)
        backward = f_moe·ℓ·b·S·(3·c·k + 2)    [B]
                   (the unpermute's gradient: read S rows, write k·S, and read the
                   k·S saved expert outputs for the gradient of the routing probs;
                   the permute's: scatter-add k·S rows into S)
    A lower bound for the all-to-all dispatcher, whose `sort_chunks_by_idxs` reorders
    the received rows by local expert once more on each side (fused into the dispatch
    kernel by DeepEP / HybridEP). Memory bound: time = bytes / (β·η)
    (`ops.memory_time`). Source: Megatron-core `transformer/moe/token_dispatcher.py`
    and `moe_utils.py` (core_r0.13+); TE `permutation.py`.

    Returns:
        (forward [B], backward [B]); zeros for a dense model.
    """
    m = model
    copies = jnp.where(m.capacity_factor > 0, m.capacity_factor, 1.0) * m.top_k
    row = s.moe * m.expert_input_dim * s.b_act * s.tokens / s.t
    return row * (3.0 * copies + 1.0), row * (3.0 * copies + 2.0)


BLOCK_KERNELS = {"attention": 6.0, "ssm": 11.0, "mlp": 5.0, "moe": 6.0}
"""GPU kernels of one block's forward pass, counted from its op list (one kernel per
op): attention = norm, QKV, rotary, attention, output, residual; Mamba-2 (ssm) = norm,
in_proj, conv, the 5 SSD scan kernels of mamba_ssm (chunk cumsum, chunk state, state
passing, BMM, chunk scan), gated norm, out_proj, residual; MLP = norm, up, activation,
down, residual; an MoE layer adds router GEMM, top-k, permute, 2 grouped GEMMs and
unpermute (moe). Low-precision GEMMs add their quantize kernels (`quantize_bytes`)."""


def _kernels_per_layer(model: Transformer, s: LayerShape, host) -> tuple:
    """(GPU kernels, host-dispatched ops) of the representative layer's forward pass.

    Kernels: `BLOCK_KERNELS` weighted by each block's share of layers (a standard
    dense layer is 11); each is one host op. An MoE layer also issues
    `Host.moe_host_ops` small CPU-side ops (router softmax / top-k bookkeeping,
    auxiliary load-balancing loss, token-count histogram with its device-to-host
    sync, permutation indices, all-to-all splits), a calibratable leaf.
    """
    m, k = model, BLOCK_KERNELS
    base = (
        m.attention_fraction * k["attention"]
        + m.ssm_fraction * k["ssm"]
        + m.mlp_fraction * k["mlp"]
    )
    kernels = base + k["moe"] * s.moe
    return kernels, kernels + host.moe_host_ops * s.moe


def layer_forward(
    cluster: Cluster, model: Transformer, s: LayerShape, relax: AbstractRelax
):
    """Forward seconds of the representative layer by class, per microbatch.

    GEMMs: a low-precision model (`Precision.low`) runs each linear GEMM i at the
    share λ_i of `low_shares` in its dtype, at π_dtype·`Chip.dtype_efficiency`, with
    operands of that width, and the rest (the router, `BF16_OPS`, and the layers kept
    in bf16) at the bf16 peak with bf16 operands:
        t_i = λ_i·t(π_low·ε_dtype, b_low) + (1 − λ_i)·t(π_bf16, b_bf16)       [s]
    The grouped expert GEMMs (`GROUPED_OPS`) compute on their rows per expert padded
    to the M tile (`ops.padded_rows`): few rows per expert cost at least a tile each;
    the tile is training's grouped GEMM's (`ops.GROUPED_TILE_M`, 128 rows) with a
    backward pass, else an inference engine's fused MoE kernel's
    (`ops.SERVING_TILE_M`, 16 rows).
    Quantize kernels (`quantize_bytes`) and the MoE token permutation
    (`permute_bytes`) add to the elementwise time; `quant` and `permute` hold their
    forward and backward seconds (the backward's are not 2× the forward's, so
    `train.layer_passes` takes them apart from the other elementwise work).

    Weight-only quantization (weights narrower than the GEMM operands, e.g. int4
    weights with bf16 math) adds the dequantization of every weight element, 2 vector
    FLOP each on the FP32 units, to the elementwise time.
    """
    chip = cluster.chip
    m = model
    peak16 = chip.peak_flops("bf16")
    (mm, kk, nn, count, weight), names = _gemm_shapes(model, s)
    dims = dict(count=count, relax=relax)
    # grouped expert GEMMs compute on rows padded to the M tile (`ops.padded_rows`):
    # training's grouped GEMMs tile by 128 rows, inference's fused MoE kernels by 16
    tile_m = GROUPED_TILE_M if s.backward else SERVING_TILE_M
    tile = jnp.array([tile_m if n in GROUPED_OPS else 0.0 for n in names])
    if s.low:
        math = m.precision.math
        peak_low = chip.peak_flops(math) * chip.dtype_efficiency(math)
        lam = low_shares(s, names)
        low_args = dict(nbytes=s.b_gemm, weight_nbytes=s.b_weight)
        hi_args = dict(nbytes=s.b_act, weight_nbytes=s.b_act)
        g = lam * gemm_time(
            chip, mm, kk, nn, peak=peak_low, m_tile=tile, **low_args, **dims
        ) + (1.0 - lam) * gemm_time(
            chip, mm, kk, nn, peak=peak16, m_tile=tile, **hi_args, **dims
        )
        g_flops, b_low, _ = gemm_work(chip, mm, kk, nn, **low_args, **dims)
        _, b_hi, _ = gemm_work(chip, mm, kk, nn, **hi_args, **dims)
        g_bytes = lam * b_low + (1.0 - lam) * b_hi
    else:
        args = dict(nbytes=s.b_gemm, weight_nbytes=s.b_weight)
        peak = chip.peak_flops(m.precision.math)
        g = gemm_time(chip, mm, kk, nn, peak=peak, m_tile=tile, **args, **dims)
        g_flops, g_bytes, _ = gemm_work(chip, mm, kk, nn, **args, **dims)
    gemm = jnp.sum(g * weight)
    grouped = jnp.array([1.0 if n in GROUPED_OPS else 0.0 for n in names])
    shape = dict(
        batch=s.batch,
        q_tokens=s.tokens,
        kv_tokens=s.kv_tokens,
        seq=s.seq,
        heads=s.heads,
        kv_heads=s.kv_heads,
        head_dim_qk=s.h_qk,
        head_dim_v=s.h_v,
        kv_width=s.kv_width,
        peak=peak16,
        nbytes=s.b_act,
        kv_nbytes=s.b_kv,
        fused=s.flash,
        fa2=s.fa2,
    )
    attn, attn_flops = attention_time(chip, relax=relax, **shape)
    ssm, ssm_flops = ssm_scan_time(
        chip,
        tokens=s.tokens,
        seq=s.seq,
        heads=m.ssm_heads / s.t,
        head_dim=m.ssm_head_dim,
        state=m.ssm_state_dim,
        groups=relax.max(m.ssm_groups / s.t, 1.0),
        chunk=m.ssm_chunk,
        peak=peak16,
        nbytes=s.b_act,
        recurrent=s.recurrent,
        relax=relax,
    )
    q_fwd, q_bwd, q_kernels = quantize_bytes(model, s)
    quant = dict(forward=memory_time(chip, q_fwd), backward=memory_time(chip, q_bwd))
    p_fwd, p_bwd = permute_bytes(model, s)
    permute = dict(forward=memory_time(chip, p_fwd), backward=memory_time(chip, p_bwd))
    elem = (
        memory_time(chip, _elementwise_bytes(model, s))
        + quant["forward"]
        + permute["forward"]
    )
    if s.b_weight < s.b_gemm:  # weight-only quantization: dequantize K×N per GEMM
        dequant = jnp.sum(kk * nn * count * weight) * 2.0 / chip.flops_fp32
        elem = elem + dequant
    kernels, host_ops = _kernels_per_layer(model, s, cluster.host)
    kernels, host_ops = kernels + q_kernels, host_ops + q_kernels
    flops = 2.0 * jnp.sum(mm * kk * nn * count * weight)
    _, attn_bytes, _ = attention_work(chip, relax=relax, **shape)
    a, f_ssm = m.attention_fraction, m.ssm_fraction
    return dict(
        gemm=gemm,
        attn=a * attn,
        ssm=f_ssm * ssm,
        elem=elem,
        quant=quant,
        permute=permute,
        kernels=kernels,
        host_ops=host_ops,
        flops=flops,
        attn_flops=a * attn_flops,
        ssm_flops=f_ssm * ssm_flops,
        # per-op view for the roofline (`diffperf roofline`): one row per GEMM of
        # `_gemm_shapes`, `share` the fraction of layers that contain it
        gemm_ops=dict(
            time=g,
            flops=g_flops,
            bytes=g_bytes,
            share=weight,
            dims=(mm, kk, nn),
            names=names,
        ),
        attn_bytes=a * attn_bytes,
        # the expert GEMMs (share of MoE layers included) and the experts each runs
        moe_gemm=jnp.sum(g * weight * grouped),
        moe_hit=jnp.max(jnp.append(count * grouped, 1.0)),
    )


def kv_elems(model: Transformer, s: LayerShape):
    """K and V elements of one token across all heads (before sharding by t).

    2·K·H for standard attention (GQA/MQA: K heads); MLA moves the up-projected keys
    and values of every head: N·(H_qk + H_v).
    """
    if model.attention == "mla":
        return model.n_heads * (s.h_qk + s.h_v)
    return 2.0 * model.n_kv_heads * model.head_dim


def layer_collectives(
    model: Transformer,
    s: LayerShape,
    *,
    sequence_parallel: bool,
    phases: tuple[str, ...] = ("forward", "backward"),
    tp_overlap=0.0,
    ep_overlap=0.0,
    count_sync: bool = False,
) -> list[Collective]:
    """The TP, CP and EP collectives of one layer and one microbatch, per pass.

    For each pass in `phases` (a recomputed forward pass repeats the forward ones):
      TP (Korthikanti et al. 2022): with sequence parallelism, an all-gather before and
        a reduce-scatter after each attention, Mamba-2 and dense-MLP block over the t
        ranks (S = T·D·b bytes each); without it, one all-reduce per block. MoE blocks
        have theirs over the etp ranks that shard each expert (none at etp = 1).
        Counts are the blocks' shares of layers.
      CP (ring attention, Liu et al. 2023): the c ranks pass K/V of their T/t tokens
        (T·kv_elems/t·b bytes) around the ring, c − 1 sends forward; backward passes
        K/V and their gradients, 2·(c − 1) sends; the peer is t ranks away.
      EP: the dispatch and the combine of the chip's T/t tokens to k experts each
        (`collectives.dispatch_time`, fanout k) over the ep ranks (stride etp), at the
        experts' input width ℓ (the latent of a LatentMoE, Nemotron 3), times the
        capacity factor when token dropping pads every expert's buffer to capacity.
      EP token counts (`count_sync`, a dropless training dispatcher): before each
        forward dispatch the ep ranks all-gather their per-expert token counts,
        N·8 bytes each (int64; S = ep·N·8 gathered), which the host then copies to
        itself to size the all-to-all and the grouped GEMM; the CPU blocks on it, so
        it hides behind nothing (overlap 0), a latency-bound (e − 1)·α on a switch.
        Megatron-core `MoEAlltoAllTokenDispatcher.preprocess`
        (`gather_from_sequence_parallel_region` of `num_local_tokens_per_expert` over
        the tp-ep group, then `.to("cpu")`); DeepEP's `notify_dispatch` likewise
        exchanges the counts before the host reads `num_recv_tokens`. The backward
        reuses the host-side splits: no exchange.

    `tp_overlap` and `ep_overlap` (the mapping's) become the records' `overlap`; CP
    sends overlap the block attention by construction (overlap 1).

    Returns:
        `Collective` records; counts are per layer and microbatch.
    """
    m = model
    b = s.b_act
    buf = s.tokens * m.d_model * b
    kinds = ("all_gather", "reduce_scatter") if sequence_parallel else ("all_reduce",)
    # blocks per layer with a TP pair over t: attention, Mamba-2 and dense MLP
    n_tp = m.attention_fraction + m.ssm_fraction + m.dense_mlp_fraction
    kv = s.tokens * kv_elems(m, s) / s.t * b
    sent = jnp.where(m.capacity_factor > 0, m.capacity_factor, 1.0)
    token_bytes = s.tokens / s.t * m.expert_input_dim * b * sent
    out = []
    for phase in phases:
        hops = 2.0 if phase == "backward" else 1.0
        for kind in kinds:
            for group, count in ((s.t, n_tp), (s.etp, s.moe)):
                out.append(
                    Collective(
                        kind,
                        "tp",
                        phase,
                        nbytes=buf,
                        group=group,
                        stride=1.0,
                        count=count,
                        overlap=tp_overlap,
                    )  # fmt: skip
                )
        out.append(
            Collective(
                "p2p",
                "cp",
                phase,
                nbytes=kv,
                group=s.c,
                stride=s.t,
                count=hops * (s.c - 1.0) * m.attention_fraction,
                overlap=1.0,
            )  # fmt: skip
        )
        out.append(
            Collective(
                "all_to_all",
                "ep",
                phase,
                nbytes=token_bytes,
                group=s.ep,
                stride=s.etp,
                count=2.0 * s.moe,
                overlap=ep_overlap,
                fanout=m.top_k,
            )  # fmt: skip
        )
        if count_sync and phase != "backward":
            out.append(
                Collective(
                    "all_gather",
                    "ep",
                    phase,
                    nbytes=s.ep * m.n_experts * 8.0,
                    group=s.ep,
                    stride=s.etp,
                    count=s.moe,
                    overlap=0.0,
                )  # fmt: skip
            )
    return out


DGRAD, WGRAD = 1.0, 1.0
"""The backward GEMMs per forward GEMM: the input gradient (dgrad) and the weight
gradient (wgrad), each of the forward's FLOP. Frozen base weights (fine-tuning,
`Parallelism.trainable` τ < 1) run only τ of the wgrad."""

PASS_FACTORS = {
    "matmul": (1.0, DGRAD + WGRAD),
    "attention": (1.0, 2.5),
    "attention_unfused": (1.0, 2.0),
    "ssm": (1.0, 2.5),
    "elementwise": (1.0, 2.0),
    "kernels": (1.0, 2.0),
}
"""(forward, backward) multiples of each class's forward time, for one layer.

matmul: the backward pass runs two GEMMs per forward GEMM, dgrad and wgrad, of the
same FLOP (Narayanan et al. 2021, §5.1: 3× the forward FLOP in all; LoRA adapters
likewise; frozen base weights skip their wgrad, `WGRAD`). attention: a
fused (Flash) kernel's backward recomputes the scores, 5 GEMM-like products against
the forward's 2 (Dao 2023, FlashAttention-2, which counts backward FLOP as 2.5×
forward); unfused attention stores the scores and runs 4 (2×). ssm: the SSD scan's
backward recomputes the chunk states like fused attention (2.5×, Dao & Gu 2024).
elementwise: each backward op reads the output gradient and the saved input and writes
the input gradient, about twice the forward traffic. kernels: the backward pass
launches about twice the forward's kernels (dgrad + wgrad per GEMM). The trace
(`model.trace`) splits every term by the same table.
"""

RECOMPUTED = {
    "none": (),
    "selective": ("attention",),
    "full": ("matmul", "attention", "ssm", "elementwise", "kernels"),
}
"""Classes a recompute policy runs once more, as a forward pass, before the backward:
selective recompute re-runs the core attention (Korthikanti et al. 2022, §5); full
recompute the whole layer, its forward collectives included (phase "recompute" of
`layer_collectives`)."""

HEAD_KERNELS = 7.0
"""Kernels of the head per microbatch, one per op of `head_time`'s formula: the logits
GEMM forward, dgrad and wgrad (3), the fused cross-entropy forward and backward (2),
the embedding gather and its gradient scatter-add (2)."""


def head_time(
    cluster: Cluster, model: Transformer, s: LayerShape, relax: AbstractRelax
):
    """Embedding, logits GEMM (fwd + 2 bwd) and loss of one microbatch [s].

    Logits: (T × D)·(D × V/t) in bf16 whatever `Precision.math` is (the output layer
    is not a Transformer Engine linear under an FP8/FP4 recipe: Megatron-core's
    output_layer is a ColumnParallelLinear, the embedding a gather), forward + backward
    by `PASS_FACTORS["matmul"]`;
    cross-entropy streams the T·V/t logits three times in fp32 (3 × 4 = 12 B per
    logit: max, exp-sum and gradient passes of Megatron's vocab-parallel cross
    entropy); the embedding gather (read + write T·D) and its gradient scatter-add
    (T·D) move 3·T·D·b bytes; plus `HEAD_KERNELS` fixed kernel costs.
    """
    chip = cluster.chip
    logits = gemm_time(
        chip,
        s.tokens,
        model.d_model,
        model.vocab_size / s.t,
        peak=chip.peak_flops("bf16"),
        nbytes=s.b_act,
        relax=relax,
    )
    loss = memory_time(chip, s.tokens * model.vocab_size / s.t * 12.0)
    emb = memory_time(chip, 3.0 * s.tokens * model.d_model * s.b_act)
    gemms = sum(PASS_FACTORS["matmul"])
    return gemms * logits + loss + emb + HEAD_KERNELS * chip.kernel_overhead
