"""Serving objectives: continuous batching, speculative decoding, cost, disaggregation.

Built on `serve`, `prefill` and `decode_step` (layer 4); everything here is a function
of their per-step times, so it stays differentiable and vmappable.

Continuous batching (steady state, chunked prefill; Agrawal et al. 2024, Sarathi):
every engine step decodes one token for each of B sequences and prefills the prompts of
the requests that replace the B/S_out sequences finishing per step, i.e. B·S_in/S_out
prompt tokens. One step's GEMMs see T = B·(1 + S_in/S_out) tokens; its attention is the
B decodes over the mean context S_in + S_out/2 plus the B/S_out prompts' causal prefill:
    TPOT = t_mix,  throughput = B / t_mix [tokens/s],  TTFT ≈ max(S_out / B, 1)·t_mix
(no queueing: a prompt waits for the chunks of its own prefill only).

Speculative decoding (Leviathan et al. 2023): a draft proposes k tokens, the target
verifies them in one pass of k + 1 tokens per sequence and keeps τ of them on average
(the acceptance length, the bonus token included; with a per-token acceptance rate a,
τ = (1 − a^(k+1)) / (1 − a)), so
    TPOT = (k·t_draft + t_verify) / τ.
The draft is a separate model, the target's own multi-token-prediction module (MTP,
DeepSeek-V3) or an EAGLE head (`draft_model`).

Cost: $/h of a replica is `economics.hourly_cost` (chips, hosts, NICs and fabric
amortized over `cluster.cost.lifetime`, plus power at PUE and $/kWh; leaves of
`Cluster.cost`);
$ per million output tokens = $/h / (3600·tok/s)·1e6.

Disaggregated prefill/decode (Patel et al. 2024, Splitwise; Zhong et al. 2024,
DistServe): P chips of prefill replicas and D chips of decode replicas: xPyD, x
prefill workers and y decode workers, each with its own layout (tp, pp, batch). Each
pool sustains x·B_p/t_prefill and y·B_d/(S_out·TPOT) requests/s; the deployment the
smaller, and the pools balance at y/x = (B_p/t_prefill)/(B_d/(S_out·TPOT)).
A request's KV cache, S_in·kv bytes for all layers, moves from its prefill replica
to a decode replica over the scale-up tier when both share a domain, else over the
prefill replica's NICs
(whose per-chip rate, requests/s · kv bytes / P, is `kv_nic_demand`):
    TTFT = t_prefill + t_kv,  TPOT = t_decode(B_d)
    requests/s = min(prefill replicas / t_prefill, decode replicas·B_d / (S_out·TPOT)).
Goodput under SLOs is that rate when TTFT ≤ TTFT_SLO and TPOT ≤ TPOT_SLO, else 0. The
decode pool's memory (weights + B_d full-length KV caches) is reported with
`decode_feasible`; the prompt length is the prefill mapping's `input_len`.
"""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.relax import AbstractRelax, Exact
from ..specs.hardware import Cluster
from ..specs.mapping import Serving, check_serving
from ..specs.workload import Transformer
from .comm import nic_bytes
from .economics import hourly_cost, usd_per_million_tokens
from .fidelity import Fidelity, tier
from .phases import (
    PhaseBreakdown,
    decode_step,
    kv_bytes_per_token,
    mixed_step,
    phase_breakdown,
    phase_collectives,
    prefill_activation_bytes,
    serving_shape,
    ssm_state_bytes,
    weight_bytes,
)
from .phases import prefill as prefill_step

__all__ = [
    "kv_capacity",
    "continuous_batching",
    "speculative_tpot",
    "draft_model",
    "SPECULATIVE",
    "hourly_cost",
    "disaggregated",
    "Disaggregation",
]

_EXACT = Exact()


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


def serve(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
) -> ServeResult:
    """TTFT, TPOT, end-to-end latency, throughput, memory and max batch of a replica.

    `fidelity` picks the tier ("detailed" or "roofline", see `diffperf.model.fidelity`).

    Raises:
        ValueError: a concrete serving mapping that does not fit the model.
    """
    check_serving(model, serving)
    cluster, _ = tier(fidelity, cluster)
    # pipeline parallelism keeps n = min(B, pp) microbatches of B/n sequences in
    # flight: a token of every sequence takes one pass of its microbatch through all
    # pp stages (TPOT), and the last of n prompt microbatches leaves the pipeline
    # (pp + n − 1) stage times after the first enters (TTFT)
    pp = serving.pp
    flight = jnp.minimum(serving.batch, pp)  # the engine's integer choice, exact
    micro = eqx.tree_at(lambda s: s.batch, serving, serving.batch / flight)
    pre = prefill_step(cluster, model, micro, relax=relax)
    dec = decode_step(cluster, model, micro, relax=relax)
    ttft = pre.total * (pp + flight - 1.0) / pp
    tpot = dec.total
    e2e = ttft + (serving.output_len - 1.0) * tpot
    chip = cluster.chip
    weights = weight_bytes(model, serving)
    kv_token = kv_bytes_per_token(model, serving)
    context = serving.input_len + serving.output_len
    act_one = prefill_activation_bytes(model, serving)
    per_seq = kv_token * context * (1.0 - serving.offload_kv) + ssm_state_bytes(
        model, serving
    )  # in HBM
    rank = serving.rank_batch  # sequences on one attention rank (batch/attention_dp)
    memory = weights + rank * per_seq + act_one + chip.reserved_memory
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
        max_batch=kv_capacity(cluster, model, serving, context, relax=relax),
        offload_memory=rank * off_seq,
        offload_capacity=tier_capacity,
        kv_bytes_per_token=kv_token,
    )


def kv_capacity(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    tokens,
    *,
    relax: AbstractRelax = _EXACT,
) -> Array:
    """Sequences of `tokens` KV-cache tokens each that a replica holds at once.

    attention_dp · ⌊min(free / per_seq, tier / off_seq)⌋ with free = HBM − reserved −
    weights − one prompt's activations per chip and per_seq = tokens·kv_bytes_per_token
    (in the KV-cache dtype, the model's `precision`) · (1 − offload_kv) + the SSM state
    (the offloaded share off_seq in the memory tier). `serve` reserves the full length,
    tokens = S_in + S_out (a static batch of whole sequences); paged engines admit by
    the tokens a request holds (`load.serve_load`, `Scheduler.reserved_output`).
    """
    chip = cluster.chip
    kv_token = kv_bytes_per_token(model, serving)
    act_one = prefill_activation_bytes(model, serving)
    weights = weight_bytes(model, serving)
    free = chip.hbm_capacity - chip.reserved_memory - weights - act_one
    per_seq = kv_token * tokens * (1.0 - serving.offload_kv) + ssm_state_bytes(
        model, serving
    )  # in HBM
    off_seq = kv_token * tokens * serving.offload_kv
    tier_capacity = cluster.offload_tier(relax).capacity
    return serving.attention_dp * jnp.floor(
        jnp.minimum(
            jnp.maximum(free, 0.0) / jnp.maximum(per_seq, 1e-30),
            tier_capacity / jnp.maximum(off_seq, 1e-30),
        )
    )


def continuous_batching(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    relax: AbstractRelax = _EXACT,
) -> dict[str, Array]:
    """Steady-state continuous batching with chunked prefill (module docstring).

    Returns:
        dict with `step` (PhaseBreakdown of one mixed step), `tpot` [s], `ttft` [s],
        `output_tokens_per_s` of the replica and `nic_demand` [B/s per chip] (bytes
        a chip sends over its NICs per step / step time, from the step's
        `phases.phase_collectives`).
    """
    b, s_in, s_out = serving.batch, serving.input_len, serving.output_len
    # B decodes + B·S_in/S_out prompt tokens per step (phases.mixed_step)
    step: PhaseBreakdown = mixed_step(
        cluster, model, serving, decodes=b, prefill_tokens=b * s_in / s_out, relax=relax
    )
    mixed = eqx.tree_at(lambda s: s.batch, serving, b * (1.0 + s_in / s_out))
    s = serving_shape(
        model, mixed, relax, q_len=1.0, seq=s_in + s_out / 2.0, causal=False
    )
    t = step.total
    chunks = relax.max(s_out / b, 1.0)  # steps to prefill one prompt, at least one
    records = phase_collectives(model, mixed, s, relax=relax)
    nic = nic_bytes(cluster, records, relax=relax) / t
    return dict(
        step=step, tpot=t, ttft=chunks * t, output_tokens_per_s=b / t, nic_demand=nic
    )


SPECULATIVE = ("mtp", "eagle")
"""Drafts built from the target model itself: its multi-token-prediction module(s)
(DeepSeek-V3: one transformer block of the target's kind plus the shared embedding
and head, reused for every draft token; Liu et al. 2024) or an EAGLE head (one dense
decoder layer of the target's width on the target's features plus the shared head;
Li et al. 2024, EAGLE / EAGLE-3)."""


def draft_model(model: Transformer, method: str) -> Transformer:
    """The draft network of `method` ("mtp" or "eagle") for `model` (one layer).

    "mtp": one block of the target's own layer type (MoE or dense, its attention),
    the module DeepSeek-V3/R1 ship (num_nextn_predict_layers = 1; the bundled specs
    leave it out of `n_mtp_layers` to match the published parameter counts).
    "eagle": one dense decoder layer of the target's width (`d_ff`).

    Raises:
        ValueError: an unknown method.
    """
    if method not in SPECULATIVE:
        raise ValueError(f"speculative={method!r} must be one of mtp, eagle")
    one = dict(n_layers=1.0, n_dense_layers=0.0, n_mtp_layers=0.0,
               attention_fraction=1.0, ssm_fraction=0.0, mlp_fraction=1.0)  # fmt: skip
    if method == "mtp":
        return dataclasses.replace(model, name=f"{model.name} MTP", **one)
    dense = dict(n_experts=0.0, top_k=0.0, d_ff_expert=0.0, n_shared_experts=0.0,
                 d_ff_shared=0.0, moe_latent_dim=0.0)  # fmt: skip
    return dataclasses.replace(model, name=f"{model.name} EAGLE", **one, **dense)


def speculative_tpot(
    cluster: Cluster,
    model: Transformer,
    draft: Transformer | str,
    serving: Serving,
    *,
    k=4.0,
    acceptance=0.7,
    acceptance_length=None,
    relax: AbstractRelax = _EXACT,
) -> Array:
    """Time per output token with speculative decoding [s] (module docstring).

    TPOT = (k·t_draft + t_verify(k + 1 tokens per sequence)) / τ, with τ the mean
    tokens accepted per verify step (the bonus token included): `acceptance_length`
    if given, else (1 − a^(k+1)) / (1 − a) from the per-token acceptance rate a.

    Args:
        cluster: hardware running both models (same replica).
        model: the target model.
        draft: a draft model, or "mtp" / "eagle" for the target's own MTP module or
            an EAGLE head (`draft_model`).
        serving: the replica and request shape.
        k: draft tokens per round.
        acceptance: probability a draft token is accepted, in [0, 1).
        acceptance_length: τ in [1, k + 1], measured (overrides `acceptance`).
        relax: Exact() or Smooth(p).
    """
    if isinstance(draft, str):
        draft = draft_model(model, draft)
    context = serving.input_len + serving.output_len / 2.0
    t_draft = decode_step(cluster, draft, serving, context=context, relax=relax).total
    verify = serving_shape(
        model, serving, relax, q_len=k + 1.0, seq=context, causal=False
    )
    t_verify = phase_breakdown(cluster, model, serving, verify, relax).total
    if acceptance_length is None:
        expected = (1.0 - acceptance ** (k + 1.0)) / (1.0 - acceptance)
    else:
        expected = acceptance_length
    return (k * t_draft + t_verify) / expected


class Disaggregation(eqx.Module):
    """Metrics of a disaggregated prefill/decode deployment (all SI)."""

    ttft: Array
    tpot: Array
    kv_transfer: Array  # s per request
    kv_bytes: Array  # B per request
    kv_bandwidth_demand: Array  # B/s the prefill pool sends at full rate
    kv_nic_demand: Array  # B/s each prefill chip sends over its NICs
    requests_per_s: Array
    goodput: Array  # requests/s within the SLOs
    output_tokens_per_s: Array
    usd_per_million_tokens: Array  # at requests_per_s (SLOs aside)
    decode_memory_per_gpu: Array  # B: weights + B_d full-length KV caches + reserved
    decode_feasible: Array
    prefill_workers: Array  # x of xPyD: prefill replicas
    decode_workers: Array  # y: decode replicas
    prefill_requests_per_s: Array  # what the prefill pool sustains
    decode_requests_per_s: Array  # what the decode pool sustains
    balanced_decode_per_prefill: Array  # y/x at which both pools sustain the same rate


def disaggregated(
    cluster: Cluster,
    model: Transformer,
    prefill: Serving,
    decode: Serving,
    *,
    prefill_chips,
    decode_chips,
    ttft_slo=jnp.inf,
    tpot_slo=jnp.inf,
    decode_cluster: Cluster | None = None,
    kv_tier: str = "auto",
    relax: AbstractRelax = _EXACT,
) -> Disaggregation:
    """Prefill and decode in separate pools (module docstring).

    Args:
        cluster: hardware of the prefill pool (and of the decode pool by default).
        model: the workload.
        prefill: prefill replica mapping and prompt batch (`input_len` per request).
        decode: decode replica mapping and batch (`output_len` per request).
        prefill_chips: chips in the prefill pool.
        decode_chips: chips in the decode pool.
        ttft_slo: TTFT target [s].
        tpot_slo: TPOT target [s].
        decode_cluster: hardware of the decode pool, if different.
        kv_tier: how the KV cache moves: "auto" (scale-up when both pools fit in one
            domain, else the NICs), "scale_up", "scale_out", or "pcie" (through host
            memory: device-to-host then host-to-device PCIe copies, 2·bytes/W_pcie).
        relax: Exact() or Smooth(p).
    """
    if kv_tier not in ("auto", "scale_up", "scale_out", "pcie"):
        raise ValueError(
            f"kv_tier={kv_tier!r} must be auto, scale_up, scale_out or pcie"
        )
    dec_hw = cluster if decode_cluster is None else decode_cluster
    t_pre = prefill_step(cluster, model, prefill, relax=relax).total
    tpot = decode_step(dec_hw, model, decode, relax=relax).total
    whole = Serving(tp=1.0, pp=1.0)
    per_layer_all = kv_bytes_per_token(model, whole)
    # the prompt's KV cache, plus the recurrent state of Mamba-2 layers
    kv_bytes = (prefill.input_len * per_layer_all + ssm_state_bytes(model, whole)) * (
        prefill.batch
    )
    pool = prefill_chips + decode_chips
    w_up = cluster.scale_up.bandwidth * cluster.scale_up.efficiency * prefill.tp
    w_out = cluster.scale_out_bandwidth(relax) * cluster.scale_out.efficiency
    w_out = w_out * prefill.tp
    t_up = kv_bytes / w_up + cluster.scale_up.latency
    t_out = kv_bytes / w_out + cluster.scale_out.latency
    if kv_tier == "pcie":
        h = cluster.host
        w_h = h.host_bandwidth(relax) * prefill.tp
        t_kv = 2.0 * (kv_bytes / w_h + h.pcie_latency)
        inside = 1.0  # no NIC traffic
    else:
        inside = {"scale_up": 1.0, "scale_out": 0.0}.get(kv_tier)
        if inside is None:
            inside = relax.step(cluster.scale_up.size - pool + 0.5)
        t_kv = inside * t_up + (1.0 - inside) * t_out
    ttft = t_pre + t_kv
    x_workers, y_workers = prefill_chips / prefill.chips, decode_chips / decode.chips
    per_prefill = prefill.batch / t_pre  # requests/s of one prefill worker
    per_decode = decode.batch / (decode.output_len * tpot)  # of one decode worker
    prefill_rate = x_workers * per_prefill
    decode_rate = y_workers * per_decode
    rate = relax.min(prefill_rate, decode_rate)
    ok = relax.step(ttft_slo - ttft, scale=ttft) * relax.step(
        tpot_slo - tpot, scale=tpot
    )
    tokens = rate * decode.output_len
    usd_h = hourly_cost(cluster, prefill_chips) + hourly_cost(dec_hw, decode_chips)
    context = prefill.input_len + decode.output_len
    dec_mem = (
        weight_bytes(model, decode)
        + decode.rank_batch
        * (kv_bytes_per_token(model, decode) * context + ssm_state_bytes(model, decode))
        + dec_hw.chip.reserved_memory
    )
    return Disaggregation(
        ttft=ttft,
        tpot=tpot,
        kv_transfer=t_kv,
        kv_bytes=kv_bytes / prefill.batch,
        kv_bandwidth_demand=kv_bytes / prefill.batch * rate,
        kv_nic_demand=(1.0 - inside) * kv_bytes / prefill.batch * rate / prefill_chips,
        requests_per_s=rate,
        goodput=rate * ok,
        output_tokens_per_s=tokens,
        usd_per_million_tokens=usd_per_million_tokens(usd_h, tokens),
        decode_memory_per_gpu=dec_mem,
        decode_feasible=dec_mem <= dec_hw.chip.hbm_capacity,
        prefill_workers=x_workers,
        decode_workers=y_workers,
        prefill_requests_per_s=prefill_rate,
        decode_requests_per_s=decode_rate,
        balanced_decode_per_prefill=per_prefill / per_decode,
    )
