"""One description per collective: NIC bytes, communication time and the trace are all
read off the same `Collective` records, over dense / MoE / LatentMoE / MLA mappings,
capacity factors and latent widths; the two drifts this replaced stay fixed."""

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.collectives import (
    collective_time,
    dispatch_scale_out_bytes,
    dispatch_time,
    p2p_scale_out_bytes,
    p2p_time,
    scale_out_bytes,
)
from diffperf.model.comm import (
    Collective,
    group_placement,
    instance_time,
    nic_bytes,
    term,
)
from diffperf.model.phases import phase_collectives, phase_shape
from diffperf.model.trace import train_trace
from diffperf.model.train import layer_passes, step_collectives

EXACT = dp.Exact()
RTOL = 1e-9
HW = {name: dp.load_hardware(name) for name in ("dgx_h100", "b200", "gb200_nvl72")}
MODELS = {
    name: dp.load_workload(name)
    for name in ("llama3_8b", "qwen3_30b_a3b", "nemotron3_super", "deepseek_v3")
}
QWEN_EP16 = dict(dp=16, ep=16, global_batch=32, seq_len=4096)
NEMO_EP64 = dict(dp=64, ep=64, global_batch=64, seq_len=8192)
CASES = [
    # dense: TP + SP, pipeline over 2 nodes; interleaved + CP + full recompute + ZeRO-3
    ("dgx_h100", "llama3_8b", dict(tp=8, pp=2, dp=2, global_batch=16), {}),
    ("dgx_h100", "llama3_8b", dict(tp=4, cp=2, pp=2, vpp=2, dp=2, global_batch=8,
                                   recompute="full", tp_overlap=0.5, zero=3), {}),
    # MoE over 2 nodes: dropless, token dropping at capacity 2; etp, overlap, recompute
    ("dgx_h100", "qwen3_30b_a3b", QWEN_EP16, {"capacity_factor": 0.0}),
    ("dgx_h100", "qwen3_30b_a3b", QWEN_EP16, {"capacity_factor": 2.0}),
    ("dgx_h100", "qwen3_30b_a3b", dict(tp=2, pp=2, dp=8, ep=8, etp=2, global_batch=32,
                                       ep_overlap=1.0, recompute="full", zero=0),
     {"capacity_factor": 1.25}),
    # LatentMoE (+ Mamba-2 hybrid) at three latent widths
    ("b200", "nemotron3_super", NEMO_EP64, {"moe_latent_dim": 1024.0}),
    ("b200", "nemotron3_super", NEMO_EP64, {"moe_latent_dim": 512.0}),
    ("b200", "nemotron3_super", NEMO_EP64, {"moe_latent_dim": 0.0}),
    # MLA + MTP on a 72-GPU domain spilling over the NICs, EP overlapped
    ("gb200_nvl72", "deepseek_v3", dict(pp=8, vpp=2, dp=32, ep=32, global_batch=256,
                                        seq_len=4096, ep_overlap=1.0), {}),
]  # fmt: skip
IDS = [f"{m}-{i}" for i, (_, m, _, _) in enumerate(CASES)]


def _job(hw, model, kw, change):
    m = MODELS[model]
    for field, value in change.items():
        m = eqx.tree_at(lambda t, f=field: getattr(t, f), m, value)
    return HW[hw], m, dp.Parallelism(**kw)


def _closed_form_nic(cluster, r):
    """Bytes one chip sends over its NICs in one instance, from `collectives` only."""
    if r.kind == "p2p":
        return p2p_scale_out_bytes(cluster, r.nbytes, r.stride, relax=EXACT)
    if r.fanout is not None:
        return dispatch_scale_out_bytes(
            cluster, r.nbytes, r.fanout, r.group, r.stride, relax=EXACT
        )
    return scale_out_bytes(cluster, r.kind, r.nbytes, r.group, r.stride, relax=EXACT)


def _closed_form_time(cluster, r):
    if r.kind == "p2p":
        return p2p_time(cluster, r.nbytes, r.stride, relax=EXACT)
    if r.fanout is not None:
        return dispatch_time(
            cluster, r.nbytes, r.fanout, r.group, r.stride, relax=EXACT
        )
    return collective_time(cluster, r.kind, r.nbytes, r.group, r.stride, relax=EXACT)


@pytest.mark.parametrize("hw,model,kw,change", CASES, ids=IDS)
def test_nic_bytes_time_and_trace_come_from_the_same_records(hw, model, kw, change):
    cluster, m, mapping = _job(hw, model, kw, change)
    b = dp.train_step(cluster, m, mapping)
    records = step_collectives(cluster, m, mapping)
    # NIC bytes: every record, at the closed form of its kind, times its count
    want = sum(float(r.count * _closed_form_nic(cluster, r)) for r in records)
    np.testing.assert_allclose(float(b.nic_bytes), want, rtol=RTOL)
    # communication time: exposed + overlapped = Σ count·time per parallel axis; the
    # recomputed forward's exposed part sits in `recompute`
    raw = collections.defaultdict(float)
    for r in records:
        raw[r.axis] += float(r.count * _closed_form_time(cluster, r))
    lp = layer_passes(cluster, m, mapping, relax=EXACT)
    per_step = float(
        mapping.microbatches() * (m.n_layers / mapping.pp + m.n_mtp_layers)
    )
    for axis in ("tp", "cp", "ep"):
        shown = float(
            getattr(b, f"{axis}_comm") + getattr(b, f"overlapped_{axis}_comm")
        )
        again = per_step * float(lp.exposed[(axis, "recompute")])
        np.testing.assert_allclose(shown + again, raw[axis], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(
        float(b.dp_comm + b.overlapped_dp_comm), raw["dp"], rtol=1e-7, atol=1e-12
    )
    # pipeline: the critical path crosses every boundary, one send time per hop
    (pp,) = [r for r in records if r.axis == "pp"]
    p, v, mb = float(mapping.pp), float(mapping.vpp), float(mapping.microbatches())
    hops = 0.0 if p == 1 else 2.0 * ((p - 1) * v + (mb if v == 1 else 0.0))
    np.testing.assert_allclose(
        float(b.pp_p2p),
        hops * float(instance_time(cluster, pp, relax=EXACT)),
        rtol=1e-7,
    )
    # trace: on the pacing stage, each exposed comm term is drawn as one slice per
    # record, the slices carry that record's fields and add up to the term
    trace, _ = train_trace(cluster, m, mapping)
    last = int(round(p)) - 1
    drawn = collections.defaultdict(float)
    fields = {
        (r.kind, float(r.nbytes), float(r.group), float(r.stride)) for r in records
    }
    for e in trace["traceEvents"]:
        a = e.get("args", {})
        if e["ph"] != "X" or e["pid"] != last or "collective" not in a:
            continue
        assert (a["collective"], a["bytes"], a["group"], a["stride"]) in fields
        drawn[a["layer_term"]] += e["dur"] * 1e-6
    for name in ("tp_comm", "cp_comm", "ep_comm"):
        np.testing.assert_allclose(
            drawn[name], float(getattr(b, name)), rtol=1e-6, atol=1e-12
        )


def _ep_nic(cluster, m, mapping, kind="all_to_all"):
    """NIC bytes of the EP collectives of one kind: the token dispatch and combine
    (all_to_all), or the dropless dispatcher's token-count exchange (all_gather)."""
    records = step_collectives(cluster, m, mapping)
    mine = [r for r in records if r.axis == "ep" and r.kind == kind]
    return float(nic_bytes(cluster, mine, relax=EXACT))


def test_capacity_factor_scales_ep_traffic_and_time_alike():
    """Qwen3-30B, capacity factor 0 → 2: ep_comm doubled but nic_bytes did not."""
    cluster, mapping = HW["dgx_h100"], dp.Parallelism(**QWEN_EP16)
    out = {}
    for cf in (0.0, 2.0):
        m = eqx.tree_at(lambda t: t.capacity_factor, MODELS["qwen3_30b_a3b"], cf)
        b = dp.train_step(cluster, m, mapping)
        out[cf] = (float(b.ep_comm), float(b.nic_bytes), _ep_nic(cluster, m, mapping))
    (t0, n0, e0), (t2, n2, e2) = out[0.0], out[2.0]
    np.testing.assert_allclose(e2, 2.0 * e0, rtol=RTOL)  # padded buffers move twice
    np.testing.assert_allclose(n2 - n0, e2 - e0, rtol=RTOL)  # the rest is unchanged
    assert 1.8 < t2 / t0 <= 2.0 and n2 > n0
    # the closed form: 4 all-to-alls (dispatch, combine; fwd, bwd) per MoE layer and
    # microbatch, S = T·D·b·cf bytes to k = 8 of 16 ranks over 2 domains
    m = MODELS["qwen3_30b_a3b"]
    tokens = 4096.0  # microbatch 1 · S
    s = tokens * float(m.expert_input_dim) * 2.0 * 2.0
    per = s * (2 - 1) * (1 - (1 - 1 / 2) ** 8)
    mbs = 32 / 16
    want = 4 * per * float(m.n_layers) * float(m.moe_fraction) * mbs
    np.testing.assert_allclose(e2, want, rtol=RTOL)
    # beside the tokens, the dropless dispatcher all-gathers the per-expert token
    # counts (8 B per expert and rank) before each forward dispatch: tiny
    counts = _ep_nic(cluster, eqx.tree_at(lambda t: t.capacity_factor, m, 0.0),
                     mapping, kind="all_gather")  # fmt: skip
    assert 0 < counts < 1e-3 * e0


def test_latent_moe_tokens_cross_the_network_at_the_latent_width():
    """Nemotron 3 Super: EP tokens were counted at d_model 4096, not the 1024 latent."""
    cluster, mapping = HW["b200"], dp.Parallelism(**NEMO_EP64)
    nemo = MODELS["nemotron3_super"]
    assert float(nemo.moe_latent_dim) == 1024.0 and float(nemo.d_model) == 4096.0
    wide = eqx.tree_at(lambda t: t.moe_latent_dim, nemo, 0.0)
    ratio = _ep_nic(cluster, nemo, mapping) / _ep_nic(cluster, wide, mapping)
    np.testing.assert_allclose(ratio, 1024.0 / 4096.0, rtol=RTOL)
    lat = dp.train_step(cluster, nemo, mapping)
    full = dp.train_step(cluster, wide, mapping)

    # the step's NIC bytes fall by the EP bytes saved, less the DP bytes of the latent
    # projections (parameters that the wide model does not have)
    def dp_nic(x):
        records = [r for r in step_collectives(cluster, x, mapping) if r.axis == "dp"]
        return float(nic_bytes(cluster, records, relax=EXACT))

    saved = _ep_nic(cluster, wide, mapping) - _ep_nic(cluster, nemo, mapping)
    extra = dp_nic(nemo) - dp_nic(wide)
    np.testing.assert_allclose(
        float(full.nic_bytes - lat.nic_bytes), saved - extra, rtol=1e-9
    )
    assert float(lat.ep_comm) < 0.3 * float(full.ep_comm)


def test_serving_time_and_nic_demand_share_the_records():
    cluster, m = HW["dgx_h100"], MODELS["qwen3_30b_a3b"]
    serving = dp.Serving(tp=8, pp=2, ep=8, batch=64, input_len=1024, output_len=256)
    for phase, step in (("prefill", dp.prefill), ("decode", dp.decode_step)):
        pb = step(cluster, m, serving)
        records = phase_collectives(m, serving, phase_shape(m, serving, EXACT, phase),
                                    relax=EXACT)  # fmt: skip
        for axis in ("tp", "ep"):
            mine = [r for r in records if r.axis == axis]
            want = sum(float(r.count * _closed_form_time(cluster, r)) for r in mine)
            np.testing.assert_allclose(
                float(getattr(pb, f"{axis}_comm")), want, rtol=RTOL
            )
        (pp,) = [r for r in records if r.axis == "pp"]
        np.testing.assert_allclose(
            float(pb.pp_p2p), float(_closed_form_time(cluster, pp)), rtol=RTOL
        )
        # the stage send leaves the 8-GPU node: its bytes are the chip's NIC bytes
        np.testing.assert_allclose(
            float(nic_bytes(cluster, records, relax=EXACT)), float(pp.nbytes), rtol=RTOL
        )
    cb = dp.continuous_batching(cluster, m, serving)
    assert float(cb["nic_demand"]) > 0.0


def test_records_are_pytrees_that_jit_vmap_and_differentiate():
    cluster, mapping = HW["dgx_h100"], dp.Parallelism(**QWEN_EP16)
    base = MODELS["qwen3_30b_a3b"]

    def nic(cf):
        m = eqx.tree_at(lambda t: t.capacity_factor, base, cf)
        return dp.train_step(cluster, m, mapping, relax=dp.Smooth(16.0)).nic_bytes

    cfs = jnp.array([1.0, 1.5, 2.0])
    batched = jax.jit(jax.vmap(nic))(cfs)
    np.testing.assert_allclose(batched[1], nic(1.5), rtol=1e-9)
    # affine in the capacity factor: the EP bytes scale with it, the rest does not
    np.testing.assert_allclose(batched[2] - batched[1], batched[1] - batched[0])
    grad = jax.grad(nic)(1.5)
    assert np.isfinite(float(grad)) and float(grad) > 0.0


def test_record_fields_term_and_placement():
    r = Collective("all_to_all", "ep", "recompute", nbytes=1e6, group=16.0, stride=1.0,
                   count=2.0, fanout=8.0)  # fmt: skip
    assert term(r) == "recompute"
    assert term(eqx.tree_at(lambda c: c.count, r, 4.0)) == "recompute"
    n_in, n_out = group_placement(HW["dgx_h100"], r, relax=EXACT)
    assert (float(n_in), float(n_out)) == (8.0, 2.0)
    send = Collective("p2p", "pp", "step", nbytes=1.0, group=2.0, stride=8.0, count=1.0)
    assert term(send) == "pp_p2p"
    n_in, n_out = group_placement(HW["dgx_h100"], send, relax=EXACT)
    assert (float(n_in), float(n_out)) == (1.0, 2.0)  # the peer is in the next node


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(kind="broadcast"), r"Collective\(kind='broadcast'\) must be one of"),
        (dict(axis="sp"), r"Collective\(axis='sp'\) must be one of"),
        (dict(phase="warmup"), r"Collective\(phase='warmup'\) must be one of"),
        (dict(kind="all_reduce", fanout=2.0), r"fanout=.*all_to_all only"),
    ],
)
def test_bad_record_is_a_one_line_value_error(kw, match):
    args = dict(kind="all_to_all", axis="ep", phase="forward") | kw
    with pytest.raises(ValueError, match=match) as e:
        Collective(**args, nbytes=1.0, group=2.0, stride=1.0, count=1.0)
    assert "\n" not in str(e.value)
