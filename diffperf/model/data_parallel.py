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
from .comm import Collective, comm_time, instance_time
from .finetune import lora_stage_params
from .layer import PASS_FACTORS
from .ops import memory_time

__all__ = [
    "stage_params",
    "param_groups",
    "zero_shards",
    "dp_collectives",
    "pp_collectives",
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


def dp_collectives(model, mapping: Parallelism) -> list[Collective]:
    """The data-parallel collectives of one step, as `Collective` records.

    Per ZeRO stage (module docstring), for the dense and the expert parameters; counts
    per step; `overlap` is the mapping's `dp_overlap`.
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
            calls = [("all_reduce", grads, n, stride, 1.0)]
        else:
            replicas = ("all_reduce", grads / s, n / s, stride * s, 1.0)
            if mapping.zero in (1, 2):
                calls = [
                    ("reduce_scatter", grads, s, stride, 1.0),
                    replicas,
                    ("all_gather", trained * b_w, s, stride, 1.0),
                ]
            else:
                m = mapping.microbatches()
                calls = [
                    ("all_gather", (params + extra) * b_w, s, stride, 2.0 * m),
                    ("reduce_scatter", grads, s, stride, m),
                    replicas,
                ]
        out += [
            Collective(
                kind,
                "dp",
                "step",
                nbytes=nbytes,
                group=group,
                stride=st,
                count=count,
                overlap=mapping.dp_overlap,
            )  # fmt: skip
            for kind, nbytes, group, st, count in calls
        ]
    return out


def pp_collectives(model, mapping: Parallelism, shape, *, relax) -> list[Collective]:
    """The pipeline sends of one step on a chip of a middle stage, as one record.

    Each microbatch's activation (S = T·D·b bytes, /t with sequence parallelism)
    leaves each of the chip's v virtual stages forward, and its gradient backward:
    2·m·v sends of S to the neighbour stage, tp·cp·dp ranks away (none without
    pipelining). `overlap` is 1 for the interleaved schedule, whose steady-state sends
    Megatron-LM overlaps with compute (`overlap_p2p_comm`), and 0 for 1F1B.
    """
    s = shape
    m, p, v = mapping.microbatches(), mapping.pp, mapping.vpp
    return [
        Collective(
            "p2p",
            "pp",
            "step",
            nbytes=s.sp_tokens * model.d_model * s.b_act,
            group=p,
            stride=mapping.tp * mapping.cp * mapping.dp,
            count=2.0 * m * v * relax.min(p - 1.0, 1.0),
            overlap=relax.step(v - 1.5),
        )  # fmt: skip
    ]


def dp_exposed(
    cluster: Cluster,
    records: list[Collective],
    mapping: Parallelism,
    t_layers,
    ls,
    *,
    relax: AbstractRelax,
):
    """Exposed and hidden seconds of the data-parallel collectives of one step.

    T_comm = Σ count·time over `records` (`dp_collectives`). It overlaps with the
    backward of the last microbatch (and, for parameter all-gathers, the forward of
    the first): window = η_dp · (2/3)·t_layers (+ 1/3 with ZeRO ≥ 1; the shares of the
    GEMMs' pass factors, `layer.PASS_FACTORS`), or all compute of the step for ZeRO-3,
    with η_dp the records' `overlap` (the mapping's `dp_overlap`). The last layer's
    bucket (T_comm / layers per stage) can never overlap.
        exposed = max(T_comm·(1 − 1/Ls), window) − window + T_comm/Ls  [s]
    """
    comm = comm_time(cluster, records, relax=relax)
    fwd, bwd = PASS_FACTORS["matmul"]  # forward : backward shares of the layers' time
    if mapping.zero == 3:
        window = t_layers * mapping.microbatches()
    else:
        window = t_layers * (bwd + (fwd if mapping.zero else 0.0)) / (fwd + bwd)
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
    records: list[Collective],
    mapping: Parallelism,
    *,
    relax: AbstractRelax,
):
    """Pipeline sends on the critical path [s].

        1F1B (v = 1):        2·(m + p − 1)·(α + S/W)
        interleaved (v > 1): 2·(p − 1)·v·(α + S/W)   (steady-state sends overlap
    compute) and 0 without pipelining, with α + S/W the time of one send of the
    `pp_collectives` record (`comm.instance_time`). The critical path runs through
    the sends of every stage boundary, not only the chip's own 2·m·v. Megatron-LM
    overlaps p2p with compute in the interleaved schedule (`overlap_p2p_comm`), not in
    plain 1F1B (Narayanan et al. 2021).
    """
    (rec,) = records
    hop = instance_time(cluster, rec, relax=relax)
    m, p, v = mapping.microbatches(), mapping.pp, mapping.vpp
    steady = m * (1.0 - rec.overlap)
    return 2.0 * ((p - 1.0) * v + steady) * hop * relax.min(p - 1.0, 1.0)
