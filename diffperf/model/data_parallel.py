"""Data-parallel gradient/parameter collectives, pipeline sends and the optimizer step.

Parameters on one chip of a stage (the stage with the embedding or the output layer):
    P_dense = (L/p)·(non-expert weights of a layer, `nonexpert_layer_params`)/t
              + V·D/t·(1 + u/p)        (u = 1 for untied embeddings)
    P_expert = (L/p)·f_moe·E·expert / (ep·etp)
Dense gradients are reduced over the dp·cp group (stride t); expert gradients over the
expert-data-parallel group of tp·cp·dp/(ep·etp) ranks (stride ep·etp).

ZeRO (Rajbhandari et al. 2020): stage 0 all-reduces gradients; stages 1–2 reduce-scatter
gradients and all-gather updated bf16 parameters; stage 3 / FSDP all-gathers parameters
before each forward and backward and reduce-scatters gradients, every microbatch.
With hybrid sharding (`Parallelism.shard_group` s < dp·cp: HSDP, MaxText's ICI fsdp
axis with DCN data parallelism) the gathers and reduce-scatters run over the s ranks of
a shard group (stride t) and the 1/s gradient shard is all-reduced once per step over
the dp·cp/s replicas (stride t·s); expert parameters shard over their whole group.
Only trained parameters move gradients and updates (`Parallelism.trainable` of the base
weights plus LoRA adapters, `model.finetune`); ZeRO-3 still gathers frozen weights.
"""

import jax.numpy as jnp

from ..core.relax import AbstractRelax
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism
from ..specs.workload import Transformer
from .collectives import collective_time, p2p_time
from .finetune import lora_stage_params
from .ops import memory_time

__all__ = [
    "stage_params",
    "zero_shards",
    "dp_collectives",
    "dp_exposed",
    "optimizer_time",
    "p2p_exposed",
]

ADAM_BYTES = 30.0
"""HBM bytes per parameter of an Adam step: read fp32 param, grad, m, v (16 B), write
param, m, v (12 B) and the bf16 copy (2 B)."""


def stage_params(model: Transformer, mapping: Parallelism):
    """(P_dense, P_expert): parameters on one chip of the largest stage [elements]."""
    m, t = model, mapping.tp
    per_layer = m.nonexpert_layer_params()
    untied = 0.0 if m.tied_embeddings else 1.0
    emb = m.vocab_size * m.d_model / t * (1.0 + untied / mapping.pp)
    # multi-token-prediction modules sit with the output layer (same stage)
    mtp_expert = jnp.where(
        m.n_experts > 0, m.n_mtp_layers * m.n_experts * m.expert_params(), 0.0
    )
    mtp_dense = m.mtp_params() - mtp_expert
    dense = (m.n_layers / mapping.pp * per_layer + mtp_dense) / t + emb
    expert = m.n_layers / mapping.pp * m.moe_fraction * m.n_experts * m.expert_params()
    expert = expert + mtp_expert
    return dense, expert / (mapping.ep * mapping.etp)


def param_groups(mapping: Parallelism):
    """(n, stride) of the dense and expert gradient-reduction groups."""
    t, c, d = mapping.tp, mapping.cp, mapping.dp
    n_expert = t * c * d / (mapping.ep * mapping.etp)
    return (d * c, t), (n_expert, mapping.ep * mapping.etp)


def zero_shards(mapping: Parallelism):
    """(s_dense, s_expert): ranks a ZeRO stage shards dense / expert parameters over."""
    (n_e, _) = param_groups(mapping)[1]
    return mapping.zero_group(), n_e


def dp_collectives(model, mapping: Parallelism):
    """The data-parallel collectives of one step: (kind, bytes, n, stride, count).

    Per ZeRO stage (module docstring), for the dense and the expert parameters.
    """
    prec = model.precision
    b_g, b_w = prec.bytes("grads"), prec.bytes("weights")
    adapters = lora_stage_params(model, mapping)
    out = []
    groups = param_groups(mapping)
    for i, (params, (n, stride), s) in enumerate(
        zip(stage_params(model, mapping), groups, zero_shards(mapping), strict=True)
    ):
        extra = adapters if i == 0 else 0.0  # adapters sit with the dense weights
        trained = mapping.trainable * params + extra
        grads = trained * b_g
        if mapping.zero == 0:
            out.append(("all_reduce", grads, n, stride, 1.0))
            continue
        replicas = ("all_reduce", grads / s, n / s, stride * s, 1.0)
        if mapping.zero in (1, 2):
            out.append(("reduce_scatter", grads, s, stride, 1.0))
            out.append(replicas)
            out.append(("all_gather", trained * b_w, s, stride, 1.0))
        else:
            m = mapping.microbatches()
            out.append(("all_gather", (params + extra) * b_w, s, stride, 2.0 * m))
            out.append(("reduce_scatter", grads, s, stride, m))
            out.append(replicas)
    return out


def dp_exposed(
    cluster: Cluster,
    model,
    mapping: Parallelism,
    shape,
    t_layers,
    ls,
    *,
    relax: AbstractRelax,
):
    """Exposed and hidden seconds of the data-parallel collectives of one step.

    T_comm is computed per ZeRO stage (module docstring). It overlaps with the backward
    of the last microbatch (and, for parameter all-gathers, the forward of the first):
    window = η_dp · (2/3)·t_layers, or all compute of the step for ZeRO-3. The last
    layer's bucket (T_comm / layers per stage) can never overlap.
        exposed = max(T_comm·(1 − 1/Ls), window) − window + T_comm/Ls  [s]
    """
    comm = 0.0
    for kind, nbytes, n, stride, count in dp_collectives(model, mapping):
        t = collective_time(cluster, kind, nbytes, n, stride, relax=relax)
        comm = comm + count * t
    if mapping.zero == 3:
        window = t_layers * mapping.microbatches()
    else:
        window = t_layers * (2.0 / 3.0 + (1.0 / 3.0 if mapping.zero else 0.0))
    window = mapping.dp_overlap * window
    tail = comm / jnp.maximum(ls, 1.0)
    exposed = relax.exceed(comm - tail, window) + tail
    return exposed, comm - exposed


def optimizer_time(cluster: Cluster, model: Transformer, mapping: Parallelism):
    """Adam update of the chip's trained parameter shard, HBM-bound [s].

    T = P_local · 30 B / (β·η), P_local the trained parameters (τ·P plus LoRA
    adapters), sharded over the ZeRO group (expert params over their expert-data-
    parallel group) for ZeRO ≥ 1.
    """
    dense, expert = stage_params(model, mapping)
    dense = mapping.trainable * dense + lora_stage_params(model, mapping)
    expert = mapping.trainable * expert
    if mapping.zero >= 1:
        s_d, s_e = zero_shards(mapping)
        dense, expert = dense / s_d, expert / s_e
    return memory_time(cluster.chip, (dense + expert) * ADAM_BYTES)


def p2p_exposed(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    shape,
    *,
    relax: AbstractRelax,
):
    """Pipeline sends on the critical path [s].

        1F1B (v = 1):        2·(m + p − 1)·(α + S/W)
        interleaved (v > 1): 2·(p − 1)·v·(α + S/W)   (steady-state sends overlap
    compute) and 0 without pipelining. One activation of S = T·D·b bytes (/t with
    sequence parallelism) crosses a stage boundary forward and its gradient backward;
    the neighbour stage is tp·cp·dp ranks away. Megatron-LM overlaps p2p with compute
    in the interleaved schedule (`overlap_p2p_comm`), not in plain 1F1B.
    """
    s = shape
    nbytes = s.sp_tokens * model.d_model * s.b_act
    stride = mapping.tp * mapping.cp * mapping.dp
    hop = p2p_time(cluster, nbytes, stride, relax=relax)
    m, p, v = mapping.microbatches(), mapping.pp, mapping.vpp
    steady = m * (1.0 - relax.step(v - 1.5))
    return 2.0 * ((p - 1.0) * v + steady) * hop * relax.min(p - 1.0, 1.0)
