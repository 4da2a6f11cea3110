"""Work that is statically zero is skipped without changing any result.

When the workload is a concrete pytree closed over by a jitted function (sweeps,
benchmarks, the CLI), `layer._gemm_shapes` drops the GEMMs that no layer contains
(weight a concrete 0: the router, expert and shared-expert GEMMs of a dense model,
the Mamba-2 projections of a pure transformer, the latent projections of an MoE
without a latent). Passing the same workload as a traced argument keeps every row.
Both must give the same breakdown, memory and gradients.
"""

import equinox as eqx
import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.model import layer
from diffperf.model.train import training_shape

from .helpers import tree_allclose

A100 = dp.load_hardware("dgx_a100")
CASES = {
    "gpt3-dense": (
        dp.load_workload("gpt3_175b"),
        dp.Parallelism(tp=8, pp=8, dp=8, microbatch=2, global_batch=1536),
    ),
    "qwen3-moe": (
        dp.load_workload("qwen3_30b_a3b"),
        dp.Parallelism(tp=2, dp=8, ep=8, microbatch=1, global_batch=256, seq_len=4096),
    ),
    "deepseek-mla-moe": (
        dp.load_workload("deepseek_v3"),
        dp.Parallelism(tp=2, pp=4, dp=32, ep=32, microbatch=1, global_batch=1024),
    ),
    "nemotron-hybrid-latent": (
        dp.load_workload("nemotron3_super"),
        dp.Parallelism(tp=4, dp=16, ep=16, microbatch=1, global_batch=512),
    ),
}
ROWS = {"gpt3-dense": 4, "qwen3-moe": 7, "deepseek-mla-moe": 12}
"""GEMM rows left for a closed-over workload (13, or 16 with MLA, when traced): the
dense MLP of an all-MoE model, the Mamba-2 projections and the latent projections go;
MoE rows stay for DeepSeek-V3 next to its 3 dense layers' MLP."""


def _rows(model, mapping, *, traced: bool) -> int:
    """Number of GEMM rows `_gemm_shapes` builds inside jit."""
    out = []

    def f(mdl):
        s = training_shape(mdl, mapping, dp.Exact())
        out.append(len(layer._gemm_shapes(mdl, s)[1]))
        return s.tokens

    if traced:
        eqx.filter_jit(f)(model)
    else:
        jax.jit(lambda: f(model))()
    return out[0]


@pytest.mark.parametrize("case", sorted(ROWS))
def test_absent_gemms_are_dropped_only_for_a_concrete_workload(case):
    model, mapping = CASES[case]
    assert _rows(model, mapping, traced=False) == ROWS[case]
    assert _rows(model, mapping, traced=True) > ROWS[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_breakdown_unchanged_when_absent_work_is_skipped(case):
    model, mapping = CASES[case]
    closed = jax.jit(lambda c: dp.train_step(c, model, mapping))(A100)
    traced = eqx.filter_jit(lambda c, m: dp.train_step(c, m, mapping))(A100, model)
    assert tree_allclose(closed, traced, rtol=1e-12)
    assert np.isfinite(float(closed.total)) and float(closed.total) > 0


LEAVES = (
    "chip.flops_bf16",
    "chip.hbm_bandwidth",
    "scale_up.bandwidth",
    "scale_out.bandwidth",
)


@pytest.mark.parametrize("case", ["gpt3-dense", "nemotron-hybrid-latent"])
def test_gradient_unchanged_when_absent_work_is_skipped(case):
    model, mapping = CASES[case]
    smooth = dp.Smooth(16.0)

    def total(x, m):
        c = A100
        for i, path in enumerate(LEAVES):
            c = dp.scale_leaf(c, path, x[i])
        return dp.train_step(c, m, mapping, relax=smooth).total

    x = jax.numpy.ones(len(LEAVES))
    closed = jax.jit(jax.grad(lambda x: total(x, model)))(x)
    traced = eqx.filter_jit(jax.grad(total))(x, model)
    assert tree_allclose(closed, traced, rtol=1e-10)
    assert np.all(np.asarray(closed)[:2] < 0)  # compute and HBM bind


def test_batched_sweep_unchanged_when_absent_work_is_skipped():
    """The benchmark's job: hardware scale and mapping vmapped, dense GPT-3."""
    model, base = CASES["gpt3-dense"]

    def one(x, mdl):
        s, tp, pp = x
        c = dp.scale_leaf(A100, "chip.flops_bf16", s)
        c = dp.scale_leaf(c, "chip.hbm_bandwidth", s)
        m = eqx.tree_at(lambda m: (m.tp, m.pp), base, (tp, pp))
        b = dp.train_step(c, mdl, m)
        return b.total, b.memory_per_gpu

    xs = jax.numpy.asarray(
        [[0.5, 1.0, 8.0], [1.0, 2.0, 4.0], [1.7, 4.0, 2.0], [2.0, 8.0, 16.0]]
    )
    closed = jax.jit(jax.vmap(lambda x: one(x, model)))(xs)
    traced = eqx.filter_jit(jax.vmap(one, in_axes=(0, None)))(xs, model)
    assert tree_allclose(closed, traced, rtol=1e-12)
