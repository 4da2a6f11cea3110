"""Fidelity tiers: the roofline tier shares types and API with the detailed one."""

import jax
import pytest

import diffperf as dp
from diffperf.model.fidelity import roofline_device

from .helpers import tree_allclose

CLUSTER = dp.load_hardware("h100_sxm")
MODEL = dp.load_workload("llama3_8b")
MAPPING = dp.Parallelism(
    tp=2, pp=2, dp=2, microbatch=1, global_batch=64, sequence_parallel=True
)
SERVING = dp.Serving(tp=2, batch=8, input_len=1024, output_len=128)


def test_roofline_is_a_lower_bound_without_fixed_costs():
    fast = dp.train_step(CLUSTER, MODEL, MAPPING, fidelity="roofline")
    slow = dp.train_step(CLUSTER, MODEL, MAPPING, fidelity="detailed")
    assert type(fast) is type(slow)
    assert 0 < float(fast.total) < float(slow.total)
    terms = fast.terms()
    for name in ("kernel_overhead", "host_stall", "step_overhead"):
        assert float(terms[name]) == 0.0, name
    assert float(sum(terms.values())) == pytest.approx(float(fast.total))
    r_fast = dp.serve(CLUSTER, MODEL, SERVING, fidelity="roofline")
    r_slow = dp.serve(CLUSTER, MODEL, SERVING)
    assert float(r_fast.ttft) < float(r_slow.ttft)
    assert float(r_fast.tpot) < float(r_slow.tpot)
    assert float(r_fast.decode.step_overhead) == 0.0
    pre = dp.prefill(CLUSTER, MODEL, SERVING, fidelity="roofline")
    dec = dp.decode_step(CLUSTER, MODEL, SERVING, fidelity="roofline")
    assert tree_allclose(pre, r_fast.prefill) and tree_allclose(dec, r_fast.decode)


def test_roofline_decode_is_weights_over_bandwidth():
    # batch-1 decode of a dense model is HBM-bound: T ≈ weight bytes / β per step
    # (every weight but the untied input embedding table, of which one row is read)
    s = dp.Serving(tp=1, batch=1, input_len=16, output_len=2)
    t = float(dp.decode_step(CLUSTER, MODEL, s, fidelity="roofline").total)
    read = float(MODEL.params()) - float(MODEL.vocab_size * MODEL.d_model)
    assert t == pytest.approx(2.0 * read / float(CLUSTER.chip.hbm_bandwidth), rel=0.02)


def test_roofline_is_differentiable_and_jit_invariant():
    def f(c):
        return dp.train_step(c, MODEL, MAPPING, relax=dp.Smooth(), fidelity="roofline")

    g = jax.grad(lambda c: f(c).total)(CLUSTER)
    assert float(g.chip.flops_bf16) < 0  # more FLOP/s: faster
    assert float(g.chip.matmul_efficiency) == 0.0  # no efficiency curves
    assert tree_allclose(jax.jit(f)(CLUSTER).total, f(CLUSTER).total)
    assert roofline_device(CLUSTER).chip.hbm_capacity == CLUSTER.chip.hbm_capacity


def test_unknown_fidelity_is_a_value_error():
    with pytest.raises(ValueError, match="fidelity='fast' must be one of"):
        dp.train_step(CLUSTER, MODEL, MAPPING, fidelity="fast")
    with pytest.raises(ValueError, match="fidelity="):
        dp.serve(CLUSTER, MODEL, SERVING, fidelity="fast")


def test_cli_fidelity_flag(capsys):
    import json

    from diffperf.cli import main

    argv = ["train", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus", "8",
            "--tp", "2", "--global-batch", "64", "--json"]  # fmt: skip
    outs = {}
    for tier in ("detailed", "roofline"):
        assert main([*argv, "--fidelity", tier]) == 0
        outs[tier] = json.loads(capsys.readouterr().out)
        assert outs[tier]["fidelity"] == tier
    assert outs["roofline"]["step_time_s"] < outs["detailed"]["step_time_s"]
    assert main([*argv, "--fidelity", "fast"]) == 2
    assert "--fidelity" in capsys.readouterr().err
