"""The load model against a discrete-event simulation of the same scheduler.

`dp.serve_load` (open loop at a Poisson rate, closed loop at N clients) against
`dp.simulate_engine` (engine steps one by one: FCFS admission to `max_batch` slots,
decodes first and prompt chunks in the rest of the token budget) with step times from
the same phase model (`dp.engine_step_table`), so the comparison tests the queueing
analysis, not the step costs. Llama-3-8B on one H100 with TensorRT-LLM's host costs,
1024 prompt / 128 output tokens, 256 slots, an 8192-token budget: the setup of
`tests/test_load.py`, which asserts the 5% bound on the same grid.

Writes results.json (rendered into VALIDATION.md by `benchmarks/report.py`).
Run: `.venv/bin/python experiments/load_vs_simulation/run.py` (about 2 minutes).
"""

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import diffperf as dp

jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).resolve().parent
S_IN, S_OUT, SLOTS, BUDGET, N = 1024, 128, 256, 8192, 3000
HW = dp.load_hardware("h100_sxm", stack="trtllm")
MODEL = dp.load_workload("llama3_8b")
SERVING = dp.Serving(tp=1, input_len=S_IN, output_len=S_OUT)
SCHED = dp.Scheduler(
    max_batch=SLOTS, max_tokens_per_step=BUDGET, chunked_prefill_budget=BUDGET
)
DES = dict(s_in=S_IN, s_out=S_OUT, max_batch=SLOTS, max_tokens=BUDGET, chunk=BUDGET)
OPEN = (0.3, 0.6, 0.85)  # shares of the modelled capacity
CLIENTS = (16, 96, 200, 400)  # output lengths ±50% (spread phases)
EDGE = (0.9, 1.1, 1.15, 1.3)  # around the capacity: does the simulated queue grow?


def _err(model: float, sim) -> float:
    return model / float(np.mean(sim)) - 1.0


def _means(r, i, sim) -> dict:
    return {
        "ttft": _err(float(r.ttft[i]), sim["ttft"]),
        "tpot": _err(float(r.tpot[i]), sim["tpot"]),
        "e2e": _err(float(r.e2e_latency[i]), sim["e2e"]),
    }


def main():
    t0 = time.perf_counter()
    step = dp.engine_step_table(HW, MODEL, SERVING, max_batch=SLOTS, budget=BUDGET)
    cap = float(dp.max_request_rate(HW, MODEL, SERVING, scheduler=SCHED))
    rates = jnp.asarray([s * cap for s in OPEN])
    r = jax.vmap(
        lambda lam: dp.serve_load(HW, MODEL, SERVING, request_rate=lam, scheduler=SCHED)
    )(rates)
    open_rows = []
    for i, share in enumerate(OPEN):
        sim = dp.simulate_engine(
            step, rate=float(rates[i]), n_requests=N, seed=i, **DES
        )
        open_rows.append(dict(share=share, rate=float(rates[i]), **_means(r, i, sim),
                              queue_max=int(sim["queue_max"])))  # fmt: skip
    r = jax.vmap(
        lambda n: dp.serve_load(HW, MODEL, SERVING, concurrency=n, scheduler=SCHED)
    )(jnp.asarray(CLIENTS, dtype=float))
    closed_rows = []
    for i, n in enumerate(CLIENTS):
        sim = dp.simulate_engine(step, concurrency=n, n_requests=max(2500, 12 * n),
                                 out_spread=0.5, seed=i, **DES)  # fmt: skip
        closed_rows.append(dict(
            clients=n, **_means(r, i, sim),
            throughput=float(r.requests_per_s[i]) / sim["throughput"] - 1.0,
            queue_max=int(sim["queue_max"]), saturated=bool(r.saturated[i]),
        ))  # fmt: skip
    edge = []
    for share in EDGE:
        sim = dp.simulate_engine(step, rate=share * cap, n_requests=N, **DES)
        edge.append(dict(share=share, rate=share * cap, queue_max=int(sim["queue_max"]),
                         throughput=float(sim["throughput"])))  # fmt: skip
    results = dict(
        setup=dict(hardware="h100_sxm", stack="trtllm", model="llama3_8b",
                   input_len=S_IN, output_len=S_OUT, slots=SLOTS, budget=BUDGET,
                   requests=N),  # fmt: skip
        capacity=cap,
        simulated_capacity=max(e["throughput"] for e in edge),
        open_loop=open_rows, closed_loop=closed_rows, around_capacity=edge,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    print(f"capacity {cap:.2f} req/s (simulated {results['simulated_capacity']:.2f})")
    worst = max(abs(v) for row in open_rows + closed_rows[:3]
                for k, v in row.items() if k in ("ttft", "tpot", "e2e"))  # fmt: skip
    print(f"worst mean error below saturation {100 * worst:.1f}%; "
          f"{results['seconds']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
