"""Serving engines fitted on AIConfigurator's silicon measurements.

Fits, on the aggregated rows of data/serving_silicon_calibration.csv (TensorRT-LLM,
vLLM and SGLang on H100, H200 and B200), the software leaves of each engine's stack
profile (hardware/stacks/{trtllm,vllm,sglang}.toml):

  host.serve_overhead  the engine's fixed cost per step (scheduling, sampling,
                       detokenization, the graph launch) [s]
  chip.kernel_overhead the GPU cost per kernel in the engine's steps (decode steps
                       replay CUDA graphs: the gap between kernels of a graph, not a
                       CPU launch) [s]

at two levels in log space, log x_eq = g_q + s_{e,q} (global g, engine residual s,
shrunk toward 0 with width `dp.SHRINK["stack"]`; g with the project prior
`dp.leaf_priors`), minimizing the pseudo-Huber loss of the rows' log errors of TTFT
and TPOT:

    L = (1/N) Σ_i Σ_{m ∈ {TTFT, TPOT}} ρ(log p_im − log y_im)
        + (σ_r²/N) · [Σ_q ((g_q − μ_q)/σ_q)² + Σ_{e,q} (s_eq/τ)²]

Each row's prediction is `dp.aic_linearized`: the synchronized-wave TTFT and TPOT are
sums of engine step times, each affine in both leaves, so p(x) = p0 + J·(x − x0) is
exact and the fit and its folds run on the rows' Jacobians in a second (the model is
evaluated once, at the current leaves). Values are clipped to the priors' boxes; a
leaf that ends on its bound is listed in `at_bound` (a model defect, not a result).

Reports TTFT and TPOT MAPE, median APE, median predicted/measured and counts:
  - before (the stacks as committed when the run started) and in-sample;
  - leave one device out (fit without H100's rows, predict them, ...);
  - leave one engine out (the held-out engine takes the global level).

Usage:
    python experiments/calibrate_engines/run.py [--write] [--linearized FILE.json]

`--write` patches hardware/stacks/{trtllm,vllm,sglang}.toml with the in-sample fit.
Writes results.json next to this file.
"""

import argparse
import csv
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import diffperf as dp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "serving_silicon_calibration.csv"
LEAVES = ("host.serve_overhead", "chip.kernel_overhead")
ENGINES = ("trtllm", "vllm", "sglang")
NOTE = "experiments/calibrate_engines"
SIGMA_R = 0.3  # σ_r: a row's log error under the fit (prior strength), log units
DELTA = 0.1  # δ of the pseudo-Huber loss (as dp.calibrate_hierarchy), log units
STEPS = 3000


def load(rows_csv: list[dict], saved: Path | None = None) -> dict:
    """The rows' linearized predictions as arrays (one model evaluation).

    `saved`: a JSON of `dp.aic_linearized`'s output to reuse (written when absent).
    """
    if saved is not None and saved.exists():
        lin = json.loads(saved.read_text())
    else:
        lin = dp.aic_linearized(rows_csv, LEAVES)
        if saved is not None:
            saved.write_text(json.dumps(lin))
    jax.config.update("jax_enable_x64", True)  # the fit below runs in float64
    k = len(LEAVES)
    jac = np.array([r["jacobian"] for r in lin])  # [N, 2, k + 1]
    return dict(
        lin=lin,
        measured=np.array([r["measured"] for r in lin]),
        p0=np.array([r["predicted"] for r in lin]),
        x0=np.array([r["x0"] for r in lin]),
        jac=jac[:, :, :k],
        d_inv_rounds=jac[:, 0, k],  # ∂TTFT/∂(1/R): first wave − rolling pipeline
        engine=np.array([ENGINES.index(r["backend"]) for r in lin]),
        system=np.array([r["system"] for r in lin]),
        concurrency=np.array([r["concurrency"] for r in lin]),
        model=np.array([r["model"] for r in lin]),
    )


def priors() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(μ, σ, lower, upper) of the leaves in log space (project defaults)."""
    cluster = dp.load_hardware("h100_sxm")
    pr = dp.leaf_priors("inference", list(LEAVES), cluster, center="defaults")
    arr = lambda f: np.array([math.log(f(pr[p])) for p in LEAVES])  # noqa: E731
    return (arr(lambda p: p.center), np.array([pr[p].sigma for p in LEAVES]),
            arr(lambda p: p.lower), arr(lambda p: p.upper))  # fmt: skip


def predict(d: dict, logx: np.ndarray) -> np.ndarray:
    """[N, 2] TTFT, TPOT [s] at per-row log leaves logx [N, k]."""
    x = jnp.exp(logx)
    return d["p0"] + jnp.einsum("nmk,nk->nm", d["jac"], x - d["x0"])


def row_logx(g, s, engine, lo, hi, known):
    """Per-row log leaves: global + engine residual (0 for an unfitted engine)."""
    res = jnp.where(known[engine][:, None], s[engine], 0.0)
    return jnp.clip(g[None, :] + res, lo[None, :], hi[None, :])


def fit(d: dict, train: np.ndarray, sigma_r: float = SIGMA_R) -> dict:
    """Global and engine levels fitted on the rows of `train` (a boolean mask).

    `sigma_r`: the rows' log-error scale, which sets the priors' weight.
    """
    mu, sigma, lo, hi = priors()
    known = np.array([bool(np.any(train & (d["engine"] == e))) for e in range(3)])
    n = float(train.sum())
    w = train / n
    y = np.log(d["measured"])
    tau = float(dp.SHRINK["stack"])
    dd = {k: jnp.asarray(d[k]) for k in ("p0", "x0", "jac")}

    def loss(params):
        g, s = params
        lx = row_logx(g, s, d["engine"], lo, hi, known)
        r = jnp.log(jnp.maximum(predict(dd, lx), 1e-12)) - y
        rho = 2.0 * DELTA**2 * (jnp.sqrt(1.0 + (r / DELTA) ** 2) - 1.0)
        prior = jnp.sum(((g - mu) / sigma) ** 2) + jnp.sum(
            (jnp.where(known[:, None], s, 0.0) / tau) ** 2
        )
        return jnp.sum(w[:, None] * rho) + sigma_r**2 / n * prior

    opt = optax.adam(0.02)
    params = (jnp.asarray(mu), jnp.zeros((3, len(LEAVES))))
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        val, grad = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's int step count
            upd, state = opt.update(grad, state)
        return optax.apply_updates(params, upd), state, val

    for _ in range(STEPS):
        params, state, val = step(params, state)
    g, s = (np.asarray(p) for p in params)
    values = {"global": dict(zip(LEAVES, np.exp(np.clip(g, lo, hi)), strict=True))}
    at_bound = []
    for e, name in enumerate(ENGINES):
        if not known[e]:
            continue
        lx = np.clip(g + s[e], lo, hi)
        values[name] = dict(zip(LEAVES, np.exp(lx), strict=True))
        for q, leaf in enumerate(LEAVES):
            if abs(lx[q] - lo[q]) < 1e-3 or abs(lx[q] - hi[q]) < 1e-3:
                at_bound.append(f"{name} {leaf}")
    lx = np.asarray(row_logx(g, s, d["engine"], lo, hi, known))
    pred = np.asarray(predict(dd, lx))
    return dict(values=values, at_bound=at_bound, predicted=pred, loss=float(val))


def summary(d: dict, pred: np.ndarray, mask: np.ndarray) -> dict:
    """MAPE, median APE, median ratio and rows of TTFT and TPOT over `mask`."""
    out = {"rows": int(mask.sum())}
    for m, name in enumerate(("ttft", "tpot")):
        ratio = pred[mask, m] / d["measured"][mask, m]
        ape = np.abs(ratio - 1.0)
        out[name] = dict(mape=float(ape.mean()), median_ape=float(np.median(ape)),
                         median_ratio=float(np.median(ratio)))  # fmt: skip
    return out


def bins(n: float) -> str:
    return "<=8" if n <= 8 else "16-32" if n <= 32 else "64-128" if n <= 128 else ">128"


MOE = ("deepseek_v3", "qwen3_235b_a22b", "gpt_oss_120b", "kimi_k2_5", "minimax_m2_5",
       "qwen3_5_397b_a17b", "glm5")  # fmt: skip


def table(d: dict, pred: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Summaries overall and by engine, system, concurrency bin and model kind."""
    mask = np.ones(len(pred), bool) if mask is None else mask
    out = {"all": summary(d, pred, mask)}
    keys = {
        "engine": np.array([ENGINES[e] for e in d["engine"]]),
        "system": d["system"],
        "concurrency": np.array([bins(n) for n in d["concurrency"]]),
        "kind": np.array(["moe" if m in MOE else "dense" for m in d["model"]]),
    }
    for title, key in keys.items():
        out[f"by_{title}"] = {
            str(v): summary(d, pred, mask & (key == v)) for v in sorted(set(key[mask]))
        }
    return out


def rounds_evidence(d: dict, pred: np.ndarray) -> dict:
    """Median of (measured − rolling)/(first wave − rolling) TTFT: 1/R per engine with
    mixed steps and concurrency bin, over rows whose first wave is ≥ 30% above the
    rolling pipeline (at the fitted leaves; `dp.AIC_ROUNDS` sets R)."""
    u0 = 1.0 / dp.AIC_ROUNDS
    du = d["d_inv_rounds"]
    rolling = pred[:, 0] - du * u0
    keep = du > 0.3 * rolling
    est = (d["measured"][:, 0] - rolling) / np.where(keep, du, 1.0)
    out = {}
    for e in ("trtllm", "vllm"):
        for b in ("<=8", "16-32", "64-128", ">128"):
            m = keep & (d["engine"] == ENGINES.index(e))
            m &= np.array([bins(n) == b for n in d["concurrency"]])
            if m.any():
                med = float(np.median(est[m]))
                out[f"{e} {b}"] = dict(rows=int(m.sum()), inv_rounds=med)
    return out


def heldout(d: dict, key: np.ndarray) -> tuple[np.ndarray, dict]:
    """Predictions of each group of `key` by the fit without it, and the fits."""
    pred = np.zeros_like(d["p0"])
    fits = {}
    for v in sorted(set(key)):
        f = fit(d, key != v)
        pred[key == v] = f["predicted"][key == v]
        fits[str(v)] = dict(values=_floats(f["values"]), at_bound=f["at_bound"])
    return pred, fits


def _floats(values: dict) -> dict:
    return {k: {p: float(x) for p, x in v.items()} for k, v in values.items()}


def write(values: dict, n_rows: int):
    """Patch the engines' stack profiles with the in-sample fit."""
    for name in ENGINES:
        if name in values:
            dp.patch_toml(
                ROOT / "hardware" / "stacks" / f"{name}.toml",
                values[name],
                f"{NOTE} ({n_rows} aggregated rows of serving_silicon_calibration.csv)",
            )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument(
        "--linearized",
        type=Path,
        default=None,
        help="reuse (or save) dp.aic_linearized's rows in this JSON",
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    with DATA.open() as fh:
        rows = list(csv.DictReader(fh))
    d = load(rows, args.linearized)
    t_model = time.time() - t0
    engines = np.array([ENGINES[e] for e in d["engine"]])
    full = fit(d, np.ones(len(d["p0"]), bool))
    lodo, lodo_fits = heldout(d, d["system"])
    loeo, loeo_fits = heldout(d, engines)
    results = dict(
        data=str(DATA.relative_to(ROOT)),
        rows=len(rows),
        rows_fitted=len(d["p0"]),
        leaves=list(LEAVES),
        before=table(d, d["p0"]),
        in_sample=table(d, full["predicted"]),
        leave_one_device_out=table(d, lodo),
        leave_one_engine_out=table(d, loeo),
        values=_floats(full["values"]),
        rounds=dp.AIC_ROUNDS,
        rounds_evidence=rounds_evidence(d, full["predicted"]),
        at_bound=full["at_bound"],
        folds=dict(device=lodo_fits, engine=loeo_fits),
        x0=dict(zip(LEAVES, map(float, d["x0"][0]), strict=True)),
        model_seconds=round(t_model, 1),
        run_seconds=round(time.time() - t0, 1),
    )
    (HERE / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.write:
        write(full["values"], len(d["p0"]))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    for name in ("before", "in_sample", "leave_one_device_out", "leave_one_engine_out"):
        s = results[name]["all"]
        print(f"{name:>22}: {s['rows']} rows  TTFT MAPE {pct(s['ttft']['mape'])} "
              f"(median {pct(s['ttft']['median_ape'])}, ratio "
              f"{s['ttft']['median_ratio']:.2f})  TPOT MAPE {pct(s['tpot']['mape'])} "
              f"(median {pct(s['tpot']['median_ape'])}, ratio "
              f"{s['tpot']['median_ratio']:.2f})")  # fmt: skip
    for eng, vals in results["values"].items():
        print(f"  {eng:>7}: " + ", ".join(f"{p} {v:.3g}" for p, v in vals.items()))
    for key, v in results["rounds_evidence"].items():
        print(f"  1/R {key}: {v['inv_rounds']:.3f} ({v['rows']} rows)")
    if results["at_bound"]:
        print("at bound:", ", ".join(results["at_bound"]))
    return results


if __name__ == "__main__":
    main()
