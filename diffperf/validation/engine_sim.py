"""A discrete-event simulation of an LLM serving engine's scheduler.

The reference the load model (`model.load`) is checked against (`tests/test_load.py`,
`experiments/load_vs_simulation`); `dp.simulate_engine` and `dp.engine_step_table`.

Pure Python/numpy, deterministic for a seed. One event is one engine step, as in vLLM
(V1), TensorRT-LLM in-flight batching and SGLang:

- requests arrive (open loop: Poisson or constant inter-arrival times at a rate; closed
  loop: N clients, each sending its next request the moment the previous one finished,
  all starting together as `vllm bench serve --max-concurrency N` and aiperf do) and
  wait FCFS for a batch slot (at most `max_batch` requests run at once);
- at each step boundary, waiting requests are admitted while slots are free; every
  running request whose prompt is done decodes one token, and the token budget left
  (`max_tokens` − decodes, at most `chunk` prompt tokens) goes to the prompts of the
  running requests in admission order, chunked where a prompt does not fit
  (`mixed=True`); with `mixed=False` a step with prompt work pending prefills only
  (`chunk` tokens, no decodes: SGLang without mixed chunks) and the other steps decode;
- the step lasts `step_time(decodes, prompt_tokens)` seconds; a request whose last
  prompt token ran emits its first token at the end of that step (TTFT), each decode
  step emits one more, and a request is done after `s_out` tokens.

Per request: TTFT, TPOT = (e2e − TTFT)/(s_out − 1) and e2e latency, as the benchmark
tools report them. Requests are counted in steady state: open loop, those arriving in
the middle of the run (the first `warm` and last `warm` fractions are dropped); closed
loop, those sent after the first `warm` fraction (clients never stop, so the run never
drains), unless `steady=False`, which keeps every request of a finite benchmark.
"""

import heapq

import numpy as np

__all__ = ["simulate", "bilinear", "step_table"]


def step_table(cluster, model, serving, *, max_batch: int, budget: int):
    """The phase model's engine step time t(D, P) [s] for the simulation.

    `model.load.step_time` (D decodes beside P prompt tokens in one step) evaluated
    once on a fine grid, D in {0} ∪ geomspace(1, 1.2·max_batch, 40) and P in {0} ∪
    geomspace(8, budget, 60), and interpolated bilinearly (`bilinear`): the simulation
    then tests the queueing analysis, not the step costs.
    """
    import jax
    import jax.numpy as jnp

    from ..model.load import step_time

    d = np.unique(np.concatenate([[0.0], np.geomspace(1, 1.2 * max_batch, 40)]))
    p = np.unique(np.concatenate([[0.0], np.geomspace(8, budget, 60)]))

    def one(dd, pp):
        return step_time(cluster, model, serving, dd, pp)

    table = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(
        jnp.asarray(d), jnp.asarray(p)
    )
    return bilinear(d, p, np.asarray(table))


def bilinear(d_grid, p_grid, table):
    """step_time(D, P) by bilinear interpolation of a table on a (D, P) grid."""
    d_grid, p_grid, table = (np.asarray(x, float) for x in (d_grid, p_grid, table))

    def step_time(d, p):
        i = int(np.clip(np.searchsorted(d_grid, d) - 1, 0, len(d_grid) - 2))
        j = int(np.clip(np.searchsorted(p_grid, p) - 1, 0, len(p_grid) - 2))
        u = (d - d_grid[i]) / (d_grid[i + 1] - d_grid[i])
        v = (p - p_grid[j]) / (p_grid[j + 1] - p_grid[j])
        t = table
        return float(
            (1 - u) * (1 - v) * t[i, j]
            + u * (1 - v) * t[i + 1, j]
            + (1 - u) * v * t[i, j + 1]
            + u * v * t[i + 1, j + 1]
        )

    return step_time


def simulate(
    step_time,
    *,
    s_in: int,
    s_out: int,
    max_batch: int,
    max_tokens: int,
    chunk: int,
    mixed: bool = True,
    concurrency: int | None = None,
    rate: float | None = None,
    arrival: str = "poisson",
    n_requests: int = 4000,
    warm: float = 0.2,
    steady: bool = True,
    out_spread: float = 0.0,
    think: float = 0.0,
    seed: int = 0,
) -> dict:
    """Simulates one engine; returns per-request arrays and run statistics.

    Returns:
        dict with `ttft`, `tpot`, `e2e` (arrays over the counted requests, s),
        `throughput` (completed requests/s over the counted window), `steps`,
        `mean_decodes` (decodes per step, step average), `mean_step` (s) and
        `queue_max` (longest waiting queue seen).
    """
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency and rate")
    rng = np.random.default_rng(seed)
    closed = concurrency is not None
    lo, hi = round(s_out * (1 - out_spread)), round(s_out * (1 + out_spread))

    def lengths(n):  # output tokens of n new requests, uniform in [lo, hi]
        return rng.integers(max(lo, 2), hi + 1, n) if out_spread else np.full(n, s_out)

    if closed:
        future = [0.0] * concurrency  # arrival times not yet admitted
    else:
        gaps = (
            rng.exponential(1.0 / rate, n_requests)
            if arrival == "poisson"
            else np.full(n_requests, 1.0 / rate)
        )
        future = list(np.cumsum(gaps) - gaps[0])
    heapq.heapify(future)
    pending = []  # arrived, waiting for a slot (FCFS)
    # running requests (admission order): arrival, prompt tokens left, tokens out,
    # tokens wanted, ttft
    arr = np.zeros(0)
    left = np.zeros(0)
    out = np.zeros(0, dtype=int)
    want = np.zeros(0, dtype=int)
    first = np.zeros(0)
    done = []  # (arrival, ttft, e2e, finish, output tokens)
    t, steps, decodes_sum, step_sum, queue_max = 0.0, 0, 0.0, 0.0, 0
    while True:
        while future and future[0] <= t:
            pending.append(heapq.heappop(future))
        room = max_batch - len(arr)
        if room > 0 and pending:
            take, pending = pending[:room], pending[room:]
            arr = np.concatenate([arr, take])
            left = np.concatenate([left, np.full(len(take), float(s_in))])
            out = np.concatenate([out, np.zeros(len(take), dtype=int)])
            want = np.concatenate([want, lengths(len(take))])
            first = np.concatenate([first, np.zeros(len(take))])
        queue_max = max(queue_max, len(pending))
        if len(arr) == 0:
            if not future:
                break
            t = future[0]  # idle until the next arrival
            continue
        prefilling = left > 0
        decoding = ~prefilling
        if mixed or not prefilling.any():
            n_dec = int(decoding.sum())
            budget = min(chunk, max_tokens - n_dec)
        else:  # a prefill-only step
            n_dec, budget = 0, chunk
            decoding = np.zeros_like(decoding)
        need = np.where(prefilling, left, 0.0)
        before = np.cumsum(need) - need
        alloc = np.clip(budget - before, 0.0, need)
        p = float(alloc.sum())
        tau = step_time(n_dec, p)
        t += tau
        steps += 1
        decodes_sum += n_dec
        step_sum += tau
        left = left - alloc
        finished_prompt = prefilling & (left <= 0)
        first = np.where(finished_prompt, t - arr, first)
        out = out + finished_prompt + decoding
        complete = out >= want
        if complete.any():
            for a, f, w in zip(
                arr[complete], first[complete], want[complete], strict=True
            ):
                done.append((a, f, t - a, t, w))
            keep = ~complete
            arr, left, out, first = arr[keep], left[keep], out[keep], first[keep]
            want = want[keep]
            if closed:
                n_new = int(complete.sum())
                delay = rng.exponential(think, n_new) if think else np.zeros(n_new)
                for x in t + delay:
                    heapq.heappush(future, x)
                if len(done) >= n_requests:
                    break
    a, f, e, fin, w = (np.asarray(x) for x in zip(*done, strict=True))
    order = np.argsort(a, kind="stable")
    a, f, e, fin, w = a[order], f[order], e[order], fin[order], w[order]
    n = len(a)
    if not steady:
        keep = np.ones(n, bool)
    elif closed:
        keep = np.arange(n) >= int(warm * n)
    else:
        keep = (np.arange(n) >= int(warm * n)) & (np.arange(n) < int((1 - warm) * n))
    span = fin[keep].max() - fin[keep].min()
    tpot = (e - f) / np.maximum(w - 1, 1)
    return dict(
        ttft=f[keep],
        tpot=tpot[keep],
        e2e=e[keep],
        throughput=(keep.sum() - 1) / span,
        steps=steps,
        mean_decodes=decodes_sum / steps,
        mean_step=step_sum / steps,
        queue_max=queue_max,
    )
