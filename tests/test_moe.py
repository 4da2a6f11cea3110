"""Mixture-of-experts, hybrid (Mamba-2) layers, LatentMoE, MTP, attention variants."""

import json
import math
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model import layer, ops
from diffperf.model.phases import kv_bytes_per_token, ssm_state_bytes

from .helpers import tree_allclose

H100 = dp.load_hardware("h100_sxm")
EXACT, SMOOTH = dp.Exact(), dp.Smooth()


def _no_fixed_costs(cluster):
    """A cluster without per-kernel, dispatch and host-sync costs."""
    return eqx.tree_at(
        lambda c: (
            c.chip.kernel_overhead,
            c.host.dispatch_overhead,
            c.host.sync_overhead,
        ),
        cluster,
        (0.0, 0.0, 0.0),
    )


def _one_expert(dense: dp.Transformer) -> dp.Transformer:
    """The dense model with its MLP as a single routed expert chosen by top-1."""
    return eqx.tree_at(
        lambda m: (m.n_experts, m.top_k, m.d_ff_expert),
        dense,
        (1.0, 1.0, dense.d_ff),
    )


@pytest.mark.parametrize("mapping", [dict(tp=1, dp=8), dict(tp=2, etp=2, pp=2, dp=2)])
def test_one_expert_top1_trains_like_the_dense_model(mapping, monkeypatch):
    dense = dp.load_workload("llama3_8b")
    moe = _one_expert(dense)
    # the grouped GEMM's tile padding (`ops.padded_rows`) is off here: the expert
    # runs the dense MLP's rows exactly (test_grouped_gemm_pads_rows_per_expert)
    monkeypatch.setattr(layer, "GROUPED_TILE_M", 0.0)
    # the only extra weights are the router's D·1 per layer
    np.testing.assert_allclose(
        float(moe.params() - dense.params()),
        float(dense.n_layers * dense.d_model),
        rtol=1e-9,
    )
    mp = dp.Parallelism(**mapping, global_batch=64, seq_len=4096)
    cluster = _no_fixed_costs(H100)
    bd, bm = dp.train_step(cluster, dense, mp), dp.train_step(cluster, moe, mp)
    # FLOPs differ by the router GEMM only: 3 passes × 2·T·D·1 per layer
    router = 6.0 * float(bd.tokens * dense.d_model * dense.n_layers)
    np.testing.assert_allclose(
        float(bm.model_flops - bd.model_flops), router, rtol=1e-6
    )
    # time: the same GEMMs, attention, elementwise work and TP collectives (the
    # expert sharded over etp = tp ranks), plus a small router GEMM; the router
    # (N = 1) is memory-bound, so its share of the GEMM time (~2%) moves with the
    # fitted GEMM efficiency of the bundled H100 spec
    np.testing.assert_allclose(float(bm.total), float(bd.total), rtol=0.03)
    np.testing.assert_allclose(float(bm.matmul), float(bd.matmul), rtol=0.03)
    assert float(bm.tp_comm) == pytest.approx(float(bd.tp_comm), rel=1e-9)
    assert float(bm.attention) == pytest.approx(float(bd.attention), rel=1e-12)


def test_one_expert_top1_serves_like_the_dense_model():
    dense = dp.load_workload("llama3_8b")
    moe = _one_expert(dense)
    sv = dp.Serving(tp=1, batch=16, input_len=1024, output_len=256)
    cluster = _no_fixed_costs(H100)
    rd, rm = dp.serve(cluster, dense, sv), dp.serve(cluster, moe, sv)
    # the same GEMMs plus the router and the token permutation (`permute_bytes`: a
    # top-1 MoE still gathers its tokens into the expert's buffer and back, 4 passes
    # of T·D), ~2.5% of the prefill here
    assert float(rd.ttft) < float(rm.ttft) < 1.03 * float(rd.ttft)
    np.testing.assert_allclose(float(rm.tpot), float(rd.tpot), rtol=0.02)
    assert float(rm.kv_bytes_per_token) == float(rd.kv_bytes_per_token)
    extra = float(rm.memory_per_gpu - rd.memory_per_gpu)  # the routers' weights
    assert extra == pytest.approx(float(dense.n_layers * dense.d_model) * 2.0)


def test_grouped_gemm_pads_rows_per_expert():
    """Each expert's rows are padded to the M tile: a tile per nearly empty expert,
    half a tile of waste on average for a busy one; the traffic is unchanged."""
    tau = ops.GROUPED_TILE_M
    assert tau == 128.0
    rows = ops.padded_rows(jnp.array([0.0, 1.0, 4096.0, 1e6]))
    np.testing.assert_allclose(rows[0], tau)
    np.testing.assert_allclose(rows[1], 1.0 + tau * (1.0 + math.exp(-1.0 / tau)) / 2)
    np.testing.assert_allclose(rows[3], 1e6 + tau / 2.0)
    np.testing.assert_allclose(ops.padded_rows(37.0, 0.0), 37.0)  # no tile: as is
    chip = H100.chip
    args = dict(peak=chip.peak_flops("bf16"), nbytes=2.0, relax=EXACT)
    # a compute-bound grouped GEMM of 300 rows per expert (K = N = 8192, 64
    # experts) computes M_pad ≈ 366 rows per expert, at the efficiency of M_pad
    plain = ops.gemm_time(chip, 300.0, 8192.0, 8192.0, count=64.0, **args)
    tiled = ops.gemm_time(chip, 300.0, 8192.0, 8192.0, count=64.0, m_tile=tau, **args)
    pad = float(ops.padded_rows(300.0))
    x = 3.0 / (1.0 / pad + 2.0 / 8192.0)
    eff = chip.matmul_efficiency * x / (x + chip.matmul_half_dim)
    flops = 2.0 * pad * 8192.0**2 * 64.0
    _, traffic, _ = ops.gemm_work(chip, 300.0, 8192.0, 8192.0, count=64.0,
                                  nbytes=2.0, relax=EXACT)  # fmt: skip
    assert flops / (args["peak"] * eff) > float(ops.memory_time(chip, traffic))
    expect = float(flops / (args["peak"] * eff))
    assert float(tiled) == pytest.approx(expect, rel=1e-6)
    assert float(tiled) > 1.2 * float(plain)


def test_tile_padding_enters_serving_and_training(monkeypatch):
    """The layer model pads the expert GEMMs to the kernel's M tile: 128 rows in
    training's grouped GEMMs (a microbatch of 2048 rows per local expert: +~3%), 16 in
    an inference engine's fused MoE kernels (a prefill of 8 prompts, ~512 rows per
    expert: +~1.5%; the 128-row tile would add ~13%), and nothing in a decode step,
    whose few rows per expert leave the GEMMs bound by reading the experts' weights."""
    m = dp.load_workload("qwen3_30b_a3b")
    sv = dp.Serving(tp=1, batch=8, input_len=1024, output_len=64)
    mp = dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)

    def run():
        return tuple(
            float(b.matmul)
            for b in (
                dp.decode_step(H100, m, sv),
                dp.prefill(H100, m, sv),
                dp.train_step(H100, m, mp),
            )
        )

    dec, pre, train = run()
    monkeypatch.setattr(layer, "SERVING_TILE_M", layer.GROUPED_TILE_M)
    pre128 = run()[1]
    monkeypatch.setattr(layer, "GROUPED_TILE_M", 0.0)
    monkeypatch.setattr(layer, "SERVING_TILE_M", 0.0)
    dec0, pre0, train0 = run()
    assert dec == pytest.approx(dec0, rel=1e-9)
    assert 1.003 * pre0 < pre < 1.03 * pre0 and 1.04 * pre0 < pre128 < 1.15 * pre0
    assert 1.005 * train0 < train < 1.04 * train0


def _hybrid():
    return dp.load_workload("nemotron3_nano")


def test_nemotron_h_mix_counts_and_caches():
    m = _hybrid()
    assert float(m.n_layers * m.attention_fraction) == pytest.approx(6.0)
    assert float(m.n_layers * m.ssm_fraction) == pytest.approx(23.0)
    assert float(m.n_layers * m.moe_fraction) == pytest.approx(23.0)
    sv = dp.Serving(tp=1, batch=1)
    # KV cache only for the 6 attention layers: 6 · 2·K·H·2 B per token
    assert float(kv_bytes_per_token(m, sv)) == pytest.approx(6 * 2 * 2 * 128 * 2.0)
    # Mamba-2 state: 23 layers × (fp32 Hs·Ps·Ns + conv window (d_in + 2GNs)·3·2 B)
    state = 4.0 * 64 * 64 * 128 + (4096 + 2 * 8 * 128) * 3 * 2.0
    assert float(ssm_state_bytes(m, sv)) == pytest.approx(23 * state)


def test_pure_ssm_decode_does_not_grow_with_context():
    m = eqx.tree_at(
        lambda m: (m.attention_fraction, m.ssm_fraction, m.mlp_fraction),
        _hybrid(),
        (0.0, 0.5, 0.5),
    )
    sv = dp.Serving(tp=1, batch=8, input_len=1024, output_len=64)
    short = dp.decode_step(H100, m, sv, context=1024.0)
    long = dp.decode_step(H100, m, sv, context=262144.0)
    assert float(long.total) == pytest.approx(float(short.total), rel=1e-9)
    assert float(kv_bytes_per_token(m, sv)) == 0.0
    # with attention layers, decode grows with the context
    a = _hybrid()
    assert float(dp.decode_step(H100, a, sv, context=262144.0).total) > float(
        dp.decode_step(H100, a, sv, context=1024.0).total
    )


def test_mla_decode_reads_the_latent_cache():
    """Absorbed MLA: (c + Hr)·b bytes per cached token and layer, for all heads."""
    m = dp.load_workload("deepseek_v3")
    sv = dp.Serving(tp=8, ep=8, batch=64, input_len=4096, output_len=1)
    t1 = dp.decode_step(H100, m, sv, context=8192.0).attention
    t2 = dp.decode_step(H100, m, sv, context=16384.0).attention
    per_token = (t2 - t1) / 8192.0 / float(m.n_layers) / 64  # s per cached token
    latent = float(m.kv_lora_rank + m.qk_rope_head_dim) * 2.0  # bf16 bytes
    bw = float(H100.chip.hbm_bandwidth * H100.chip.memory_efficiency)
    # reading the latent once per token; the decompressed K/V would be 128·(192+128)
    np.testing.assert_allclose(float(per_token), latent / bw, rtol=0.05)


def test_mtp_module_parameters_and_cost():
    m = dp.load_workload("deepseek_v3")
    mtp = eqx.tree_at(lambda m: m.n_mtp_layers, m, 1.0)
    # DeepSeek-V3 report: 14B MTP weights in the 685B checkpoint, of which the
    # embedding and output head copies (2·V·D = 1.85B) are shared with the model
    extra = float(mtp.params() - m.params())
    assert 11e9 < extra < 13e9
    mp = dp.Parallelism(pp=16, dp=16, ep=8, global_batch=2048, seq_len=4096)
    b200 = dp.load_hardware("b200")
    base, more = dp.train_step(b200, m, mp), dp.train_step(b200, mtp, mp)
    assert float(more.total) > float(base.total)
    # one more layer and head on the last stage of 61/16 layers: under 2× the stage
    assert float(more.total - base.total) < 0.6 * float(base.total)


def test_capacity_factor_caps_the_busiest_expert():
    m = dp.load_workload("qwen3_30b_a3b")
    skewed = eqx.tree_at(lambda m: m.expert_imbalance, m, 1.5)
    dropping = eqx.tree_at(lambda m: m.capacity_factor, skewed, 1.25)
    mp = dp.Parallelism(dp=8, ep=8, global_batch=512, seq_len=4096)
    b_less, b_drop = dp.train_step(H100, skewed, mp), dp.train_step(H100, dropping, mp)
    assert float(b_drop.matmul) < float(b_less.matmul)
    # the busiest expert's activation traffic falls with the load (1.25 vs 1.5);
    # the padded permutation buffer grows by the capacity factor (`permute_bytes`)
    from diffperf.model.train import layer_passes

    l_less = layer_passes(H100, skewed, mp, relax=EXACT).layer
    l_drop = layer_passes(H100, dropping, mp, relax=EXACT).layer
    rest_less = l_less["elem"] - l_less["permute"]["forward"]
    rest_drop = l_drop["elem"] - l_drop["permute"]["forward"]
    assert float(rest_drop) < float(rest_less)
    assert float(l_drop["permute"]["forward"]) > float(l_less["permute"]["forward"])
    # with balanced routing, capacity 1 costs what dropless does
    balanced = H100
    cf1 = eqx.tree_at(lambda m: m.capacity_factor, m, 1.0)
    assert tree_allclose(
        dp.train_step(balanced, m, mp).total, dp.train_step(balanced, cf1, mp).total
    )


def test_ep_overlap_hides_the_all_to_all_up_to_the_compute():
    m = dp.load_workload("deepseek_v3")
    b200 = dp.load_hardware("b200")
    base = dict(pp=8, vpp=2, dp=32, ep=32, global_batch=4096, seq_len=4096)
    exposed = dp.train_step(b200, m, dp.Parallelism(**base))
    hidden = dp.train_step(b200, m, dp.Parallelism(**base, ep_overlap=1.0))
    assert float(hidden.ep_comm) < float(exposed.ep_comm)
    np.testing.assert_allclose(
        float(hidden.ep_comm + hidden.overlapped_ep_comm),
        float(exposed.ep_comm),
        rtol=1e-9,
    )
    assert float(exposed.overlapped_ep_comm) == 0.0
    assert tree_allclose(hidden.total, sum(hidden.terms().values()))


def test_latent_moe_dispatches_the_latent():
    m = dp.load_workload("nemotron3_super")
    full = eqx.tree_at(lambda m: m.moe_latent_dim, m, 0.0)
    mp = dp.Parallelism(dp=64, ep=64, global_batch=512, seq_len=8192)
    b200 = dp.load_hardware("b200")
    lat, wide = dp.train_step(b200, m, mp), dp.train_step(b200, full, mp)
    # tokens cross the network at 1024 instead of 4096 elements
    assert float(lat.ep_comm) < 0.3 * float(wide.ep_comm)
    assert float(m.params()) < float(full.params())


def test_gradients_are_finite_for_every_new_leaf():
    model = eqx.tree_at(
        lambda m: (m.capacity_factor, m.n_mtp_layers, m.expert_imbalance),
        dp.load_workload("nemotron3_super"),
        (1.25, 1.0, 1.2),
    )
    mp = dp.Parallelism(tp=2, dp=32, ep=64, global_batch=512, seq_len=8192)
    mp = eqx.tree_at(lambda p: p.ep_overlap, mp, 0.5)
    b200 = dp.load_hardware("b200")
    new = (
        "capacity_factor d_ff_shared moe_latent_dim n_mtp_layers attention_fraction "
        "ssm_fraction mlp_fraction ssm_heads ssm_head_dim ssm_state_dim ssm_groups "
        "ssm_conv_width ssm_chunk expert_imbalance"
    ).split()

    def step(mdl, mpg):
        return dp.train_step(b200, mdl, mpg, relax=SMOOTH).total

    g_model, g_map = jax.grad(step, argnums=(0, 1))(model, mp)
    for name in new:
        v = getattr(g_model, name)
        assert jnp.isfinite(v), name
    for name in ("ssm_heads", "ssm_fraction", "moe_latent_dim", "n_mtp_layers"):
        assert float(getattr(g_model, name)) != 0.0, name
    assert jnp.isfinite(g_map.ep_overlap) and float(g_map.ep_overlap) < 0.0

    def tpot(mdl):
        sv = dp.Serving(tp=2, ep=8, batch=32, input_len=2048, output_len=256)
        return dp.serve(b200, mdl, sv, relax=SMOOTH).tpot

    g_serve = jax.grad(tpot)(model)
    for name in new:
        assert jnp.isfinite(getattr(g_serve, name)), name
    assert float(g_serve.ssm_state_dim) > 0.0


def test_jit_and_vmap_over_hybrid_leaves():
    m = _hybrid()
    mp = dp.Parallelism(dp=16, ep=8, global_batch=1024, seq_len=8192)

    def f(frac):
        mdl = eqx.tree_at(lambda x: x.ssm_fraction, m, frac)
        return dp.train_step(H100, mdl, mp).total

    xs = jnp.array([0.3, 0.4423076923076923, 0.5])
    batched = jax.vmap(f)(xs)
    for i, x in enumerate(xs):
        assert tree_allclose(batched[i], jax.jit(f)(x))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(top_k=9.0, n_experts=8.0), r"top_k=9\) must be in 1..n_experts=8"),
        (dict(capacity_factor=0.5), r"capacity_factor=0.5\) must be 0"),
        (dict(ssm_fraction=0.5, ssm_heads=0.0), r"ssm_fraction=0.5\) needs ssm_heads"),
        (dict(mlp_fraction=1.5), r"mlp_fraction=1.5\) must be in \[0, 1\]"),
        (dict(moe_latent_dim=-1.0), r"moe_latent_dim=-1\) must be >= 0"),
        (dict(n_dense_layers=30.0), r"n_dense_layers=30\) must be <="),
    ],
)
def test_bad_moe_and_hybrid_fields_are_one_line_errors(change, match):
    base = {
        k: getattr(_hybrid(), k)
        for k in _hybrid().__dataclass_fields__
        if k not in ("precision", "name", "mlp", "tied_embeddings", "attention")
    }
    with pytest.raises(ValueError, match=match) as e:
        dp.Transformer(**(base | change), mlp="plain")
    assert "\n" not in str(e.value)


def test_ep_must_divide_the_experts():
    m = dp.load_workload("qwen3_30b_a3b")
    with pytest.raises(ValueError, match=r"--ep=6 must divide n_experts=128"):
        dp.train_step(H100, m, dp.Parallelism(dp=12, ep=6))
    with pytest.raises(ValueError, match=r"--ep=6 must divide n_experts=128"):
        dp.serve(H100, m, dp.Serving(tp=1, ep=6))
    with pytest.raises(ValueError, match=r"ep_overlap=2\) must be in \[0, 1\]"):
        dp.Parallelism(ep_overlap=2.0)


def test_cli_bad_ep_exits_2_with_one_line():
    cmd = [sys.executable, "-m", "diffperf.cli", "train", "--hardware", "h100_sxm",
           "--model", "qwen3_30b_a3b", "--gpus", "12", "--ep", "6"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--ep=6" in r.stderr


def test_hf_nemotron_h_config_matches_the_toml(tmp_path):
    """A Nemotron-H config.json (Nano's values) loads as the bundled spec."""
    cfg = dict(
        model_type="nemotron_h",
        hidden_size=2688,
        num_hidden_layers=52,
        hybrid_override_pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=1856,
        moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712,
        n_routed_experts=128,
        n_shared_experts=1,
        num_experts_per_tok=6,
        mamba_num_heads=64,
        mamba_head_dim=64,
        n_groups=8,
        ssm_state_size=128,
        conv_kernel=4,
        chunk_size=128,
        mlp_hidden_act="relu2",
        vocab_size=131072,
        max_position_embeddings=262144,
        tie_word_embeddings=False,
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    hf, toml = dp.load_workload(path), _hybrid()
    assert hf.mlp == "plain"
    for f in ("params", "active_params"):
        np.testing.assert_allclose(
            float(getattr(hf, f)()), float(getattr(toml, f)()), rtol=1e-9
        )


def _cli(*args):
    cmd = [sys.executable, "-m", "diffperf.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_cli_moe_flags():
    job = ["train", "--hardware", "b200", "--model", "deepseek_v3", "--gpus", "256",
           "--pp", "8", "--vpp", "2", "--ep", "32", "--global-batch", "4096",
           "--seq-len", "4096", "--dtype", "fp8", "--json"]  # fmt: skip
    plain = json.loads(_cli(*job).stdout)
    r = _cli(*job, "--ep-overlap", "1", "--capacity-factor", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["overlapped"]["ep_comm"] > 0 and plain["overlapped"]["ep_comm"] == 0
    assert out["step_time_s"] < plain["step_time_s"]
    assert out["mapping"]["ep_overlap"] == 1.0
    bad = _cli(*job, "--capacity-factor", "0.5")
    assert bad.returncode == 2
    assert "capacity_factor=0.5" in bad.stderr and bad.stderr.count("\n") == 1


def test_a_small_decode_batch_reads_only_the_experts_it_hits():
    """E_hit = E_l·(1 − exp(−R/E_l)): a few routed tokens hit a few experts (their
    weights are what a decode step reads); many tokens hit all; token dropping pads
    every expert. Found comparing DeepSeek-R1 decode with AIConfigurator's B200 rows."""
    from diffperf.model.layer import hit_experts

    assert float(hit_experts(32.0, 4.0, 0.0)) == pytest.approx(
        32.0 * (1.0 - math.exp(-4.0 / 32.0))
    )
    assert float(hit_experts(32.0, 1e5, 0.0)) == pytest.approx(32.0)
    assert float(hit_experts(32.0, 4.0, 1.25)) == 32.0  # padded to capacity
    assert float(hit_experts(0.0, 0.0, 0.0)) == 1.0  # dense: no division by zero
    m = dp.load_workload("deepseek_v3")
    b200 = dp.load_hardware("dgx_b200", stack="trtllm")
    one = dp.Serving(tp=8, ep=8, batch=1, input_len=1024, output_len=1024, graphs=True)
    big = eqx.tree_at(lambda s: s.batch, one, 256.0)
    t1 = float(dp.decode_step(b200, m, one).matmul)
    t256 = float(dp.decode_step(b200, m, big).matmul)
    assert t1 < 0.3 * t256  # batch 1 reads about 8 of the 256 experts' weights


# ---- token permutation and unpermutation -------------------------------------------


def _moe_shape(model, mapping):
    from diffperf.model.train import training_shape

    return training_shape(model, mapping, EXACT)


@pytest.mark.parametrize("cf", [0.0, 1.25])
def test_permute_bytes_match_the_closed_form(cf):
    """f·ℓ·b·S·(3·c·k + 1) forward and (3·c·k + 2) backward, S = T/t routed tokens."""
    from diffperf.model.layer import permute_bytes

    model = eqx.tree_at(
        lambda m: m.capacity_factor, dp.load_workload("qwen3_30b_a3b"), cf
    )
    mapping = dp.Parallelism(
        tp=2, dp=4, ep=8, microbatch=2, global_batch=64, seq_len=4096
    )
    s = _moe_shape(model, mapping)
    fwd, bwd = permute_bytes(model, s)
    c = cf if cf > 0 else 1.0
    k, ell, b = 8.0, 2048.0, 2.0
    routed = 2 * 4096 / 2  # microbatch·S tokens on the chip over t = 2
    np.testing.assert_allclose(
        float(fwd), ell * b * routed * (3 * c * k + 1), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(bwd), ell * b * routed * (3 * c * k + 2), rtol=1e-6
    )


def test_permute_is_zero_for_a_dense_model_and_uses_the_latent_width():
    from diffperf.model.layer import permute_bytes

    dense = dp.load_workload("llama3_8b")
    mapping = dp.Parallelism(tp=1, dp=8, microbatch=1, global_batch=64, seq_len=4096)
    fwd, bwd = permute_bytes(dense, _moe_shape(dense, mapping))
    assert float(fwd) == 0.0 and float(bwd) == 0.0
    sup = dp.load_workload("nemotron3_super")  # LatentMoE: the 1024-wide latent moves
    moe_map = dp.Parallelism(
        tp=1, dp=64, ep=64, microbatch=1, global_batch=512, seq_len=8192
    )
    s = _moe_shape(sup, moe_map)
    fwd, _ = permute_bytes(sup, s)
    share = 40.0 / 88.0
    np.testing.assert_allclose(
        float(fwd), share * 1024 * 2.0 * 8192 * (3 * 22 + 1), rtol=1e-6
    )


def test_permute_time_is_in_the_elementwise_passes_with_its_own_backward():
    """Forward elementwise grows by the permute's forward time, the backward by its
    own backward time (not 2× the forward, the elementwise pass factor)."""
    from diffperf.model.train import layer_passes

    model = dp.load_workload("qwen3_30b_a3b")
    mapping = dp.Parallelism(
        tp=1, dp=8, ep=8, microbatch=1, global_batch=64, seq_len=4096
    )
    lp = layer_passes(H100, model, mapping, relax=EXACT)
    perm = lp.layer["permute"]
    beta = float(H100.chip.hbm_bandwidth * H100.chip.memory_efficiency)
    from diffperf.model.layer import permute_bytes

    fwd, bwd = permute_bytes(model, lp.shape)
    np.testing.assert_allclose(float(perm["forward"]), float(fwd) / beta, rtol=1e-6)
    np.testing.assert_allclose(float(perm["backward"]), float(bwd) / beta, rtol=1e-6)
    q = lp.layer["quant"]
    rest = lp.layer["elem"] - perm["forward"] - q["forward"]
    np.testing.assert_allclose(
        float(lp.backward["elementwise"]),
        float(2.0 * rest + perm["backward"] + q["backward"]),
        rtol=1e-6,
    )


def test_permute_gradient_matches_finite_differences_in_float64():
    """d T / d log c of the capacity factor and d T / d log β (Smooth, float64)."""
    from .helpers import get_leaf, scale_leaf

    relax = dp.Smooth(16.0)
    model = eqx.tree_at(
        lambda m: m.capacity_factor, dp.load_workload("qwen3_30b_a3b"), 1.5
    )
    mapping = dp.Parallelism(
        tp=1, dp=8, ep=8, microbatch=1, global_batch=64, seq_len=4096
    )

    def f(m):
        return dp.train_step(H100, m, mapping, relax=relax).total

    g = float(jax.grad(f)(model).capacity_factor)
    eps = float(np.cbrt(np.finfo(np.float64).eps))
    fd = (
        float(f(eqx.tree_at(lambda m: m.capacity_factor, model, 1.5 * np.exp(eps))))
        - float(f(eqx.tree_at(lambda m: m.capacity_factor, model, 1.5 * np.exp(-eps))))
    ) / (2 * eps)
    assert np.isfinite(g) and g > 0
    np.testing.assert_allclose(g * 1.5, fd, rtol=1e-5)

    def h(c):
        return dp.train_step(c, model, mapping, relax=relax).total

    path = "chip.hbm_bandwidth"
    gb = float(get_leaf(jax.grad(h)(H100), path)) * float(get_leaf(H100, path))
    fdb = (
        float(h(scale_leaf(H100, path, np.exp(eps))))
        - float(h(scale_leaf(H100, path, np.exp(-eps))))
    ) / (2 * eps)
    assert gb < 0
    np.testing.assert_allclose(gb, fdb, rtol=1e-5)


def _host(cluster, dispatch, sync, ops_):
    return eqx.tree_at(
        lambda c: (
            c.host.dispatch_overhead,
            c.host.sync_overhead,
            c.host.moe_host_ops,
        ),
        cluster,
        (dispatch, sync, ops_),
    )


def test_moe_dispatch_sync_once_per_pass():
    """σ per MoE layer and pass over it: forward and backward, and a full recompute
    runs a third pass."""
    m = dp.load_workload("qwen3_30b_a3b")
    cluster = _host(H100, 0.0, 1e-3, 40.0)
    for recompute, passes in (("none", 2.0), ("full", 3.0)):
        mp = dp.Parallelism(
            dp=8, ep=8, global_batch=64, seq_len=4096, recompute=recompute
        )
        b = dp.train_step(cluster, m, mp)
        steps = float(mp.microbatches()) * float(m.n_layers * m.moe_fraction)
        assert float(b.host_stall) == pytest.approx(steps * passes * 1e-3, rel=1e-9)


def test_moe_dispatch_sync_exposes_host_issue_beyond_gpu_work():
    """After the sync the GPU waits for the CPU to issue the MoE block: the issue time
    H = (moe_host_ops + block kernels + 2·(E_hit − 1))·δ (twice in the backward)
    shows where it exceeds the block's GPU time, so a faster network (a shorter
    all-to-all) exposes more of it."""
    from diffperf.model.layer import BLOCK_KERNELS
    from diffperf.model.train import layer_passes

    m = dp.load_workload("qwen3_30b_a3b")
    mp = dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)
    delta, ops_ = 2e-5, 400.0
    cluster = _host(H100, delta, 0.0, ops_)
    lp = layer_passes(cluster, m, mp, relax=EXACT)
    hit = float(lp.layer["moe_hit"])
    assert hit == pytest.approx(16.0, rel=1e-6)  # 128 experts / ep 8, all hit
    issue = (ops_ + BLOCK_KERNELS["moe"] + 2.0 * (hit - 1.0)) * delta
    from diffperf.model.comm import comm_time

    def gpu(phase, gemms):
        ep = [r for r in lp.collectives if r.axis == "ep" and r.phase == phase]
        return (
            gemms * float(lp.layer["moe_gemm"])
            + float(lp.layer["permute"][phase])
            + float(comm_time(cluster, ep, relax=EXACT))
        )

    fwd, bwd = gpu("forward", 1.0), gpu("backward", 2.0)
    assert issue > fwd and 2.0 * issue > bwd  # the host is the bound here
    expect = (issue - fwd) + (2.0 * issue - bwd)
    assert float(lp.sync["race"]) == pytest.approx(expect, rel=1e-6)
    # the count exchange: one latency-bound all-gather in the forward, none backward
    counts = [r for r in lp.collectives if r.kind == "all_gather" and r.axis == "ep"]
    assert [r.phase for r in counts] == ["forward"]
    assert float(counts[0].nbytes) == pytest.approx(8.0 * 128 * 8.0)
    # twice the scale-up bandwidth: a shorter all-to-all, more of H exposed
    fast = eqx.tree_at(
        lambda c: c.scale_up.bandwidth, cluster, 2.0 * cluster.scale_up.bandwidth
    )
    faster = layer_passes(fast, m, mp, relax=EXACT).sync["race"]
    assert float(faster) > float(lp.sync["race"])
    # a dense model has no MoE sync
    dense = dp.load_workload("llama3_8b")
    dmp = dp.Parallelism(dp=8, global_batch=64, seq_len=4096)
    none = layer_passes(cluster, dense, dmp, relax=EXACT).sync
    assert float(none["race"]) == float(none["sigma"]) == 0.0


def test_host_bound_moe_step_is_not_slower_on_a_faster_gpu():
    """The race and the host's throughput bound share the host's time: with the race
    binding, a faster GPU (2x FLOP/s, 2x HBM) gives a step no slower, and the host
    stall grows by no more than the GPU work shrinks."""
    from diffperf.core.paths import scale_leaf

    m = dp.load_workload("qwen3_30b_a3b")
    mp = dp.Parallelism(dp=8, ep=8, global_batch=64, seq_len=4096)
    slow = _host(H100, 2e-5, 1e-3, 400.0)
    fast = scale_leaf(
        scale_leaf(slow, "chip.flops_bf16", 2.0), "chip.hbm_bandwidth", 2.0
    )
    from diffperf.model.train import layer_passes

    for c in (slow, fast):  # the race binds on both
        assert float(layer_passes(c, m, mp, relax=EXACT).sync["race"]) > 0
    a, b = dp.train_step(slow, m, mp), dp.train_step(fast, m, mp)
    assert float(b.total) <= float(a.total) * (1 + 1e-12)
    gpu_gain = float(a.total - a.host_stall) - float(b.total - b.host_stall)
    assert float(b.host_stall - a.host_stall) <= gpu_gain * (1 + 1e-9)
