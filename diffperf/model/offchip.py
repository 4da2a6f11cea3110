"""The system around the chip in a training step: NIC demand, offload, input pipeline.

NIC demand (bytes a chip must move over its NICs per step, then per second): the
scale-out part of every collective of the step (`model.collectives.scale_out_bytes` and
friends), per microbatch and layer as `model.layer.layer_comm` issues them, plus the
data-parallel collectives (`model.data_parallel.dp_collectives`) and the pipeline sends:
    N = m·L/p·(N_tp + N_cp + N_ep) + N_dp + 2·m·N_pp            [B per chip per step]
    demand = N / T_step                                         [B/s per chip]
It is zero when every group fits in one scale-up domain; above the chip's scale-out
bandwidth (`Cluster.scale_out_bandwidth`) it is the network that binds. Serving
(`phase_nic_bytes`) counts the forward half of the same traffic per engine step.

Offload (ZeRO-Offload, Ren et al. 2021; Megatron-LM activation offloading) over the
cluster's `MemoryTier` with bandwidth W_h per chip per direction and latency α_h:
    optimizer: the offloaded fraction f_o of the 12 B/param Adam state moves in before
        the update and out after it: T_o = 2·(α_h + f_o·M_opt / W_h), prefetched during
        the last microbatch's backward (2/3·t_mb) and written back during the next
        step's first forward (1/3·t_mb);
    activations: f_a of a microbatch's stored activations M_act moves out during its
        forward and back during its backward: T_a = α_h + f_a·M_act / W_h each way,
        hidden behind t_mb/3 and 2·t_mb/3 respectively, m times per step.
    exposed = Σ max(T, window) − window                                      [s]
The tier's link is assumed free of other traffic (NIC traffic shares a chip's PCIe
link; `Host.nic_bandwidth` does not subtract offload traffic).

Input pipeline: the node's CPUs prepare the next batches while the GPUs run the step
(`Host.input_time`); the part that compute does not cover stalls the step:
    exposed = max(T_in, T_rest) − T_rest                                     [s]
"""

import jax.numpy as jnp
from jaxtyping import Array

from ..core.checks import concrete
from ..core.relax import AbstractRelax
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism
from ..specs.workload import Transformer
from .collectives import dispatch_scale_out_bytes, p2p_scale_out_bytes, scale_out_bytes
from .data_parallel import dp_collectives
from .layer import LayerShape
from .memory import train_memory_parts

__all__ = ["train_nic_bytes", "phase_nic_bytes", "offload_exposed", "input_exposed"]


def _layer_nic_bytes(cluster: Cluster, model: Transformer, s: LayerShape, relax, sp):
    """NIC bytes of one layer's TP, CP and EP traffic per microbatch (fwd + bwd)."""
    buf = s.tokens * model.d_model * s.b_act
    kinds = ("all_gather", "reduce_scatter") if sp else ("all_reduce",)
    one = sum(scale_out_bytes(cluster, k, buf, s.t, 1.0, relax=relax) for k in kinds)
    tp = 2.0 * (2.0 * (1.0 - s.moe) + s.moe) * one
    kv_elems = (
        model.n_heads * (s.h_qk + s.h_v)
        if model.attention == "mla"
        else 2.0 * model.n_kv_heads * model.head_dim
    )
    kv = s.tokens * kv_elems / s.t * s.b_act
    cp = 3.0 * (s.c - 1.0) * p2p_scale_out_bytes(cluster, kv, s.t, relax=relax)
    token_bytes = s.tokens / s.t * model.d_model * s.b_act
    ep = (
        4.0
        * s.moe
        * dispatch_scale_out_bytes(
            cluster, token_bytes, model.top_k, s.ep, s.etp, relax=relax
        )
    )
    return tp + cp + ep


def train_nic_bytes(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    s: LayerShape,
    *,
    relax: AbstractRelax,
) -> Array:
    """Bytes one chip sends over its NICs per training step (module docstring) [B]."""
    m = mapping.microbatches()
    ls = model.n_layers / mapping.pp
    layers = (
        m * ls * _layer_nic_bytes(cluster, model, s, relax, mapping.sequence_parallel)
    )
    dp = sum(
        count * scale_out_bytes(cluster, kind, nbytes, n, stride, relax=relax)
        for kind, nbytes, n, stride, count in dp_collectives(model, mapping)
    )
    act = s.sp_tokens * model.d_model * s.b_act
    stride = mapping.tp * mapping.cp * mapping.dp
    pp = 2.0 * m * p2p_scale_out_bytes(cluster, act, stride, relax=relax)
    return layers + dp + pp * relax.min(mapping.pp - 1.0, 1.0)


def phase_nic_bytes(
    cluster: Cluster, model: Transformer, serving, s: LayerShape, *, relax
) -> Array:
    """Bytes one chip sends over its NICs in one inference forward pass [B].

    The forward half of each layer's TP all-reduces and EP dispatch + combine, and
    the chip's share (p − 1)/p of the pipeline sends of the step's activations.
    """
    layers = model.n_layers * _layer_nic_bytes(cluster, model, s, relax, False) / 2.0
    act = s.tokens * model.d_model * s.b_act
    hop = p2p_scale_out_bytes(cluster, act, serving.tp, relax=relax)
    return layers + (serving.pp - 1.0) / serving.pp * hop


def offload_exposed(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    t_mb,
    *,
    relax: AbstractRelax,
):
    """(exposed s, hidden s, offloaded B per chip) of optimizer/activation offload."""
    f_o, f_a = mapping.offload_optimizer, mapping.offload_activations
    if concrete(f_o) == 0.0 and concrete(f_a) == 0.0:  # nothing offloaded: all zero
        zero = jnp.zeros(())
        return zero, zero, zero
    tier = cluster.offload_tier(relax)
    parts = train_memory_parts(model, mapping, cluster.chip, relax=relax)
    m, p, v = mapping.microbatches(), mapping.pp, mapping.vpp
    opt = f_o * parts["optimizer"]
    t_opt = tier.latency + opt / tier.bandwidth  # each way
    # activations of one microbatch on the busiest stage (parts hold min(p, m) of them)
    in_flight = relax.min(p, m) * (1.0 + (p - 1.0) / (p * v) * relax.step(v - 1.5))
    act = f_a * parts["activations"] / in_flight
    # the per-transfer latency vanishes with the fraction (exactly 0 at f = 0)
    t_act = tier.latency * f_a / (f_a + 1e-6) + act / tier.bandwidth
    t_opt = t_opt * f_o / (f_o + 1e-6)
    exposed = (
        relax.exceed(t_opt, 2.0 * t_mb / 3.0)
        + relax.exceed(t_opt, t_mb / 3.0)
        + m * (relax.exceed(t_act, t_mb / 3.0) + relax.exceed(t_act, 2.0 * t_mb / 3.0))
    )
    hidden = 2.0 * t_opt + 2.0 * m * t_act - exposed
    return exposed, hidden, opt + f_a * parts["activations"]


def input_exposed(cluster: Cluster, tokens_per_chip, t_rest, *, relax: AbstractRelax):
    """Input-pipeline seconds a step waits for: max(T_in, T_rest) − T_rest [s]."""
    if concrete(cluster.host.cpu_time_per_token) == 0.0:  # no input cost modelled
        return jnp.zeros(())
    return relax.exceed(cluster.host.input_time(tokens_per_chip), t_rest)
