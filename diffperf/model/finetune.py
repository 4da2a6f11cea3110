"""Fine-tuning: LoRA adapters and frozen base weights (`Parallelism.trainable`).

A frozen base weight still runs its forward GEMM and, to pass gradients down, its
input-gradient GEMM (dgrad), but not its weight-gradient GEMM (wgrad); it has no
gradient, no optimizer state and no data-parallel gradient reduction. With a fraction
τ = `trainable` of the base weights trained, per layer:

    base GEMM time  = (2 + τ) · T_fwd          (forward, dgrad, τ·wgrad)
    gradients       = τ · P · b_g,  Adam state = τ · P · 12 B

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds to
each targeted projection W (K × N) a trainable pair A (K × r), B (r × N): per token
2·r·(K + N) FLOP forward, three times that with its dgrad and wgrad, and r·(K + N)
parameters that are trained in full (weights, gradients, Adam state) and reduced over
data parallelism. The adapter GEMMs are costed like any GEMM (`ops.gemm_time`) at the
per-chip shapes of their base projection (K and N as sharded by tensor parallelism),
and keep their r-wide intermediate (T·r elements per target) for the backward pass.

Targets are GEMM names of the representative layer (`layer._gemm_shapes`): "qkv",
"attn_out", "mlp_up", "mlp_down" (MLPerf's Llama 2 70B LoRA reference adapts
qkv_proj and o_proj at r = 16; NeMo 1.x's default is attention_qkv at r = 32).
Not modelled: the output layer's wgrad is still charged when the base is frozen (a
~1% overestimate of the step for large vocabularies), and activations keep the
full-training footprint (a framework may drop inputs that only frozen weights'
gradients would need).
"""

import jax.numpy as jnp
from jaxtyping import Array

from ..core.relax import AbstractRelax
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism
from ..specs.workload import Transformer
from .ops import gemm_time

__all__ = ["lora_layer_params", "lora_stage_params", "lora_forward", "lora_stored"]


def _target_dims(model: Transformer, name: str):
    """(K, N, share of layers) of a target projection of the full (unsharded) model."""
    m = model
    d, n, h = m.d_model, m.n_heads, m.head_dim
    a, dense = m.attention_fraction, m.dense_mlp_fraction
    up = m.mlp_mats - 1.0
    return {
        "qkv": (d, (n + 2.0 * m.n_kv_heads) * h, a),
        "attn_out": (n * h, d, a),
        "mlp_up": (d, up * m.d_ff, dense),
        "mlp_down": (m.d_ff, d, dense),
    }[name]


def lora_layer_params(model: Transformer, mapping: Parallelism) -> Array:
    """Adapter parameters of one (mean) layer [elements]: Σ_targets share·r·(K + N)."""
    total = jnp.zeros(())
    for name in mapping.lora_targets:
        k, n, share = _target_dims(model, name)
        total = total + share * mapping.lora_rank * (k + n)
    return total


def lora_stored(model: Transformer, mapping: Parallelism) -> Array:
    """Adapter intermediates kept for the backward pass [elements per token per layer].

    Σ_targets share·r: the r-wide output of each A (not sharded by tensor parallelism).
    """
    total = jnp.zeros(())
    for name in mapping.lora_targets:
        total = total + _target_dims(model, name)[2] * mapping.lora_rank
    return total


def lora_stage_params(model: Transformer, mapping: Parallelism) -> Array:
    """Adapter parameters on one chip of a stage [elements]: (L/p)·layer / t.

    The adapters follow their base projection's tensor-parallel split (one of A or B
    is sharded; the other, r-wide, is small), so the chip holds about 1/t of them.
    """
    return model.n_layers / mapping.pp * lora_layer_params(model, mapping) / mapping.tp


def lora_forward(
    cluster: Cluster,
    model: Transformer,
    lay: dict,
    mapping: Parallelism,
    *,
    relax: AbstractRelax,
) -> dict:
    """Forward time [s], FLOP and kernels of one layer's adapters per microbatch.

    For each target with per-chip shape (M, K, N) (from `lay["gemm_ops"]`): the
    GEMMs (M × K)·(K × r) and (M × r)·(r × N), weighted by the share of layers that
    have the projection. Zero for a mapping without LoRA targets.
    """
    zero = jnp.zeros(())
    if not mapping.lora_targets:
        return dict(time=zero, flops=zero, kernels=0.0)
    ops = lay["gemm_ops"]
    mm, kk, nn = ops["dims"]
    chip = cluster.chip
    peak = chip.peak_flops("bf16")  # adapters run in the activation dtype
    r = mapping.lora_rank
    time, flops = zero, zero
    for name in mapping.lora_targets:
        i = ops["names"].index(name)
        m, k, n, share = mm[i], kk[i], nn[i], ops["share"][i]
        t = gemm_time(chip, m, k, r, peak=peak, nbytes=2.0, relax=relax)
        t = t + gemm_time(chip, m, r, n, peak=peak, nbytes=2.0, relax=relax)
        time = time + share * t
        flops = flops + share * 2.0 * m * r * (k + n)
    kernels = 2.0 * len(mapping.lora_targets)
    return dict(time=time, flops=flops, kernels=kernels)
