"""The load models against a discrete-event simulation of the same scheduler.

The reference (`tests/serving_des.py`) simulates the engine step by step with step
times from the same phase model (`load.step_time` tabulated on a fine (D, P) grid and
interpolated), so the comparison tests the queueing analysis, not the step costs.
Grid: Llama-3-8B on one H100, 1024 prompt / 128 output tokens, vLLM-like limits.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.load import capacity, served, step_time

from .serving_des import bilinear, simulate

HW = dp.load_hardware("h100_sxm", stack="trtllm")  # a serving engine's host costs
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


CAPACITY = 24.7  # requests/s: dp.max_request_rate of this replica (checked below)


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
    cap = float(capacity(HW, MODEL, SERVING, scheduler=SCHED, arrival="poisson"))
    assert cap == pytest.approx(CAPACITY, rel=0.01)
    below = simulate(des_step_time, rate=0.9 * cap, n_requests=3000, **DES)
    above = simulate(des_step_time, rate=1.1 * cap, n_requests=3000, **DES)
    assert below["queue_max"] < 0.01 * 3000 and above["queue_max"] > 0.05 * 3000


def test_load_gradients_are_finite_and_bandwidth_helps():
    """d(TTFT + TPOT)/d(HBM bandwidth, FLOP/s, step overhead) through the root
    finding (implicit function) and the chain: finite, and more of a resource helps."""

    def f(scales):
        c = eqx.tree_at(
            lambda c: (c.chip.hbm_bandwidth, c.chip.flops_bf16, c.host.serve_overhead),
            HW,
            (HW.chip.hbm_bandwidth * scales[0], HW.chip.flops_bf16 * scales[1],
             HW.host.serve_overhead * scales[2]),
        )  # fmt: skip
        r = dp.serve_load(c, MODEL, SERVING, request_rate=10.0, scheduler=SCHED)
        return r.tpot + r.ttft

    g = np.asarray(jax.jit(jax.grad(f))(jnp.ones(3)))
    assert np.all(np.isfinite(g))
    assert g[0] < 0 and g[1] < 0 and g[2] > 0


def test_bad_load_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="exactly one of concurrency"):
        dp.serve_load(HW, MODEL, SERVING)
    with pytest.raises(ValueError, match="arrival='bursty' must be one of"):
        dp.serve_load(HW, MODEL, SERVING, request_rate=1.0, arrival="bursty")
    with pytest.raises(ValueError, match=r"Scheduler\(max_batch=9000\) must be <"):
        dp.Scheduler(max_batch=9000)
    with pytest.raises(ValueError, match=r"Scheduler\(max_batch=-1\) must be > 0"):
        dp.Scheduler(max_batch=-1)


def test_mlperf_server_rate_is_the_largest_meeting_the_p99_limits():
    """A Server run at the returned rate meets both p99 limits; 10% more does not
    (or saturates), and Offline (saturated throughput) is higher."""
    from diffperf.model.load import mlperf_server

    serving = dp.Serving(tp=1, input_len=512, output_len=256)
    limits = dict(ttft_p99=0.5, tpot_p99=0.03)
    lam, r = mlperf_server(HW, MODEL, serving, scheduler=SCHED, **limits)
    lam = float(lam)
    assert float(r.ttft_pct[2]) <= limits["ttft_p99"] + 1e-9
    assert float(r.tpot_pct[2]) <= limits["tpot_p99"] + 1e-9
    more = served(HW, MODEL, serving, request_rate=1.1 * lam, scheduler=SCHED)
    assert (
        bool(more.saturated)
        or float(more.ttft_pct[2]) > limits["ttft_p99"]
        or float(more.tpot_pct[2]) > limits["tpot_p99"]
    )
    offline = float(capacity(HW, MODEL, serving, scheduler=SCHED))
    assert 0 < lam < offline


def test_infer_cli_under_load_json(capsys):
    import json

    from diffperf.cli import main

    rc = main(["infer", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus",
               "2", "--input-len", "1024", "--output-len", "128", "--concurrency",
               "64", "--max-batch", "128", "--json"])  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    for k in ("ttft", "tpot", "e2e_latency"):
        assert data[f"{k}_p50_s"] <= data[f"{k}_p90_s"] <= data[f"{k}_p99_s"]
    assert data["load"]["replicas"] == 2 and data["load"]["concurrency"] == 64
    assert data["static_batch"]["ttft_s"] != data["ttft_s"]
    per_user = data["output_tokens_per_s_per_user"]
    assert per_user == pytest.approx(1.0 / data["tpot_s"], rel=1e-9)
    assert data["output_tokens_per_s_per_gpu"] == pytest.approx(
        data["output_tokens_per_s"] / 2, rel=1e-9
    )
    assert not data["saturated"] and data["max_request_rate"] > 0
    rc = main(["infer", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus",
               "1", "--concurrency", "8", "--max-batch", "9000", "--json"])  # fmt: skip
    assert rc == 2 and "--max-batch=9000 must be < --max-tokens-per-step" in (
        capsys.readouterr().err
    )
