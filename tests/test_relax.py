"""Smooth primitives: bounds against Exact, finite values and gradients at 0 and
ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import diffperf as dp

P = (4.0, 16.0, 64.0)
# Zero or normal floats: XLA on CPU flushes subnormal results to zero, and costs are
# never below 1e-30 (s, B, FLOP).
pos = st.one_of(st.just(0.0), st.floats(min_value=1e-30, max_value=1e6))
real = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


@given(a=pos, b=pos, p=st.sampled_from(P))
def test_max_min_bounds(a, b, p):
    s, e = dp.Smooth(p), dp.Exact()
    hi, lo = float(e.max(a, b)), float(e.min(a, b))
    assert hi <= float(s.max(a, b)) <= 2 ** (1 / p) * hi * (1 + 1e-12) + 1e-300
    assert 2 ** (-1 / p) * lo * (1 - 1e-12) <= float(s.min(a, b)) <= lo * (1 + 1e-12)


@given(x=real, scale=st.floats(1e-3, 1e3), p=st.sampled_from(P))
def test_relu_bound(x, scale, p):
    s, e = dp.Smooth(p), dp.Exact()
    diff = float(s.relu(x, scale)) - float(e.relu(x, scale))
    assert -1e-9 <= diff <= scale * np.log(2) / p * (1 + 1e-9)


@given(x=real, scale=st.floats(1e-3, 1e3), p=st.sampled_from(P), k=st.floats(1, 10))
def test_step_bound(x, scale, p, k):
    s, e = dp.Smooth(p), dp.Exact()
    if abs(x) >= k * scale / p:
        diff = abs(float(s.step(x, scale)) - float(e.step(x, scale)))
        assert diff <= 1 / (1 + np.exp(k)) + 1e-12


@pytest.mark.parametrize(
    "relax", [dp.Exact(), dp.Smooth(16.0)], ids=["exact", "smooth"]
)
@pytest.mark.parametrize("a,b", [(0.0, 0.0), (1.0, 1.0), (0.0, 2.0), (3.0, 0.0)])
def test_finite_value_and_gradient_at_zero_and_ties(relax, a, b):
    for f in (relax.max, relax.min, relax.exceed):
        val, grads = jax.value_and_grad(f, argnums=(0, 1))(a, b)
        assert np.isfinite(val) and all(np.isfinite(g) for g in grads)
    for f in (relax.relu, relax.step):
        val, g = jax.value_and_grad(f)(a)
        assert np.isfinite(val) and np.isfinite(g)


def test_smooth_gradients_match_finite_differences():
    s = dp.Smooth(8.0)
    x = (jnp.array(0.7), jnp.array(1.3))
    check_grads(s.max, x, order=1, modes=("fwd", "rev"))
    check_grads(s.min, x, order=1, modes=("fwd", "rev"))
    check_grads(s.exceed, x, order=1, modes=("fwd", "rev"))
    check_grads(lambda v: s.relu(v, 2.0), (jnp.array(0.3),), order=1, modes=("rev",))
    check_grads(lambda v: s.step(v, 2.0), (jnp.array(0.3),), order=1, modes=("rev",))


def test_sharpness_is_a_leaf_and_vmappable():
    ps = jnp.array([2.0, 8.0, 32.0])
    out = jax.vmap(lambda p: dp.Smooth(p).max(1.0, 1.0))(ps)
    np.testing.assert_allclose(out, 2.0 ** (1.0 / ps), rtol=1e-12)


@pytest.mark.parametrize("sharpness", [7.3, 8.5, 19.027])
def test_non_integer_sharpness_is_finite_on_a_full_step(sharpness):
    # A rounding-level negative input (e.g. a zero-size all-to-all) to a non-integer
    # power used to give NaN; annealing makes the sharpness non-integer.
    import diffperf as dp

    c = dp.load_hardware("dgx_h100")
    for model in ("llama3_8b", "mixtral_8x7b"):
        m = dp.load_workload(model)
        mp = dp.Parallelism(tp=2, pp=2, dp=2, microbatch=1, global_batch=8)
        b = dp.train_step(c, m, mp, relax=dp.Smooth(sharpness))
        assert np.isfinite(float(b.total))
        g = jax.grad(
            lambda cl, m=m, mp=mp: (
                dp.train_step(cl, m, mp, relax=dp.Smooth(sharpness)).total
            )
        )(c)
        assert all(np.isfinite(x) for x in jax.tree_util.tree_leaves(g))
