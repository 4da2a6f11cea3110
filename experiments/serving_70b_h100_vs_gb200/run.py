"""Llama-2/3-70B serving on DGX-H100 vs GB200 NVL72: colocated vs disaggregated.

Sweeps TP and batch for colocated continuous batching and, for disaggregated
prefill/decode, the prefill:decode split of a fixed GPU budget, TP and the decode
batch; keeps the points that meet the TTFT SLO, computes the Pareto front of
(per-GPU output tokens/s up, TPOT down) for each hardware × model × dtype ×
deployment, and plots the fronts and the cost per million output tokens.

Run: `python experiments/serving_70b_h100_vs_gb200/run.py` (from the repo root).
Writes results.json, pareto_<model>.png and cost.png next to this file.
"""

import json
import time
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffperf as dp  # noqa: E402

HERE = Path(__file__).resolve().parent
HW_LABEL = {"dgx_h100": "DGX-H100", "gb200_nvl72": "GB200 NVL72"}
HW_COLOR = {"dgx_h100": "tab:blue", "gb200_nvl72": "tab:green"}
KIND_STYLE = {"colocated": ("-", "o"), "disaggregated": ("--", "s")}
KINDS = ("colocated", "disaggregated")


def with_dtype(model: dp.Transformer, dtype: str) -> dp.Transformer:
    """The model served with bf16 or fp8 (math, weights and KV cache) precision."""
    if dtype == "bf16":
        precision = dp.Precision()
    elif dtype == "fp8":
        precision = dp.Precision(math="fp8", weights="fp8", kv_cache="fp8")
    else:
        raise ValueError(f"dtype {dtype!r} must be bf16 or fp8")
    return eqx.tree_at(lambda m: m.precision, model, precision)


def max_batch(cluster, model, serving: dp.Serving) -> int:
    """Largest batch whose weights, KV cache and activations fit (`dp.serve`)."""
    dp.check_serving(model, serving)
    return int(dp.serve(cluster, model, serving).max_batch)


def colocated_points(cluster, model, cfg, case) -> list[dict]:
    """Continuous batching on replicas of tp GPUs (steady state, chunked prefill)."""
    req, slo = cfg["request"], cfg["slo"]
    points = []
    for tp in cfg["colocated"]["tp"]:
        shape = dict(tp=tp, input_len=req["input_len"], output_len=req["output_len"])
        fits = max_batch(cluster, model, dp.Serving(batch=1, **shape))
        usd_h = float(dp.hourly_cost(cluster, tp))
        for b in cfg["colocated"]["batch"]:
            if b > fits:
                continue
            serving = dp.Serving(batch=b, **shape)
            r = dp.continuous_batching(cluster, model, serving)
            terms = {k: float(v) for k, v in r["step"].terms().items()}
            # for comparison: attention of a pure decode step at the same batch
            decode_attn = float(dp.decode_step(cluster, model, serving).attention)
            ttft, tpot = float(r["ttft"]), float(r["tpot"])
            tok_s = float(r["output_tokens_per_s"])
            ok_ttft, ok_tpot = ttft <= slo["ttft"], tpot <= slo["tpot"]
            points.append(
                dict(
                    case,
                    kind="colocated",
                    tp=tp,
                    batch=b,
                    max_batch=fits,
                    ttft_s=ttft,
                    tpot_s=tpot,
                    replica_tokens_per_s=tok_s,
                    tokens_per_s_per_gpu=tok_s / tp,
                    requests_per_s_per_gpu=tok_s / tp / req["output_len"],
                    usd_per_million_tokens=usd_h / (3600.0 * tok_s) * 1e6,
                    step_breakdown_s=terms,
                    decode_step_attention_s=decode_attn,
                    meets_ttft=ok_ttft,
                    meets_tpot=ok_tpot,
                    meets_slo=ok_ttft and ok_tpot,
                )
            )
    return points


def disaggregated_points(cluster, model, cfg, case) -> list[dict]:
    """Prefill and decode pools of the same hardware and TP, KV cache moved between."""
    req, slo, dis = cfg["request"], cfg["slo"], cfg["disaggregated"]
    points = []
    for tp in dis["tp"]:
        shape = dict(tp=tp, input_len=req["input_len"], output_len=req["output_len"])
        pre = dp.Serving(batch=dis["prefill_batch"], **shape)
        fits = max_batch(cluster, model, dp.Serving(batch=1, **shape))
        for n_pre, n_dec in dis["splits"]:
            if n_pre % tp or n_dec % tp:
                continue  # whole replicas only
            for b in dis["decode_batch"]:
                if b > fits:
                    continue
                dec = dp.Serving(batch=b, **shape)
                r = dp.disaggregated(
                    cluster,
                    model,
                    pre,
                    dec,
                    prefill_chips=n_pre,
                    decode_chips=n_dec,
                    ttft_slo=slo["ttft"],
                    tpot_slo=slo["tpot"],
                )
                ttft, tpot = float(r.ttft), float(r.tpot)
                tok_s = float(r.output_tokens_per_s)
                rate = float(r.requests_per_s)
                decode_rate = n_dec / tp * b / (req["output_len"] * tpot)
                ok_ttft, ok_tpot = ttft <= slo["ttft"], tpot <= slo["tpot"]
                points.append(
                    dict(
                        case,
                        kind="disaggregated",
                        tp=tp,
                        batch=b,
                        max_batch=fits,
                        prefill_gpus=n_pre,
                        decode_gpus=n_dec,
                        ttft_s=ttft,
                        tpot_s=tpot,
                        kv_transfer_s=float(r.kv_transfer),
                        kv_bytes_per_request=float(r.kv_bytes),
                        kv_bandwidth_demand_bytes_per_s=float(r.kv_bandwidth_demand),
                        requests_per_s=rate,
                        goodput_requests_per_s=float(r.goodput),
                        bound="prefill" if rate < 0.999 * decode_rate else "decode",
                        deployment_tokens_per_s=tok_s,
                        tokens_per_s_per_gpu=tok_s / (n_pre + n_dec),
                        usd_per_million_tokens=float(r.usd_per_million_tokens),
                        meets_ttft=ok_ttft,
                        meets_tpot=ok_tpot,
                        meets_slo=ok_ttft and ok_tpot,
                    )
                )
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not dominated in (TPOT down, per-GPU tokens/s up), by TPOT."""
    ranked = sorted(points, key=lambda p: (p["tpot_s"], -p["tokens_per_s_per_gpu"]))
    keep = dp.pareto_mask(
        np.array([p["tpot_s"] for p in ranked]),
        -np.array([p["tokens_per_s_per_gpu"] for p in ranked]),
    )
    return [p for p, k in zip(ranked, keep, strict=True) if k]


def describe(p: dict) -> str:
    """Short mapping label of a point, e.g. TP8 B64 or 24:8 TP8 B128."""
    if p["kind"] == "disaggregated":
        return f"{p['prefill_gpus']}:{p['decode_gpus']} TP{p['tp']} B{p['batch']}"
    return f"TP{p['tp']} B{p['batch']}"


def plot_pareto(model: str, cfg: dict, fronts: dict, points: list[dict]) -> Path:
    """TPOT vs per-GPU throughput, one panel per dtype, one line per hw × kind."""
    dtypes = cfg["dtypes"]
    fig, axes = plt.subplots(
        1, len(dtypes), figsize=(6.2 * len(dtypes), 5.0), sharey=True, squeeze=False
    )
    slo_ms = cfg["slo"]["tpot"] * 1e3
    shown = [p for p in points if p["model"] == model and p["meets_ttft"]]
    y_top = 1.08 * max(p["tokens_per_s_per_gpu"] for p in shown)
    x_top = 1.15e3 * max(p["tpot_s"] for p in shown)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        for hw in cfg["hardware"]:
            for kind in KINDS:
                ls, marker = KIND_STYLE[kind]
                cloud = [
                    p
                    for p in points
                    if (p["hardware"], p["model"], p["dtype"], p["kind"])
                    == (hw, model, dtype, kind)
                    and p["meets_ttft"]
                ]
                ax.scatter(
                    [p["tpot_s"] * 1e3 for p in cloud],
                    [p["tokens_per_s_per_gpu"] for p in cloud],
                    s=9,
                    marker=marker,
                    color=HW_COLOR[hw],
                    alpha=0.15,
                    linewidths=0,
                )
                front = fronts[(hw, model, dtype, kind)]
                ax.plot(
                    [p["tpot_s"] * 1e3 for p in front],
                    [p["tokens_per_s_per_gpu"] for p in front],
                    ls=ls,
                    marker=marker,
                    ms=4,
                    color=HW_COLOR[hw],
                    label=f"{HW_LABEL[hw]}, {kind}",
                )
                ok = [p for p in front if p["meets_slo"]]
                if ok:
                    best = max(ok, key=lambda p: p["tokens_per_s_per_gpu"])
                    x, y = best["tpot_s"] * 1e3, best["tokens_per_s_per_gpu"]
                    ax.plot(x, y, marker="*", ms=13, color=HW_COLOR[hw], mec="k")
                    ax.annotate(
                        describe(best),
                        (x, y),
                        textcoords="offset points",
                        xytext=(-6, 7 if kind == "disaggregated" else -13),
                        ha="right",
                        fontsize=7.5,
                        color=HW_COLOR[hw],
                    )
        ax.axvline(slo_ms, color="crimson", ls=":", lw=1.5, label="TPOT SLO")
        ax.set_xscale("log")
        ax.set_xlim(10, x_top)
        ticks = [t for t in (10, 20, 50, 100, 200, 500, 1000) if t <= x_top]
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("TPOT, time per output token [ms] (log scale)")
        ax.set_title(f"{dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(0, y_top)
    axes[0][0].set_ylabel("output tokens/s per GPU")
    axes[0][0].legend(fontsize=8, loc="upper right")
    req, slo = cfg["request"], cfg["slo"]
    fig.suptitle(
        f"{model}: Pareto fronts among points with TTFT ≤ {slo['ttft']:g} s "
        f"({req['input_len']} in / {req['output_len']} out, {cfg['gpus']} GPUs; "
        "★ = best within both SLOs; faint = all points)",
        fontsize=10,
    )
    fig.tight_layout()
    path = HERE / f"pareto_{model}.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_cost(cfg: dict, best: dict) -> Path:
    """Bar chart: cheapest $/M output tokens within SLOs per case."""
    groups = [(m, d) for m in cfg["models"] for d in cfg["dtypes"]]
    bars = [(hw, kind) for hw in cfg["hardware"] for kind in KINDS]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(10, 5))
    top = max(
        (p["usd_per_million_tokens"] for p in best.values() if p is not None),
        default=1.0,
    )
    for i, (hw, kind) in enumerate(bars):
        for g, (model, dtype) in enumerate(groups):
            p = best[(hw, model, dtype, kind)]
            x = g + (i - (len(bars) - 1) / 2) * width
            label = f"{HW_LABEL[hw]}, {kind}" if g == 0 else None
            hatch = "//" if kind == "disaggregated" else None
            if p is None:
                ax.text(x, 0.02 * top, "none", ha="center", fontsize=7, rotation=90)
                continue
            v = p["usd_per_million_tokens"]
            ax.bar(x, v, width, color=HW_COLOR[hw], hatch=hatch, ec="k", label=label)
            ax.text(x, v + 0.01 * top, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\n{d}" for m, d in groups])
    ax.set_xlabel("model and serving dtype")
    ax.set_ylabel("$ per million output tokens")
    slo = cfg["slo"]
    ax.set_title(
        "Cheapest deployment meeting TTFT ≤ "
        f"{slo['ttft']:g} s and TPOT ≤ {slo['tpot'] * 1e3:g} ms "
        f"({cfg['gpus']} GPUs; hourly_cost defaults: 4 y, PUE 1.3, $0.10/kWh)",
        fontsize=10,
    )
    ax.set_ylim(0, top * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = HERE / "cost.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main():
    t0 = time.perf_counter()
    cfg = tomllib.loads((HERE / "config.toml").read_text())
    for n_pre, n_dec in cfg["disaggregated"]["splits"]:
        if n_pre + n_dec != cfg["gpus"]:
            raise ValueError(f"split {n_pre}:{n_dec} must sum to gpus={cfg['gpus']}")

    points = []
    for hw in cfg["hardware"]:
        cluster = dp.load_hardware(hw)
        for name in cfg["models"]:
            base = dp.load_workload(name)
            for dtype in cfg["dtypes"]:
                model = with_dtype(base, dtype)
                case = dict(hardware=hw, model=name, dtype=dtype)
                points += colocated_points(cluster, model, cfg, case)
                points += disaggregated_points(cluster, model, cfg, case)

    cases = [
        (hw, m, d, k)
        for hw in cfg["hardware"]
        for m in cfg["models"]
        for d in cfg["dtypes"]
        for k in KINDS
    ]

    def of(case):
        return [
            p
            for p in points
            if (p["hardware"], p["model"], p["dtype"], p["kind"]) == case
        ]

    fronts = {c: pareto_front([p for p in of(c) if p["meets_ttft"]]) for c in cases}
    best = {}
    for c in cases:
        ok = [p for p in of(c) if p["meets_slo"]]
        best[c] = max(ok, key=lambda p: p["tokens_per_s_per_gpu"]) if ok else None

    figures = [plot_pareto(m, cfg, fronts, points) for m in cfg["models"]]
    figures.append(plot_cost(cfg, best))

    print(
        f"{len(points)} points; best per-GPU throughput within TTFT ≤ "
        f"{cfg['slo']['ttft']:g} s and TPOT ≤ {cfg['slo']['tpot'] * 1e3:g} ms "
        f"({cfg['request']['input_len']} in / {cfg['request']['output_len']} out)"
    )
    head = (
        f"{'hardware':<12}{'model':<12}{'dtype':<6}{'deployment':<15}"
        f"{'tok/s/GPU':>10}{'$/M tok':>9}{'TTFT s':>8}{'TPOT ms':>9}  mapping"
    )
    print(head)
    print("-" * (len(head) + 18))
    cheapest = {}
    for c in cases:
        p = best[c]
        hw, m, d, k = c
        if p is None:
            print(f"{hw:<12}{m:<12}{d:<6}{k:<15}{'none meets both SLOs':>36}")
            continue
        cheap = min(
            (q for q in of(c) if q["meets_slo"]),
            key=lambda q: q["usd_per_million_tokens"],
        )
        cheapest[c] = cheap
        print(
            f"{hw:<12}{m:<12}{d:<6}{k:<15}{p['tokens_per_s_per_gpu']:>10.0f}"
            f"{cheap['usd_per_million_tokens']:>9.3f}{p['ttft_s']:>8.3f}"
            f"{p['tpot_s'] * 1e3:>9.1f}  {describe(p)}"
        )

    key = "|".join
    out = dict(
        config=cfg,
        device=str(jax.devices()),
        points=points,
        pareto_fronts={key(c): f for c, f in fronts.items()},
        best_within_slo={key(c): p for c, p in best.items()},
        cheapest_within_slo={key(c): p for c, p in cheapest.items()},
        figures=[f.name for f in figures],
        run_seconds=time.perf_counter() - t0,
    )
    (HERE / "results.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    print(f"\nwrote results.json and {', '.join(f.name for f in figures)} in {HERE}")
    print(f"run time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
