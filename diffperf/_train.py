"""The training-step model: `train_step(cluster, model, mapping, *, relax)`.

One representative layer (dense and MoE layers mixed by their share) is costed per
microbatch on one chip and multiplied by the L/p layers of a pipeline stage; no Python
loop runs over layers, so compile time does not grow with depth.

Per microbatch (B sequences of S tokens; T = B·S/c tokens on a chip, t = tp):
  forward  = GEMMs + fused attention + elementwise + kernels + TP/CP/EP collectives
  backward = 2 × forward GEMMs (dgrad, wgrad) + 2.5 × attention + 2 × elementwise
  recompute: full = one more forward; selective = one more attention forward
Step (m microbatches, p stages, v virtual stages; Narayanan et al. SC'21):
  T = m·t_mb + (p − 1)/v · t_mb + p2p + exposed DP + optimizer + host
with the bubble (p − 1)/v·t_mb of 1F1B / interleaved schedules.
"""

import jax.numpy as jnp

from ._breakdown import Breakdown
from ._collectives import collective_time, dispatch_time, p2p_time
from ._dp import dp_exposed, optimizer_time, p2p_exposed
from ._hardware import Cluster
from ._mapping import Parallelism, check_mapping
from ._memory import train_memory
from ._ops import attention_time, gemm_time, memory_time
from ._relax import AbstractRelax, Exact, as_float
from ._workload import Transformer

__all__ = ["train_step"]

_LOW_PRECISION = ("fp8", "int8", "fp4")
_EXACT = Exact()


class _Shape:
    """Per-chip sizes of one microbatch of one layer (plain container, not a pytree)."""

    def __init__(self, model: Transformer, mapping: Parallelism, relax: AbstractRelax):
        m, p = model, mapping
        self.t, self.c, self.ep, self.etp = p.tp, p.cp, p.ep, p.etp
        self.seq = p.tokens(m)
        self.batch = p.microbatch
        self.tokens = p.microbatch * self.seq / p.cp  # T, tokens on one chip
        self.sp_tokens = self.tokens / p.tp if p.sequence_parallel else self.tokens
        self.moe = m.moe_fraction
        self.heads = m.n_heads / p.tp
        self.kv_heads = relax.max(m.n_kv_heads / p.tp, 1.0)  # replicated below 1
        mla = m.attention == "mla"
        self.h_qk = m.head_dim
        self.h_v = m.v_head_dim if mla else m.head_dim
        window = jnp.where(m.sliding_window > 0, m.sliding_window, self.seq)
        half = self.seq / 2.0
        f = m.sliding_fraction
        self.kv_tokens = (1.0 - f) * half + f * relax.min(window, half)
        self.b_act = m.precision.bytes("activations")
        self.low = m.precision.math in _LOW_PRECISION
        self.b_gemm = 1.0 if self.low else self.b_act
        self.flash = mapping.flash_attention


def _gemm_shapes(model: Transformer, s: _Shape):
    """(M, K, N, count, weight) of each forward GEMM of the representative layer.

    `weight` is the share of layers that contain the op (MoE vs dense MLP layers).
    """
    m, t, T = model, s.t, s.tokens
    d, n, h = m.d_model, m.n_heads, m.head_dim
    if m.attention == "mla":
        c, q = m.kv_lora_rank, m.q_lora_rank
        attn = [
            (T, d, q, 1.0, 1.0),  # q down
            (T, q, n * h / t, 1.0, 1.0),  # q up
            (T, d, c + m.qk_rope_head_dim, 1.0, 1.0),  # kv down
            (T, c, n * (h - m.qk_rope_head_dim + m.v_head_dim) / t, 1.0, 1.0),  # kv up
            (T, n * m.v_head_dim / t, d, 1.0, 1.0),  # out
        ]
    else:
        attn = [
            (T, d, (n + 2.0 * m.n_kv_heads) * h / t, 1.0, 1.0),  # qkv
            (T, n * h / t, d, 1.0, 1.0),  # out
        ]
    up = m.mlp_mats - 1.0
    dense, moe = 1.0 - s.moe, s.moe
    local = m.n_experts / s.ep
    routed = T / t * m.top_k * s.etp * m.expert_imbalance  # tokens at the busiest chip
    per_expert = routed / jnp.maximum(local, 1.0)
    fe, fs = m.d_ff_expert, m.d_ff_expert * m.n_shared_experts
    mlp = [
        (T, d, up * m.d_ff / t, 1.0, dense),  # dense up (+gate)
        (T, m.d_ff / t, d, 1.0, dense),  # dense down
        (T / t, d, m.n_experts, 1.0, moe),  # router
        (per_expert, d, up * fe / s.etp, local, moe),  # expert up (+gate), grouped
        (per_expert, fe / s.etp, d, local, moe),  # expert down, grouped
        (T, d, up * fs / t, 1.0, moe),  # shared experts up
        (T, fs / t, d, 1.0, moe),  # shared experts down
    ]
    return [jnp.stack([as_float(r[i]) for r in attn + mlp]) for i in range(5)]


def _elementwise_bytes(model: Transformer, s: _Shape):
    """HBM bytes of the forward non-GEMM, non-attention ops of one layer on one chip.

    Per token: 2 norms (read + write D) and 2 residual adds (3·D) on the SP shard;
    the MLP activation (read up·F, write F); rotary on Q and K; with fp8/fp4 GEMMs,
    a cast of each GEMM input (read b, write 1 byte).
    """
    m, t = model, s.t
    up = m.mlp_mats - 1.0
    mlp_dense = (up + 1.0) * m.d_ff / t
    mlp_moe = (
        (up + 1.0)
        * m.d_ff_expert
        * (m.top_k * m.expert_imbalance + m.n_shared_experts)
        / t
    )
    act = (1.0 - s.moe) * mlp_dense + s.moe * mlp_moe
    rope = 4.0 * (m.n_heads + m.n_kv_heads) * m.head_dim / t
    b = s.b_act
    total = s.sp_tokens * 10.0 * m.d_model * b + s.tokens * (act + rope) * b
    if s.low:
        gemm_inputs = 2.0 * m.d_model + m.n_heads * m.head_dim / t + m.d_ff / t
        total = total + s.tokens * gemm_inputs * (b + 1.0)
    return total


def _kernels_per_layer(s: _Shape) -> tuple[float, float]:
    """(GPU kernels, host-dispatched ops) of the representative layer's forward pass.

    Dense layer: 4 GEMMs, attention, 2 norms, 2 residual adds, activation and rotary
    (11 kernels; + 4 casts for fp8/fp4 GEMMs), each one host op. An MoE layer adds
    router GEMM, top-k, permute, 2 grouped GEMMs and unpermute on the GPU (+6 kernels),
    and about 40 small host-side ops (router softmax/top-k bookkeeping, auxiliary
    load-balancing loss, token-count histogram with its device-to-host sync,
    permutation indices, splits of the all-to-all), an estimate from the structure of
    Megatron-core's MoE layer. The backward pass launches about twice as many.
    """
    base = 11.0 + (4.0 if s.low else 0.0)
    gpu = base + 6.0 * s.moe
    host = base + 46.0 * s.moe
    return gpu, host


def _layer(cluster: Cluster, model: Transformer, s: _Shape, relax: AbstractRelax):
    """Forward seconds of the representative layer by class, per microbatch."""
    chip = cluster.chip
    peak = chip.peak_flops(model.precision.math)
    if s.low:  # sub-16-bit GEMMs reach a smaller share of their (higher) peak
        peak = peak * chip.low_precision_efficiency
    peak16 = chip.peak_flops("bf16")
    mm, kk, nn, count, weight = _gemm_shapes(model, s)
    g = gemm_time(
        chip, mm, kk, nn, count=count, peak=peak, nbytes=s.b_gemm, relax=relax
    )
    gemm = jnp.sum(g * weight)
    attn, attn_flops = attention_time(
        chip,
        batch=s.batch,
        q_tokens=s.tokens,
        kv_tokens=s.kv_tokens,
        seq=s.seq,
        heads=s.heads,
        kv_heads=s.kv_heads,
        head_dim_qk=s.h_qk,
        head_dim_v=s.h_v,
        peak=peak16,
        nbytes=s.b_act,
        relax=relax,
        fused=s.flash,
    )
    elem = memory_time(chip, _elementwise_bytes(model, s))
    kernels, host_ops = _kernels_per_layer(s)
    flops = 2.0 * jnp.sum(mm * kk * nn * count * weight)
    return dict(
        gemm=gemm,
        attn=attn,
        elem=elem,
        kernels=kernels,
        host_ops=host_ops,
        flops=flops,
        attn_flops=attn_flops,
    )


def _layer_comm(
    cluster: Cluster,
    model: Transformer,
    s: _Shape,
    relax: AbstractRelax,
    mapping: Parallelism,
):
    """TP, CP and EP collective seconds of a layer per microbatch (fwd + bwd).

    TP (Korthikanti et al. 2022): with sequence parallelism, an all-gather before and a
    reduce-scatter after the attention and the dense MLP, forward and backward (8
    collectives of T·D·b bytes); without it, 4 all-reduces. MoE layers with etp = 1 have
    TP collectives around attention only. CP: ring attention passes K/V (c − 1) times
    forward and K/V plus their gradients backward. EP: dispatch and combine forward and
    backward of the chip's T/t tokens to k experts each (`dispatch_time`).
    """
    b = s.b_act
    buf = s.tokens * model.d_model * b
    kind = "all_gather" if mapping.sequence_parallel else "all_reduce"
    one = collective_time(cluster, kind, buf, s.t, 1.0, relax=relax)
    if mapping.sequence_parallel:
        one = one + collective_time(
            cluster, "reduce_scatter", buf, s.t, 1.0, relax=relax
        )
    n_tp = 2.0 * (1.0 - s.moe) + 1.0 * s.moe  # pairs per direction
    tp = 2.0 * n_tp * one
    kv_elems = (
        model.n_heads * (s.h_qk + s.h_v)
        if model.attention == "mla"
        else 2.0 * model.n_kv_heads * model.head_dim
    )
    kv = s.tokens * kv_elems / s.t * b
    hop = p2p_time(cluster, kv, s.t, relax=relax)
    cp_fwd, cp_bwd = (s.c - 1.0) * hop, 2.0 * (s.c - 1.0) * hop
    token_bytes = s.tokens / s.t * model.d_model * b
    a2a = dispatch_time(cluster, token_bytes, model.top_k, s.ep, s.etp, relax=relax)
    ep = 4.0 * a2a * s.moe
    return dict(tp=tp, cp_fwd=cp_fwd, cp_bwd=cp_bwd, ep=ep)


def train_step(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    *,
    relax: AbstractRelax = _EXACT,
) -> Breakdown:
    """Time, memory and FLOP of one optimizer step of a training job.

    T_step = m·t_mb + (p − 1)/v·t_mb + T_p2p + T_dp,exposed + T_opt + T_host  [s]
    where t_mb is one microbatch through one pipeline stage (L/p layers, plus the head
    on the last stage). See the module docstring for the per-layer terms and
    `diffperf._memory.train_memory` for memory.

    Args:
        cluster: the hardware (`load_hardware`).
        model: the workload (`load_workload`); its `precision.math` picks the peak.
        mapping: the parallel mapping; chips used = tp·pp·dp·cp.
        relax: Exact() for reporting, Smooth(p) for gradients.

    Returns:
        A `Breakdown` whose terms sum to `total`.

    Raises:
        ValueError: a concrete integer mapping that does not fit the model.
    """
    check_mapping(model, mapping)
    s = _Shape(model, mapping, relax)
    p, v = mapping.pp, mapping.vpp
    m = mapping.microbatches()
    ls = model.n_layers / p  # layers per stage
    lay = _layer(cluster, model, s, relax)
    com = _layer_comm(cluster, model, s, relax, mapping)
    chip = cluster.chip

    bwd_attn = (2.5 if s.flash else 2.0) * lay["attn"]  # flash recomputes the scores
    cp_fwd = relax.exceed(com["cp_fwd"], lay["attn"])
    cp_bwd = relax.exceed(com["cp_bwd"], bwd_attn)
    tp = (1.0 - mapping.tp_overlap) * com["tp"]
    full = mapping.recompute == "full"
    recompute = {
        "none": 0.0,
        "selective": lay["attn"],
        "full": lay["gemm"] + lay["attn"] + lay["elem"] + tp / 2.0,
    }[mapping.recompute]
    passes = 4.0 if full else 3.0  # forward + backward (2×) + recomputed forward
    kernels = lay["kernels"] * passes
    per_layer = dict(
        matmul=3.0 * lay["gemm"],
        attention=lay["attn"] + bwd_attn,
        elementwise=3.0 * lay["elem"],
        kernel_overhead=kernels * chip.kernel_overhead,
        recompute=recompute,
        tp_comm=tp,
        cp_comm=cp_fwd + cp_bwd,
        ep_comm=com["ep"],
    )
    stage = {k: ls * val for k, val in per_layer.items()}
    t_layers = sum(stage.values())
    head = _head_time(cluster, model, s, relax)
    t_mb = t_layers + head  # the last stage, which also runs the head, sets the pace
    host_mb = ls * lay["host_ops"] * passes * cluster.host.dispatch_overhead
    # dropless MoE syncs device→host once per MoE layer and pass (token counts)
    syncs = ls * s.moe * (passes - 1.0) * cluster.host.sync_overhead
    dp, dp_hidden = dp_exposed(cluster, model, mapping, s, t_layers, ls, relax=relax)
    terms = {k: m * val for k, val in stage.items()} | dict(
        head=m * head,
        pp_bubble=(p - 1.0) / v * t_layers,
        pp_p2p=p2p_exposed(cluster, model, mapping, s, relax=relax),
        dp_comm=dp,
        optimizer=optimizer_time(cluster, model, mapping),
        host_stall=m * (relax.exceed(host_mb, t_mb) + syncs),
        step_overhead=cluster.host.step_overhead,
    )
    tokens = mapping.batch() * s.seq
    attn_model = 6.0 * s.seq * model.n_heads * (s.h_qk + s.h_v) * model.n_layers
    model_flops = (6.0 * model.active_params() + attn_model) * tokens
    extra = {
        "none": 0.0,
        "selective": lay["attn_flops"],
        "full": lay["flops"] + lay["attn_flops"],
    }[mapping.recompute]
    attn_passes = 3.5 if s.flash else 3.0
    per_chip = m * (ls * (3.0 * lay["flops"] + attn_passes * lay["attn_flops"] + extra))
    per_chip = per_chip + m * 6.0 * s.tokens * model.d_model * model.vocab_size / (
        s.t * p
    )
    return Breakdown(
        **terms,
        overlapped_tp_comm=mapping.tp_overlap * com["tp"] * ls * m,
        overlapped_cp_comm=ls * m * (com["cp_fwd"] + com["cp_bwd"] - cp_fwd - cp_bwd),
        overlapped_dp_comm=dp_hidden,
        memory_per_gpu=train_memory(model, mapping, chip, relax=relax),
        memory_capacity=chip.hbm_capacity,
        model_flops=model_flops,
        hardware_flops=per_chip * mapping.chips,
        tokens=tokens,
        chips=mapping.chips,
    )


def _head_time(cluster: Cluster, model: Transformer, s: _Shape, relax: AbstractRelax):
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
