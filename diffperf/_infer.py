"""The serving model: prefill, decode steps, KV cache and serving metrics.

One replica of tp·pp chips serves a batch of B sequences with S_in prompt tokens and
S_out generated tokens. Each phase is a forward pass of the representative layer
(`_layer.py`) times L, on one chip:

  prefill: T = B·S_in tokens through the GEMMs, causal attention over S_in keys
  decode:  T = B tokens (one per sequence), attention over the whole context, so each
           step reads the weights once and the KV cache of every sequence

    t_phase = max(t_gpu, t_host) + t_serve
    t_gpu   = L·(GEMM + attention + elementwise + kernels·κ + TP/EP collectives)
              + logits + (p − 1)·p2p                                              [s]
    t_host  = L·ops·δ (CPU launch time; 0 when the step is a captured graph)     [s]

with κ the per-kernel GPU cost, δ the CPU time per launched op and t_serve the fixed
per-step cost of the serving engine (scheduling, sampling, detokenization; a `Host`
leaf). With small batches the fixed costs dominate decode: Llama-2-70B decodes at about
the same time per token at TP4 and TP8 on DGX-A100 (Splitwise), which a pure roofline
misses by ~2×.

Serving metrics (static batch, steady state):
  TTFT = t_prefill;  TPOT = t_decode at the mean context S_in + S_out/2;
  e2e = TTFT + (S_out − 1)·TPOT;  output tokens/s = B·S_out / e2e (per replica).
Memory per chip: weights/(t·p) + KV cache B·(S_in + S_out)·L/p·kv/t (attention
layers) + B·Mamba-2 state (constant per sequence, SSM layers) + prefill
activations of one prompt (4·S_in·D·2 B; engines prefill prompts one chunk at a time)
+ reserved. max_batch is the largest batch whose KV caches fit beside the rest.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._collectives import p2p_time
from ._dp import stage_params
from ._fidelity import Fidelity, tier
from ._hardware import Cluster
from ._layer import LayerShape, layer_comm, layer_forward
from ._mapping import Parallelism, Serving, check_serving, resolved_attention_kernel
from ._ops import gemm_time, memory_time
from ._relax import AbstractRelax, Exact
from ._workload import Transformer

__all__ = ["PhaseBreakdown", "ServeResult", "prefill", "decode_step", "serve"]

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


class ServeResult(eqx.Module):
    """Serving metrics of one replica (all SI: s, tokens/s, B)."""

    prefill: PhaseBreakdown
    decode: PhaseBreakdown
    ttft: Array
    tpot: Array
    e2e_latency: Array
    output_tokens_per_s: Array  # per replica
    chips: Array
    memory_per_gpu: Array
    memory_capacity: Array
    max_batch: Array
    kv_bytes_per_token: Array  # per chip, all its layers
    offload_memory: Array  # B per chip of KV cache in the memory tier
    offload_capacity: Array  # B per chip of the memory tier

    @property
    def feasible(self) -> Array:
        """True when weights, KV cache and activations fit in HBM and tier."""
        return (self.memory_per_gpu <= self.memory_capacity) & (
            self.offload_memory <= self.offload_capacity
        )

    @property
    def output_tokens_per_s_per_gpu(self) -> Array:
        """Output tokens/s per chip."""
        return self.output_tokens_per_s / self.chips


def _shape(model, serving, relax, *, q_len, seq, causal) -> LayerShape:
    return LayerShape(
        model,
        relax,
        tp=serving.tp,
        cp=1.0,
        ep=serving.ep,
        etp=serving.etp,
        batch=serving.batch,
        q_len=q_len,
        seq=seq,
        causal=causal,
        sequence_parallel=False,
        flash=resolved_attention_kernel(serving) != "unfused",
        fa2=resolved_attention_kernel(serving) == "fa2",
        weight_bytes=model.precision.bytes("weights"),
    )


def _phase(
    cluster, model, serving, s: LayerShape, relax, attention=None, kv_tokens=None
) -> PhaseBreakdown:
    """One forward pass of the whole model for the tokens of `s` (module docstring).

    `attention`, if given, replaces the attention seconds of all layers (for steps that
    mix decode and prefill tokens, whose attention differs per token class).

    KV offload: the fraction f = `serving.offload_kv` of the KV cache lives in the
    memory tier; the step streams it layer by layer (the KV cache of `kv_tokens`
    tokens, default B·S, read in decode, written in prefill), overlapped with the GPU
    work: kv_offload = max(T_link, T_gpu) − T_gpu with
    T_link = f·kv_tokens·kv_bytes_per_token / W_tier  [s] (FlexGen, Sheng et al. 2023).
    """
    chip, host = cluster.chip, cluster.host
    lay = layer_forward(cluster, model, s, relax)
    com = layer_comm(cluster, model, s, relax, sequence_parallel=False)
    layers = model.n_layers
    b = s.b_act
    # Logits of the last token of each sequence, vocabulary-parallel, then sampling.
    logits = gemm_time(
        chip,
        serving.batch,
        model.d_model,
        model.vocab_size / serving.tp,
        peak=chip.peak_flops("bf16"),
        nbytes=b,
        weight_nbytes=model.precision.bytes("weights"),
        relax=relax,
    )
    head = logits + memory_time(chip, serving.batch * model.vocab_size * 4.0)
    hop = p2p_time(cluster, s.tokens * model.d_model * b, serving.tp, relax=relax)
    gpu = dict(
        matmul=layers * lay["gemm"],
        attention=layers * (lay["attn"] + lay["ssm"])
        if attention is None
        else attention + layers * lay["ssm"],
        elementwise=layers * lay["elem"],
        kernel_overhead=layers * lay["kernels"] * chip.kernel_overhead,
        tp_comm=layers * com["tp"] / 2.0,  # forward half of fwd + bwd
        ep_comm=layers * com["ep"] / 2.0,
        pp_p2p=(serving.pp - 1.0) * hop,
        head=head,
    )
    t_gpu = sum(gpu.values())
    ops = 0.0 if serving.graphs else layers * lay["host_ops"]
    t_host = ops * host.dispatch_overhead
    if kv_tokens is None:
        kv_tokens = serving.batch * s.seq
    kv = serving.offload_kv * kv_tokens * kv_bytes_per_token(model, serving)
    t_link = kv / cluster.offload_tier(relax).bandwidth
    return PhaseBreakdown(
        **gpu,
        host_stall=relax.exceed(t_host, t_gpu),
        kv_offload=relax.exceed(t_link, t_gpu),
        step_overhead=host.serve_overhead,
    )


def prefill(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> PhaseBreakdown:
    """Prefill of B prompts of S_in tokens on one replica [s] (module docstring).

    `fidelity` picks the tier ("detailed" or "roofline", see `diffperf._fidelity`).
    """
    cluster, _ = tier(fidelity, cluster)
    s = _shape(
        model, serving, relax, q_len=serving.input_len, seq=serving.input_len,
        causal=True,
    )  # fmt: skip
    return _phase(cluster, model, serving, s, relax)


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
        fidelity: "detailed" (default) or "roofline" (`diffperf._fidelity`).
    """
    cluster, _ = tier(fidelity, cluster)
    if context is None:
        context = serving.input_len + serving.output_len / 2.0
    s = _shape(model, serving, relax, q_len=1.0, seq=context, causal=False)
    return _phase(cluster, model, serving, s, relax)


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


def weight_bytes(model: Transformer, serving: Serving) -> Array:
    """Weights held by one chip of a replica [B] (the largest pipeline stage)."""
    mapping = Parallelism(tp=serving.tp, pp=serving.pp, ep=serving.ep, etp=serving.etp)
    dense, expert = stage_params(model, mapping)
    return (dense + expert) * model.precision.bytes("weights")


def serve(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> ServeResult:
    """TTFT, TPOT, end-to-end latency, throughput, memory and max batch of a replica.

    `fidelity` picks the tier ("detailed" or "roofline", see `diffperf._fidelity`).

    Raises:
        ValueError: a concrete serving mapping that does not fit the model.
    """
    check_serving(model, serving)
    cluster, _ = tier(fidelity, cluster)
    pre = prefill(cluster, model, serving, relax=relax)
    dec = decode_step(cluster, model, serving, relax=relax)
    ttft, tpot = pre.total, dec.total
    e2e = ttft + (serving.output_len - 1.0) * tpot
    chip = cluster.chip
    weights = weight_bytes(model, serving)
    kv_token = kv_bytes_per_token(model, serving)
    context = serving.input_len + serving.output_len
    # prefill activations alive at once: a few D-wide tensors of the prompts in flight
    act_one = 4.0 * serving.input_len * model.d_model * 2.0
    free = chip.hbm_capacity - chip.reserved_memory - weights - act_one
    per_seq = kv_token * context * (1.0 - serving.offload_kv) + ssm_state_bytes(
        model, serving
    )  # in HBM
    memory = weights + serving.batch * per_seq + act_one + chip.reserved_memory
    tier_capacity = cluster.offload_tier(relax).capacity  # the offloaded share's limit
    off_seq = kv_token * context * serving.offload_kv
    return ServeResult(
        prefill=pre,
        decode=dec,
        ttft=ttft,
        tpot=tpot,
        e2e_latency=e2e,
        output_tokens_per_s=serving.batch * serving.output_len / e2e,
        chips=serving.chips,
        memory_per_gpu=memory,
        memory_capacity=chip.hbm_capacity,
        max_batch=jnp.floor(
            jnp.minimum(
                jnp.maximum(free, 0.0) / jnp.maximum(per_seq, 1e-30),
                tier_capacity / jnp.maximum(off_seq, 1e-30),
            )
        ),
        offload_memory=serving.batch * off_seq,
        offload_capacity=tier_capacity,
        kv_bytes_per_token=kv_token,
    )


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
    from ._collectives import collective_time

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
