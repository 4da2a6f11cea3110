"""The serving model: prefill, decode steps, KV cache and serving metrics.

One replica of tp·pp chips serves a batch of B sequences with S_in prompt tokens and
S_out generated tokens. Each phase is a forward pass of the representative layer
(`layer.py`) times L, on one chip:

  prefill: T = B·S_in tokens through the GEMMs, causal attention over S_in keys
  decode:  T = B tokens (one per sequence), attention over the whole context, so each
           step reads the weights once and the KV cache of every sequence

    t_phase = max(t_gpu, t_host) + t_serve
    t_gpu   = L·(GEMM + attention + elementwise + kernels·κ + TP/EP collectives)
              + logits + (p − 1)·p2p                                              [s]
    t_host  = L·ops·δ (CPU launch time; 0 when the step is a captured graph)     [s]

`Serving.graphs` replays decode steps as captured graphs; a step that carries prompt
tokens is launched kernel by kernel from the host even then (t_host counts): the
engines capture graphs for decode batches only (TensorRT-LLM's PyTorch backend
`cuda_graph_config`: generation-only batches; SGLang `--cuda-graph-max-bs`: decode
batches; vLLM V1: batches up to its largest capture size, 512 tokens by default,
below any prompt chunk here), so a prefill step of a model with many small kernels
per layer (MoE routing and grouped GEMMs) can be bound by the CPU's launches.

with κ the per-kernel GPU cost, δ the CPU time per launched op and t_serve the fixed
per-step cost of the serving engine (scheduling, sampling, detokenization; a `Host`
leaf). With small batches the fixed costs dominate decode: Llama-2-70B decodes at about
the same time per token at TP4 and TP8 on DGX-A100 (Splitwise), which a pure roofline
misses by ~2×.

Serving metrics (static batch, steady state; `serving.serve`):
  TTFT = t_prefill;  TPOT = t_decode at the mean context S_in + S_out/2;
  with pp > 1 the engine keeps n = min(B, pp) microbatches of B/n sequences in flight
  (TensorRT-LLM, vLLM virtual engines): both phases run at B/n, a token still passes
  all pp stages (TPOT = t_decode(B/n)) and TTFT = t_prefill(B/n)·(pp + n − 1)/pp;
  e2e = TTFT + (S_out − 1)·TPOT;  output tokens/s = B·S_out / e2e (per replica).
Memory per chip: weights/(t·p) + KV cache B/a·(S_in + S_out)·L/p·kv/t (attention
layers; a = attention_dp ranks, each holding its share of the batch) + B/a·Mamba-2
state (constant per sequence, SSM layers) + the peak activations of
one prompt's prefill (`prefill_activation_bytes`; engines prefill prompts one chunk at a
time) + reserved. max_batch is the largest batch whose KV caches fit beside the rest.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.relax import AbstractRelax, Exact
from ..specs.hardware import Cluster
from ..specs.mapping import (
    Parallelism,
    Serving,
    resolved_attention_kernel,
)
from ..specs.workload import Transformer
from .collectives import collective_time
from .comm import Collective, comm_time, instance_time, scaled
from .data_parallel import stage_params
from .fidelity import Fidelity, tier
from .layer import LayerShape, layer_collectives, layer_forward
from .ops import gemm_time, memory_time

__all__ = [
    "PhaseBreakdown",
    "prefill",
    "decode_step",
    "phase_breakdown",
    "phase_collectives",
    "phase_shape",
    "serving_shape",
    "mixed_step",
]

_EXACT = Exact()
PHASE_TERMS = (
    "matmul",
    "attention",
    "elementwise",
    "kernel_overhead",
    "tp_comm",
    "ep_comm",
    "pp_p2p",
    "head",
    "host_stall",
    "kv_offload",
    "step_overhead",
)


class PhaseBreakdown(eqx.Module):
    """Seconds of one prefill or decode step of a replica by cause (sum: total)."""

    matmul: Array
    attention: Array
    elementwise: Array
    kernel_overhead: Array
    tp_comm: Array
    ep_comm: Array
    pp_p2p: Array
    head: Array
    host_stall: Array
    kv_offload: Array  # exposed KV-cache traffic to/from the memory tier
    step_overhead: Array

    def terms(self) -> dict[str, Array]:
        """The terms by name [s]."""
        return {name: getattr(self, name) for name in PHASE_TERMS}

    @property
    def total(self) -> Array:
        """Seconds of the step."""
        return sum(self.terms().values(), start=jnp.zeros(()))


def serving_shape(model, serving, relax, *, q_len, seq, causal) -> LayerShape:
    """The layer shape of a serving step: `q_len` new tokens per sequence over `seq`.

    With attention data parallelism (a = `attention_dp` ranks of tp chips) a chip
    runs the layer of its rank: B/a sequences through attention (tp-way), the dense
    MLP and shared experts, and its T/tp tokens dispatched to the routed experts
    sharded over ep·etp = tp·a chips; `LayerShape`'s expert rows per chip,
    T/t·k·etp·load/(E/ep), are then B·q·k·load/E per expert, every rank's tokens.
    """
    return LayerShape(
        model,
        relax,
        tp=serving.tp,
        cp=1.0,
        ep=serving.ep,
        etp=serving.etp,
        batch=serving.rank_batch,  # one attention rank's sequences
        q_len=q_len,
        seq=seq,
        causal=causal,
        sequence_parallel=False,
        flash=resolved_attention_kernel(serving) != "unfused",
        fa2=resolved_attention_kernel(serving) == "fa2",
        weight_bytes=model.precision.bytes("weights"),
    )


def phase_shape(model, serving, relax, phase: str, *, context=None) -> LayerShape:
    """The layer shape of a prefill or a decode step (module docstring).

    prefill: B prompts of S_in tokens, causal over S_in keys; decode: one new token
    per sequence over `context` cached keys (default the mean over the generation,
    S_in + S_out/2).
    """
    if phase == "prefill":
        s_in = serving.input_len
        return serving_shape(model, serving, relax, q_len=s_in, seq=s_in, causal=True)
    if phase == "decode":
        if context is None:
            context = serving.input_len + serving.output_len / 2.0
        return serving_shape(
            model, serving, relax, q_len=1.0, seq=context, causal=False
        )
    raise ValueError(f"phase={phase!r} must be prefill or decode")


def phase_breakdown(
    cluster,
    model,
    serving,
    s: LayerShape,
    relax,
    attention=None,
    kv_tokens=None,
    eager=0.0,
) -> PhaseBreakdown:
    """One forward pass of the whole model for the tokens of `s` (module docstring).

    `attention`, if given, replaces the attention seconds of all layers (for steps that
    mix decode and prefill tokens, whose attention differs per token class).
    `eager` in [0, 1] is the share of the step's launches not replayed from a graph
    when `serving.graphs` (1 for a step with prompt tokens, 0 for a decode step;
    without graphs every launch is eager): t_host = eager·L·ops·δ.

    KV offload: the fraction f = `serving.offload_kv` of the KV cache lives in the
    memory tier; the step streams it layer by layer (the KV cache of `kv_tokens`
    tokens, default B·S, read in decode, written in prefill), overlapped with the GPU
    work: kv_offload = max(T_link, T_gpu) − T_gpu with
    T_link = f·kv_tokens·kv_bytes_per_token / W_tier  [s] (FlexGen, Sheng et al. 2023).
    """
    chip, host = cluster.chip, cluster.host
    lay = layer_forward(cluster, model, s, relax)
    records = phase_collectives(model, serving, s, relax=relax)
    layers = model.n_layers
    b = s.b_act
    # Logits of the last token of each sequence, vocabulary-parallel, then sampling.
    logits = gemm_time(
        chip,
        serving.rank_batch,
        model.d_model,
        model.vocab_size / serving.tp,
        peak=chip.peak_flops("bf16"),
        nbytes=b,
        weight_nbytes=model.precision.bytes("weights"),
        relax=relax,
    )
    # the sampler reads each sequence's fp32 logits once (4 B per vocabulary entry)
    head = logits + memory_time(chip, serving.rank_batch * model.vocab_size * 4.0)
    (pp,) = [r for r in records if r.axis == "pp"]
    hop = instance_time(cluster, pp, relax=relax)
    gpu = dict(
        matmul=layers * lay["gemm"],
        attention=layers * (lay["attn"] + lay["ssm"])
        if attention is None
        else attention + layers * lay["ssm"],
        elementwise=layers * lay["elem"],
        kernel_overhead=layers * lay["kernels"] * chip.kernel_overhead,
        tp_comm=comm_time(cluster, [r for r in records if r.axis == "tp"], relax=relax),
        ep_comm=comm_time(cluster, [r for r in records if r.axis == "ep"], relax=relax),
        pp_p2p=(serving.pp - 1.0) * hop,
        head=head,
    )
    t_gpu = sum(gpu.values())
    ops = layers * lay["host_ops"] * (eager if serving.graphs else 1.0)
    t_host = ops * host.dispatch_overhead
    if kv_tokens is None:
        kv_tokens = serving.rank_batch * s.seq
    kv = serving.offload_kv * kv_tokens * kv_bytes_per_token(model, serving)
    t_link = kv / cluster.offload_tier(relax).bandwidth
    return PhaseBreakdown(
        **gpu,
        host_stall=relax.exceed(t_host, t_gpu),
        kv_offload=relax.exceed(t_link, t_gpu),
        step_overhead=host.serve_overhead,
    )


def phase_collectives(model, serving, s: LayerShape, *, relax) -> list[Collective]:
    """Every collective of one forward pass of a replica, per chip (counts per step).

    The forward pass of each of the L layers (`layer_collectives`: TP all-reduces,
    EP dispatch + combine; no sequence parallelism or overlap in serving engines) and
    the pipeline send of the step's activations (T·D·b bytes to the next stage, tp
    ranks away), once on every chip but those of the last stage. `phase_breakdown`
    reads its time from them (the critical path crosses the p − 1 stage boundaries),
    the serving NIC demand its bytes (`comm.nic_bytes`).
    """
    layers = layer_collectives(model, s, sequence_parallel=False, phases=("forward",))
    send = Collective(
        "p2p", "pp", "step", nbytes=s.tokens * model.d_model * s.b_act,
        group=serving.pp, stride=serving.tp, count=relax.min(serving.pp - 1.0, 1.0),
    )  # fmt: skip
    return scaled(layers, model.n_layers) + [send]


def prefill(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> PhaseBreakdown:
    """Prefill of B prompts of S_in tokens on one replica [s] (module docstring).

    `fidelity` picks the tier ("detailed" or "roofline", see `diffperf.model.fidelity`).
    """
    cluster, _ = tier(fidelity, cluster)
    s = phase_shape(model, serving, relax, "prefill")
    # prompt steps are not captured graphs (module docstring)
    return phase_breakdown(cluster, model, serving, s, relax, eager=1.0)


def decode_step(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    context=None,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> PhaseBreakdown:
    """One decode step (one new token for each of B sequences) [s].

    Args:
        cluster: the hardware.
        model: the workload (its precision sets weight, KV and math dtypes).
        serving: the serving mapping and request shape.
        context: tokens already in each sequence's KV cache; default the mean over
            the generation, S_in + S_out/2.
        relax: Exact() or Smooth(p).
        fidelity: "detailed" (default) or "roofline" (`diffperf.model.fidelity`).
    """
    cluster, _ = tier(fidelity, cluster)
    s = phase_shape(model, serving, relax, "decode", context=context)
    return phase_breakdown(cluster, model, serving, s, relax)


def mixed_step(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    decodes,
    prefill_tokens,
    context=None,
    relax: AbstractRelax = _EXACT,
) -> PhaseBreakdown:
    """One engine step that decodes `decodes` sequences and prefills prompt tokens [s].

    The step of continuous batching with chunked prefill (Agrawal et al. 2024, Sarathi-
    Serve; vLLM, TensorRT-LLM in-flight batching): D = `decodes` sequences each add one
    token at `context` cached keys (default S_in + S_out/2), and P = `prefill_tokens`
    prompt tokens of prompts of S_in tokens are prefilled. The GEMMs and collectives see
    T = D + P tokens; attention is costed per token class: D single-token queries over
    `context` keys plus P/S_in causal prompts of S_in tokens (each prompt token attends
    to (S_in + 1)/2 keys on average, whether the prompt runs whole or in chunks):

        t = phase_breakdown(T = D + P; attention = L·(attn_dec(D) + attn_pre(P/S_in)))

    with the KV cache of D·context tokens read and P tokens written. D and P are float
    leaves (vmap over them for a step-time surface); D = P = 0 is an empty step whose
    time is the weight read and the fixed costs. Logits are computed for the D decodes
    and the last token of each prompt (D + P/S_in rows), as engines sample only those.
    """
    d = relax.max(decodes, 0.0) + 1e-6  # an empty step keeps finite shapes
    p = relax.max(prefill_tokens, 0.0)
    s_in = serving.input_len
    if context is None:
        context = s_in + serving.output_len / 2.0

    def batch(n):
        return eqx.tree_at(lambda s: s.batch, serving, n)

    s = serving_shape(model, batch(d + p), relax, q_len=1.0, seq=context, causal=False)
    dec = serving_shape(model, batch(d), relax, q_len=1.0, seq=context, causal=False)
    pre = serving_shape(
        model, batch(p / s_in + 1e-6), relax, q_len=s_in, seq=s_in, causal=True
    )
    attention = model.n_layers * (
        layer_forward(cluster, model, dec, relax)["attn"]
        + layer_forward(cluster, model, pre, relax)["attn"]
    )
    # logits for the decodes and the last token of each prompt (P/S_in of them)
    heads = batch(d + p / s_in)
    kv_tokens = (d * context + p) / serving.attention_dp  # decodes read, prompts write
    # a step with prompt tokens is launched eagerly (module docstring): the share
    # relax.min(P, 1) is 1 from one prompt token on and 0 for a decode-only step
    return phase_breakdown(
        cluster, model, heads, s, relax, attention=attention, kv_tokens=kv_tokens,
        eager=relax.min(p, 1.0),
    )  # fmt: skip


def kv_bytes_per_token(model: Transformer, serving: Serving) -> Array:
    """KV-cache bytes per token on one chip, for all its layers [B].

    Standard attention: 2·K·H·b_kv per attention layer (K/V heads sharded by t,
    replicated when t > K); MLA: (kv_lora_rank + rope dim)·b_kv per layer, replicated
    over t. Layers without attention (Mamba-2) cache no K/V (`ssm_state_bytes`).
    """
    b = model.precision.bytes("kv_cache")
    layers = model.n_layers / serving.pp * model.attention_fraction
    if model.attention == "mla":
        return layers * (model.kv_lora_rank + model.qk_rope_head_dim) * b
    heads = jnp.maximum(model.n_kv_heads / serving.tp, 1.0)
    return layers * 2.0 * heads * model.head_dim * b


def ssm_state_bytes(model: Transformer, serving: Serving) -> Array:
    """Recurrent (Mamba-2) state of one sequence on one chip, all its layers [B].

    L/p·s layers × `Transformer.ssm_state_bytes()` / t (heads sharded by t); constant
    in the context length, 0 without SSM layers.
    """
    layers = model.n_layers / serving.pp * model.ssm_fraction
    return layers * model.ssm_state_bytes() / serving.tp


def prefill_activation_bytes(model: Transformer, serving: Serving) -> Array:
    """Activations alive at the peak of one prompt's prefill on one chip [B].

    Engines prefill one prompt (chunk) at a time and free each layer's intermediates
    before the next layer, so the peak is one layer's widest point for the S_in
    tokens: the residual stream and the block's normed input (2·D per token) plus
    the widest block intermediate, all sharded by t except D:
        attention: (N + 2K)·H (Q, K, V) + N·H (attention output)
        MLP:       up·F + F (up/gate output, activation output); in MoE layers
                   F = k·F_expert + F_shared per token
        Mamba-2:   the in_proj output (2·d_in + 2·G·Ns + Hs)
        M = S_in · b_act · (2·D + max(attention, MLP, Mamba-2) / t)
    in the activation dtype (`precision.activations`).
    """
    m, t = model, serving.tp
    up = m.mlp_mats - 1.0
    attn = (m.n_heads + 2.0 * m.n_kv_heads) * m.head_dim + m.n_heads * m.head_dim
    routed = m.d_ff_expert * m.top_k + m.shared_width
    dense = jnp.where(m.dense_mlp_fraction > 0, m.d_ff, 0.0)
    ffn = (up + 1.0) * jnp.maximum(dense, jnp.where(m.moe_fraction > 0, routed, 0.0))
    ssm = jnp.where(m.ssm_fraction > 0, m.ssm_in_proj_width(), 0.0)
    attn = jnp.where(m.attention_fraction > 0, attn, 0.0)
    widest = jnp.maximum(jnp.maximum(attn, ffn), ssm)
    per_token = 2.0 * m.d_model + widest / t
    return serving.input_len * per_token * m.precision.bytes("activations")


def weight_bytes(model: Transformer, serving: Serving) -> Array:
    """Weights held by one chip of a replica [B] (the largest pipeline stage)."""
    mapping = Parallelism(tp=serving.tp, pp=serving.pp, ep=serving.ep, etp=serving.etp)
    dense, expert = stage_params(model, mapping)
    return (dense + expert) * model.precision.bytes("weights")


OPS = (
    "Q_K_V", "Q_mul_K", "A_mul_V", "Wo_proj", "W1_proj", "W2_proj", "Softmax",
    "LayerNorm_MHA", "LayerNorm_FFN", "GeLU", "AllReduce_MHA", "AllReduce_FFN",
)  # fmt: skip
"""Operator names of the per-operator tier (those of LLMCompass, Zhang et al. 2024)."""


def layer_op_times(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    phase: str,
    context=None,
    relax: AbstractRelax = _EXACT,
) -> dict[str, Array]:
    """Per-operator seconds of one layer on one chip, each op a separate kernel.

    The per-operator tier: the layer as unfused kernels (QKV, Q·Kᵀ, softmax, A·V,
    output projection, two MLP GEMMs, layer norms, activation, two all-reduces), each
    costed by its own roofline (`gemm_time` / `memory_time` / `collective_time`) plus
    one `kernel_overhead`. Prefill runs B·S_in tokens with S_in keys; decode runs B
    tokens against `context` cached keys (default S_in).

    Args:
        cluster: the hardware.
        model: the workload (dense; MoE layers are costed by `prefill`/`decode_step`).
        serving: TP degree, batch and lengths.
        phase: "prefill" or "decode".
        context: keys in the cache for decode [tokens].
        relax: Exact() or Smooth(p).
    """
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase={phase!r} must be prefill or decode")
    chip = cluster.chip
    t, b = serving.tp, model.precision.bytes("activations")
    q = serving.input_len if phase == "prefill" else 1.0
    keys = serving.input_len if context is None or phase == "prefill" else context
    tokens = serving.batch * q
    d, n, h, f = model.d_model, model.n_heads / t, model.head_dim, model.d_ff
    kv = jnp.maximum(model.n_kv_heads / t, 1.0)
    peak = chip.peak_flops("bf16")

    def gemm(m, k, nn, count=1.0):
        wb = model.precision.bytes("weights")
        return gemm_time(chip, m, k, nn, count=count, peak=peak, nbytes=b,
                         weight_nbytes=wb, relax=relax)  # fmt: skip

    scores = serving.batch * n * q * keys  # elements of the score matrix
    up = model.mlp_mats - 1.0
    act = memory_time(chip, tokens * f / t * (up + 1.0) * b)
    norm = memory_time(chip, 2.0 * tokens * d * b)
    ar = collective_time(cluster, "all_reduce", tokens * d * b, t, 1.0, relax=relax)
    times = {
        "Q_K_V": gemm(tokens, d, (n + 2.0 * kv) * h),
        "Q_mul_K": gemm(q, h, keys, count=serving.batch * n),
        "A_mul_V": gemm(q, keys, h, count=serving.batch * n),
        "Wo_proj": gemm(tokens, n * h, d),
        "W1_proj": gemm(tokens, d, up * f / t),
        "W2_proj": gemm(tokens, f / t, d),
        "Softmax": memory_time(chip, 2.0 * scores * b),
        "LayerNorm_MHA": norm,
        "LayerNorm_FFN": norm,
        "GeLU": act,
        "AllReduce_MHA": ar,
        "AllReduce_FFN": ar,
    }
    return {k: v + chip.kernel_overhead for k, v in times.items()}
