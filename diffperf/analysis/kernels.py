"""Kernel-level grounding: fit the op model's efficiency leaves to measured kernels.

Each measured kernel (a GEMM, a fused attention call, a grouped MoE GEMM, an NCCL
collective) is a `KernelRow`; its prediction is the model's own op function on the
device's `Cluster`, so a fitted leaf means the same thing here as in `train_step`:

    GEMM (M tokens, K in, N out):   T = gemm_time(M, K, N) + kernel_overhead        [s]
    context attention (causal):     T = attention_time(B, Sq = S, kv = min(S/2, W))
                                        + kernel_overhead                           [s]
    generation attention (decode):  T = attention_time(B, Sq = 1, kv = min(L, W))
                                        + kernel_overhead                           [s]
    MoE (T tokens, top-k of E experts, EP e, TP t; gated: up width 2·I):
        a = (E/e)·(1 − (1 − 1/E)^(T·k))   active local experts (uniform routing)
        m = T·k/e / a                     rows per active expert
        T = gemm_time(m, H, 2I/t, count = a) + gemm_time(m, I/t, H, count = a)
            (each expert's m rows padded to the M tile, m_tile = GROUPED_TILE_M)
            + kernel_overhead                                                       [s]
    collectives (n GPUs in one scale-up domain, S bytes):
        T = collective_time(kind, S, n, stride = 1)                                 [s]

(`model.ops` and `model.collectives` give the formulas and sources of each; the
kernel_overhead term is the one `validation.kernels` adds to a kernel call.) Sub-16-bit
GEMMs run at peak·fp8_efficiency (fp4: fp4_efficiency), as `model.layer.layer_forward`
does.
The MoE active-expert count is this module's, not the layer model's (which spreads
the routed rows over all local experts): the measured tables read only the weights
of experts that receive tokens.

The fit (`fit_leaves`) is a log-space least squares over the leaves u_j = log x_j,
every op family weighted the same however many rows it has:

    L(u) = Σ_f (1/N_f) · Σ_{i ∈ f} (log T̂_i(u) − log T_i)²

minimized with optax Adam from the device's committed values, projected onto the box
bounds of `analysis.calibrate.prior_for` (the bounds the end-to-end calibration uses),
so that a leaf ending on a bound is reported as a defect of the op model, not a fit.
`fit_kernels` runs it in stages (`STAGES`: 16-bit GEMMs, then the low-precision
factor, then attention, then collectives), each holding the leaves of the earlier
ones, and reports `DIAGNOSTICS`: the values that other families would need of shared
leaves (what one value per chip cannot express).
"""

import math
from collections import Counter, defaultdict
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core.paths import get_leaf, set_leaf
from ..core.relax import Exact
from ..model.collectives import collective_time
from ..model.ops import GROUPED_TILE_M, attention_time, gemm_time
from ..specs.hardware import MATH_DTYPES, Cluster
from .calibrate import prior_for

__all__ = [
    "KernelRow",
    "KERNEL_OPS",
    "COMPUTE_OPS",
    "COLLECTIVE_OPS",
    "Stage",
    "STAGES",
    "DIAGNOSTICS",
    "predict_kernels",
    "kernel_mape",
    "fit_leaves",
    "fit_kernels",
]

COMPUTE_OPS = ("gemm", "context_attention", "generation_attention", "moe")
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
KERNEL_OPS = COMPUTE_OPS + COLLECTIVE_OPS
"""The op kinds a `KernelRow` may have."""

_LOW = ("fp8", "int8", "fp4", "mxfp8", "mxfp4", "nvfp4")


class KernelRow(NamedTuple):
    """One measured kernel call, in SI units; fields that do not apply stay 0.

    gemm: m (tokens), k (input width), n (output width). Attention: batch, seq (prompt
    length S for context, cached length L for generation), heads, kv_heads, head_dim,
    window (0: none), kv_nbytes (KV-cache bytes per element). moe: m (tokens),
    k (hidden H), n (expert intermediate width I), experts, topk, ep, tp, gated.
    Collectives: nbytes (the message) and gpus. `dtype` is the math dtype
    (`specs.hardware.MATH_DTYPES`); `source` the table it came from.
    """

    op: str
    dtype: str
    seconds: float
    m: float = 0.0
    k: float = 0.0
    n: float = 0.0
    batch: float = 0.0
    seq: float = 0.0
    heads: float = 0.0
    kv_heads: float = 0.0
    head_dim: float = 0.0
    window: float = 0.0
    kv_nbytes: float = 0.0
    experts: float = 0.0
    topk: float = 0.0
    ep: float = 1.0
    tp: float = 1.0
    gated: bool = True
    nbytes: float = 0.0
    gpus: float = 0.0
    source: str = ""


def _check(rows: list[KernelRow]) -> None:
    for i, r in enumerate(rows):
        if r.op not in KERNEL_OPS:
            raise ValueError(
                f"kernel row {i}: op={r.op!r} must be one of {', '.join(KERNEL_OPS)}"
            )
        if r.dtype not in MATH_DTYPES:
            raise ValueError(
                f"kernel row {i}: dtype={r.dtype!r} must be one of "
                f"{', '.join(MATH_DTYPES)}"
            )
        if not (r.seconds > 0 and math.isfinite(r.seconds)):
            raise ValueError(f"kernel row {i}: seconds={r.seconds} must be > 0")


def _elem_bytes(dtype: str) -> float:
    return {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0}.get(
        dtype, 0.5 if "fp4" in dtype else 1.0
    )


class _Group(NamedTuple):
    op: str
    dtype: str
    gated: bool
    cols: dict  # field -> np.ndarray
    index: np.ndarray  # positions in the caller's row list


def _groups(rows: list[KernelRow]) -> list[_Group]:
    by = defaultdict(list)
    for i, r in enumerate(rows):
        by[(r.op, r.dtype, bool(r.gated))].append(i)
    out = []
    for (op, dtype, gated), idx in sorted(by.items()):
        cols = {
            f: np.array([float(getattr(rows[i], f)) for i in idx])
            for f in KernelRow._fields
            if f not in ("op", "dtype", "gated", "source")
        }
        out.append(_Group(op, dtype, gated, cols, np.array(idx)))
    return out


def _group_time(cluster: Cluster, g: _Group) -> jax.Array:
    """Predicted seconds of one group's rows (the module docstring's formulas)."""
    relax = Exact()
    chip, c = cluster.chip, g.cols
    peak = chip.peak_flops(g.dtype)
    if g.dtype in _LOW:
        peak = peak * chip.dtype_efficiency(g.dtype)
    b = _elem_bytes(g.dtype)
    if g.op == "gemm":
        t = gemm_time(chip, c["m"], c["k"], c["n"], peak=peak, nbytes=b, relax=relax)
        return t + chip.kernel_overhead
    if g.op in ("context_attention", "generation_attention"):
        window = np.where(c["window"] > 0, c["window"], np.inf)
        if g.op == "context_attention":
            q_tokens, kv = c["batch"] * c["seq"], np.minimum(c["seq"] / 2.0, window)
        else:
            q_tokens, kv = c["batch"], np.minimum(c["seq"], window)
        t, _ = attention_time(
            chip, batch=c["batch"], q_tokens=q_tokens, kv_tokens=kv, seq=c["seq"],
            heads=c["heads"], kv_heads=c["kv_heads"], head_dim_qk=c["head_dim"],
            head_dim_v=c["head_dim"], peak=peak, nbytes=b,
            kv_nbytes=c["kv_nbytes"], relax=relax,
        )  # fmt: skip
        return t + chip.kernel_overhead
    if g.op == "moe":
        e, local = c["experts"], c["experts"] / c["ep"]
        active = local * (1.0 - (1.0 - 1.0 / e) ** (c["m"] * c["topk"]))
        rows = c["m"] * c["topk"] / c["ep"] / active
        up = (2.0 if g.gated else 1.0) * c["n"] / c["tp"]
        grouped = dict(count=active, peak=peak, nbytes=b, m_tile=GROUPED_TILE_M)
        t = gemm_time(
            chip, rows, c["k"], up, relax=relax, **grouped
        ) + gemm_time(
            chip, rows, c["n"] / c["tp"], c["k"], relax=relax, **grouped
        )  # fmt: skip
        return t + chip.kernel_overhead
    return collective_time(
        cluster, g.op, c["nbytes"], c["gpus"], jnp.ones_like(c["gpus"]), relax=relax
    )


def predict_kernels(cluster: Cluster, rows: list[KernelRow]) -> np.ndarray:
    """The model's seconds for each row (module docstring), in the rows' order."""
    _check(rows)
    out = np.zeros(len(rows))
    for g in _groups(rows):
        out[g.index] = np.asarray(_group_time(cluster, g))
    return out


def kernel_mape(cluster: Cluster, rows: list[KernelRow]) -> dict:
    """Per-op {rows, mape, median_ape, bias} of the model on `rows`.

    bias is the geometric mean of predicted / measured.
    """
    pred = predict_kernels(cluster, rows)
    meas = np.array([r.seconds for r in rows])
    out = {}
    for op in KERNEL_OPS:
        sel = np.array([r.op == op for r in rows], dtype=bool)
        if not sel.any():
            continue
        ape = np.abs(pred[sel] / meas[sel] - 1.0)
        out[op] = dict(
            rows=int(sel.sum()),
            mape=float(ape.mean()),
            median_ape=float(np.median(ape)),
            bias=float(np.exp(np.mean(np.log(pred[sel] / meas[sel])))),
        )
    return out


class Stage(NamedTuple):
    """One step of the staged fit.

    The `leaves` are fitted to the rows of `ops` whose dtype is 16-bit or wider
    (`precision` "16"), sub-16-bit ("low") or any (None).
    """

    name: str
    ops: tuple[str, ...]
    leaves: tuple[str, ...]
    precision: str | None = None


GEMM_LEAVES = ("chip.matmul_efficiency", "chip.matmul_half_dim",
               "chip.memory_efficiency", "chip.kernel_overhead")  # fmt: skip
COMM_LEAVES = ("scale_up.efficiency", "scale_up.latency")

STAGES = (
    Stage("gemm 16-bit", ("gemm",), GEMM_LEAVES, "16"),
    Stage("gemm low precision", ("gemm",), ("chip.fp8_efficiency",), "low"),
    Stage("context attention", ("context_attention",), ("chip.attention_efficiency",)),
    Stage("collectives", COLLECTIVE_OPS, COMM_LEAVES),
)
"""The default fit: each stage holds the leaves of the earlier ones. GEMM leaves come
from 16-bit GEMMs alone (the curve `gemm_time` defines), the low-precision factor from
sub-16-bit GEMMs on that curve, the attention factor on top of both; decode attention
and MoE are scored with the result but move no leaf (no leaf of theirs is their own:
decode attention is `memory_efficiency`'s, MoE the GEMM curve's)."""

DIAGNOSTICS = (
    Stage("gemm low precision, own curve", ("gemm",),
          ("chip.matmul_efficiency", "chip.matmul_half_dim"), "low"),
    Stage("generation attention, own leaves", ("generation_attention",),
          ("chip.memory_efficiency", "chip.kernel_overhead")),
    Stage("moe, own leaves", ("moe",),
          ("chip.matmul_efficiency", "chip.matmul_half_dim", "chip.kernel_overhead")),
)  # fmt: skip
"""Fits from the staged result that are reported, never merged: the values an op family
would need of shared leaves (a gap between them and the staged values is what the op
model cannot express with one value per chip)."""


def _select(rows: list[KernelRow], stage: Stage) -> list[KernelRow]:
    keep = []
    for r in rows:
        if r.op not in stage.ops:
            continue
        low = r.dtype in _LOW
        if stage.precision == "16" and low or stage.precision == "low" and not low:
            continue
        keep.append(r)
    return keep


def fit_leaves(
    cluster: Cluster,
    rows: list[KernelRow],
    leaves: tuple[str, ...],
    *,
    steps: int = 300,
    lr: float = 0.05,
) -> tuple[Cluster, dict, list[str]]:
    """Fit `leaves` to `rows` (module docstring's L(u), Adam, box projection).

    Returns (the cluster with the fitted leaves, {path: {start, fitted, lower,
    upper, at_bound}}, defects: one line per leaf that ended on a bound).
    """
    _check(rows)
    if not rows:
        raise ValueError("fit_leaves: no kernel rows to fit")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    priors = {p: prior_for(p, cluster) for p in leaves}
    lo = jnp.log(jnp.array([priors[p].lower for p in leaves]))
    hi = jnp.log(jnp.array([priors[p].upper for p in leaves]))
    start = {p: float(get_leaf(cluster, p)) for p in leaves}
    u0 = jnp.clip(jnp.log(jnp.array([start[p] for p in leaves])), lo, hi)
    groups = _groups(rows)
    counts = Counter(r.op for r in rows)
    weights = [1.0 / (len(counts) * counts[g.op]) for g in groups]
    targets = [jnp.log(jnp.array([rows[i].seconds for i in g.index])) for g in groups]

    def with_leaves(u):
        c = cluster
        for j, p in enumerate(leaves):
            c = set_leaf(c, p, jnp.exp(u[j]))
        return c

    def loss(u):
        c = with_leaves(u)
        total = 0.0
        for g, w, y in zip(groups, weights, targets, strict=True):
            r = jnp.log(_group_time(c, g)) - y
            total = total + w * jnp.sum(r * r)
        return total

    opt = optax.adam(lr)

    @eqx.filter_jit
    def step(u, state):
        val, g = jax.value_and_grad(loss)(u)
        with jax.numpy_dtype_promotion("standard"):  # optax's int32 step count
            upd, state = opt.update(g, state)
        return jnp.clip(optax.apply_updates(u, upd), lo, hi), state, val

    u, state = u0, opt.init(u0)
    best_u, best = u0, math.inf
    for _ in range(steps):
        new_u, state, val = step(u, state)  # val: the loss at u
        if float(val) < best:
            best_u, best = u, float(val)
        u = new_u
    if float(eqx.filter_jit(loss)(u)) < best:
        best_u = u
    fitted_u = np.asarray(best_u)
    out, defects = {}, []
    for j, p in enumerate(leaves):
        x = float(np.exp(fitted_u[j]))
        at_lo = abs(fitted_u[j] - float(lo[j])) < 1e-3
        at_hi = abs(fitted_u[j] - float(hi[j])) < 1e-3
        pr = priors[p]
        out[p] = dict(start=start[p], fitted=x, lower=pr.lower, upper=pr.upper,
                      at_bound=bool(at_lo or at_hi))  # fmt: skip
        if at_lo or at_hi:
            side = "lower" if at_lo else "upper"
            defects.append(f"{p} = {x:.4g} on its {side} bound")
    return with_leaves(jnp.asarray(fitted_u)), out, defects


def fit_kernels(
    cluster: Cluster,
    rows: list[KernelRow],
    *,
    stages: tuple[Stage, ...] = STAGES,
    diagnostics: tuple[Stage, ...] = DIAGNOSTICS,
    steps: int = 300,
    lr: float = 0.05,
) -> dict:
    """Fit the device's leaves to its measured kernels, stage by stage (`STAGES`).

    Args:
        cluster: the device (its committed leaves are the start and the "before").
        rows: measured kernels of that device.
        stages: the staged fit; a stage without rows is skipped (and listed).
        diagnostics: fits from the staged result, reported and not merged.
        steps: Adam steps per stage (≥ 1).
        lr: Adam learning rate on log values.

    Returns:
        dict(leaves={path: {committed, fitted, lower, upper, at_bound, stage}},
        before / after = `kernel_mape` with the committed / fitted leaves,
        defects (leaves on a bound), stages (name, rows, leaves), skipped (stage
        names without rows), diagnostics ({name: {rows, leaves, mape, defects}}),
        cluster (the fitted `Cluster`).
    """
    _check(rows)
    if not rows:
        raise ValueError("fit_kernels: no kernel rows to fit")
    for st in stages + diagnostics:
        bad = [op for op in st.ops if op not in KERNEL_OPS]
        if bad:
            raise ValueError(
                f"stage {st.name!r}: op {bad[0]!r} must be one of "
                f"{', '.join(KERNEL_OPS)}"
            )
    fitted, leaves, defects, done, skipped = cluster, {}, [], [], []
    for st in stages:
        sel = _select(rows, st)
        if not sel:
            skipped.append(st.name)
            continue
        fitted, got, bad = fit_leaves(fitted, sel, st.leaves, steps=steps, lr=lr)
        for p, v in got.items():
            leaves[p] = dict(
                committed=float(get_leaf(cluster, p)), fitted=v["fitted"],
                lower=v["lower"], upper=v["upper"], at_bound=v["at_bound"],
                stage=st.name,
            )  # fmt: skip
        defects += [f"{st.name}: {d}" for d in bad]
        done.append(dict(name=st.name, rows=len(sel), leaves=list(st.leaves)))
    diag = {}
    for st in diagnostics:
        sel = _select(rows, st)
        if not sel:
            continue
        c, got, bad = fit_leaves(fitted, sel, st.leaves, steps=steps, lr=lr)
        diag[st.name] = dict(
            rows=len(sel),
            leaves={p: v["fitted"] for p, v in got.items()},
            mape=kernel_mape(c, sel),
            defects=bad,
        )
    return dict(
        leaves=leaves,
        before=kernel_mape(cluster, rows),
        after=kernel_mape(fitted, rows),
        defects=defects,
        stages=done,
        skipped=skipped,
        diagnostics=diag,
        cluster=fitted,
    )
