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
from ..specs.workload import Transformer
from .collectives import collective_time, dispatch_time, p2p_time
from .ops import (
    attention_time,
    attention_work,
    gemm_time,
    gemm_work,
    memory_time,
    ssm_scan_time,
)

__all__ = ["LayerShape", "layer_forward", "layer_comm", "head_time"]

LOW_PRECISION = ("fp8", "int8", "fp4", "mxfp8", "mxfp4", "nvfp4")


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
        self.low = m.precision.math in LOW_PRECISION
        self.b_gemm = m.precision.bytes("math") if self.low else self.b_act
        self.b_weight = self.b_gemm if weight_bytes is None else weight_bytes
        self.flash = flash
        self.fa2 = fa2 and flash


def _gemm_shapes(model: Transformer, s: LayerShape):
    """(M, K, N, count, weight) arrays and the names of the layer's forward GEMMs.

    `weight` is the share of layers that contain the op (attention, Mamba-2, dense MLP
    and MoE layers by their fractions). The grouped expert GEMMs run `local` experts of
    M = T/t·k·etp·load/local rows each at the busiest chip (load = capacity factor or
    imbalance), so small per-expert batches fall down the efficiency curve.
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
    per_expert = routed / jnp.maximum(local, 1.0)
    fe, fs, ell = m.d_ff_expert, m.shared_width, m.expert_input_dim
    with jax.ensure_compile_time_eval():  # concrete weights of a concrete model
        dense = m.dense_mlp_fraction
        latent = moe * jnp.where(m.moe_latent_dim > 0, 1.0, 0.0)
    mlp = [
        ("mlp_up", T, d, up * m.d_ff / t, 1.0, dense),  # (+gate)
        ("mlp_down", T, m.d_ff / t, d, 1.0, dense),
        ("router", T / t, d, m.n_experts, 1.0, moe),
        ("latent_down", T / t, d, ell, 1.0, latent),  # LatentMoE
        ("expert_up", per_expert, ell, up * fe / s.etp, local, moe),  # grouped
        ("expert_down", per_expert, fe / s.etp, ell, local, moe),  # grouped
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
    Q and K; the Mamba-2 causal conv (read + write d_in + 2·G·Ns) and gated norm (read
    y and z, write y); with fp8/fp4 GEMMs, a cast of each GEMM input (read b, write 1
    byte).
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
    total = norms + s.tokens * (act + rope + ssm) * b
    if s.low:
        gemm_inputs = (
            m.sublayers * m.d_model
            + m.attention_fraction * m.n_heads * m.head_dim / t
            + m.ssm_fraction * m.ssm_inner / t
            + m.mlp_fraction * m.d_ff / t
        )
        total = total + s.tokens * gemm_inputs * (b + 1.0)
    return total


def _kernels_per_layer(model: Transformer, s: LayerShape) -> tuple[float, float]:
    """(GPU kernels, host-dispatched ops) of the representative layer's forward pass.

    Attention block: norm, QKV, rotary, attention, output, residual (6 kernels); MLP
    block: norm, up, activation, down, residual (5); Mamba-2 block: norm, in_proj,
    conv, 5 SSD scan kernels (chunk cumsum, chunk state, state passing, BMM, chunk
    scan), gated norm, out_proj, residual (11); each one host op, + 2 casts per block
    for fp8/fp4 GEMMs. A standard dense layer is 11 kernels. An MoE layer adds router
    GEMM, top-k, permute, 2 grouped GEMMs and unpermute on the GPU (+6 kernels), and
    about 40 small host-side ops (router softmax/top-k bookkeeping, auxiliary
    load-balancing loss, token-count histogram with its device-to-host sync,
    permutation indices, splits of the all-to-all), an estimate from the structure of
    Megatron-core's MoE layer. The backward pass launches about twice as many.
    """
    m = model
    cast = 2.0 if s.low else 0.0
    base = (
        m.attention_fraction * (6.0 + cast)
        + m.ssm_fraction * (11.0 + cast)
        + m.mlp_fraction * (5.0 + cast)
    )
    return base + 6.0 * s.moe, base + 46.0 * s.moe


def layer_forward(
    cluster: Cluster, model: Transformer, s: LayerShape, relax: AbstractRelax
):
    """Forward seconds of the representative layer by class, per microbatch.

    Weight-only quantization (weights narrower than the GEMM operands, e.g. int4
    weights with bf16 math) adds the dequantization of every weight element, 2 vector
    FLOP each on the FP32 units, to the elementwise time.
    """
    chip = cluster.chip
    peak = chip.peak_flops(model.precision.math)
    if s.low:  # sub-16-bit GEMMs reach a smaller share of their (higher) peak
        peak = peak * chip.low_precision_efficiency
    peak16 = chip.peak_flops("bf16")
    (mm, kk, nn, count, weight), names = _gemm_shapes(model, s)
    g = gemm_time(
        chip, mm, kk, nn, count=count, peak=peak, nbytes=s.b_gemm,
        weight_nbytes=s.b_weight, relax=relax,
    )  # fmt: skip
    gemm = jnp.sum(g * weight)
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
    m = model
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
    elem = memory_time(chip, _elementwise_bytes(model, s))
    if s.b_weight < s.b_gemm:  # weight-only quantization: dequantize K×N per GEMM
        dequant = jnp.sum(kk * nn * count * weight) * 2.0 / chip.flops_fp32
        elem = elem + dequant
    kernels, host_ops = _kernels_per_layer(model, s)
    flops = 2.0 * jnp.sum(mm * kk * nn * count * weight)
    g_flops, g_bytes, _ = gemm_work(
        chip, mm, kk, nn, count=count, nbytes=s.b_gemm, weight_nbytes=s.b_weight,
        relax=relax,
    )  # fmt: skip
    _, attn_bytes, _ = attention_work(chip, relax=relax, **shape)
    a, f_ssm = m.attention_fraction, m.ssm_fraction
    return dict(
        gemm=gemm,
        attn=a * attn,
        ssm=f_ssm * ssm,
        elem=elem,
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
    )


def layer_comm(
    cluster: Cluster,
    model: Transformer,
    s: LayerShape,
    relax: AbstractRelax,
    sequence_parallel: bool,
):
    """TP, CP and EP collective seconds of a layer per microbatch (fwd + bwd).

    TP (Korthikanti et al. 2022): with sequence parallelism, an all-gather before and a
    reduce-scatter after the attention and the dense MLP, forward and backward (8
    collectives of T·D·b bytes); without it, 4 all-reduces. MoE blocks have theirs over
    the etp ranks that shard each expert (none at etp = 1); a Mamba-2 block has one
    pair like attention.
    CP: ring attention passes K/V (c − 1) times forward and K/V plus their gradients
    backward. EP: dispatch and combine forward and backward of the chip's T/t tokens
    to k experts each (`dispatch_time`), at the experts' input width ℓ, times the
    capacity factor when token dropping pads the buffers.
    """
    m = model
    b = s.b_act
    buf = s.tokens * m.d_model * b
    kind = "all_gather" if sequence_parallel else "all_reduce"

    def pair(n):
        one = collective_time(cluster, kind, buf, n, 1.0, relax=relax)
        if sequence_parallel:
            one = one + collective_time(
                cluster, "reduce_scatter", buf, n, 1.0, relax=relax
            )
        return one

    # pairs per direction: one per attention, Mamba-2 and dense MLP block over the t
    # ranks, and one per MoE block over the etp ranks sharing its experts (0 at etp = 1)
    n_tp = m.attention_fraction + m.ssm_fraction + m.dense_mlp_fraction
    tp = 2.0 * (n_tp * pair(s.t) + s.moe * pair(s.etp))
    kv_elems = (
        m.n_heads * (s.h_qk + s.h_v)
        if m.attention == "mla"
        else 2.0 * m.n_kv_heads * m.head_dim
    )
    kv = s.tokens * kv_elems / s.t * b
    hop = m.attention_fraction * p2p_time(cluster, kv, s.t, relax=relax)
    cp_fwd, cp_bwd = (s.c - 1.0) * hop, 2.0 * (s.c - 1.0) * hop
    # tokens travel at the experts' input width (the latent of a LatentMoE); token
    # dropping pads every expert's buffer to capacity, so capacity·k copies move
    sent = jnp.where(m.capacity_factor > 0, m.capacity_factor, 1.0)
    token_bytes = s.tokens / s.t * m.expert_input_dim * b * sent
    a2a = dispatch_time(cluster, token_bytes, m.top_k, s.ep, s.etp, relax=relax)
    ep = 4.0 * a2a * s.moe
    return dict(tp=tp, cp_fwd=cp_fwd, cp_bwd=cp_bwd, ep=ep)


def head_time(
    cluster: Cluster, model: Transformer, s: LayerShape, relax: AbstractRelax
):
    """Embedding, logits GEMM (fwd + 2 bwd) and loss of one microbatch [s].

    Logits: (T × D)·(D × V/t) in bf16; cross-entropy streams the T·V/t logits about
    three times in fp32 forward and backward (12 B per logit); the embedding gather and
    its gradient scatter move 3·T·D·b bytes.
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
    return 3.0 * logits + loss + emb + 6.0 * chip.kernel_overhead
