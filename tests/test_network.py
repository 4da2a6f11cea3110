"""Networks, host and offload: closed forms, NIC demand, gradients, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import diffperf as dp
from diffperf.model.collectives import (
    collective_time,
    dispatch_scale_out_bytes,
    p2p_scale_out_bytes,
    scale_out_bytes,
)

from .helpers import f64, get_leaf, scale_leaf

EXACT = dp.Exact()
SMOOTH = dp.Smooth(16.0)
DGX = dp.load_hardware("dgx_h100")
NVL72 = dp.load_hardware("gb200_nvl72")
V5P_POD = dp.load_hardware("tpu_v5p_pod")
QWEN = dp.load_workload("qwen3_30b_a3b")
LLAMA8 = dp.load_workload("llama3_8b")
ALPHA, W, S = 2e-6, 100e9, 64e6


def _domain(dims=(), topology="switch", size=None):
    """A cluster whose scale-up tier is `dims` (or one `topology` dim of `size`)."""
    size = size or float(np.prod([d.size for d in dims]))
    tier = dp.NetworkTier(
        bandwidth=W, latency=ALPHA, efficiency=1.0, size=size, topology=topology,
        dims=tuple(dims),
    )  # fmt: skip
    return eqx.tree_at(lambda c: c.scale_up, DGX, tier)


def _ring(e):
    return dp.Dimension(size=e, bandwidth=W, latency=ALPHA, topology="ring")


@pytest.mark.parametrize(
    "topology, lat, bw",
    [
        ("switch", lambda e: ALPHA, lambda e: (e - 1) / e * S / W),
        ("full_mesh", lambda e: ALPHA, lambda e: (e - 1) / e * S / W),
        ("ring", lambda e: e / 2 * ALPHA, lambda e: e / 4 * S / W),
    ],
)
@pytest.mark.parametrize("e", [2.0, 4.0, 8.0])
def test_all_to_all_matches_closed_form_on_one_dimension(topology, lat, bw, e):
    c = _domain(topology=topology, size=e)
    t = collective_time(c, "all_to_all", S, e, 1.0, relax=EXACT)
    np.testing.assert_allclose(t, lat(e) + bw(e), rtol=1e-12)


def test_all_to_all_on_a_2d_torus_routes_dimension_by_dimension():
    # 4 x 4 torus of rings: latency Σ e/2·α, bandwidth max_i (e_i/4)·S/W = S/W
    c = _domain(dims=(_ring(4.0), _ring(4.0)))
    t = collective_time(c, "all_to_all", S, 16.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(t, 4 * ALPHA + S / W, rtol=1e-12)


def test_reduce_scatter_on_a_torus_is_the_rotated_bucket_algorithm():
    # 4 x 4: each dim carries (3/4)·(S/2)·(1 + 1/4); latency 3α per dim (Chan 2007)
    c = _domain(dims=(_ring(4.0), _ring(4.0)))
    t = collective_time(c, "reduce_scatter", S, 16.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(t, 6 * ALPHA + 0.75 * 0.5 * 1.25 * S / W, rtol=1e-12)
    # a group along the second axis only (stride 4) is one ring of 4
    t = collective_time(c, "all_gather", S, 4.0, 4.0, relax=EXACT)
    np.testing.assert_allclose(t, 3 * ALPHA + 0.75 * S / W, rtol=1e-12)
    # ... and along the first only (stride 1, 4 ranks) too
    t1 = collective_time(c, "all_gather", S, 4.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(t1, t, rtol=1e-12)


def test_torus_uses_all_axes_at_once_on_a_cube():
    # 3D 16x20x28 pod: an all-gather over the pod moves S through 3 axes of 180 GB/s;
    # the bucket rotations keep it within 5% of S/(3·180e9) bandwidth time.
    up = V5P_POD.scale_up
    t = collective_time(V5P_POD, "all_gather", 1e9, 8960.0, 1.0, relax=EXACT)
    lat = sum((d.size - 1) * d.latency for d in up.dims)
    bw = (t - lat) * up.efficiency * 3 * 180e9 / 1e9
    assert 1.0 <= float(bw) < 1.3


def test_single_switch_dimension_matches_the_old_ring_formula():
    c = _domain(topology="switch", size=8.0)
    for kind, factor in (("reduce_scatter", 1.0), ("all_gather", 1.0)):
        t = collective_time(c, kind, S, 8.0, 1.0, relax=EXACT)
        ring = 7 * ALPHA + 7 / 8 * S / W
        np.testing.assert_allclose(t, factor * ring, rtol=1e-12)
    t = collective_time(c, "all_reduce", S, 8.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(t, 2 * (7 * ALPHA + 7 / 8 * S / W), rtol=1e-12)


def test_oversubscription_slows_only_all_to_all_beyond_a_leaf():
    out = DGX.scale_out
    tapered = eqx.tree_at(
        lambda c: (c.scale_out.oversubscription, c.scale_out.leaf_size),
        DGX,
        (f64(2.0), f64(4.0)),
    )
    del out
    for kind in ("all_reduce", "reduce_scatter"):
        a = collective_time(DGX, kind, S, 256.0, 1.0, relax=EXACT)
        b = collective_time(tapered, kind, S, 256.0, 1.0, relax=EXACT)
        np.testing.assert_allclose(a, b, rtol=1e-12)
    small = collective_time(tapered, "all_to_all", S, 32.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(
        small, collective_time(DGX, "all_to_all", S, 32.0, 1.0, relax=EXACT)
    )
    big = collective_time(tapered, "all_to_all", S, 256.0, 1.0, relax=EXACT)
    assert big > collective_time(DGX, "all_to_all", S, 256.0, 1.0, relax=EXACT)


def test_scale_out_bytes_closed_forms():
    # 64 ranks, 8 per domain: RS sends (n_out−1)/n_out · S/n_in; a2a (n − n_in)/n · S
    rs = scale_out_bytes(DGX, "reduce_scatter", S, 64.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(rs, 7 / 8 * S / 8, rtol=1e-12)
    ar = scale_out_bytes(DGX, "all_reduce", S, 64.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(ar, 2 * rs, rtol=1e-12)
    a2a = scale_out_bytes(DGX, "all_to_all", S, 64.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(a2a, 56 / 64 * S, rtol=1e-12)
    assert p2p_scale_out_bytes(DGX, S, 4.0, relax=EXACT) == 0.0
    assert p2p_scale_out_bytes(DGX, S, 8.0, relax=EXACT) == S
    # dispatch: S·(n_out − 1)·(1 − (1 − 1/n_out)^k)
    d = dispatch_scale_out_bytes(DGX, S, 8.0, 32.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(d, S * 3 * (1 - 0.75**8), rtol=1e-12)


@pytest.mark.parametrize(
    "cluster, model, mapping",
    [
        (DGX, LLAMA8, dp.Parallelism(tp=8, global_batch=8, seq_len=4096)),
        (DGX, QWEN, dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)),
        (
            NVL72,
            QWEN,
            dp.Parallelism(tp=2, pp=4, dp=8, ep=16, global_batch=64, seq_len=4096),
        ),
        (V5P_POD, LLAMA8, dp.Parallelism(tp=4, dp=256, global_batch=256)),
    ],
    ids=["dgx-tp8", "dgx-ep8", "nvl72-64", "v5p-1024"],
)
def test_nic_demand_is_zero_inside_one_scale_up_domain(cluster, model, mapping):
    b = dp.train_step(cluster, model, mapping)
    assert float(b.nic_bytes) == 0.0 and float(b.nic_demand) == 0.0


def test_nic_demand_counts_off_domain_traffic():
    one = dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)
    two = dp.Parallelism(dp=16, ep=16, global_batch=128, seq_len=4096)
    b = dp.train_step(DGX, QWEN, two)
    assert (
        float(b.nic_bytes) > 0 and float(dp.train_step(DGX, QWEN, one).nic_bytes) == 0
    )
    # the demand stays below what the NICs can carry when the NICs bind ep_comm
    assert float(b.nic_demand) <= float(DGX.scale_out_bandwidth())


def test_pcie_caps_the_nic_share_and_the_switch_uplink_is_shared():
    h = DGX.host
    gen5 = eqx.tree_at(
        lambda x: (x.pcie_bandwidth, x.nics_per_node), h, (f64(64e9), f64(16.0))
    )
    # 2 NICs of 50 GB/s per GPU but one PCIe 5 x16 link: the link binds
    np.testing.assert_allclose(gen5.nic_bandwidth(50e9), 64e9, rtol=1e-12)
    # two GPUs behind one switch with a 64 GB/s uplink get 32 GB/s each to the host
    sw = eqx.tree_at(
        lambda x: (x.pcie_switch_chips, x.pcie_switch_uplink),
        gen5,
        (f64(2.0), f64(64e9)),
    )
    np.testing.assert_allclose(sw.host_bandwidth(), 32e9, rtol=1e-12)
    # NICs below the switch (GPUDirect): NIC traffic does not touch the uplink
    sw_nic = eqx.tree_at(lambda x: x.pcie_switch_nics, sw, f64(2.0))
    np.testing.assert_allclose(sw_nic.nic_bandwidth(50e9), 64e9, rtol=1e-12)
    # NICs elsewhere: the uplink share caps them too
    np.testing.assert_allclose(sw.nic_bandwidth(50e9), 32e9, rtol=1e-12)
    # PCIe generation and lanes instead of a bandwidth
    gen = dp.Host(**{**_host_kwargs(h), "pcie_bandwidth": 0.0, "pcie_gen": 6})
    np.testing.assert_allclose(gen.pcie_link(), 16 * 7.563e9, rtol=1e-12)


def _host_kwargs(h):
    return {k: getattr(h, k) for k in h.__dataclass_fields__ if k not in ("pcie_gen",)}


def test_optimizer_offload_frees_hbm_and_costs_transfer_time():
    m = dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)
    base = dp.train_step(DGX, QWEN, m)
    off = dp.train_step(
        DGX, QWEN, eqx.tree_at(lambda x: x.offload_optimizer, m, f64(1.0))
    )
    assert float(off.memory_per_gpu) < float(base.memory_per_gpu)
    assert float(off.offload_memory) > 0
    assert float(off.offload + off.overlapped_offload) > 0
    assert float(off.total) >= float(base.total)
    # a Grace C2C tier (450 GB/s) hides more than host DRAM over PCIe (50 GB/s)
    c2c = eqx.tree_at(
        lambda c: c.memory_tier,
        DGX,
        dp.MemoryTier(capacity=240e9, bandwidth=450e9, kind="c2c"),
        is_leaf=lambda x: x is None,
    )
    acts = eqx.tree_at(lambda x: x.offload_activations, m, f64(1.0))
    slow = dp.train_step(DGX, QWEN, acts)
    fast = dp.train_step(c2c, QWEN, acts)
    assert float(fast.offload) <= float(slow.offload)
    assert float(slow.memory_per_gpu) < float(base.memory_per_gpu)


def test_input_pipeline_stalls_when_the_cpus_fall_behind():
    m = dp.Parallelism(tp=8, global_batch=8, seq_len=4096)
    slow_cpu = eqx.tree_at(lambda c: c.host.cpu_time_per_token, DGX, f64(1e-2))
    b = dp.train_step(slow_cpu, LLAMA8, m)
    t_in = slow_cpu.host.input_time(8 * 4096 / 8)
    rest = float(b.total - b.input_stall)
    np.testing.assert_allclose(b.input_stall, max(float(t_in) - rest, 0), rtol=1e-9)
    assert float(b.input_stall) > 0
    assert float(dp.train_step(DGX, LLAMA8, m).input_stall) == 0.0


NEW_LEAVES = [
    "scale_up.dims.0.bandwidth",
    "scale_up.dims.1.latency",
    "scale_out.oversubscription",
    "scale_out.leaf_size",
    "host.pcie_lanes",
    "host.pcie_switch_uplink",
    "host.pcie_switch_chips",
    "host.pcie_switch_nics",
    "host.cpu_time_per_token",
    "scale_up.dims.0.size",
    "host.nics_per_node",
    "memory_tier.bandwidth",
    "memory_tier.latency",
]


def _rich_cluster():
    """A 2D-torus scale-up, tapered scale-out, PCIe gen5 switch, C2C memory tier."""
    c = _domain(dims=(_ring(4.0), _ring(2.0)))
    h = c.host
    host = dp.Host(
        **{
            **_host_kwargs(h),
            "pcie_bandwidth": 0.0,
            "pcie_gen": 5,
            "pcie_switch_chips": 2.0,
            "pcie_switch_uplink": 64e9,
            "cpu_time_per_token": 2e-4,
        }
    )
    out = eqx.tree_at(
        lambda t: (t.oversubscription, t.leaf_size), c.scale_out, (f64(2.0), f64(2.0))
    )
    tier = dp.MemoryTier(capacity=240e9, bandwidth=200e9, latency=2e-6, kind="c2c")
    return dp.Cluster(
        chip=c.chip, scale_up=c.scale_up, scale_out=out, host=host, memory_tier=tier
    )


MAP_RICH = dp.Parallelism(
    dp=32,
    ep=32,
    global_batch=128,
    seq_len=2048,
    offload_optimizer=0.5,
    offload_activations=0.5,
)


def test_gradients_finite_for_every_new_leaf_and_match_finite_differences():
    c = _rich_cluster()

    def f(cl):
        return dp.train_step(cl, QWEN, MAP_RICH, relax=SMOOTH).total

    g = jax.grad(f)(c)
    for path in NEW_LEAVES:
        assert np.isfinite(float(get_leaf(g, path))), path
    for path in ("scale_up.dims.0.bandwidth", "memory_tier.bandwidth"):
        x = get_leaf(c, path)
        eps = 1e-5
        hi, lo = f(scale_leaf(c, path, 1 + eps)), f(scale_leaf(c, path, 1 - eps))
        fd = (hi - lo) / (2 * eps * x)
        np.testing.assert_allclose(get_leaf(g, path), fd, rtol=1e-4, atol=1e-20)
    gm = jax.grad(
        lambda m: dp.train_step(c, QWEN, m, relax=SMOOTH).total, allow_int=True
    )(MAP_RICH)
    assert np.isfinite(float(gm.offload_optimizer))
    assert np.isfinite(float(gm.offload_activations))


@settings(max_examples=10, deadline=None)
@given(
    path=st.sampled_from(
        [
            "scale_up.dims.0.bandwidth",
            "scale_up.dims.1.bandwidth",
            "scale_out.bandwidth",
            "host.nics_per_node",
            "host.pcie_lanes",
            "host.pcie_switch_uplink",
            "memory_tier.bandwidth",
        ]
    ),
    factor=st.floats(1.0, 8.0),
)
def test_more_bandwidth_is_never_slower(path, factor):
    c = _rich_cluster()
    base = dp.train_step(c, QWEN, MAP_RICH).total
    more = dp.train_step(scale_leaf(c, path, factor), QWEN, MAP_RICH).total
    assert float(more) <= float(base) * (1 + 1e-12)


def test_vmap_over_a_dimension_bandwidth():
    c = _rich_cluster()
    bws = jnp.asarray([50e9, 100e9, 200e9])

    def f(bw):
        cl = eqx.tree_at(lambda x: x.scale_up.dims[0].bandwidth, c, bw)
        return dp.train_step(cl, QWEN, MAP_RICH).total

    out = jax.vmap(f)(bws)
    np.testing.assert_allclose(out[1], f(bws[1]), rtol=1e-12)


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: dp.Dimension(size=4.0, bandwidth=1e9, latency=0.0, topology="hex"),
         "Dimension(topology='hex') must be one of switch, ring, full_mesh"),
        (lambda: dp.NetworkTier(bandwidth=1e9, latency=0.0, efficiency=1.0,
                                topology="dragonfly"),
         "NetworkTier(topology='dragonfly') must be one of"),
        (lambda: _domain(dims=(_ring(4.0), _ring(4.0)), size=32.0),
         "4 x 4 = 16 must multiply to size=32"),
        (lambda: dp.NetworkTier(bandwidth=1e9, latency=0.0, efficiency=1.0,
                                oversubscription=0.5),
         "NetworkTier(oversubscription=0.5) must be >= 1"),
        (lambda: dp.Host(**{**_host_kwargs(DGX.host), "pcie_lanes": -16.0}),
         "Host(pcie_lanes=-16) must be > 0"),
        (lambda: dp.Host(**{**_host_kwargs(DGX.host), "pcie_gen": 7}),
         "Host(pcie_gen=7) must be one of 3, 4, 5, 6"),
        (lambda: dp.MemoryTier(capacity=1e9, bandwidth=-1.0),
         "MemoryTier(bandwidth=-1) must be > 0"),
        (lambda: dp.Parallelism(offload_optimizer=1.5),
         "Parallelism(offload_optimizer=1.5) must be in [0, 1]"),
    ],
)  # fmt: skip
def test_bad_input_raises_one_line_value_error(build, pattern):
    with pytest.raises(ValueError) as e:
        build()
    assert pattern in str(e.value) and "\n" not in str(e.value)


def _cli(capsys, *argv):
    from diffperf.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_json_reports_nic_demand_and_offload(capsys):
    import json

    rc, out, _ = _cli(
        capsys, "train", "--hardware", "dgx_h100", "--model", "qwen3_30b_a3b",
        "--gpus", "16", "--ep", "16", "--seq-len", "4096", "--global-batch", "64",
        "--offload-optimizer", "0.5", "--json",
    )  # fmt: skip
    assert rc == 0
    d = json.loads(out)
    assert d["nic_demand_bytes_per_s_per_gpu"] > 0
    np.testing.assert_allclose(
        d["nic_demand_bytes_per_s_per_node"], 8 * d["nic_demand_bytes_per_s_per_gpu"]
    )
    assert d["offload_memory_per_gpu_bytes"] > 0
    assert {"input_stall", "offload"} <= set(d["breakdown"])
    np.testing.assert_allclose(sum(d["breakdown"].values()), d["step_time_s"], 1e-5)


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--offload-optimizer", "1.5"], "--offload-optimizer=1.5 must be in [0, 1]"),
        (["--offload-activations", "x"], "--offload-activations must be a number"),
    ],
)
def test_cli_bad_offload_exits_2(capsys, argv, pattern):
    rc, _, err = _cli(
        capsys, "train", "--hardware", "h100_sxm", "--model", "llama3_8b",
        "--gpus", "8", *argv,
    )  # fmt: skip
    assert rc == 2 and pattern in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "dims, pattern",
    [
        ('[{ size = 4.0, bandwidth = 1e11, latency = 1e-6 }]',
         "must multiply to size=8"),
        ('[{ size = 8.0, bandwidth = 1e11, latency = 1e-6, topology = "tree" }]',
         "Dimension(topology='tree')"),
        ('[{ size = 8.0, bandwidth = -1e11, latency = 1e-6 }]',
         "Dimension(bandwidth=-1e+11) must be > 0"),
        ("4.0", "dims = 4.0 has the wrong type"),
    ],
)  # fmt: skip
def test_bad_dims_in_a_hardware_file_exit_2(capsys, tmp_path, dims, pattern):
    from .test_specs import _h100_text

    text = _h100_text().replace("[scale_out]", f"dims = {dims}\n\n[scale_out]", 1)
    p = tmp_path / "bad.toml"
    p.write_text(text)
    rc, _, err = _cli(
        capsys, "train", "--hardware", str(p), "--model", "llama3_8b", "--gpus", "8"
    )
    assert rc == 2 and pattern in err and err.count("\n") == 1, err


def test_kv_offload_trades_hbm_for_link_time_and_c2c_beats_pcie():
    llama = dp.load_workload("llama3_1_70b")
    s = dp.Serving(tp=4, batch=64, input_len=16384, output_len=1024)
    half = eqx.tree_at(lambda x: x.offload_kv, s, f64(0.5))
    base, off = dp.serve(NVL72, llama, s), dp.serve(NVL72, llama, half)
    assert float(off.memory_per_gpu) < float(base.memory_per_gpu)
    assert float(off.max_batch) > float(base.max_batch)
    assert float(off.decode.kv_offload) > 0 and float(base.decode.kv_offload) == 0
    # T_link = f·B·S·kv / W_tier, exposed beyond the GPU work of the step
    kv = 0.5 * 64 * (16384 + 512) * off.kv_bytes_per_token
    t_link = kv / NVL72.offload_tier().bandwidth
    gpu = sum(v for k, v in off.decode.terms().items() if k not in (
        "host_stall", "kv_offload", "step_overhead"))  # fmt: skip
    np.testing.assert_allclose(off.decode.kv_offload, t_link - gpu, rtol=1e-6)
    assert NVL72.memory_tier.kind == "c2c"
    pcie = eqx.tree_at(
        lambda c: c.memory_tier, NVL72, dp.MemoryTier(capacity=240e9, bandwidth=64e9)
    )
    assert float(dp.serve(pcie, llama, half).tpot) > float(off.tpot)


def test_traces_show_offload_and_input_stall_on_the_critical_path():
    from diffperf.model.trace import infer_trace, train_trace

    from .test_trace import _complete, _critical_checks

    slow_cpu = eqx.tree_at(lambda c: c.host.cpu_time_per_token, DGX, f64(1e-2))
    m = dp.Parallelism(tp=8, global_batch=8, seq_len=4096, offload_activations=1.0)
    trace, b = train_trace(slow_cpu, LLAMA8, m)
    assert float(b.input_stall) > 0 and float(b.offload) > 0
    terms = {k: float(v) for k, v in b.terms().items()}
    _critical_checks(_complete(trace), terms, float(b.total))
    s = dp.Serving(tp=4, batch=64, input_len=4096, output_len=512, offload_kv=0.5)
    trace, pre, dec = infer_trace(NVL72, LLAMA8, s)
    assert float(dec.kv_offload) > 0
    events = [e for e in _complete(trace) if e["args"].get("phase") == "decode"]
    t0 = float(pre.total)
    shifted = [dict(e, ts=e["ts"] - t0 * 1e6) for e in events]
    terms = {k: float(v) for k, v in dec.terms().items()}
    _critical_checks(shifted, terms, float(dec.total))


def test_in_network_reduction_closed_forms():
    c = _domain(topology="switch", size=8.0)
    nvls = eqx.tree_at(
        lambda x: x.scale_up,
        c,
        dp.NetworkTier(
            bandwidth=W,
            latency=ALPHA,
            efficiency=1.0,
            size=8.0,
            in_network_reduction=True,
        ),  # fmt: skip
    )
    ar = collective_time(nvls, "all_reduce", S, 8.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(ar, 2 * ALPHA + 7 / 8 * S / W, rtol=1e-12)
    rs = collective_time(nvls, "reduce_scatter", S, 8.0, 1.0, relax=EXACT)
    np.testing.assert_allclose(rs, ALPHA + 7 / 8 * S / W, rtol=1e-12)
    assert ar < collective_time(c, "all_reduce", S, 8.0, 1.0, relax=EXACT)
    # across domains the hierarchy keeps RS + AG inside (one latency step each)
    big = collective_time(nvls, "all_reduce", S, 64.0, 1.0, relax=EXACT)
    rs_big = collective_time(nvls, "reduce_scatter", S, 64.0, 1.0, relax=EXACT)
    rs_out = rs_big - (ALPHA + 7 / 8 * S / W)
    w_out = float(nvls.scale_out_bandwidth() * nvls.scale_out.efficiency)
    tree = 6 * float(nvls.scale_out.latency) + 2 * S / 8 / w_out
    np.testing.assert_allclose(
        big, 2 * (ALPHA + 7 / 8 * S / W) + min(2 * rs_out, tree), rtol=1e-12
    )
    g = jax.grad(
        lambda w: collective_time(
            eqx.tree_at(lambda x: x.scale_up.bandwidth, nvls, w),
            "all_reduce",
            S,
            64.0,
            1.0,
            relax=SMOOTH,
        )  # fmt: skip
    )(f64(W))
    assert np.isfinite(float(g))


def test_kv_offload_gradient_is_finite_and_positive():
    llama = dp.load_workload("llama3_1_70b")

    def tpot(f):
        s = dp.Serving(tp=4, batch=64, input_len=16384, output_len=1024, offload_kv=f)
        return dp.decode_step(NVL72, llama, s, relax=SMOOTH).total

    g = jax.grad(tpot)(f64(0.5))
    assert np.isfinite(float(g)) and float(g) > 0


def test_a_group_that_fills_the_domain_stays_inside_it_under_smooth():
    """The tie r = size/stride = n (TP 8 on an 8-GPU domain; CP 2 of stride 4) is the
    common case: a scale-free smooth min put 4% of the group's bytes on the NICs at
    Smooth(16) and made a llama3_70b tp4·cp2 step 12% slower than Exact (found by
    hypothesis in test_train's Smooth-vs-Exact property)."""
    from diffperf.model.collectives import ranks_in_domain

    h100 = dp.load_hardware("h100_sxm")
    for n, stride in ((8.0, 1.0), (2.0, 4.0), (4.0, 2.0)):
        got = float(ranks_in_domain(h100, n, stride, relax=dp.Smooth(16.0)))
        assert got == pytest.approx(n, abs=0.01)
        assert float(ranks_in_domain(h100, n, stride, relax=dp.Exact())) == n
    # the group beyond the domain: 16 ranks of stride 1 put 8 in it
    assert float(
        ranks_in_domain(h100, 16.0, 1.0, relax=dp.Smooth(16.0))
    ) == pytest.approx(8.0, abs=0.01)
    model = dp.load_workload("llama3_70b")
    m = dp.Parallelism(tp=4, cp=2, dp=1, global_batch=1, seq_len=2048, zero=0)
    exact = dp.train_step(h100, model, m)
    smooth = dp.train_step(h100, model, m, relax=dp.Smooth(16.0))
    assert float(smooth.total) == pytest.approx(float(exact.total), rel=0.02)
    # was 3.1 GB; what remains is the relu's TIE_SCALE·ln2/p of a rank (0.2% of the
    # gradient bytes)
    assert float(smooth.nic_bytes) < 0.25 * 2**30
