"""The load models against a discrete-event simulation of the same scheduler.

The reference (`diffperf/validation/engine_sim.py`) simulates the engine step by
step with step times from the same phase model (`load.step_time` tabulated on a fine
(D, P) grid and interpolated), so the comparison tests the queueing analysis, not the
step costs. Grid: Llama-3-8B on one H100, 1024 prompt / 128 output tokens, vLLM-like
limits.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.load import capacity, served
from diffperf.validation.engine_sim import simulate, step_table

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
    return step_table(HW, MODEL, SERVING, max_batch=SLOTS, budget=BUDGET)


CAPACITY = 26.3  # requests/s: dp.max_request_rate of this replica (checked below)


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
               "2", "--input-len", "1024", "--output-len", "128", "--concurrency",
               "64", "--max-batch", "128", "--phases", "synchronized",
               "--reserved-output", "0.5", "--json"])  # fmt: skip
    waves = json.loads(capsys.readouterr().out)
    assert rc == 0 and waves["load"]["phases"] == "synchronized"
    assert waves["load"]["reserved_output"] == 0.5
    assert waves["ttft_s"] > 2.0 * data["ttft_s"]  # 32 prompts per replica at once
    assert waves["ttft_p50_s"] <= waves["ttft_p90_s"] <= waves["ttft_p99_s"]
    rc = main(["infer", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus",
               "1", "--request-rate", "2", "--phases", "synchronized"])  # fmt: skip
    assert rc == 2 and "closed loop: give --concurrency" in capsys.readouterr().err
    rc = main(["infer", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus",
               "1", "--concurrency", "8", "--max-batch", "9000", "--json"])  # fmt: skip
    assert rc == 2 and "--max-batch=9000 must be < --max-tokens-per-step" in (
        capsys.readouterr().err
    )


SYNC_TOL = 0.05  # synchronized waves: TTFT, TPOT and e2e means against the simulation
ROLL_TOL = 0.25  # the rolling pipeline's TTFT, one chunk step: an upper estimate


def _sync(clients, mixed):
    sched = dp.Scheduler(max_batch=SLOTS, max_tokens_per_step=BUDGET,
                         chunked_prefill_budget=BUDGET, mixed=mixed)  # fmt: skip
    fn = jax.jit(
        jax.vmap(
            lambda n: dp.serve_load(HW, MODEL, SERVING, concurrency=n,
                                    scheduler=sched, phases="synchronized")
        )
    )  # fmt: skip
    return fn(jnp.asarray(clients))


def test_synchronized_waves_within_5pct_of_the_simulation_with_fixed_lengths(
    des_step_time,
):
    """Every client started together, fixed lengths, exact timing. Prefill-only steps
    (`mixed=False`): the waves repeat exactly, so the simulation's steady state is the
    reference, up to and beyond the slot limit. Mixed steps: the clients desynchronize
    after the first wave (the early finishers' next prompts share steps with the late
    ones' decodes), so the reference is the first wave of a benchmark (each client's
    first request, below the slot limit). Means within 5%; the throughput is Little's
    law on the N clients; TTFT grows with N (one prompt step per C/S_in clients)."""
    clients = (1.0, 16.0, 50.0, 128.0, 256.0, 400.0)
    worst = {}
    r = _sync(clients, mixed=False)
    for i, n in enumerate(clients):
        sim = simulate(des_step_time, concurrency=int(n), mixed=False,
                       n_requests=max(2000, 12 * int(n)), **DES)  # fmt: skip
        for k, e in _errors(r, i, sim).items():
            worst[("prefill-only", n, k)] = e
        little = n / float(np.mean(sim["e2e"]))
        worst[("prefill-only", n, "X")] = abs(float(r.requests_per_s[i]) / little - 1)
    assert float(r.ttft[3]) > 3.0 * float(r.ttft[1])  # waves: TTFT grows with N
    assert bool(r.saturated[-1]) and float(r.queue_wait[-1]) > 0
    first = clients[:-1]
    r = _sync(first, mixed=True)
    for i, n in enumerate(first):
        with np.errstate(divide="ignore", invalid="ignore"):  # one wave: no span
            sim = simulate(des_step_time, concurrency=int(n), mixed=True,
                           steady=False, n_requests=int(n), **DES)  # fmt: skip
        for k, e in _errors(r, i, sim).items():
            worst[("mixed", n, k)] = e
    assert max(worst.values()) < SYNC_TOL, worst
    spread = dp.serve_load(HW, MODEL, SERVING, concurrency=128.0, scheduler=SCHED)
    assert float(r.ttft[3]) > 4.0 * float(spread.ttft)  # waves wait for the others


def test_synchronized_percentiles_ordered_and_gradients_finite():
    """p50 ≤ p90 ≤ p99 of the deterministic per-request times; under Smooth(p) the
    gradients of TTFT + TPOT with respect to bandwidth, FLOP/s and overhead are finite
    and more of a resource helps."""

    def f(scales, relax):
        c = eqx.tree_at(
            lambda c: (c.chip.hbm_bandwidth, c.chip.flops_bf16, c.host.serve_overhead),
            HW,
            (HW.chip.hbm_bandwidth * scales[0], HW.chip.flops_bf16 * scales[1],
             HW.host.serve_overhead * scales[2]),
        )  # fmt: skip
        r = dp.serve_load(c, MODEL, SERVING, concurrency=64.0, scheduler=SCHED,
                          phases="synchronized", relax=relax)  # fmt: skip
        return r.tpot + r.ttft, r

    _, r = f(jnp.ones(3), dp.Exact())
    for key in ("ttft_pct", "tpot_pct", "e2e_pct"):
        q = np.asarray(getattr(r, key))
        assert np.all(np.diff(q) >= 0), (key, q)
    assert float(r.ttft_pct[0]) < float(r.ttft) * 1.2 < float(r.ttft_pct[2]) * 1.2
    for relax in (dp.Exact(), dp.Smooth(16.0)):
        g = np.asarray(jax.jit(jax.grad(lambda s, x=relax: f(s, x)[0]))(jnp.ones(3)))
        assert np.all(np.isfinite(g)), g
        assert g[0] < 0 and g[1] < 0 and g[2] > 0


def test_kv_admission_counts_the_tokens_a_request_holds():
    """B from the KV cache at S_in + r·S_out tokens per request (`reserved_output`
    r), in the KV-cache dtype: fewer reserved tokens or an fp8 cache admit more; r = 1
    is `serve`'s full-length reservation."""
    from diffperf.model.load import batch_limit

    model = dp.load_workload("llama3_1_70b")
    serving = dp.Serving(tp=2, input_len=1024, output_len=8192)
    hw = dp.load_hardware("h200_sxm")

    def limit(r, m=model):
        sched = dp.Scheduler(max_batch=4000, max_tokens_per_step=8192,
                             reserved_output=r)  # fmt: skip
        return float(batch_limit(hw, m, serving, sched))

    full = dp.serve(hw, model, eqx.tree_at(lambda s: s.batch, serving, 1.0)).max_batch
    assert limit(1.0) == float(full) > 10
    kv = model.precision.bytes("kv_cache")
    assert limit(0.5) == pytest.approx(limit(1.0) * 9216 / 5120, rel=0.05, abs=1)
    cache = dataclasses.replace(model.precision, kv_cache="fp8")
    fp8 = eqx.tree_at(lambda m: m.precision, model, cache)
    assert fp8.precision.bytes("kv_cache") == kv / 2
    assert limit(1.0, fp8) == pytest.approx(2 * limit(1.0), rel=0.05, abs=1)
    with pytest.raises(ValueError, match=r"reserved_output=1.5\) must be in \[0, 1\]"):
        dp.Scheduler(reserved_output=1.5)
    with pytest.raises(ValueError, match="phases='waves' must be one of"):
        dp.serve_load(HW, MODEL, SERVING, concurrency=4.0, phases="waves")
    with pytest.raises(ValueError, match="synchronized' is a closed loop"):
        dp.serve_load(HW, MODEL, SERVING, request_rate=1.0, phases="synchronized")


def test_rounds_average_the_first_wave_with_the_rolling_pipeline(des_step_time):
    """Mixed steps, fixed lengths, R requests per client (a benchmark's
    `--num-requests R·N`): after the first wave the clients settle into the rolling
    pipeline, and the mean TTFT over every request of the run is (first wave +
    (R − 1)·rolling)/R. Against the simulation of the whole finite run
    (`steady=False`) for 16-200 clients and R = 1, 2, 5, 50: TPOT means and the first
    wave's TTFT (R = 1) within `SYNC_TOL`; with more rounds the rolling pipeline's
    TTFT, one full chunk step, is an upper estimate (the simulation's groups split
    across steps, whose shorter steps bring its steady state to 0.8-0.95 of a chunk
    step), within `ROLL_TOL`; many rounds bring TTFT down to about one chunk step."""
    sched = dp.Scheduler(max_batch=SLOTS, max_tokens_per_step=BUDGET,
                         chunked_prefill_budget=BUDGET)  # fmt: skip
    cases = [(n, r) for n in (16.0, 64.0, 128.0, 200.0) for r in (1.0, 2.0, 5.0, 50.0)]
    fn = jax.jit(
        jax.vmap(
            lambda n, r: dp.serve_load(HW, MODEL, SERVING, concurrency=n, rounds=r,
                                       scheduler=sched, phases="synchronized")
        )
    )  # fmt: skip
    got = fn(*(jnp.asarray(x) for x in zip(*cases, strict=True)))
    worst = {}
    for i, (n, r) in enumerate(cases):
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = simulate(des_step_time, concurrency=int(n), mixed=True,
                           steady=False, n_requests=int(n * r), **DES)  # fmt: skip
        for k in ("ttft", "tpot"):
            worst[(n, r, k)] = float(getattr(got, k)[i]) / np.mean(sim[k]) - 1
    for (n, r, k), e in worst.items():
        if k == "tpot" or r == 1.0:
            assert abs(e) < SYNC_TOL, (n, r, k, e)
        else:  # an upper estimate of the rolling pipeline
            assert -SYNC_TOL < e < ROLL_TOL, (n, r, k, e)
    # many rounds: TTFT falls from the first wave's toward one step
    ttft = np.asarray(got.ttft).reshape(4, 4)
    assert np.all(np.diff(ttft, axis=1) < 0)
    assert ttft[2, 3] < 0.25 * ttft[2, 0]
    with pytest.raises(ValueError, match="rounds=0.5 must be >= 1"):
        dp.serve_load(HW, MODEL, SERVING, concurrency=8.0, rounds=0.5,
                      phases="synchronized")  # fmt: skip
    with pytest.raises(ValueError, match="rounds= needs phases='synchronized'"):
        dp.serve_load(HW, MODEL, SERVING, concurrency=8.0, rounds=5.0)


def test_rounds_gradients_match_finite_differences():
    """The rounds average is smooth in R and in the hardware leaves: jax.grad of TTFT
    by log R and by log HBM bandwidth against central differences (float64)."""
    sched = dp.Scheduler(max_batch=SLOTS, max_tokens_per_step=BUDGET,
                         chunked_prefill_budget=BUDGET)  # fmt: skip

    def ttft(u):  # u = (log R, log bandwidth scale)
        c = eqx.tree_at(lambda c: c.chip.hbm_bandwidth, HW,
                        HW.chip.hbm_bandwidth * jnp.exp(u[1]))  # fmt: skip
        return dp.serve_load(c, MODEL, SERVING, concurrency=96.0, rounds=jnp.exp(u[0]),
                             scheduler=sched, phases="synchronized").ttft  # fmt: skip

    u0 = jnp.asarray([math.log(5.0), 0.0])
    f = jax.jit(ttft)
    g = np.asarray(jax.jit(jax.grad(ttft))(u0))
    eps = float(np.cbrt(np.finfo(np.float64).eps))
    for i in range(2):
        du = jnp.zeros(2).at[i].set(eps)
        fd = (float(f(u0 + du)) - float(f(u0 - du))) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=1e-4, abs=1e-9), (i, g[i], fd)
    assert g[0] < 0 and g[1] < 0  # more rounds or more bandwidth: shorter TTFT
