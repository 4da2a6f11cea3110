"""The load models against a discrete-event simulation of the same scheduler.

The reference (`tests/serving_des.py`) simulates the engine step by step with step
times from the same phase model (`load.step_time` tabulated on a fine (D, P) grid and
interpolated), so the comparison tests the queueing analysis, not the step costs.
Grid: Llama-3-8B on one H100, 1024 prompt / 128 output tokens, vLLM-like limits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.load import step_time

from .serving_des import bilinear, simulate

HW = dp.load_hardware("h100_sxm")
MODEL = dp.load_workload("llama3_8b")
S_IN, S_OUT, BUDGET, SLOTS = 1024, 128, 8192, 256
SERVING = dp.Serving(tp=1, input_len=S_IN, output_len=S_OUT)
SCHED = dp.Scheduler(
    max_batch=SLOTS, max_tokens_per_step=BUDGET, chunked_prefill_budget=BUDGET
)
DES = dict(s_in=S_IN, s_out=S_OUT, max_batch=SLOTS, max_tokens=BUDGET, chunk=BUDGET)
TOL = 0.05  # the bound on the means below saturation


@pytest.fixture(scope="module")
def des_step_time():
    """The phase model's step time on a fine (D, P) grid, for the simulation."""
    d = np.unique(np.concatenate([[0.0], np.geomspace(1, 1.2 * SLOTS, 40)]))
    p = np.unique(np.concatenate([[0.0], np.geomspace(8, BUDGET, 60)]))
    one = lambda dd, pp: step_time(HW, MODEL, SERVING, dd, pp)  # noqa: E731
    table = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(
        jnp.asarray(d), jnp.asarray(p)
    )
    return bilinear(d, p, np.asarray(table))


CAPACITY = 25.1  # requests/s: dp.max_request_rate of this replica (checked below)


def _errors(r, i, sim):
    return {
        name: abs(float(getattr(r, attr)[i]) / float(np.mean(sim[key])) - 1.0)
        for name, attr, key in (
            ("ttft", "ttft", "ttft"),
            ("tpot", "tpot", "tpot"),
            ("e2e", "e2e_latency", "e2e"),
        )  # fmt: skip
    }


def test_open_loop_means_within_5pct_of_the_simulation_and_saturation(des_step_time):
    """Poisson arrivals at 30-85% of the modelled capacity: TTFT, TPOT and e2e means
    within 5%; at 115% the model reports saturation and the simulated queue grows."""
    shares = (0.3, 0.6, 0.85, 1.15)
    rates = jnp.asarray([s * CAPACITY for s in shares])
    fn = jax.jit(
        jax.vmap(
            lambda lam: dp.serve_load(
                HW, MODEL, SERVING, request_rate=lam, scheduler=SCHED
            )
        )  # fmt: skip
    )
    r = fn(rates)
    worst = {}
    for i, share in enumerate(shares[:-1]):
        sim = simulate(
            des_step_time, rate=float(rates[i]), n_requests=3000, seed=i, **DES
        )
        assert not bool(r.saturated[i]) and sim["queue_max"] == 0
        for k, e in _errors(r, i, sim).items():
            worst[(share, k)] = e
    assert max(worst.values()) < TOL, worst
    over = simulate(des_step_time, rate=float(rates[-1]), n_requests=3000, **DES)
    assert bool(r.saturated[-1])
    assert over["queue_max"] > 0.05 * 3000  # requests pile up without bound
    assert over["throughput"] < 0.95 * float(rates[-1])


def test_closed_loop_means_within_5pct_and_plateau(des_step_time):
    """N clients (output lengths spread ±50%, phases mixed): means within 5% below
    the slot limit; beyond it the extra clients queue and throughput plateaus."""
    clients = (16.0, 96.0, 200.0, 400.0)
    fn = jax.jit(
        jax.vmap(
            lambda n: dp.serve_load(HW, MODEL, SERVING, concurrency=n, scheduler=SCHED)
        )  # fmt: skip
    )
    r = fn(jnp.asarray(clients))
    worst = {}
    sims = {}
    for i, n in enumerate(clients):
        sims[n] = simulate(
            des_step_time, concurrency=int(n), n_requests=max(2500, 12 * int(n)),
            out_spread=0.5, seed=i, **DES,
        )  # fmt: skip
        errs = _errors(r, i, sims[n])
        errs["throughput"] = abs(
            float(r.requests_per_s[i]) / sims[n]["throughput"] - 1.0
        )
        for k, e in errs.items():
            worst[(n, k)] = e
    below = {k: v for k, v in worst.items() if k[0] < SLOTS}
    assert max(below.values()) < TOL, below
    assert bool(r.saturated[-1]) and not bool(r.saturated[0])
    assert float(r.saturation_concurrency[-1]) == pytest.approx(SLOTS, rel=0.02)
    # beyond the slot limit: the same throughput, the wait in TTFT (Little's law)
    assert worst[(400.0, "throughput")] < TOL
    assert worst[(400.0, "e2e")] < TOL
    assert sims[400.0]["queue_max"] >= 400 - SLOTS - 1


def test_max_request_rate_is_where_the_simulated_queue_starts_to_grow(des_step_time):
    cap = float(dp.max_request_rate(HW, MODEL, SERVING, scheduler=SCHED))
    assert cap == pytest.approx(CAPACITY, rel=0.01)
    below = simulate(des_step_time, rate=0.9 * cap, n_requests=3000, **DES)
    above = simulate(des_step_time, rate=1.1 * cap, n_requests=3000, **DES)
    assert below["queue_max"] < 0.01 * 3000 and above["queue_max"] > 0.05 * 3000


def test_load_gradients_are_finite_and_bandwidth_helps():
    def f(c):
        r = dp.serve_load(c, MODEL, SERVING, request_rate=10.0, scheduler=SCHED)
        return r.tpot + r.ttft

    g = jax.grad(f)(HW)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert float(g.chip.hbm_bandwidth) < 0


def test_bad_load_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="exactly one of concurrency"):
        dp.serve_load(HW, MODEL, SERVING)
    with pytest.raises(ValueError, match="arrival='bursty' must be one of"):
        dp.serve_load(HW, MODEL, SERVING, request_rate=1.0, arrival="bursty")
    with pytest.raises(ValueError, match=r"Scheduler\(max_batch=9000\) must be <"):
        dp.Scheduler(max_batch=9000)
    with pytest.raises(ValueError, match=r"Scheduler\(max_batch=-1\) must be > 0"):
        dp.Scheduler(max_batch=-1)
