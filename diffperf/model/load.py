"""Serving under load: a closed loop at concurrency N, an open loop at request rate λ.

Notation (per replica; SI units): S_in, S_out prompt and output tokens per request; a
step of the engine decodes D sequences and prefills P prompt tokens in
t(D, P) = `phases.mixed_step` seconds; the scheduler (`specs.scheduler.Scheduler`)
admits at most B requests (its `max_batch`, capped by the KV-cache capacity) and gives
prompts C = min(chunked_prefill_budget, max_tokens_per_step − D) tokens per step.

**The step chain.** Prompt work is a discrete-time bulk-service queue (Bailey 1954;
Chaudhry & Templeton 1983): x_k prompt tokens wait at the start of step k, the step
processes s_k = min(x_k, C) of them, and the requests that arrive during it add S_in
tokens each for step k + 1:

    x_{k+1} = x_k − min(x_k, C) + S_in·A_k,   step time t_k = t(D̄, s_k)   [tokens, s]

A_k ~ Poisson(λ·t_k) for Poisson arrivals (a constant rate: ⌊λ·t_k⌋ or ⌈λ·t_k⌉ at a
random phase; a closed loop: Poisson(m), the requests that finished in the previous
step). The chain lives on a grid of `grid` backlog values (mass split linearly between
neighbours, which keeps the mean); its stationary distribution π is one linear solve.
Decodes are the mean-field D̄ = λ·(S_out − 1)·E_π[t] (Little's law: each request
decodes for S_out − 1 steps), solved by Newton's method on D. With `mixed=False`
(prefill-only steps) a step with prompt work runs t(0, s) and decodes only advance in
the other steps.

**Latencies.** A request's TTFT is the wait for the next step boundary (open loop: it
arrives in a step of state k with probability ∝ π_k·t_k, PASTA, at a uniform phase)
plus the steps until its last prompt token is processed: n = ⌈(W + S_in)/C⌉ steps behind
the W tokens ahead of it, the first n − 1 full (t(D̄, C)), the last with what is left
plus the prompts behind it up to C. TPOT is the decode-weighted mean step time,
E_π[t] + ∂t/∂D (a decoding request sees itself in its batch: for Poisson-distributed D,
E[D·t]/E[D] = E[t] + ∂t/∂D·Var D/E D), divided by the share of steps that decode when
`mixed=False`; e2e = TTFT + (S_out − 1)·TPOT. A closed loop (N clients, each sending its
next request when the last one finishes, no think time) is solved by mean value
analysis: m = N/(n̄ + S_out − 1) requests finish per step (Little's law on the N
requests, each holding a slot for n̄ prompt steps and S_out − 1 decode steps); it
assumes the clients' phases are spread (requests of varied output lengths), not a
synchronized wave. Requests beyond B wait for a slot: open loop, the M/D/c wait
W = ½·ErlangC(B, λR)·R/(B − λR) with R the slot holding time (Cosmetatos' half of
M/M/c; the Erlang formula in its continuous incomplete-gamma form); closed loop, N − B
requests queue, W = (N − B)/X (Little).

**Synchronized waves** (`phases="synchronized"`). Benchmark tools start their N
clients together, and with fixed S_in and S_out the clients stay in waves (the
simulation in `validation/engine_sim.py` reproduces them; AIConfigurator's measured
TTFT grows about linearly with N). A wave holds n = min(N, B) requests whose prompts all
arrive at one step boundary and are prefilled in arrival order, C = a·min(budget,
max_tokens_per_step − n/(2a)) prompt tokens per step (a attention ranks, each with
its own scheduler; the decodes riding beside the chunks take their tokens). Request i
(0-based) gets its first token at the end of step k_i = ⌈(i + 1)·S_in/C⌉ of the
K = ⌈n·S_in/C⌉ prefill steps:

    TTFT_i = T(k_i),   T(k) = (k − 1)·t(D̄_k, C) + t(D_k, P_k)

with P_k = min(C, n·S_in − (k − 1)·C) the last step's chunk, D_k the prompts finished
before step k (0 with prefill-only steps) and D̄_k their mean over the earlier steps.
With prefill-only steps (`mixed=False`) every request decodes after step K and the
wave ends together: e2e_i = T(K) + (S_out − 1)·t(n, 0), the wave W = that. With mixed
steps a request's S_out − 1 decode steps hold the other K − 1 chunk steps (of its own
wave, or of the next one, whose clients finished first and resent), the last of them
the partial one: (S_out − 1)·TPOT_i = (K − 2)·t(n − C/S_in + 1, C) + t(n, P_K) +
(S_out − K)·t(n, 0), and a slot is resent its next request when its request ends, so
W = the mean e2e. The decode steps' mean context is S_in + S_out/2 (the step table's;
attention is linear in the context, so the mean of the growing-context steps is the
step at the mean context). Throughput X = n/W; clients beyond B wait whole waves at
the front of the next one, r = (N − n)/n waves on average (Little's law), so the mean
TTFT adds r·W. Means and percentiles are over the per-request values (exact for n ≤
256 requests, else 256 evenly spaced ranks). Checked against the simulation with
exact timing and fixed lengths (`tests/test_load.py`): with prefill-only steps the
waves repeat exactly and the steady-state means agree within 2.4% up to and beyond
B; with mixed steps the clients drift apart after the first wave (the simulation's
steady state is a rolling pipeline of C/S_in-prompt groups, TTFT about one chunk
step), so the reference is the first wave, within 4.1% for N ≤ B. Beyond B with
mixed steps the model's whole-wave wait overstates the rolling admission (+69% TTFT
at 400 clients on 256 slots); see the test.

**Rounds** (`rounds` R, mixed steps). A benchmark sends each client R requests (aiperf
`--num-requests R·N`), and after the first wave the clients settle into the rolling
pipeline: each resends the moment its request ends, the requests end in the groups
their prompts were prefilled in, so a group of g = min(n, C/S_in) prompts arrives at
a step boundary and is prefilled beside the others' decodes in ⌈S_in/C⌉ steps:
TTFT_roll = ⌈S_in/C⌉·t(n − g, min(g·S_in, C)), an upper estimate (the simulation's
steady state is 0.8-0.95 of it: groups split across steps). The mean over the run is

    TTFT = (TTFT_first + (R − 1)·TTFT_roll)/R   [s]

(against the simulation of the whole run, 16-200 clients, `tests/test_load.py`: TTFT
within 5% at R = 1 and 2, −3% to +12% at R = 5, +4% to +23% at R = 50; TPOT within
1.6%). Prefill-only steps keep the waves, so R does not enter.

**KV admission.** B = min(max_batch, the sequences the KV cache holds at S_in +
r·S_out tokens each, `Scheduler.reserved_output` = r, in the model's KV-cache dtype):
r = 1 reserves every output token at admission (TensorRT-LLM's GUARANTEED_NO_EVICT),
r = 0.5 is the mean a request holds over its life when pages are allocated as tokens
come (vLLM, SGLang).

**Percentiles.** TTFT is a mixture over the chain's states, arrival phases and requests
ahead (each term a narrow normal); TPOT a normal of variance Var_π(t)/(steps in a
request's decode); e2e their sum. Quantiles are found by bisection on the mixture's
CDF with the implicit-function gradient.

**Saturation.** The open loop saturates when the decode fixed point leaves [0, B)
(each step's work grows faster than the steps it frees), when prompt tokens arrive
faster than C per step, or when λ·R ≥ B; `max_request_rate` is the largest stable λ
(bisection). D's Fano factor is bounded by the slots (Var D ≤ D̄·(B − D̄), see
`_bounded_fano`), so near the slot limit the fixed point runs up to B and the slot
load λR/B decides: the simulated capacity of the test replica (the rate where its
throughput stops following λ) is within 1% of `max_request_rate` (26.3 vs 26.6
requests/s, `experiments/load_vs_simulation`; without the bound the fixed point
folded 4% below it).
The closed loop's throughput plateaus at N = min(B, N_C) with
N_C = (C/S_in)·(S_out − 1 + n̄) the concurrency at which the prompt budget is full.

Pipeline parallelism keeps pp microbatches in flight (TensorRT-LLM, vLLM virtual
engines): all running requests advance one token per pass of a microbatch through the
pp stages, so the step time is t(D/pp, P/pp) of the whole model (pp stage times and
the sends): throughput ≈ pp × one stage's rate, and TPOT still includes every stage.
"""

import copy
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaincc, gammaln
from jax.scipy.stats import norm
from jaxtyping import Array

from ..core.checks import concrete
from ..core.relax import AbstractRelax, Exact
from ..specs.hardware import Cluster
from ..specs.mapping import Serving, check_serving
from ..specs.scheduler import Scheduler
from ..specs.workload import Transformer
from .fidelity import Fidelity, tier
from .phases import mixed_step
from .serving import kv_capacity

__all__ = [
    "LoadResult",
    "serve_load",
    "max_request_rate",
    "mlperf_server",
    "served",
    "capacity",
    "step_time",
    "batch_limit",
    "ARRIVALS",
    "PHASES",
]

_EXACT = Exact()
ARRIVALS = ("poisson", "constant")
"""Open-loop arrival processes: Poisson (exponential gaps) or constant gaps."""
PHASES = ("spread", "synchronized")
"""Closed-loop client phases: spread (mean value analysis) or synchronized waves."""
_M = 256  # representative requests of a synchronized wave
_K = 64  # arrivals per step covered by the pmf (the tail mass goes to the last)
_Q = 33  # prompt-token grid of the step-time table
_DQ = 17  # decode grid of the step-time table
_U = (0.0694318442, 0.3300094782, 0.6699905218, 0.9305681558)  # Gauss-Legendre
_UW = (0.1739274226, 0.3260725774, 0.3260725774, 0.1739274226)
_QUANTILES = (0.5, 0.9, 0.99)


class LoadResult(eqx.Module):
    """Serving metrics of one replica under load (means and percentiles; SI)."""

    ttft: Array  # mean [s]
    tpot: Array
    e2e_latency: Array
    ttft_pct: Array  # p50, p90, p99 [s]
    tpot_pct: Array
    e2e_pct: Array
    requests_per_s: Array  # per replica
    output_tokens_per_s: Array  # per replica
    output_tokens_per_s_per_user: Array  # 1 / TPOT
    chips: Array
    decodes: Array  # mean decodes per step
    prefill_tokens: Array  # mean prompt tokens per step
    step_time: Array  # mean step [s]
    prefill_steps: Array  # mean steps from admission to the first token
    batch_limit: Array  # B: min(max_batch, KV-cache capacity)
    prefill_budget: Array  # C at the mean decode count
    utilization: Array  # the largest of the three loads below (1 = saturated)
    slot_load: Array  # λR/B
    prefill_load: Array  # prompt tokens arriving per step / C
    decode_load: Array  # λ(S_out − 1)·∂E[t]/∂D (the fixed point's slope)
    queue_wait: Array  # mean wait for a slot [s]
    saturation_concurrency: Array  # closed loop: N where throughput plateaus

    @property
    def output_tokens_per_s_per_gpu(self) -> Array:
        """Output tokens/s per chip."""
        return self.output_tokens_per_s / self.chips

    @property
    def saturated(self) -> Array:
        """True when the offered load exceeds what the replica sustains."""
        return self.utilization >= 1.0


def step_time(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    decodes,
    prefill_tokens,
    *,
    relax: AbstractRelax = _EXACT,
) -> Array:
    """Seconds of one engine step of the replica: t(D, P) (module docstring).

    With pp > 1 the replica keeps pp microbatches in flight, so one pass that advances
    every running request costs `mixed_step` at max(D/pp, min(D, 1)) decodes (a
    microbatch holds at least one sequence) and P/pp prompt tokens.
    """
    pp = serving.pp
    # D sequences in min(D, pp) microbatches: each at least one sequence
    micro = jnp.maximum(decodes / pp, jnp.minimum(decodes, 1.0))  # integer choice
    return mixed_step(
        cluster, model, serving, decodes=micro, prefill_tokens=prefill_tokens / pp,
        relax=relax,
    ).total  # fmt: skip


def batch_limit(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    scheduler: Scheduler,
    *,
    relax: AbstractRelax = _EXACT,
) -> Array:
    """B: the requests a replica runs at once, min(max_batch, KV-cache capacity) ≥ 1.

    The KV cache admits by the tokens a request holds (`Scheduler.reserved_output`):
    S_in + r·S_out per request in the model's KV-cache dtype (`serving.kv_capacity`),
    not the model's context length.

    Raises:
        ValueError: a concrete serving mapping that does not fit the model.
    """
    check_serving(model, serving)
    held = serving.input_len + scheduler.reserved_output * serving.output_len
    capacity = kv_capacity(cluster, model, serving, held, relax=relax)
    return jnp.minimum(scheduler.max_batch, jnp.maximum(capacity, 1.0))


def _pmf(mu: Array, arrival: str) -> Array:
    """P(A = k), k < _K, of the arrivals in a step with mean `mu` (tail in the last)."""
    mu = mu[..., None]
    k = jnp.arange(_K, dtype=mu.dtype).reshape((1,) * (mu.ndim - 1) + (_K,))
    if arrival == "poisson":
        safe = jnp.maximum(mu, 1e-300)
        p = jnp.exp(k * jnp.log(safe) - safe - gammaln(k + 1.0))
        p = jnp.where(mu > 0, p, jnp.where(k == 0, 1.0, 0.0))
    else:  # constant gaps at a random phase: ⌊μ⌋ or ⌈μ⌉
        lo = jnp.floor(mu)
        p = jnp.where(k == lo, 1.0 - (mu - lo), 0.0) + jnp.where(
            k == lo + 1, mu - lo, 0.0
        )
    return p.at[..., -1].add(1.0 - p.sum(-1))


def _split(y: Array, width: Array, n: int) -> tuple[Array, Array]:
    """Grid index below y/width (clipped) and the share of y's mass that goes above."""
    idx = jnp.clip(y / width, 0.0, n - 1.0)
    lo = jnp.minimum(jnp.floor(idx), n - 2.0)
    return lo.astype(jnp.int32), idx - lo


def _chain(t_of_p, c, s_in, mean_arrivals, arrival, grid):
    """Stationary distribution of the prompt backlog x at a step start.

    Returns (π, x, s = processed tokens, t = step time) over the grid.
    """
    x_max = 3.0 * c + 6.0 * s_in * (1.0 + mean_arrivals(t_of_p(c)))
    width = x_max / (grid - 1.0)
    x = jnp.linspace(0.0, 1.0, grid) * x_max
    s = jnp.minimum(x, c)
    t = t_of_p(s)
    pmf = _pmf(mean_arrivals(t), arrival)  # (grid, K)
    y = (x - s)[:, None] + jnp.arange(_K, dtype=x.dtype)[None, :] * s_in
    lo, up = _split(y, width, grid)
    rows = jnp.broadcast_to(jnp.arange(grid)[:, None], lo.shape)
    trans = jnp.zeros((grid, grid), x.dtype)
    trans = trans.at[rows, lo].add(pmf * (1.0 - up)).at[rows, lo + 1].add(pmf * up)
    a = (trans.T - jnp.eye(grid)).at[-1].set(1.0)
    pi = jnp.linalg.solve(a, jnp.zeros(grid).at[-1].set(1.0))
    pi = jnp.maximum(pi, 0.0)
    return pi / pi.sum(), x, s, t


def _tagged(pi, x, s, t, t_of_p, c, s_in, *, rate, per_step, arrival):
    """TTFT terms of a tagged request: weights, values and prompt steps (flattened).

    Open loop (`rate` λ): arrives in a step of state k with weight π_k·t_k at phase u;
    requests ahead in that step ~ A(λ·u), behind ~ λ·(t_k − u). Closed loop
    (`per_step` m): arrives at the step end with weight π_k; ~A(m/2) ahead, m/2 behind.
    """
    r = x - s
    if rate is not None:
        u = jnp.asarray(_U)[None, :] * t[:, None]  # (grid, U) elapsed in the step
        w = pi * t
        if arrival == "constant":  # a prefill step holds the previous arrival's
            w = w * jnp.where(s > 0, jnp.clip(1.0 - 1.0 / (rate * t), 0.0, 1.0), 1.0)
        w = w[:, None] * jnp.asarray(_UW)[None, :]
        residual, ahead, behind = t[:, None] - u, rate * u, rate * (t[:, None] - u)
        full_rate = rate * t_of_p(c)
    else:
        w = pi[:, None]
        residual = jnp.zeros_like(w)
        ahead = behind = jnp.full_like(w, per_step / 2.0)
        full_rate = per_step
    w = w / w.sum()
    kb = _pmf(ahead, arrival)  # (grid, U, K)
    k = jnp.arange(_K, dtype=x.dtype)[None, None, :]
    tot = r[:, None, None] + (k + 1.0) * s_in  # tokens up to and including its prompt
    n = jnp.maximum(jnp.ceil(tot / c - 1e-9), 1.0)
    last = tot - (n - 1.0) * c + (behind[..., None] + (n - 1.0) * full_rate) * s_in
    ttft = residual[..., None] + (n - 1.0) * t_of_p(c) + t_of_p(jnp.minimum(last, c))
    weight = w[..., None] * kb
    n = jnp.broadcast_to(n, ttft.shape)
    spread = jnp.broadcast_to((0.25 * t / len(_U))[:, None, None], ttft.shape)
    if rate is None:
        spread = 0.02 * ttft
    return weight.ravel(), ttft.ravel(), n.ravel(), spread.ravel()


def _quantiles(weight, mean, sd, qs=_QUANTILES):
    """Quantiles of a mixture of normals (bisection; implicit-function gradient)."""
    sd = jnp.maximum(sd, 1e-12)[None, :]
    weight, mean = weight[None, :], mean[None, :]
    qs = jnp.asarray(qs)

    def cdf(z):
        return jnp.sum(weight * norm.cdf((z[:, None] - mean) / sd), axis=-1)

    def pdf(z):
        return jnp.sum(weight * norm.pdf((z[:, None] - mean) / sd) / sd, axis=-1)

    lo0 = jnp.full_like(qs, jnp.min(mean - 8.0 * sd))
    hi0 = jnp.full_like(qs, jnp.max(mean + 8.0 * sd))

    def body(_, lh):
        lo, hi = lh
        mid = 0.5 * (lo + hi)
        below = jax.lax.stop_gradient(cdf(mid)) < qs
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (lo0, hi0))
    z = jax.lax.stop_gradient(0.5 * (lo + hi))
    # a quantile in a gap between components has pdf 0: keep its gradient finite
    return z - (cdf(z) - qs) / jax.lax.stop_gradient(jnp.maximum(pdf(z), 1e-300))


def _erlang_c(servers, load):
    """Erlang C (the M/M/c probability of waiting), continuous in the servers c."""
    a = jnp.maximum(load, 1e-12)
    c = jnp.maximum(servers, a * (1.0 + 1e-9))
    log_b = c * jnp.log(a) - a - gammaln(c + 1.0) - jnp.log(gammaincc(c + 1.0, a))
    b = jnp.exp(jnp.minimum(log_b, 0.0))
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def _root(res, z0, hi, iters=12):
    """A root of res(z) = h(z) − z on [0, hi], approached from below.

    A fixed-point step, then secant steps (monotone from the left when h is convex
    and increasing).
    """

    def body(_, carry):
        z_prev, r_prev, z = carry
        r = res(z)
        slope = (r - r_prev) / jnp.where(z == z_prev, 1.0, z - z_prev)
        secant = jnp.isfinite(r_prev) & (slope < 0) & (z != z_prev)
        nxt = jnp.where(secant, z - r / jnp.where(secant, slope, -1.0), z + r)
        return z, r, jnp.clip(nxt, 0.0, hi)

    z0 = jnp.asarray(z0, dtype=float)
    carry = (z0, jnp.full_like(z0, jnp.inf), z0)
    return jax.lax.fori_loop(0, iters, body, carry)[2]


def _at_root(fn, z):
    """The outputs of fn at the root z of its residual, with implicit gradients.

    fn(z) → (residual, outputs). With z* = stop_gradient(z), dz = −r(z*)/r'(z*) is a
    Newton correction whose gradient is the implicit one, −(∂r/∂θ)/r'; the outputs are
    corrected to first order, out(z*) + out'(z*)·dz.
    """
    z = jax.lax.stop_gradient(z)
    (r, out), (dr, dout) = jax.jvp(fn, (z,), (jnp.ones_like(z),))
    dz = -r / jax.lax.stop_gradient(jnp.where(dr == 0, -1.0, dr))
    out = jax.tree_util.tree_map(lambda o, do: o + do * dz, out, dout)
    return z + dz, r, out


def _interp_sq(z, grid, values):
    """Linear interpolation on a grid g_i = g_max·(i/(n − 1))² along values' axis 0.

    The index comes from √(z/g_max) directly (no search); z is clipped to the grid.
    """
    n = grid.shape[0]
    g_max = grid[-1]
    z = jnp.clip(z, 0.0, g_max)
    idx = jax.lax.stop_gradient(jnp.sqrt(z / jnp.where(g_max > 0, g_max, 1.0)))
    lo = jnp.clip(jnp.floor(idx * (n - 1.0)), 0.0, n - 2.0).astype(jnp.int32)
    g0, g1 = grid[lo], grid[lo + 1]
    w = (z - g0) / jnp.where(g1 > g0, g1 - g0, 1.0)
    v0, v1 = values[lo], values[lo + 1]
    if v0.ndim > w.ndim:
        w = w[..., None]
    return v0 * (1.0 - w) + v1 * w


class _Engine:
    """The step-time table and budgets of one replica (plain container).

    t(D, P) is tabulated once on a (D, P) grid (dense near 0, where it bends) with
    `step_time` and interpolated bilinearly; the phase model is traced once.
    """

    def __init__(self, cluster, model, serving, scheduler, relax, grid, b, ranks=1.0):
        self.sched, self.grid = scheduler, grid
        self.s_in, self.s_out = serving.input_len, serving.output_len
        self.c_max = scheduler.chunked_prefill_budget
        self.b = b
        self.mixed = scheduler.mixed
        u = jnp.linspace(0.0, 1.0, _Q)
        v = jnp.linspace(0.0, 1.0, _DQ)
        self.p_grid = self.c_max * ranks * u * u  # `ranks` schedulers' budgets
        self.d_grid = b * v * v

        def one(d, p):
            return step_time(cluster, model, serving, d, p, relax=relax)

        self.table = jax.vmap(jax.vmap(one, (None, 0)), (0, None))(
            self.d_grid, self.p_grid
        )

    def frozen(self):
        """A copy whose arrays carry no gradient.

        For the root-finding loops, whose results get their gradients from `_at_root`.
        """
        new = copy.copy(self)
        sg = jax.lax.stop_gradient
        for name in ("table", "p_grid", "d_grid", "c_max", "s_in", "s_out", "b"):
            setattr(new, name, sg(getattr(self, name)))
        new.sched = jax.tree_util.tree_map(sg, self.sched)
        return new

    def row(self, d):
        """t(d, ·) on the prompt-token grid."""
        return _interp_sq(d, self.d_grid, self.table)

    def at(self, p, row):
        """Interpolates a row of the table at prompt tokens p."""
        return _interp_sq(p, self.p_grid, row)

    def budget(self, d):
        """C: prompt tokens a step may run beside d decodes."""
        if not self.mixed:
            return self.c_max
        return jnp.minimum(self.c_max, self.sched.max_tokens_per_step - d)

    def times(self, d):
        """(t_of_p, ∂t/∂D at P = 0) at d decodes; prefill-only steps if not mixed."""
        tab, dtab = jax.jvp(self.row, (d,), (jnp.ones_like(d),))
        if self.mixed:
            return (lambda p: self.at(p, tab)), dtab[0]
        pre = self.row(jnp.zeros_like(d))

        def t_of_p(p):
            return jnp.where(p > 0, self.at(p, pre), tab[0])

        return t_of_p, dtab[0]

    def state(self, d, *, rate=None, per_step=None, arrival="poisson"):
        """The step chain at d decodes: per-step means, marginals and the chain."""
        t_of_p, slope = self.times(d)
        c = self.budget(d)
        if rate is not None:
            mean_arrivals = lambda t: rate * t  # noqa: E731
        else:
            mean_arrivals = lambda t: per_step + 0.0 * t  # noqa: E731
        pi, x, s, t = _chain(t_of_p, c, self.s_in, mean_arrivals, arrival, self.grid)
        step = jnp.sum(pi * t)
        share = 1.0 if self.mixed else pi[0]  # steps that decode
        extra = jnp.sum(pi * (t_of_p(jnp.minimum(s + self.s_in, c)) - t))
        return dict(pi=pi, x=x, s=s, t=t, step=step, tpot=step / share, c=c,
                    t_of_p=t_of_p, decode_share=share, slope=slope, extra=extra,
                    var=jnp.sum(pi * (t - step) ** 2))  # fmt: skip


def _fluctuations(st, rate, s_out, arrival):
    """(α, β, F) of the open loop's decode count D (linear noise approximation).

    Each step's time grows by a = ∂t/∂D per decode and by e (`extra`) per prompt;
    α = λ·(S_out − 1)·a and β = λ·e are the shares of time that one more decode or one
    more prompt per request takes. A prompt lengthens its step, during which more
    requests arrive (a branching cascade of mean β), and more decodes lengthen every
    step of a request's window of S_out − 1 steps. Linearizing the step recursion
    around its mean, D is Poisson noise filtered by 1/((1 − β)(1 − β − α·sinc)); its
    Fano factor F = Var D / E D = 1/((1 − β)(1 − α − β)) (the integral of the
    rectangular window's |sinc|² response). ρ = α + β is the marginal work per unit
    time: the fixed point exists while ρ < 1.
    """
    alpha = rate * (s_out - 1.0) * st["slope"]
    beta = rate * st["extra"]
    gap = jnp.maximum((1.0 - beta) * (1.0 - alpha - beta), 1e-6)
    noise = 1.0 if arrival == "poisson" else 0.0  # constant gaps: no count noise
    return alpha, beta, noise / gap


def _bounded_fano(fano, d, b, q=4.0):
    """The Fano factor of D bounded by the slots: Var D ≤ D̄·(B − D̄), so F ≤ B − D̄.

    D lives in [0, B] (B batch slots), and a variable on [0, B] with mean D̄ has
    variance at most D̄·(B − D̄) (the Bhatia–Davis inequality, Bhatia & Davis, Amer.
    Math. Monthly 107 (2000) 353). The linear noise approximation's F diverges as the
    marginal work ρ → 1, but the slot ceiling clips the fluctuations: near the slot
    limit the decode count is pinned at B. The bound enters as a smooth minimum
    (Σ x⁻ᑫ)^(−1/q), q = 4 (within 19% of the exact minimum where the two are equal,
    within 1% where one is 3× the other). Without it the mean-field fixed point folds
    (no root in [0, B)) at ~96% of the simulated capacity (`tests/test_load.py`).
    """
    room = jnp.maximum(b - d, 1e-6)
    return (fano ** (-q) + room ** (-q)) ** (-1.0 / q)


def _percentiles(tag, shift, tpot, tpot_sd, s_out):
    """(TTFT, TPOT, e2e) quantiles from the tagged mixture and the TPOT normal."""
    weight, value, _, spread = tag
    ttft = _quantiles(weight, value + shift, spread)
    z = jnp.asarray([norm.ppf(q) for q in _QUANTILES])
    tpot_q = tpot + z * tpot_sd
    decode = (s_out - 1.0) * tpot
    e2e_sd = jnp.sqrt(spread**2 + ((s_out - 1.0) * tpot_sd) ** 2)
    e2e = _quantiles(weight, value + shift + decode, e2e_sd)
    return ttft, tpot_q, e2e


def _decoding(eng: _Engine, d, rate, arrival):
    """The open loop's chain at d decodes, its TPOT and the residual of D's fixed point.

    TPOT is the decode-weighted step, E[D·t]/E[D] = E[t] + a·F/(1 − β), plus the
    cascade of a request's own prompt into its decode window, e·β/((1 − β)(S_out − 1)).
    """
    s_out = eng.s_out
    st = eng.state(d, rate=rate, arrival=arrival)
    alpha, beta, fano = _fluctuations(st, rate, s_out, arrival)
    fano = _bounded_fano(fano, d, eng.b)
    keep = jnp.maximum(1.0 - beta, 1e-6)
    tpot = st["tpot"] + st["slope"] * fano / keep
    tpot = tpot + st["extra"] * beta / (keep * (s_out - 1.0))
    # the slow part of a request's TPOT spread: its window's decode count varies with
    # variance F·D̄ (the same fluctuations), each decode costing a/(1 − β) per step
    slow = (st["slope"] / keep) ** 2 * fano * d
    st |= dict(tpot=tpot, rho=alpha + beta, fano=fano, slow=slow)
    return rate * (s_out - 1.0) * tpot - d, st


def _loads(eng: _Engine, st, rate, b, hold, res, d):
    """(utilization, slot load λR/B, prompt-budget load) of an open loop."""
    slot_load = rate * hold / b
    prefill_load = rate * st["step"] * eng.s_in / st["c"]
    util = jnp.maximum(jnp.maximum(st["rho"], prefill_load), slot_load)
    # converged: the residual is at rounding level (float32 on the CLI, float64 in
    # tests) and D stays below the slots
    tol = max(1e-6, 1e3 * float(jnp.finfo(jnp.result_type(res)).eps))
    fixed = (jnp.abs(res) <= tol * (1.0 + d)) & (d < b)
    return jnp.where(fixed, util, jnp.maximum(util, 1.0)), slot_load, prefill_load


def _open_utilization(eng: _Engine, rate, arrival, b):
    """The open loop's utilization only (no TTFT terms): for `max_request_rate`."""
    d = _root(lambda dd: _decoding(eng, dd, rate, arrival)[0], 0.0 * rate, b)
    res, st = _decoding(eng, d, rate, arrival)
    hold = st["t_of_p"](st["c"]) + (eng.s_out - 1.0) * st["tpot"]
    return _loads(eng, st, rate, b, hold, res, d)[0]


def _open_loop(eng: _Engine, rate, arrival, b):
    s_out = eng.s_out

    def solve(d):
        res, st = _decoding(eng, d, rate, arrival)
        tag = _tagged(st["pi"], st["x"], st["s"], st["t"], st["t_of_p"], st["c"],
                      eng.s_in, rate=rate, per_step=None, arrival=arrival)  # fmt: skip
        keys = ("pi", "s", "t", "step", "c", "var", "decode_share", "tpot", "rho",
                "fano", "slow")  # fmt: skip
        return res, {k: jnp.asarray(st[k], dtype=float) for k in keys} | dict(tag=tag)

    cold, lam = eng.frozen(), jax.lax.stop_gradient(rate)
    d = _root(lambda dd: _decoding(cold, dd, lam, arrival)[0], 0.0 * lam, b)
    d, res, st = _at_root(solve, d)
    weight, value, n, _ = st["tag"]
    ttft0 = jnp.sum(weight * value)
    residual = jnp.sum(st["pi"] * st["t"] ** 2) / (2.0 * st["step"])
    hold = ttft0 - residual + (s_out - 1.0) * st["tpot"]  # slot holding time R
    util, slot_load, prefill_load = _loads(eng, st, rate, b, hold, res, d)
    a = rate * hold
    fano = jnp.maximum(st["fano"], 0.05)
    # Hayward's approximation for peaked traffic: Erlang C at (B/F, λR/F)
    wait = 0.5 * _erlang_c(b / fano, a / fano) * hold * fano / jnp.maximum(b - a, 1e-9)
    wait = jnp.where(util < 1.0, wait, jnp.inf)
    return st, st["tag"], d, dict(wait=wait, util=util, slot=slot_load,
                                  pre=prefill_load, dec=st["rho"],
                                  n=jnp.sum(weight * n), x=rate)  # fmt: skip


def _closed_loop(eng: _Engine, n_clients, arrival, relax, b):
    s_in = eng.s_in
    running = relax.min(n_clients, b)

    def solve(m, e, n_run, *, full):  # m requests finish per step
        share = 1.0  # π does not depend on d in a closed loop (arrivals are m)
        if not e.mixed:
            share = e.state(jnp.zeros_like(m), per_step=m, arrival=arrival)[
                "decode_share"
            ]
        d = m * (e.s_out - 1.0) / share
        st = e.state(d, per_step=m, arrival=arrival)
        tag = _tagged(st["pi"], st["x"], st["s"], st["t"], st["t_of_p"], st["c"],
                      e.s_in, rate=None, per_step=m, arrival=arrival)  # fmt: skip
        n_bar = jnp.sum(tag[0] * tag[2])
        cycle = n_bar + (e.s_out - 1.0) / st["decode_share"]
        cap = 0.98 * st["c"] / e.s_in  # the prompt budget's limit on m
        res = relax.min(n_run / cycle, cap) - m
        if not full:
            return res
        keys = ("pi", "s", "t", "step", "c", "var", "decode_share", "tpot")
        out = {k: jnp.asarray(st[k], dtype=float) for k in keys}
        return res, out | dict(tag=tag, d=d, n_bar=n_bar, cycle=cycle, cap=cap)

    cold, sg = eng.frozen(), jax.lax.stop_gradient
    m = _root(lambda mm: solve(mm, cold, sg(running), full=False), 0.0 * sg(running),
              sg(running))  # fmt: skip
    m, _, st = _at_root(lambda mm: solve(mm, eng, running, full=True), m)
    x = m / st["step"]  # requests/s
    served = m * st["cycle"]  # requests holding a slot
    wait = relax.relu(n_clients - served, 1.0) / x
    n_sat = relax.min(b, st["cap"] * st["cycle"])
    return st, st["tag"], st["d"], dict(wait=wait, util=n_clients / n_sat,
                                        slot=running / b, pre=m * s_in / st["c"],
                                        dec=jnp.zeros_like(m), n=st["n_bar"], x=x,
                                        n_sat=n_sat)  # fmt: skip


def _rolling_ttft(t, n, c, s_in):
    """TTFT of the rolling pipeline that fixed lengths and mixed steps settle into [s].

    After the first wave each client resends the moment its request ends, and the
    requests end in the groups their prompts were prefilled in: g = min(n, C/S_in)
    prompts (at least one) arrive together at a step boundary and are prefilled
    beside the other n − g requests' decodes, ⌈S_in/C⌉ steps of P = min(g·S_in, C)
    prompt tokens:

        TTFT_roll = ⌈S_in/C⌉ · t(n − g, min(g·S_in, C))   [s]

    An upper estimate: in the simulation (`validation/engine_sim.py`, mixed steps,
    fixed lengths) the decodes take a few tokens from each step's budget, groups split
    across steps, and the smaller groups' steps are shorter: its steady-state TTFT is
    0.8-0.95 of this at 16-200 clients (`tests/test_load.py`).
    """
    g = jnp.clip(c / s_in, 1.0, n)
    steps = jnp.maximum(jnp.ceil(s_in / c - 1e-9), 1.0)
    return steps * t(jnp.maximum(n - g, 0.0), jnp.minimum(g * s_in, c))


def _synchronized(
    eng: _Engine, n_clients, relax, b, ranks, chips, rounds
) -> LoadResult:
    """A closed loop of N clients in synchronized waves (module docstring).

    One wave: n = min(N, B) prompts arrive together and are prefilled C tokens per
    step in arrival order; request i's prompt ends in step k_i = ⌈(i + 1)·S_in/C⌉ and
    its TTFT is T(k_i), the steps up to it. Requests are the first `_M` when n ≤ `_M`
    (exact), else `_M` evenly spaced ranks. With mixed steps and R = `rounds`
    requests per client, the mean TTFT is (first wave + (R − 1)·rolling)/R
    (`_rolling_ttft`).
    """
    s_in, s_out = eng.s_in, eng.s_out
    n = relax.min(n_clients, b)
    # each attention rank schedules its own requests with its own budget
    if eng.mixed:
        room = eng.sched.max_tokens_per_step - n / 2.0 / ranks
        c = ranks * jnp.minimum(eng.c_max, room)
    else:
        c = ranks * eng.c_max
    m = c / s_in  # prompts completed per full prefill step
    total = n * s_in
    k_last = jnp.maximum(jnp.ceil(total / c - 1e-9), 1.0)

    def t(d, p):
        d, p = jnp.broadcast_arrays(jnp.asarray(d, float), jnp.asarray(p, float))
        one = jax.vmap(lambda dd, pp: eng.at(pp, eng.row(dd)))
        return one(d.ravel(), p.ravel()).reshape(d.shape)

    def decoding(j):  # decodes riding in prefill step j (mixed): done, not yet left
        if not eng.mixed:
            return 0.0 * j
        done = lambda x: jnp.clip(jnp.floor(x * m + 1e-9), 0.0, n)  # noqa: E731
        return done(j - 1.0) - done(j - s_out)

    def elapsed(k):  # T(k): seconds from the wave's start to the end of prefill step k
        full = jnp.clip(jnp.minimum((k - 2.0) / 2.0, s_out - 1.0) * m, 0.0, n)
        if not eng.mixed:
            full = 0.0 * full
        last = jnp.clip(total - (k - 1.0) * c, 0.0, c)
        return (k - 1.0) * t(full, c) + t(decoding(k), last)

    idx = jnp.arange(_M, dtype=float)
    small = n <= _M
    i = jnp.where(small, idx, (idx + 0.5) * n / _M - 0.5)
    w = jnp.where(small, jnp.clip(n - idx, 0.0, 1.0), 1.0)
    w = w / jnp.sum(w)
    k = jnp.clip(jnp.ceil((i + 1.0) * s_in / c - 1e-9), 1.0, k_last)
    first = elapsed(k)
    if eng.mixed:
        # decodes share steps with prompt chunks: a request's S_out − 1 decode steps
        # include the K − 1 prefill steps of the others' prompts (its own wave's
        # later chunks, or the next wave's, whose clients resent first)
        # (the last of them the partial one); then decode-only steps at n decodes
        ride = jnp.minimum(k_last - 1.0, s_out - 1.0)
        riding = relax.relu(n - m) + 1.0  # decodes beside a full chunk
        partial = jnp.clip(total - (k_last - 1.0) * c, 0.0, c)
        chunks = jnp.where(
            ride < k_last - 1.0,
            ride * t(riding, c),
            relax.relu(ride - 1.0) * t(riding, c)
            + jnp.minimum(ride, 1.0) * t(n, partial),
        )
        decode = chunks + (s_out - 1.0 - ride) * t(n, 0.0) + 0.0 * first
    else:  # every request decodes after the wave's last prefill step
        decode = elapsed(k_last) - first + (s_out - 1.0) * t(n, 0.0)
    if eng.mixed:  # a slot is sent its next request when its request ends
        wave = jnp.sum(w * (first + decode))
    else:  # the wave ends together: every request's last decode is the same step
        wave = jnp.max(jnp.where(w > 0, first + decode, 0.0))
    x = n / wave  # requests/s
    # clients beyond the wave wait whole waves, first in the next (FCFS): on average
    # r = (N − n)/n waves (Little's law on the N − n waiting requests)
    r = relax.relu(n_clients - n) / n
    whole = jnp.floor(r)
    waits = wave * (whole + jnp.where(i + 0.5 < (r - whole) * n, 1.0, 0.0))
    tpot_i = decode / (s_out - 1.0)
    if eng.mixed:  # later rounds drift into the rolling pipeline
        rolling = _rolling_ttft(t, n, c, s_in)
        first = rolling + (first - rolling) / rounds
    ttft = jnp.sum(w * first) + wave * r
    tpot = jnp.sum(w * tpot_i)
    e2e_i = first + waits + decode
    spread = lambda v: 0.02 * v + 1e-9  # noqa: E731  (a narrow normal per request)
    n_steps = k_last + s_out - 1.0
    return LoadResult(
        ttft=ttft, tpot=tpot, e2e_latency=ttft + (s_out - 1.0) * tpot,
        ttft_pct=_quantiles(w, first + waits, spread(first + waits)),
        tpot_pct=_quantiles(w, tpot_i, spread(tpot_i)),
        e2e_pct=_quantiles(w, e2e_i, spread(e2e_i)),
        requests_per_s=x, output_tokens_per_s=x * s_out,
        output_tokens_per_s_per_user=1.0 / tpot, chips=chips,
        decodes=n * (s_out - 1.0) / n_steps, prefill_tokens=total / n_steps,
        step_time=wave / n_steps, prefill_steps=jnp.sum(w * k), batch_limit=b,
        prefill_budget=c, utilization=n_clients / b, slot_load=n / b,
        prefill_load=total / (c * n_steps), decode_load=0.0 * n,
        queue_wait=wave * r, saturation_concurrency=b,
    )  # fmt: skip


def serve_load(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    concurrency=None,
    request_rate=None,
    arrival: str = "poisson",
    phases: str = "spread",
    rounds=1.0,
    scheduler: Scheduler | None = None,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
    grid: int = 128,
) -> LoadResult:
    """TTFT, TPOT and e2e (means, p50/p90/p99) and throughput of a replica under load.

    Exactly one of `concurrency` (closed loop: N clients, `vllm bench serve
    --max-concurrency N`, aiperf/genai-perf concurrency mode, SGLang bench_serving) and
    `request_rate` (open loop at λ requests/s with `arrival` "poisson" or "constant":
    MLPerf Server, `vllm bench serve --request-rate`) is given; both are per replica and
    may be float leaves. `serving` gives the replica and the mean prompt and output
    lengths (`batch` is not used: the scheduler decides it); `scheduler` the engine's
    limits. `phases` (static) is how a closed loop's clients are spread: "spread"
    (requests of varied lengths, phases mixed: mean value analysis) or "synchronized"
    (every client started together with fixed lengths, as benchmark tools run them:
    waves, `_synchronized`). `rounds` (synchronized phases only; a float leaf ≥ 1):
    the requests each client sends in the benchmark, whose mean TTFT averages the
    first wave with the rolling pipeline of the later rounds (mixed steps; 1 = the
    first wave alone). Formulas, sources and assumptions: module docstring.

    Raises:
        ValueError: neither or both of concurrency and request_rate; unknown arrival
            or phases; synchronized phases with a request rate.
    """
    if (concurrency is None) == (request_rate is None):
        raise ValueError("give exactly one of concurrency= and request_rate=")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival={arrival!r} must be one of {', '.join(ARRIVALS)}")
    if phases not in PHASES:
        raise ValueError(f"phases={phases!r} must be one of {', '.join(PHASES)}")
    if phases == "synchronized" and request_rate is not None:
        raise ValueError("phases='synchronized' is a closed loop: give concurrency=")
    if phases != "synchronized" and concrete(rounds) not in (None, 1.0):
        raise ValueError("rounds= needs phases='synchronized' (a closed loop's waves)")
    scheduler = Scheduler() if scheduler is None else scheduler
    cluster, _ = tier(fidelity, cluster)
    b = batch_limit(cluster, model, serving, scheduler, relax=relax)
    if phases == "synchronized":
        ranks = serving.attention_dp
        eng = _Engine(cluster, model, serving, scheduler, relax, grid, b, ranks)
        n = jnp.asarray(concurrency, dtype=float)
        r_conc = concrete(rounds)
        if r_conc is not None and r_conc < 1.0:
            raise ValueError(f"rounds={r_conc:g} must be >= 1 (requests per client)")
        rounds = jnp.maximum(jnp.asarray(rounds, dtype=float), 1.0)
        return _synchronized(eng, n, relax, b, ranks, serving.chips, rounds)
    eng = _Engine(cluster, model, serving, scheduler, relax, grid, b)
    if request_rate is not None:
        lam = jnp.asarray(request_rate, dtype=float)
        st, tag, d, o = _open_loop(eng, lam, arrival, b)
        n_sat = jnp.asarray(jnp.inf)
    else:
        n = jnp.asarray(concurrency, dtype=float)
        st, tag, d, o = _closed_loop(eng, n, arrival, relax, b)
        n_sat = o["n_sat"]
    s_out = serving.output_len
    weight, value, _, _ = tag
    ttft = jnp.sum(weight * value) + o["wait"]
    tpot = st["tpot"]
    steps = (s_out - 1.0) / st["decode_share"]
    tpot_sd = jnp.sqrt(st["var"] * steps / (s_out - 1.0) ** 2 + st.get("slow", 0.0))
    ttft_q, tpot_q, e2e_q = _percentiles(tag, o["wait"], tpot, tpot_sd, s_out)
    x = o["x"]
    return LoadResult(
        ttft=ttft, tpot=tpot, e2e_latency=ttft + (s_out - 1.0) * tpot,
        ttft_pct=ttft_q, tpot_pct=tpot_q, e2e_pct=e2e_q, requests_per_s=x,
        output_tokens_per_s=x * s_out, output_tokens_per_s_per_user=1.0 / tpot,
        chips=serving.chips, decodes=d, prefill_tokens=jnp.sum(st["pi"] * st["s"]),
        step_time=st["step"], prefill_steps=o["n"], batch_limit=b,
        prefill_budget=st["c"], utilization=o["util"], slot_load=o["slot"],
        prefill_load=o["pre"], decode_load=o["dec"], queue_wait=o["wait"],
        saturation_concurrency=n_sat,
    )  # fmt: skip


def max_request_rate(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    arrival: str = "poisson",
    scheduler: Scheduler | None = None,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
    grid: int = 128,
    iters: int = 30,
) -> Array:
    """The largest open-loop request rate a replica sustains [requests/s].

    Bisection on λ for `serve_load(...).utilization` < 1 between 0 and the bound
    λ ≤ B/((S_out − 1)·t(B, 0)) (B decodes each need S_out − 1 steps of at least the
    full-batch decode step); the gradient is the implicit one of utilization(λ) = 1.
    """
    scheduler = Scheduler() if scheduler is None else scheduler
    cluster, _ = tier(fidelity, cluster)
    b = batch_limit(cluster, model, serving, scheduler, relax=relax)
    eng = _Engine(cluster, model, serving, scheduler, relax, grid, b)
    s_out = serving.output_len
    hi0 = b / ((s_out - 1.0) * eng.row(b)[0])

    def util(lam, e=eng):
        return _open_utilization(e, lam, arrival, b)

    cold = eng.frozen()
    hi0 = jax.lax.stop_gradient(hi0)

    def body(_, lh):
        lo, hi = lh
        mid = 0.5 * (lo + hi)
        ok = util(mid, cold) < 1.0
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iters, body, (0.0 * hi0, hi0))
    lam = jax.lax.stop_gradient(lo)
    val, slope = jax.jvp(util, (lam,), (jnp.ones_like(lam),))
    return lam - (val - jax.lax.stop_gradient(val)) / jax.lax.stop_gradient(
        jnp.where(slope > 0, slope, 1.0)
    )


def mlperf_server(
    cluster: Cluster,
    model: Transformer,
    serving: Serving,
    *,
    ttft_p99=None,
    tpot_p99=None,
    e2e_p99=None,
    scheduler: Scheduler | None = None,
    relax: AbstractRelax = _EXACT,
    fidelity: Fidelity = "detailed",
    grid: int = 128,
    iters: int = 20,
) -> tuple[float, LoadResult]:
    """MLPerf Server: the largest Poisson rate meeting the p99 latency limits.

    MLPerf Inference's Server scenario (LoadGen) issues queries as a Poisson process
    at `target_qps`; a run is valid when the 99th percentiles of TTFT and of TPOT
    (per query: (latency − TTFT)/(tokens − 1)) stay within the benchmark's limits
    (Llama-2-70B: 2 s and 200 ms); GPT-J limits the p99 of the whole query latency
    instead (20 s: `e2e_p99`). A limit left None is not checked. The reported
    throughput is that rate. Bisection on λ below `max_request_rate` for
    ttft_p99(λ) ≤ `ttft_p99`, tpot_p99(λ) ≤ `tpot_p99` and e2e_p99(λ) ≤ `e2e_p99`
    [s], each step one compiled `serve_load` call (the compiled function is
    cached by the pytrees' structure); returns (λ per replica [requests/s], the
    LoadResult at λ). Offline is the saturated throughput: `max_request_rate`. Runs
    outside jit: λ is a Python float without gradient; the LoadResult has gradients.
    """
    limits = dict(ttft_p99=ttft_p99, tpot_p99=tpot_p99, e2e_p99=e2e_p99)
    for name, limit in limits.items():
        if limit is not None and not (math.isfinite(float(limit)) and limit > 0):
            raise ValueError(f"mlperf_server({name}={limit!r}) must be seconds > 0")
    scheduler = Scheduler() if scheduler is None else scheduler
    kw = dict(scheduler=scheduler, relax=relax, fidelity=fidelity, grid=grid)
    hi = float(_capacity(cluster, model, serving, **kw))
    lo = 0.0

    def run(lam):
        return _served(cluster, model, serving, request_rate=jnp.asarray(lam), **kw)

    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        r = run(mid)
        meets = all(
            limit is None or float(pct[2]) <= limit
            for limit, pct in ((ttft_p99, r.ttft_pct), (tpot_p99, r.tpot_pct),
                               (e2e_p99, r.e2e_pct))
        )  # fmt: skip
        if meets and not bool(r.saturated):
            lo = mid
        else:
            hi = mid
    return lo, run(lo)


_served = eqx.filter_jit(serve_load)
_capacity = eqx.filter_jit(max_request_rate)


def served(cluster, model, serving, **kw) -> LoadResult:
    """`serve_load` compiled once per pytree structure (CLI, validation).

    Numbers must be arrays to be traced (not recompiled): rates are converted here.
    """
    for key in ("concurrency", "request_rate"):
        if kw.get(key) is not None:
            kw[key] = jnp.asarray(kw[key], dtype=float)
    return _served(cluster, model, serving, **kw)


def capacity(cluster, model, serving, **kw) -> Array:
    """`max_request_rate` compiled once per pytree structure (see `served`)."""
    return _capacity(cluster, model, serving, **kw)
