"""The training-step model: gradients, transforms, properties."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import diffperf as dp

from .helpers import f64, float_leaf_paths, get_leaf, scale_leaf, tree_allclose

H100 = dp.load_hardware("h100_sxm")
DGX_A100 = dp.load_hardware("dgx_a100")
LLAMA70 = dp.load_workload("llama3_70b")
GPT175 = dp.load_workload("gpt3_175b")
QWEN_MOE = dp.load_workload("qwen3_30b_a3b")
MAP70 = dp.Parallelism(
    tp=4,
    pp=4,
    dp=4,
    vpp=5,
    microbatch=1,
    global_batch=128,
    seq_len=8192,
    recompute="selective",
)
MAP_MOE = dp.Parallelism(
    tp=1, pp=1, dp=16, ep=16, microbatch=1, global_batch=256, seq_len=4096
)
CASES = [
    (LLAMA70, MAP70),
    (
        GPT175,
        dp.Parallelism(
            tp=8,
            pp=8,
            dp=4,
            cp=1,
            microbatch=1,
            global_batch=256,
            recompute="full",
            zero=0,
            sequence_parallel=False,
        ),
    ),
    (QWEN_MOE, MAP_MOE),
    (
        LLAMA70,
        dp.Parallelism(
            tp=8, dp=8, cp=2, microbatch=1, global_batch=64, seq_len=32768, zero=3
        ),
    ),
]
IDS = ["llama70-tp4pp4vpp5", "gpt175-full-zero0", "qwen-moe-ep16", "llama70-cp2-zero3"]


SMOOTH = dp.Smooth(16.0)


def total(cluster, model, mapping, relax=SMOOTH):
    return dp.train_step(cluster, model, mapping, relax=relax).total


@pytest.mark.parametrize("model,mapping", CASES, ids=IDS)
def test_gradients_match_finite_differences_for_every_hardware_leaf(model, mapping):
    """d T / d log x by reverse mode equals a central difference in log x (float64)."""
    f = jax.jit(lambda c: total(c, model, mapping))
    grads = jax.grad(lambda c: total(c, model, mapping))(H100)
    t0 = float(f(H100))
    eps = float(np.cbrt(np.finfo(np.float64).eps))
    for path in float_leaf_paths(H100):
        x = float(get_leaf(H100, path))
        g = float(get_leaf(grads, path))
        assert np.isfinite(g), path
        if x == 0.0:
            continue
        fd = (
            float(f(scale_leaf(H100, path, np.exp(eps))))
            - float(f(scale_leaf(H100, path, np.exp(-eps))))
        ) / (2 * eps)
        # Elasticities below 1e-7 are at the finite-difference noise floor.
        assert abs(g * x - fd) <= 1e-4 * abs(fd) + 1e-7 * t0, (path, g * x, fd)


@pytest.mark.parametrize("model,mapping", CASES, ids=IDS)
def test_gradient_finite_everywhere_and_live_for_binding_resource(model, mapping):
    g = jax.grad(lambda c: total(c, model, mapping))(H100)
    leaves = jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    b = dp.train_step(H100, model, mapping)
    assert float(b.matmul) > 0
    peak = g.chip.flops_fp8 if model.precision.math == "fp8" else g.chip.flops_bf16
    assert float(peak) < 0  # GEMMs bind: more FLOP/s is faster
    assert float(g.chip.matmul_efficiency) < 0
    if float(b.tp_comm) > 0:
        assert float(g.scale_up.bandwidth) < 0


def test_comm_bound_job_has_live_network_gradient():
    """Pure DP across nodes with ZeRO-0 and no overlap: the NICs are binding."""
    mapping = dp.Parallelism(
        dp=64, microbatch=1, global_batch=64, seq_len=2048, zero=0, dp_overlap=0.0
    )
    model = dp.load_workload("llama2_7b")
    b = dp.train_step(H100, model, mapping)
    assert float(b.dp_comm) > 0.2 * float(b.total)
    g = jax.grad(lambda c: total(c, model, mapping))(H100)
    assert float(g.scale_out.bandwidth) < 0
    assert float(g.host.nics_per_node) < 0


@pytest.mark.parametrize("relax", [dp.Exact(), dp.Smooth(8.0)], ids=["exact", "smooth"])
def test_jit_and_vmap_equal_plain_call(relax):
    model, mapping = LLAMA70, MAP70
    plain = dp.train_step(H100, model, mapping, relax=relax)
    jitted = eqx.filter_jit(dp.train_step)(H100, model, mapping, relax=relax)
    assert tree_allclose(plain, jitted, rtol=1e-12)
    factors = jnp.array([0.5, 1.0, 2.0, 4.0])

    def at(f):
        c = scale_leaf(H100, "chip.hbm_bandwidth", f)
        return dp.train_step(c, model, mapping, relax=relax).total

    batched = jax.vmap(at)(factors)
    looped = jnp.stack([at(f) for f in factors])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    gb = jax.vmap(jax.grad(at))(factors)
    gl = jnp.stack([jax.grad(at)(f) for f in factors])
    np.testing.assert_allclose(gb, gl, rtol=1e-10)


def test_vmap_over_a_batched_cluster():
    bws = jnp.array([2e12, 3.35e12, 4.8e12])
    clusters = jax.vmap(
        lambda bw: eqx.tree_at(lambda c: c.chip.hbm_bandwidth, H100, bw)
    )(bws)
    out = jax.vmap(lambda c: dp.train_step(c, LLAMA70, MAP70).total)(clusters)
    assert out.shape == (3,) and bool(jnp.all(jnp.diff(out) <= 0))


def test_no_retrace_when_only_values_change():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(cluster, model, mapping):
        return dp.train_step(cluster, model, mapping, relax=dp.Smooth(16.0)).total

    step(H100, LLAMA70, MAP70)
    step(scale_leaf(H100, "chip.flops_bf16", 1.7), LLAMA70, MAP70)
    step(H100, scale_leaf(LLAMA70, "d_model", 1.25), MAP70)
    step(H100, LLAMA70, eqx.tree_at(lambda m: m.dp, MAP70, f64(8.0)))


def test_terms_sum_to_total_and_are_nonnegative():
    for model, mapping in CASES:
        b = dp.train_step(H100, model, mapping)
        terms = b.terms()
        assert set(terms) == set(dp.TERMS)
        assert all(float(v) >= 0 and np.isfinite(float(v)) for v in terms.values())
        np.testing.assert_allclose(
            sum(float(v) for v in terms.values()), float(b.total)
        )


def test_model_flops_are_six_params_tokens_plus_attention():
    """Executed FLOP (no recompute) = 6·P_matmul·tokens + causal attention."""
    m = LLAMA70
    mapping = dp.Parallelism(
        tp=8, pp=4, dp=2, microbatch=1, global_batch=64, seq_len=4096
    )
    b = dp.train_step(H100, m, mapping)
    tokens = 64 * 4096
    p_matmul = m.params() - m.vocab_size * m.d_model - (2 * m.n_layers + 1) * m.d_model
    attn = 3 * 2 * (4096 / 2) * m.n_heads * 2 * m.head_dim * m.n_layers  # causal
    expected = (6 * p_matmul + attn) * tokens
    # Flash-attention backward recomputes scores (0.5 × forward attention) on top.
    extra = 0.5 * attn / 3 * tokens
    np.testing.assert_allclose(
        float(b.hardware_flops), float(expected + extra), rtol=1e-3
    )
    palm = (
        6 * m.params() + 6 * 4096 * m.n_heads * 2 * m.head_dim * m.n_layers
    ) * tokens
    np.testing.assert_allclose(float(b.model_flops), float(palm), rtol=1e-9)


def test_full_recompute_adds_one_forward():
    base = dict(tp=8, pp=1, dp=4, microbatch=1, global_batch=32, seq_len=4096)
    b0 = dp.train_step(H100, LLAMA70, dp.Parallelism(**base))
    b1 = dp.train_step(H100, LLAMA70, dp.Parallelism(**base, recompute="full"))
    ratio = float(b1.hardware_flops / b0.hardware_flops)
    assert 1.25 < ratio < 1.36  # (3 + 1) / 3 on layers, less the head
    assert float(b1.memory_per_gpu) < float(b0.memory_per_gpu)
    assert float(b1.total) > float(b0.total)


FAST = [
    "chip.flops_bf16",
    "chip.flops_fp8",
    "chip.hbm_bandwidth",
    "chip.sram_capacity",
    "chip.matmul_efficiency",
    "chip.attention_efficiency",
    "scale_up.bandwidth",
    "scale_out.bandwidth",
    "host.nics_per_node",
    "scale_up.size",
    "chip.memory_efficiency",
]
SLOW = [
    "chip.kernel_overhead",
    "scale_up.latency",
    "scale_out.latency",
    "host.dispatch_overhead",
    "host.step_overhead",
    "chip.matmul_half_dim",
]


@st.composite
def jobs(draw):
    model = draw(
        st.sampled_from([LLAMA70, GPT175, QWEN_MOE, dp.load_workload("mpt_7b")])
    )
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    pp = draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([1, 2, 8, 32]))
    cp = draw(st.sampled_from([1, 2]))
    mb = draw(st.sampled_from([1, 2]))
    acc = draw(st.sampled_from([1, 4, 16]))
    ep = 1
    if float(model.n_experts) > 0:
        ep = draw(st.sampled_from([e for e in (1, 2, 4, 8) if (tp * d * cp) % e == 0]))
    mapping = dp.Parallelism(
        tp=tp,
        pp=pp,
        dp=d,
        cp=cp,
        ep=ep,
        microbatch=mb,
        global_batch=d * mb * acc,
        seq_len=draw(st.sampled_from([2048, 4096])),
        recompute=draw(st.sampled_from(["none", "selective", "full"])),
        zero=draw(st.sampled_from([0, 1, 2, 3])),
        sequence_parallel=draw(st.booleans()),
    )
    return model, mapping


@given(
    job=jobs(),
    leaf=st.sampled_from(FAST + SLOW),
    cluster=st.sampled_from([H100, DGX_A100]),
)
def test_better_hardware_is_never_slower(job, leaf, cluster):
    model, mapping = job
    if leaf.endswith("_efficiency"):  # fractions: 10% less is the worse direction
        worse, better = scale_leaf(cluster, leaf, 0.9), cluster
    elif leaf in SLOW:
        worse, better = cluster, scale_leaf(cluster, leaf, 0.5)
    else:
        worse, better = cluster, scale_leaf(cluster, leaf, 2.0)
    t_worse = float(dp.train_step(worse, model, mapping).total)
    t_better = float(dp.train_step(better, model, mapping).total)
    assert t_better <= t_worse * (1 + 1e-12), (leaf, t_better, t_worse)


@given(job=jobs())
def test_more_gpus_at_fixed_batch_never_more_flops_per_gpu(job):
    model, mapping = job
    more = eqx.tree_at(lambda m: m.dp, mapping, mapping.dp * 2)
    more = eqx.tree_at(lambda m: m.global_batch, more, mapping.global_batch)
    if float(more.microbatches()) < 1:
        more = eqx.tree_at(lambda m: m.global_batch, more, more.dp * more.microbatch)
        mapping = eqx.tree_at(lambda m: m.global_batch, mapping, more.global_batch)
    b1 = dp.train_step(H100, model, mapping)
    b2 = dp.train_step(H100, model, more)
    per1 = float(b1.hardware_flops / b1.chips)
    per2 = float(b2.hardware_flops / b2.chips)
    assert per2 <= per1 * (1 + 1e-12)


@given(job=jobs())
def test_smooth_is_close_to_exact_and_converges(job):
    """Empirical bound: |Smooth(p)/Exact − 1| ≤ 2·(2^(1/p) − 1), which shrinks with p
    (the error itself need not fall monotonically: over- and under-estimates of
    different terms can cancel at a given p)."""
    model, mapping = job
    exact = float(dp.train_step(H100, model, mapping).total)
    for p in (16.0, 64.0, 256.0):
        smooth = float(dp.train_step(H100, model, mapping, relax=dp.Smooth(p)).total)
        err = abs(smooth / exact - 1)
        assert err <= 2 * (2 ** (1 / p) - 1), (p, smooth, exact)


def test_faster_gpu_is_not_slower_when_host_bound():
    """Regression (found by hypothesis): a host-bound MoE step with data-parallel
    gradients must not get slower with more FLOP/s; the DP overlap window is the
    backward as it really runs."""
    m = dp.load_workload("qwen3_30b_a3b")
    mp = dp.Parallelism(cp=2, microbatch=1, global_batch=1, seq_len=2048, zero=0,
                        sequence_parallel=False)  # fmt: skip
    t1 = float(dp.train_step(DGX_A100, m, mp).total)
    t2 = float(dp.train_step(scale_leaf(DGX_A100, "chip.flops_bf16", 2.0), m, mp).total)
    assert t2 <= t1 * (1 + 1e-12)
