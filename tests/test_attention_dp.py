"""Attention data parallelism with wide expert parallelism (`Serving.attention_dp`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.phases import decode_step, prefill
from diffperf.model.serving import serve
from diffperf.specs.mapping import Serving, check_serving
from diffperf.specs.workload import Precision


@pytest.fixture(scope="module")
def deepseek():
    """DeepSeek-V3 in fp8 (its released format: 671 GB fit on 8 H200s)."""
    model = dp.load_workload("deepseek_v3")
    fp8 = Precision(math="fp8", weights="fp8")
    return eqx.tree_at(lambda m: m.precision, model, fp8)


@pytest.fixture(scope="module")
def h200():
    return dp.load_hardware("h200_sxm")


def test_chips_and_checks(deepseek):
    s = Serving(tp=1, attention_dp=8, ep=8, batch=64)
    assert float(s.chips) == 8 and float(s.rank_batch) == 8
    check_serving(deepseek, s, gpus=8)
    check_serving(deepseek, Serving(tp=2, attention_dp=4, ep=4, etp=2))
    with pytest.raises(ValueError, match=r"must divide tp·attention_dp=8"):
        check_serving(deepseek, Serving(tp=1, attention_dp=8, ep=16))
    with pytest.raises(ValueError, match="must be 1 for a dense model"):
        check_serving(dp.load_workload("llama3_8b"), Serving(tp=1, attention_dp=2))
    with pytest.raises(ValueError, match=r"equal tp·pp·attention_dp=8"):
        check_serving(deepseek, s, gpus=4)
    with pytest.raises(ValueError, match="attention_dp"):
        Serving(attention_dp=0.0)


def test_a_rank_attends_over_its_share_of_the_batch(deepseek, h200):
    """Attention per chip is that of one rank's B/a sequences (tp 1 each)."""
    wide = Serving(tp=1, attention_dp=8, ep=8, batch=64, input_len=1024.0)
    alone = Serving(tp=1, ep=1, batch=8, input_len=1024.0)
    for phase in (decode_step, prefill):
        a = phase(h200, deepseek, wide).attention
        b = phase(h200, deepseek, alone).attention
        np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_experts_see_every_ranks_tokens(deepseek, h200):
    """Wide EP over 8 chips runs the same expert rows per chip as TP8·EP8."""
    wide = Serving(tp=1, attention_dp=8, ep=8, batch=256)
    tp8 = Serving(tp=8, ep=8, batch=256)
    a = decode_step(h200, deepseek, wide)
    b = decode_step(h200, deepseek, tp8)
    # the same expert GEMM work; TP8 shards attention weights 8 ways but replicates
    # the MLA latent cache, attention DP the other way round
    assert float(a.ep_comm) > 0 and float(b.ep_comm) > 0
    assert float(a.tp_comm) == 0.0 < float(b.tp_comm)


def test_attention_dp_holds_more_kv_cache_for_mla(deepseek, h200):
    """MLA's latent cache is replicated over tp ranks, split over attention ranks."""
    wide = serve(h200, deepseek, Serving(tp=1, attention_dp=8, ep=8, batch=64))
    tp8 = serve(h200, deepseek, Serving(tp=8, ep=8, batch=64))
    assert float(wide.max_batch) > 2.0 * float(tp8.max_batch)
    assert float(wide.memory_per_gpu) < float(tp8.memory_per_gpu) + 20e9


def test_default_is_one_rank_and_gradients_exist(deepseek, h200):
    s = Serving(tp=8, ep=8, batch=32)
    one = Serving(tp=8, ep=8, batch=32, attention_dp=1.0)
    assert float(decode_step(h200, deepseek, s).total) == float(
        decode_step(h200, deepseek, one).total
    )

    def tpot(a):
        x = Serving(tp=1.0, ep=8.0, attention_dp=a, batch=jnp.asarray(64.0))
        return decode_step(h200, deepseek, x).total

    g = jax.grad(tpot)(jnp.asarray(8.0))
    assert jnp.isfinite(g)


def test_serve_load_runs_wide_ep(deepseek, h200):
    s = Serving(tp=1, attention_dp=8, ep=8, input_len=1024.0, output_len=256.0)
    r = dp.serve_load(h200, deepseek, s, concurrency=64.0)
    assert 0 < float(r.tpot) < 0.2 and float(r.ttft) > 0 and float(r.chips) == 8
