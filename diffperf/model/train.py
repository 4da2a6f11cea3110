"""The training-step model: `train_step(cluster, model, mapping, *, relax)`.

One representative layer (dense and MoE layers mixed by their share) is costed per
microbatch on one chip and multiplied by the L/p layers of a pipeline stage; no Python
loop runs over layers, so compile time does not grow with depth.

Per microbatch (B sequences of S tokens; T = B·S/c tokens on a chip, t = tp):
  forward  = GEMMs + fused attention + Mamba-2 scan + elementwise + kernels
             + TP/CP/EP collectives (EP partly hidden with `ep_overlap`)
  backward = 2 × forward GEMMs (dgrad, wgrad) + 2.5 × attention + 2.5 × scan
             + 2 × elementwise  (fused attention and the SSD scan recompute forward)
  recompute: full = one more forward; selective = one more attention forward
  fine-tuning (`finetune.py`): frozen base weights skip their wgrad, (2 + τ) × GEMMs,
             and LoRA adapters add 3 × their forward GEMMs
Step (m microbatches, p stages, v virtual stages; Narayanan et al. SC'21):
  T = m·t_mb + (p − 1)/v · t_mb + p2p + exposed DP + optimizer + host
      + exposed offload + input-pipeline stall   (`offchip.py`)
with the bubble (p − 1)/v·t_mb of 1F1B / interleaved schedules. The last stage also runs
the model's multi-token-prediction blocks (one layer and one more head each).
"""

from ..core.relax import AbstractRelax, Exact
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, check_mapping, resolved_attention_kernel
from ..specs.workload import Transformer
from .breakdown import Breakdown
from .data_parallel import dp_exposed, optimizer_time, p2p_exposed
from .fidelity import Fidelity, tier
from .finetune import lora_forward, lora_layer_params
from .layer import LayerShape, head_time, layer_comm, layer_forward
from .memory import train_memory
from .offchip import input_exposed, offload_exposed, train_nic_bytes

__all__ = ["train_step"]

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
    )


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
    s = training_shape(model, mapping, relax)
    p, v = mapping.pp, mapping.vpp
    m = mapping.microbatches()
    ls = model.n_layers / p  # layers per stage
    lay = layer_forward(cluster, model, s, relax)
    com = layer_comm(cluster, model, s, relax, mapping.sequence_parallel)
    lora = lora_forward(cluster, model, lay, mapping, relax=relax)
    tau = mapping.trainable  # share of base weights with a weight gradient
    chip = cluster.chip

    bwd_attn = (2.5 if s.flash else 2.0) * lay["attn"]  # flash recomputes the scores
    cp_fwd = relax.exceed(com["cp_fwd"], lay["attn"])
    cp_bwd = relax.exceed(com["cp_bwd"], bwd_attn)
    tp = (1.0 - mapping.tp_overlap) * com["tp"]
    compute = lay["gemm"] + lay["attn"] + lay["ssm"] + lay["elem"] + lora["time"]
    # EP overlap: the overlapped share of the all-to-all is hidden behind up to one
    # pass's compute of the layer (another microbatch's, or the shared experts')
    ep_on = mapping.ep_overlap * com["ep"]
    ep = com["ep"] - ep_on + relax.exceed(ep_on, 3.0 * compute)
    full = mapping.recompute == "full"
    recompute = {
        "none": 0.0,
        "selective": lay["attn"],
        "full": compute + tp / 2.0,
    }[mapping.recompute]
    passes = 4.0 if full else 3.0  # forward + backward (2×) + recomputed forward
    kernels = (lay["kernels"] + lora["kernels"]) * passes
    per_layer = dict(
        matmul=(2.0 + tau) * lay["gemm"] + 3.0 * lora["time"],
        attention=lay["attn"] + bwd_attn + 3.5 * lay["ssm"],
        elementwise=3.0 * lay["elem"],
        kernel_overhead=kernels * chip.kernel_overhead,
        recompute=recompute,
        tp_comm=tp,
        cp_comm=cp_fwd + cp_bwd,
        ep_comm=ep,
    )
    # the last stage also runs the multi-token-prediction blocks (DeepSeek-V3 MTP)
    last = ls + model.n_mtp_layers
    stage = {k: last * val for k, val in per_layer.items()}
    t_layers = sum(stage.values())
    head = head_time(cluster, model, s, relax) * (1.0 + model.n_mtp_layers)
    t_mb = t_layers + head  # the last stage, which also runs the head, sets the pace
    host_mb = last * lay["host_ops"] * passes * cluster.host.dispatch_overhead
    # the MoE layer's host round trip (token counts device→host, then the CPU issues
    # the rest of the layer) once per MoE layer and pass; charged with token dropping
    # too: Megatron-Bridge's token-dropping runs are not systematically faster
    # (VALIDATION.md), although padded static shapes could avoid the sync
    syncs = last * s.moe * (passes - 1.0) * cluster.host.sync_overhead
    # DP collectives overlap with the layers as they really run: GPU time plus the
    # time the GPU waits for a host-bound CPU.
    t_busy = t_layers + relax.exceed(host_mb, t_mb)
    dp, dp_hidden = dp_exposed(cluster, model, mapping, s, t_busy, ls, relax=relax)
    off, off_hidden, off_bytes = offload_exposed(
        cluster, model, mapping, t_busy + head, relax=relax
    )
    terms = {k: m * val for k, val in stage.items()} | dict(
        head=m * head,
        pp_bubble=(p - 1.0) / v * t_layers,
        pp_p2p=p2p_exposed(cluster, model, mapping, s, relax=relax),
        dp_comm=dp,
        optimizer=optimizer_time(cluster, model, mapping),
        host_stall=m * (relax.exceed(host_mb, t_mb) + syncs),
        offload=off,
        step_overhead=cluster.host.step_overhead,
    )
    tokens = mapping.batch() * s.seq
    terms["input_stall"] = input_exposed(
        cluster, tokens / mapping.chips, sum(terms.values()), relax=relax
    )
    a = model.attention_fraction
    attn_model = 6.0 * s.seq * model.n_heads * (s.h_qk + s.h_v) * model.n_layers * a
    ssm_model = 3.0 * lay["ssm_flops"] * s.t / s.tokens * model.n_layers
    weights = 2.0 * (2.0 + tau) * model.active_params()  # forward, dgrad, τ·wgrad
    adapters = 6.0 * model.n_layers * lora_layer_params(model, mapping)
    model_flops = (weights + adapters + attn_model + ssm_model) * tokens
    extra = {
        "none": 0.0,
        "selective": lay["attn_flops"],
        "full": lay["flops"] + lora["flops"] + lay["attn_flops"] + lay["ssm_flops"],
    }[mapping.recompute]
    attn_passes = 3.5 if s.flash else 3.0
    mixer = attn_passes * lay["attn_flops"] + 3.5 * lay["ssm_flops"]
    gemms = (2.0 + tau) * lay["flops"] + 3.0 * lora["flops"]
    per_chip = m * (last * (gemms + mixer + extra))
    per_chip = per_chip + m * 6.0 * s.tokens * model.d_model * model.vocab_size / (
        s.t * p
    ) * (1.0 + model.n_mtp_layers)
    return Breakdown(
        **terms,
        overlapped_tp_comm=mapping.tp_overlap * com["tp"] * last * m,
        overlapped_cp_comm=last * m * (com["cp_fwd"] + com["cp_bwd"] - cp_fwd - cp_bwd),
        overlapped_dp_comm=dp_hidden,
        overlapped_ep_comm=last * m * (com["ep"] - ep),
        overlapped_offload=off_hidden,
        memory_per_gpu=train_memory(model, mapping, chip, relax=relax),
        memory_capacity=chip.hbm_capacity,
        model_flops=model_flops,
        hardware_flops=per_chip * mapping.chips,
        tokens=tokens,
        chips=mapping.chips,
        nic_bytes=train_nic_bytes(cluster, model, mapping, s, relax=relax),
        offload_memory=off_bytes,
        offload_capacity=cluster.offload_tier(relax).capacity,
    )
