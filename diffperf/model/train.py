"""The training-step model: `train_step(cluster, model, mapping, *, relax)`.

One representative layer (dense and MoE layers mixed by their share) is costed per
microbatch on one chip and multiplied by the L/p layers of a pipeline stage; no Python
loop runs over layers, so compile time does not grow with depth.

Per microbatch (B sequences of S tokens; T = B·S/c tokens on a chip, t = tp), each
class of work runs in a forward and a backward pass, by one table of pass factors
(`layer.PASS_FACTORS`: GEMMs 1 : 2, fused attention and the SSD scan 1 : 2.5,
elementwise 1 : 2, kernels 1 : 2) and a recompute policy (`layer.RECOMPUTED`: full =
one more forward of the whole layer, its collectives included; selective = one more
attention forward). The layer's collectives are `Collective` records
(`layer.layer_collectives`), and how much of each hides behind compute is decided per
parallel axis (`layer_passes`): TP by `tp_overlap`; CP ring sends behind the pass's
attention; EP dispatch/combine, the `ep_overlap` share, behind the layer's compute of
all passes (Megatron-core's combined 1F1B pairs one microbatch's all-to-all with an
adjacent microbatch's forward or backward). Fine-tuning (`finetune.py`): frozen base
weights skip their wgrad (GEMM backward 1 + τ instead of 2) and LoRA adapters run their
GEMMs in every pass (1 : 2).
Step (m microbatches, p stages, v virtual stages; Narayanan et al. SC'21):
  T = m·t_mb + (p − 1)/v · t_mb + p2p + exposed DP + optimizer + host
      + exposed offload + input-pipeline stall   (`offchip.py`)
with the bubble (p − 1)/v·t_mb of 1F1B / interleaved schedules. The last stage also runs
the model's multi-token-prediction blocks (one layer and one more head each). The NIC
bytes of the step are read off the same records (`comm.nic_bytes`).
"""

from typing import NamedTuple

import jax.numpy as jnp

from ..core.checks import concrete
from ..core.relax import AbstractRelax, Exact
from ..specs.hardware import Cluster
from ..specs.mapping import (
    Parallelism,
    check_mapping,
    recomputed_modules,
    resolved_attention_kernel,
)
from ..specs.workload import Transformer
from .breakdown import Breakdown
from .comm import Collective, comm_time, nic_bytes, scaled
from .data_parallel import (
    dp_collectives,
    dp_exposed,
    optimizer_time,
    p2p_exposed,
    pp_collectives,
)
from .fidelity import Fidelity, tier
from .finetune import lora_forward, lora_layer_params
from .layer import (
    BLOCK_KERNELS,
    PASS_FACTORS,
    RECOMPUTED,
    WGRAD,
    LayerShape,
    head_time,
    layer_collectives,
    layer_forward,
)
from .memory import train_memory
from .offchip import input_exposed, offload_exposed
from .ops import memory_time

__all__ = [
    "train_step",
    "training_shape",
    "layer_passes",
    "step_collectives",
    "LayerPasses",
    "LAYER_TERMS",
]

_EXACT = Exact()


def training_shape(
    model: Transformer, mapping: Parallelism, relax: AbstractRelax
) -> LayerShape:
    """The layer shape of one training microbatch on one chip."""
    seq = mapping.tokens(model)
    return LayerShape(
        model,
        relax,
        tp=mapping.tp,
        cp=mapping.cp,
        ep=mapping.ep,
        etp=mapping.etp,
        batch=mapping.microbatch,
        q_len=seq / mapping.cp,
        seq=seq,
        causal=True,
        sequence_parallel=mapping.sequence_parallel,
        flash=resolved_attention_kernel(mapping) != "unfused",
        fa2=resolved_attention_kernel(mapping) == "fa2",
        backward=True,
    )


LAYER_TERMS = (
    "recompute",
    "matmul",
    "attention",
    "elementwise",
    "kernel_overhead",
    "tp_comm",
    "cp_comm",
    "ep_comm",
)
"""Breakdown terms of one layer's passes, in drawing order (recompute precedes the
backward)."""

COMM_CLASS = {"tp": "matmul", "cp": "attention", "ep": "matmul"}
"""The class of work each layer collective belongs to: a recompute policy that re-runs
the class re-runs its collectives (TP around the GEMMs, CP ring sends inside the core
attention, EP dispatch/combine around the expert GEMMs)."""


MODULE_GEMMS = {"mla_up_proj": ("q_up", "kv_up"), "mlp": ("mlp_up", "mlp_down")}
"""GEMMs of `layer._gemm_shapes` each selective recompute module re-runs."""


def recomputed_classes(mapping: Parallelism) -> tuple[str, ...]:
    """Classes of `layer.PASS_FACTORS` the recompute policy re-runs in full.

    `layer.RECOMPUTED[policy]`, except that selective recompute re-runs the core
    attention only when core_attn is among its modules.
    """
    if mapping.recompute == "selective":
        return ("attention",) if "core_attn" in recomputed_modules(mapping) else ()
    return RECOMPUTED[mapping.recompute]


def module_recompute(cluster: Cluster, model: Transformer, s, lay, mapping) -> dict:
    """Forward seconds, kernels and FLOP the selective recompute modules re-run.

    Per layer and microbatch (`specs.mapping.RECOMPUTE_MODULES`; core_attn is the
    attention class, `recomputed_classes`):
        matmul      = Σ_{GEMMs of the modules} w_i·t_i        (mla_up_proj: q_up,
                      kv_up; mlp: mlp_up, mlp_down; `MODULE_GEMMS`)        [s]
        elementwise = Q / (β·η) with Q [B] =
                        layernorm: 2·sublayers·D·b per SP token (read x, write y)
                        moe_act:   f_moe·(up + 1)·k·load·Fe·b / t per token
                        mlp:       f_dense·(up + 1)·F·b / t per token
        kernels     = one per recomputed op (norms per block, the activation, the
                      GEMMs)
    """
    modules = recomputed_modules(mapping)
    m = model
    ops = lay["gemm_ops"]
    names = ops["names"]
    zero = 0.0 * lay["gemm"]
    matmul, flops, kernels, nbytes = zero, zero, 0.0, zero
    for mod, gemms in MODULE_GEMMS.items():
        if mod not in modules:
            continue
        for g in gemms:
            if g in names:
                i = names.index(g)
                matmul = matmul + ops["time"][i] * ops["share"][i]
                flops = flops + ops["flops"][i] * ops["share"][i]
                kernels = kernels + ops["share"][i]
    b, t, up = s.b_act, s.t, m.mlp_mats - 1.0
    if "layernorm" in modules:
        nbytes = nbytes + s.sp_tokens * 2.0 * m.sublayers * m.d_model * b
        kernels = kernels + m.sublayers
    if "moe_act" in modules:
        routed = m.top_k * m.expert_load * m.d_ff_expert
        nbytes = nbytes + s.tokens * s.moe * (up + 1.0) * routed * b / t
        kernels = kernels + s.moe
    if "mlp" in modules:
        dense = m.dense_mlp_fraction
        nbytes = nbytes + s.tokens * dense * (up + 1.0) * m.d_ff * b / t
        kernels = kernels + dense
    elem = memory_time(cluster.chip, nbytes)
    return dict(matmul=matmul, elementwise=elem, kernels=kernels, flops=flops)


class LayerPasses(NamedTuple):
    """One layer's seconds per microbatch on one chip, by pass and Breakdown term.

    `forward` and `backward` map `LAYER_TERMS` to seconds; the backward holds the
    recomputed forward (term `recompute`; its kernels under `kernel_overhead`).
    `hidden` maps an axis (tp, cp, ep) to its overlapped seconds per pass ("forward",
    "backward"). `collectives` are the layer's `Collective` records (counts per layer
    and microbatch); `exposed` maps (axis, phase) to their exposed seconds; `layer`
    and `lora` are `layer_forward`'s and `finetune.lora_forward`'s outputs, `trainable`
    the mapping's share τ of trained base weights. `runs` is
    the number of passes over the layer (2, or 3 with full recompute) and
    `kernel_passes` the multiple of the forward's kernels launched. `sync` holds the
    seconds the MoE layer's dispatch synchronization exposes per layer and microbatch
    (`moe_sync`: "sigma", the copies, and "race", the GPU waiting for the host).
    """

    forward: dict
    backward: dict
    hidden: dict
    collectives: list
    exposed: dict
    layer: dict
    lora: dict
    trainable: object
    shape: LayerShape
    runs: float
    kernel_passes: float
    sync: object


def _share(part, whole):
    """The ratio part / whole, 0 where whole = 0 (double where: finite gradients)."""
    ok = whole > 0
    return jnp.where(ok, part / jnp.where(ok, whole, 1.0), 0.0)


def layer_passes(
    cluster: Cluster, model: Transformer, mapping: Parallelism, *, relax: AbstractRelax
) -> LayerPasses:
    """Forward and backward seconds of one layer per microbatch (module docstring).

    Work of class k in pass i: PASS_FACTORS[k][i] × its forward time, except the
    quantize kernels of low-precision GEMMs (`layer.quantize_bytes`) and the MoE token
    permutation (`layer.permute_bytes`), whose backward seconds are their own; the
    recomputed forward (`recomputed_classes`) runs the listed classes once more, and
    selective recompute modules their own ops (`module_recompute`).
    Communication: the layer's `Collective` records (`layer_collectives`; a recomputed
    class repeats its collectives, `COMM_CLASS`), each axis' raw time T = Σ count·time,
    of which the records' overlap share may hide behind a window of compute:
        exposed = Σ (1 − ov)·T_r + max(Σ ov·T_r, W) − W                          [s]
    with W, per axis: TP, the GEMMs of the same pass (Transformer Engine's userbuffer
    overlap pipelines each all-gather / reduce-scatter with the GEMM it feeds; Wang et
    al., ASPLOS 2023); CP, the attention of the same pass (ring attention overlaps each
    K/V send with the block attention; Liu et al. 2023); EP, the layer's compute of all
    its passes (Megatron-core combined 1F1B overlaps one microbatch's dispatch/combine
    with an adjacent microbatch's forward or backward), its exposed time split among
    the passes by their raw shares.
    """
    s = training_shape(model, mapping, relax)
    lay = layer_forward(cluster, model, s, relax)
    lora = lora_forward(cluster, model, lay, mapping, relax=relax)
    tau = mapping.trainable
    redo = recomputed_classes(mapping)
    attn = "attention" if s.flash else "attention_unfused"
    factors = {k: PASS_FACTORS[k] for k in ("matmul", "ssm", "elementwise", "kernels")}
    factors["attention"] = PASS_FACTORS[attn]
    fwd = dict(
        matmul=lay["gemm"] + lora["time"],
        attention=lay["attn"],
        ssm=lay["ssm"],
        elementwise=lay["elem"],
        kernels=(lay["kernels"] + lora["kernels"]) * cluster.chip.kernel_overhead,
    )
    work = {
        "forward": {k: factors[k][0] * v for k, v in fwd.items()},
        "backward": {k: factors[k][1] * v for k, v in fwd.items()},
        "recompute": {k: (v if k in redo else 0.0 * v) for k, v in fwd.items()},
    }
    # selective recompute modules re-run their own ops (`module_recompute`)
    extra = module_recompute(cluster, model, s, lay, mapping)
    for k in ("matmul", "elementwise"):
        work["recompute"][k] = work["recompute"][k] + extra[k]
    work["recompute"]["kernels"] = (
        work["recompute"]["kernels"] + extra["kernels"] * cluster.chip.kernel_overhead
    )
    # quantize kernels: the backward quantizes the output gradients (`quantize_bytes`),
    # not twice the forward's inputs as the elementwise pass factor would say
    # and the MoE token permutation's backward is its own (`layer.permute_bytes`)
    for own in (lay["quant"], lay["permute"]):
        work["backward"]["elementwise"] = (
            work["backward"]["elementwise"]
            - factors["elementwise"][1] * own["forward"]
            + own["backward"]
        )
    # frozen base weights (fine-tuning) skip their wgrad; the adapters train in full
    work["backward"]["matmul"] = (
        work["backward"]["matmul"] - (1.0 - tau) * WGRAD * (lay["gemm"])
    )
    records = [
        r
        for r in layer_collectives(
            model,
            s,
            sequence_parallel=mapping.sequence_parallel,
            phases=("forward", "backward", "recompute"),
            tp_overlap=mapping.tp_overlap,
            ep_overlap=mapping.ep_overlap,
            count_sync=True,
        )  # fmt: skip
        if r.phase != "recompute" or COMM_CLASS[r.axis] in redo
    ]
    phases = ("forward", "backward", "recompute")

    def split(axis, phase):  # (Σ (1 − ov)·T, Σ ov·T) of the axis' records in a pass
        mine = [r for r in records if r.axis == axis and r.phase == phase]
        t = [comm_time(cluster, r, relax=relax) for r in mine]
        pairs = list(zip(mine, t, strict=True))
        blocking = sum(((1.0 - r.overlap) * x for r, x in pairs), 0.0)
        hideable = sum((r.overlap * x for r, x in pairs), 0.0)
        return blocking, hideable

    def compute(phase):
        w = work[phase]
        return w["matmul"] + w["attention"] + w["ssm"] + w["elementwise"]

    exposed, hidden = {}, {}
    for axis, window in (("tp", "matmul"), ("cp", "attention")):
        for phase in phases:
            blocking, hideable = split(axis, phase)
            shown = relax.exceed(hideable, work[phase][window])
            exposed[(axis, phase)] = blocking + shown
            hidden[(axis, phase)] = hideable - shown
    ep = {phase: split("ep", phase) for phase in phases}
    raw = sum(b + h for b, h in ep.values())
    hideable = sum(h for _, h in ep.values())
    shown = relax.exceed(hideable, sum(compute(phase) for phase in phases))
    ep_exposed = raw - hideable + shown
    for phase in phases:
        part = _share(ep[phase][0] + ep[phase][1], raw)
        exposed[("ep", phase)] = ep_exposed * part
        hidden[("ep", phase)] = (hideable - shown) * part

    def terms(phase):
        w = work[phase]
        return dict(
            recompute=0.0 * w["matmul"],
            matmul=w["matmul"],
            attention=w["attention"] + w["ssm"],
            elementwise=w["elementwise"],
            kernel_overhead=w["kernels"],
            tp_comm=exposed[("tp", phase)],
            cp_comm=exposed[("cp", phase)],
            ep_comm=exposed[("ep", phase)],
        )

    forward, backward = terms("forward"), terms("backward")
    again = work["recompute"]
    backward["recompute"] = compute("recompute") + sum(
        exposed[(a, "recompute")] for a in COMM_CLASS
    )
    backward["kernel_overhead"] = backward["kernel_overhead"] + again["kernels"]
    hid = {
        a: {
            "forward": hidden[(a, "forward")],
            "backward": hidden[(a, "backward")] + hidden[(a, "recompute")],
        }
        for a in COMM_CLASS
    }
    kernel_passes = sum(factors["kernels"]) + (1.0 if "kernels" in redo else 0.0)
    runs = 2.0 + (1.0 if mapping.recompute == "full" else 0.0)
    # (issue multiple, GPU seconds of the MoE block) of each pass over the layer
    bwd = factors["matmul"][1]
    passes = [
        (1.0, lay["moe_gemm"] + lay["permute"]["forward"] + sum(ep["forward"])),
        (
            factors["kernels"][1],
            bwd * lay["moe_gemm"] + lay["permute"]["backward"] + sum(ep["backward"]),
        ),
    ]
    if mapping.recompute == "full":
        passes.append(
            (1.0, lay["moe_gemm"] + lay["permute"]["forward"] + sum(ep["recompute"]))
        )
    sync = moe_sync(cluster, s, lay, passes, relax=relax)
    return LayerPasses(
        forward, backward, hid, records, exposed, lay, lora, tau, s, runs,
        kernel_passes, sync,
    )  # fmt: skip


def moe_sync(cluster: Cluster, s, lay, passes, *, relax: AbstractRelax):
    """Seconds a dropless MoE layer's dispatch synchronization exposes, per layer.

    Before it dispatches, the layer copies the token counts to the host (the sizes of
    the all-to-all and of the grouped GEMM's per-expert splits: Megatron-core
    `MoEAlltoAllTokenDispatcher`, `.to("cpu")` of the counts; TE `GroupedLinear`'s
    `m_splits` list). The CPU blocks until the GPU has drained (the EP count exchange,
    `layer.layer_collectives` with `count_sync`, is the last work it waits for, in
    `ep_comm`), then it issues the rest of the block while the GPU runs it. Per MoE
    layer and pass over it (forward, backward, a full recompute: the count on which
    the committed σ is fitted; the backward has no count copy of its own, since it
    reuses the host-side splits, and its σ stands for the host's re-issue of the
    block at the same point), with a the pass's multiple of the forward's launches
    (`layer.PASS_FACTORS["kernels"]`):
        t_sync = σ + max(a·H − G, 0)                                              [s]
        H = (n_moe + k_moe + 2·(E_hit − 1))·δ
        G = T_expert GEMMs + T_permute + T_ep (that pass's dispatch, combine, counts)
    with σ = `Host.sync_overhead` (the device-to-host copy and the host's wake-up),
    δ = `Host.dispatch_overhead` per host op, n_moe = `Host.moe_host_ops`, k_moe the
    MoE block's kernels (`layer.BLOCK_KERNELS`), and 2·(E_hit − 1) the per-expert GEMM
    launches beyond the block's two: `GroupedLinear` issues one cuBLAS GEMM per
    expert for fc1 and for fc2 (`nvte_multi_stream_cublas_gemm`). The GPU starts the
    block idle, so the CPU's issue time H is exposed where it exceeds the block's GPU
    time G: a faster GPU or network shortens G, not H. Weighted by the share of MoE
    layers; `passes` holds (a, G) of each pass, G already weighted.

    Returns:
        {"sigma": Σ σ, "race": Σ max(a·H − G, 0)} [s]; `train_step` adds the race
        to the GPU time the host's issue time is compared with (the host time behind
        a race is part of the step's host time, counted once).
    """
    host = cluster.host
    zero = 0.0 * lay["gemm"]
    if concrete(s.moe) == 0.0:  # a dense model: no MoE layer, no sync
        return dict(sigma=zero, race=zero)
    launches = host.moe_host_ops + BLOCK_KERNELS["moe"] + 2.0 * (lay["moe_hit"] - 1.0)
    issue = s.moe * launches * host.dispatch_overhead
    race = sum((relax.exceed(a * issue, g) for a, g in passes), zero)
    return dict(sigma=len(passes) * s.moe * host.sync_overhead + zero, race=race)


def train_step(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    *,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> Breakdown:
    """Time, memory and FLOP of one optimizer step of a training job.

    T_step = m·t_mb + (p − 1)/v·t_mb + T_p2p + T_dp,exposed + T_opt + T_host  [s]
    where t_mb is one microbatch through one pipeline stage (L/p layers, plus the head
    on the last stage). See the module docstring for the per-layer terms and
    `diffperf.model.memory.train_memory` for memory.

    Args:
        cluster: the hardware (`load_hardware`).
        model: the workload (`load_workload`); its `precision.math` picks the peak.
        mapping: the parallel mapping; chips used = tp·pp·dp·cp.
        relax: Exact() for reporting, Smooth(p) for gradients.
        fidelity: "detailed" (per-operator efficiencies, fixed costs, overlap) or
            "roofline" (each op at max(F/π, Q/β); see `diffperf.model.fidelity`).

    Returns:
        A `Breakdown` whose terms sum to `total`.

    Raises:
        ValueError: a concrete integer mapping that does not fit the model.
    """
    check_mapping(model, mapping)
    cluster, mapping = tier(fidelity, cluster, mapping)
    lp = layer_passes(cluster, model, mapping, relax=relax)
    s, lay = lp.shape, lp.layer
    p, v = mapping.pp, mapping.vpp
    m = mapping.microbatches()
    ls = model.n_layers / p  # layers per stage
    per_layer = {k: lp.forward[k] + lp.backward[k] for k in LAYER_TERMS}
    # the last stage also runs the multi-token-prediction blocks (DeepSeek-V3 MTP)
    last = ls + model.n_mtp_layers
    stage = {k: last * val for k, val in per_layer.items()}
    t_layers = sum(stage.values())
    head = head_time(cluster, model, s, relax) * (1.0 + model.n_mtp_layers)
    t_mb = t_layers + head  # the last stage, which also runs the head, sets the pace
    host = cluster.host
    host_mb = last * lay["host_ops"] * lp.kernel_passes * host.dispatch_overhead
    # the MoE layer's host round trip (token counts device→host, then the CPU issues
    # the rest of the layer: `moe_sync`) once per MoE layer and pass over it;
    # charged with token dropping too: Megatron-Bridge's token-dropping runs are not
    # systematically faster (VALIDATION.md), although padded static shapes could
    # avoid the sync
    sigma, race = last * lp.sync["sigma"], last * lp.sync["race"]
    # the CPU's issue time bounds the microbatch from below (throughput), the GPU
    # work plus its waits after each sync (`moe_sync`'s race) too: the GPU waits
    #   max(host_mb, t_mb + race) − t_mb   [s]
    # (the host time behind a race is part of host_mb; counted once)
    host_wait = relax.exceed(host_mb, t_mb + race) + race
    # DP collectives overlap with the layers as they really run: GPU time plus the
    # time the GPU waits for a host-bound CPU.
    t_busy = t_layers + host_wait
    dp_records = dp_collectives(model, mapping)
    pp_records = pp_collectives(model, mapping, s, relax=relax)
    dp, dp_hidden = dp_exposed(cluster, dp_records, mapping, t_busy, ls, relax=relax)
    off, off_hidden, off_bytes = offload_exposed(
        cluster, model, mapping, t_busy + head, relax=relax
    )
    terms = {k: m * val for k, val in stage.items()} | dict(
        head=m * head,
        pp_bubble=(p - 1.0) / v * t_layers,
        pp_p2p=p2p_exposed(cluster, pp_records, mapping, relax=relax),
        dp_comm=dp,
        optimizer=optimizer_time(cluster, model, mapping),
        host_stall=m * (host_wait + sigma),
        offload=off,
        step_overhead=host.step_overhead,
    )
    tokens = mapping.batch() * s.seq
    terms["input_stall"] = input_exposed(
        cluster, tokens / mapping.chips, sum(terms.values()), relax=relax
    )
    # model FLOP: the MFU convention (Chowdhery et al. 2022, app. B), 3× the forward
    # FLOP of the weights and of causal attention, whatever the kernels recompute
    a = model.attention_fraction
    attn_model = 6.0 * s.seq * model.n_heads * (s.h_qk + s.h_v) * model.n_layers * a
    ssm_model = 3.0 * lay["ssm_flops"] * s.t / s.tokens * model.n_layers
    weights = 2.0 * (2.0 + lp.trainable) * model.active_params()  # fwd, dgrad, τ·wgrad
    adapters = 6.0 * model.n_layers * lora_layer_params(model, mapping)
    model_flops = (weights + adapters + attn_model + ssm_model) * tokens
    # executed FLOP: every pass of every class, by the same pass factors
    redo = recomputed_classes(mapping)
    attn_f = PASS_FACTORS["attention" if s.flash else "attention_unfused"]

    def runs(factors, cls):
        return sum(factors) + (1.0 if cls in redo else 0.0)

    frozen = (1.0 - lp.trainable) * WGRAD  # wgrad the frozen base weights skip
    layer_flops = (
        (runs(PASS_FACTORS["matmul"], "matmul") - frozen) * lay["flops"]
        + runs(PASS_FACTORS["matmul"], "matmul") * lp.lora["flops"]
        + runs(attn_f, "attention") * lay["attn_flops"]
        + runs(PASS_FACTORS["ssm"], "ssm") * lay["ssm_flops"]
        + module_recompute(cluster, model, s, lay, mapping)["flops"]
    )
    head_flops = 2.0 * s.tokens * model.d_model * model.vocab_size / (s.t * p)
    per_chip = m * last * layer_flops + m * sum(PASS_FACTORS["matmul"]) * head_flops * (
        1.0 + model.n_mtp_layers
    )
    # NIC bytes: every collective of the step, from the same records
    records = scaled(lp.collectives, m * last) + dp_records + pp_records
    hidden = {a: lp.hidden[a]["forward"] + lp.hidden[a]["backward"] for a in lp.hidden}
    return Breakdown(
        **terms,
        overlapped_tp_comm=m * last * hidden["tp"],
        overlapped_cp_comm=m * last * hidden["cp"],
        overlapped_dp_comm=dp_hidden,
        overlapped_ep_comm=m * last * hidden["ep"],
        overlapped_offload=off_hidden,
        memory_per_gpu=train_memory(model, mapping, cluster.chip, relax=relax),
        memory_capacity=cluster.chip.hbm_capacity,
        model_flops=model_flops,
        hardware_flops=per_chip * mapping.chips,
        tokens=tokens,
        chips=mapping.chips,
        nic_bytes=nic_bytes(cluster, records, relax=relax),
        offload_memory=off_bytes,
        offload_capacity=cluster.offload_tier(relax).capacity,
    )


def step_collectives(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    *,
    relax: AbstractRelax = _EXACT,
) -> list[Collective]:
    """Every collective of one training step on a chip of the last stage.

    The layer's records with counts per step (× m microbatches × the stage's layers),
    the data-parallel collectives and the pipeline sends: the list `train_step` reads
    its communication time and its `nic_bytes` from.
    """
    check_mapping(model, mapping)
    lp = layer_passes(cluster, model, mapping, relax=relax)
    last = model.n_layers / mapping.pp + model.n_mtp_layers
    return (
        scaled(lp.collectives, mapping.microbatches() * last)
        + dp_collectives(model, mapping)
        + pp_collectives(model, mapping, lp.shape, relax=relax)
    )
