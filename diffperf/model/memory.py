"""HBM footprint of a training job on its busiest chip (the first pipeline stage).

    M = weights + gradients + optimizer state + activations + logits + reserved  [B]

Weights b_w·P (fp8/fp4 training keeps fp8/fp4 primary weights), gradients b_g·P, Adam
state 12·P (fp32 master, m, v), with P the chip's parameters (`stage_params`) divided
by the ZeRO group (`Parallelism.zero_group`) per ZeRO stage: 1 shards the optimizer
state, 2 also gradients, 3 also weights. Fine-tuning (`model.finetune`): gradients and
optimizer state cover only the trained parameters, τ·P plus LoRA adapters (whose
weights are added to P), and each adapter keeps its r-wide intermediate, r elements
per token and target.

Activations per layer per microbatch follow Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models", eqs. 1–5), generalized to GQA,
gated MLPs and MoE, with fused attention (no s²-sized score matrix stored) and no
dropout masks. Per token, in elements (up = 2 for gated MLPs, 1 for plain):
    attention: D (norm output) + (N + 2K)·H (Q, K, V) + N·H (output)
    Mamba-2:   D (norm output) + in_proj output (2·d_in + 2·G·Ns + Hs) + scan output
               d_in; the conv and gated-norm outputs are recomputed (mamba_ssm's
               `mamba_split_conv1d_scan_combined`, checkpoint_lvl 1, which
               Megatron-core's MambaMixer uses)
    MLP:       D (norm output) + up·F (up/gate output) + F (activation output)
    norms:     D per block (inputs)
with each block weighted by its share of layers (hybrid models) and MoE F = k·load·Fe
+ shared width.
The D-sized terms are sharded by t under sequence parallelism, the others by t always.
No recompute stores all of it; selective recompute stores the inputs of its modules
instead of their outputs (`_activation_bytes_per_token`; with fused attention the
default core_attn saves nothing more); full recompute stores only the layer input
D·b. Without fused attention, no recompute also stores the softmax output, dropout
mask and dropout output: (2b + 1)·N·S bytes per token (Korthikanti's 5·a·s/h term).
The first stage of a 1F1B pipeline holds min(p, m) microbatches in flight, times
(1 + (p − 1)/(p·v)) for the interleaved schedule (Narayanan et al. 2021).
"""

from jaxtyping import Array

from ..core.relax import AbstractRelax
from ..specs.hardware import Chip
from ..specs.mapping import (
    Parallelism,
    recomputed_modules,
    resolved_attention_kernel,
)
from ..specs.workload import Transformer
from .data_parallel import stage_params, zero_shards
from .finetune import lora_stage_params, lora_stored
from .layer import LOW_PRECISION

__all__ = ["train_memory", "train_memory_parts", "microbatches_in_flight"]

ADAM_STATE_BYTES = 12.0
"""fp32 master weights, first and second moments [B per parameter]."""


def microbatches_in_flight(mapping: Parallelism, *, relax: AbstractRelax) -> Array:
    """Microbatches whose activations the first stage holds at its peak.

    1F1B: min(p, m) (p − 1 warm-up forwards plus the one in flight); the interleaved
    schedule holds (1 + (p − 1)/(p·v)) times as many (Narayanan et al. 2021, §2.2.2).
    """
    p, v, m = mapping.pp, mapping.vpp, mapping.microbatches()
    return relax.min(p, m) * (1.0 + (p - 1.0) / (p * v) * relax.step(v - 1.5))


def _activation_bytes_per_token(
    model: Transformer, mapping: Parallelism, recompute: str
) -> Array:
    """Bytes stored per token per layer for the backward pass (see module docstring).

    GEMM inputs (norm outputs, attention output, MLP activation output) are kept in the
    GEMM dtype when it is fp8/fp4 (Transformer Engine saves the cast copy), else in the
    activation dtype. The selective recompute modules of `recompute`
    (`specs.mapping.recomputed_modules`) store their inputs only (per token):
        layernorm:   − sublayers·D·b / sp   (the norm outputs; with fp8/fp4 GEMMs the
                     GEMM keeps its own quantized copy, so nothing is saved)
        moe_act:     − f_moe·k·load·Fe·b_in / t   (the routed experts' activation
                     output, the input of their down GEMM)
        mla_up_proj: (N + 2K)·H·b → (q_lora + c + Hr)·b / t   (MLA's up-projected Q,
                     K, V replaced by the latents they are computed from)
        mlp:         − f_dense·F·(up·b + b_in) / t   (the dense MLP's intermediates)
        core_attn:   the unfused score matrices are not stored
    """
    m, t = model, mapping.tp
    modules = recomputed_modules(mapping) if recompute == mapping.recompute else ()
    b = model.precision.bytes("activations")
    low = model.precision.math in LOW_PRECISION
    b_in = 1.0 if low else b  # saved GEMM inputs
    d, n, k, h = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim
    sp = t if mapping.sequence_parallel else 1.0
    if recompute == "full":
        return b * d / sp
    up = m.mlp_mats - 1.0
    f, a, f_ssm = m.moe_fraction, m.attention_fraction, m.ssm_fraction
    routed = m.d_ff_expert * m.top_k * m.expert_load + m.shared_width
    ffn = m.dense_mlp_fraction * m.d_ff + f * routed
    # One norm input (b) and one norm output = GEMM input (b_in) per block, SP-sharded;
    # MoE layers also keep the k routed copies of the MLP input (at the latent width).
    norm_out = 0.0 if "layernorm" in modules and not low else b_in
    d_terms = (b + norm_out) * m.sublayers * d / sp + f * m.top_k * (
        m.expert_input_dim * b_in / t
    )
    qkv = (n + 2.0 * k) * h
    if "mla_up_proj" in modules and m.attention == "mla":
        qkv = m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim
    attn = qkv * b + n * h * b_in
    # Mamba-2's fused memory-efficient path keeps the in_proj output and the scan
    # output and recomputes the conv and the gated norm in the backward pass
    ssm = (m.ssm_in_proj_width() + m.ssm_inner) * b
    other = (a * attn + f_ssm * ssm + ffn * (up * b + b_in)) / t
    if "moe_act" in modules:
        other = other - f * m.d_ff_expert * m.top_k * m.expert_load * b_in / t
    if "mlp" in modules:
        other = other - m.dense_mlp_fraction * m.d_ff * (up * b + b_in) / t
    other = other + lora_stored(model, mapping) * b  # LoRA's r-wide intermediates
    unfused = resolved_attention_kernel(mapping) == "unfused"
    if unfused and recompute != "full" and "core_attn" not in modules:
        # stored softmax output, dropout mask and output: (2b + 1)·N·S per token
        other = other + a * (2.0 * b + 1.0) * n * mapping.tokens(model) / t
    return d_terms + other


def train_memory(
    model: Transformer, mapping: Parallelism, chip: Chip, *, relax: AbstractRelax
) -> Array:
    """Peak HBM bytes on the busiest chip of a training job (module docstring) [B].

    The offloaded fractions of optimizer state and activations
    (`Parallelism.offload_*`) live in the memory tier instead.
    """
    parts = train_memory_parts(model, mapping, chip, relax=relax)
    parts["optimizer"] = parts["optimizer"] * (1.0 - mapping.offload_optimizer)
    parts["activations"] = parts["activations"] * (1.0 - mapping.offload_activations)
    return sum(parts.values())


def train_memory_parts(
    model: Transformer, mapping: Parallelism, chip: Chip, *, relax: AbstractRelax
) -> dict[str, Array]:
    """Bytes by kind on the busiest chip, before offload (module docstring) [B]."""
    prec = model.precision
    dense, expert = stage_params(model, mapping)
    adapters = lora_stage_params(model, mapping)
    n_d, n_e = zero_shards(mapping)
    b_w = prec.bytes("weights")
    b_g = prec.bytes("grads")
    z = mapping.zero
    tau = mapping.trainable  # frozen weights have no gradient or optimizer state

    def shard(params, n, stage):
        return params / n if z >= stage else params

    weights = b_w * (shard(dense + adapters, n_d, 3) + shard(expert, n_e, 3))
    trained_d, trained_e = tau * dense + adapters, tau * expert
    grads = b_g * (shard(trained_d, n_d, 2) + shard(trained_e, n_e, 2))
    optim = ADAM_STATE_BYTES * (shard(trained_d, n_d, 1) + shard(trained_e, n_e, 1))

    seq = mapping.tokens(model)
    tokens = mapping.microbatch * seq / mapping.cp
    p = mapping.pp
    in_flight = microbatches_in_flight(mapping, relax=relax)
    per_layer = tokens * _activation_bytes_per_token(model, mapping, mapping.recompute)
    acts = model.n_layers / p * per_layer * in_flight
    if mapping.recompute == "full":  # one layer's full activations during recompute
        acts = acts + tokens * _activation_bytes_per_token(model, mapping, "none")
    # the logits in the activation dtype and their fp32 gradient (4 B; Megatron's
    # vocab-parallel cross entropy computes in fp32)
    b_logit = model.precision.bytes("activations") + 4.0
    logits = tokens * model.vocab_size / mapping.tp * b_logit
    return dict(
        weights=weights,
        gradients=grads,
        optimizer=optim,
        activations=acts,
        logits=logits,
        reserved=chip.reserved_memory,
    )
