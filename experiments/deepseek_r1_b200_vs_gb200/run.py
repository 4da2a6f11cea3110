"""DeepSeek-R1 on 8x B200 vs GB200 NVL72: aggregated vs disaggregated, vs measurements.

Issue #12's study. For DeepSeek-R1 (fp8 weights, GEMMs and KV cache) at 1024 input and
1024 output tokens on the TensorRT-LLM 1.x engine profile (hardware/stacks/trtllm.toml):

- aggregated: every layout of `config.toml` (TP·EP, or attention DP·wide EP) on
  `dp.serve_load` closed loops of 1 to 4096 clients per replica (spread phases: a
  deployment's steady state, not a benchmark's synchronized first wave);
- disaggregated: `dp.disaggregated` over a GPU budget per system, every prefill:decode
  split in whole workers, decode layouts and decode batches of `config.toml`;
- the Pareto front of (output tokens/s per user = 1/TPOT up, output tokens/s per GPU up)
  of each system and deployment;
- AIConfigurator's measured B200 points of the same model, engine, precision and
  lengths (`data/serving_silicon_calibration.csv`), and the model's prediction of the
  same rows (`dp.validate`, which runs them as the benchmark's synchronized waves), on
  the same axes: per user 1000/TPOT[ms]; per GPU N·S_out / (TTFT + (S_out − 1)·TPOT) / G
  with N the run's concurrency and G its GPUs (Little's law with fixed lengths; the same
  formula for measured and predicted values). No GB200 row exists in the file.

Run: `python experiments/deepseek_r1_b200_vs_gb200/run.py` (from the repo root, a few
minutes on 2 CPU cores). Writes results.json and pareto.png next to this file.
"""

import csv
import json
import tempfile
import tomllib
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffperf as dp  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "data" / "serving_silicon_calibration.csv"
_load = eqx.filter_jit(dp.serve_load)


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both per-user and per-GPU throughput."""
    keep = dp.pareto_mask(
        -np.array([p["per_user"] for p in points]),
        -np.array([p["per_gpu"] for p in points]),
    )
    return [p for p, k in zip(points, keep, strict=True) if k]


def serving(layout: dict, cfg: dict, **kw) -> dp.Serving:
    return dp.Serving(
        tp=layout["tp"], attention_dp=layout.get("attention_dp", 1), ep=layout["ep"],
        input_len=cfg["input_len"], output_len=cfg["output_len"],
        graphs=cfg["graphs"], **kw,
    )  # fmt: skip


def aggregated(cluster, model, cfg: dict, layouts: list[dict]) -> list[dict]:
    """Closed-loop points of every layout and concurrency (spread phases)."""
    sched = dp.Scheduler(**cfg["scheduler"])
    out = []
    for layout in layouts:
        s = serving(layout, cfg)
        chips = float(s.chips)
        for n in cfg["concurrency"]:
            r = _load(cluster, model, s, concurrency=jnp.asarray(float(n)),
                      scheduler=sched)  # fmt: skip
            out.append(dict(
                layout=layout["name"], concurrency=n, chips=chips,
                ttft_s=float(r.ttft), tpot_s=float(r.tpot),
                per_user=float(r.output_tokens_per_s_per_user),
                per_gpu=float(r.output_tokens_per_s) / chips,
                saturated=bool(r.saturated),
            ))  # fmt: skip
    return out


def disaggregated(cluster, model, cfg: dict, sys_cfg: dict) -> list[dict]:
    """Every prefill:decode split of the GPU budget, decode layout and batch."""
    gpus = sys_cfg["disagg_gpus"]
    pre = serving(sys_cfg["prefill"], cfg, batch=1)
    p_chips = int(pre.chips)
    out = []
    for layout in sys_cfg["decode"]:
        for batch in cfg["decode_batch"]:
            dec = serving(layout, cfg, batch=batch)
            d_chips = int(dec.chips)
            for x in range(1, gpus // p_chips):
                rest = gpus - x * p_chips
                y = rest // d_chips
                if y < 1:
                    continue
                r = dp.disaggregated(
                    cluster, model, pre, dec, prefill_chips=x * p_chips,
                    decode_chips=y * d_chips,
                )  # fmt: skip
                if not bool(r.decode_feasible):
                    continue
                used = x * p_chips + y * d_chips
                out.append(dict(
                    layout=layout["name"], decode_batch=batch, workers=f"{x}P{y}D",
                    chips=used, ttft_s=float(r.ttft), tpot_s=float(r.tpot),
                    per_user=1.0 / float(r.tpot),
                    per_gpu=float(r.output_tokens_per_s) / used,
                ))  # fmt: skip
    return out


def measured(cfg: dict) -> dict:
    """AIConfigurator's B200 rows of this job, measured and predicted (dp.validate)."""
    m = cfg["measured"]
    with DATA.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = [r for r in reader
                if r["model_path"] == m["model_path"] and r["system"] == m["system"]
                and r["backend"] == m["backend"] and r["precision"] == m["precision"]
                and int(r["isl"]) == cfg["input_len"]
                and int(r["osl"]) == cfg["output_len"]]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        rep = dp.validate(path)
    pred = {}
    for r in rep["results"]:
        if "predicted" in r:
            pred.setdefault(r["row"], {})[r["metric"]] = r["predicted"]
    points = []
    for i, row in enumerate(rows):
        if i not in pred:
            continue
        job = dp.resolve_aic_row(row)  # the run's concurrency and worker layouts
        n = float(job["concurrency"])
        if row["mode"] == "agg":
            gpus = float(job["serving"].chips)
        else:
            x, y = job["workers"]
            gpus = x * float(job["prefill"].chips) + y * float(job["decode"].chips)
        s_out = cfg["output_len"]

        def xy(ttft_ms, tpot_ms, n=n, gpus=gpus, s_out=s_out):
            e2e = (ttft_ms + (s_out - 1) * tpot_ms) / 1e3
            return 1e3 / tpot_ms, n * s_out / e2e / gpus

        mu, mg = xy(float(row["silicon_ttft_ms"]), float(row["silicon_tpot_ms"]))
        pu, pg = xy(pred[i]["ttft"], pred[i]["tpot"])
        points.append(dict(
            mode=row["mode"], concurrency=n, gpus=gpus, measured_per_user=mu,
            measured_per_gpu=mg, predicted_per_user=pu, predicted_per_gpu=pg,
        ))  # fmt: skip
    return dict(rows=len(rows), predicted=len(points),
                refused=rep.get("refused", {}), points=points)  # fmt: skip


def main():
    cfg = tomllib.loads((HERE / "config.toml").read_text())
    model = dp.load_workload(cfg["model"])
    fp8 = dp.Precision(math="fp8", weights="fp8", kv_cache="fp8")
    model = eqx.tree_at(lambda m: m.precision, model, fp8)
    results = dict(config=cfg, systems={})
    for name, sys_cfg in cfg["systems"].items():
        cluster = dp.load_hardware(name, stack=cfg["stack"])
        agg = aggregated(cluster, model, cfg, sys_cfg["aggregated"])
        dis = disaggregated(cluster, model, cfg, sys_cfg)
        results["systems"][name] = dict(
            label=sys_cfg["label"], aggregated=agg, disaggregated=dis,
            aggregated_front=pareto(agg), disaggregated_front=pareto(dis),
        )  # fmt: skip
        for kind in ("aggregated", "disaggregated"):
            front = results["systems"][name][f"{kind}_front"]
            best = max(front, key=lambda p: p["per_gpu"])
            print(f"{sys_cfg['label']:12} {kind:14} {len(front):3} front points; "
                  f"max {best['per_gpu']:.0f} tok/s/GPU at {best['per_user']:.0f} "
                  f"tok/s/user ({best['layout']})")  # fmt: skip
    results["measured"] = measured(cfg)
    mm = results["measured"]
    print(f"measured B200 rows {mm['rows']}, predicted {mm['predicted']}")
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    plot(results)


def plot(results: dict):
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {"dgx_b200": "tab:blue", "gb200_nvl72": "tab:green"}
    for name, r in results["systems"].items():
        for kind, style in (("aggregated", "-"), ("disaggregated", "--")):
            f = sorted(r[f"{kind}_front"], key=lambda p: p["per_user"])
            label = f"{r['label']}, {kind} (model)"
            ax.plot([p["per_user"] for p in f], [p["per_gpu"] for p in f], style,
                    color=colors[name], label=label)  # fmt: skip
    for mode, marker in (("agg", "o"), ("disagg", "s")):
        pts = [p for p in results["measured"]["points"] if p["mode"] == mode]
        if not pts:
            continue
        ax.scatter([p["measured_per_user"] for p in pts],
                   [p["measured_per_gpu"] for p in pts], marker=marker,
                   facecolors="none", edgecolors="black",
                   label=f"8x B200 {mode}, measured")  # fmt: skip
        ax.scatter([p["predicted_per_user"] for p in pts],
                   [p["predicted_per_gpu"] for p in pts], marker=marker, s=12,
                   color="tab:red",
                   label=f"8x B200 {mode}, same rows predicted")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output tokens/s per user (1/TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title("DeepSeek-R1 fp8, 1024 in / 1024 out, TensorRT-LLM")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "pareto.png", dpi=120)


if __name__ == "__main__":
    main()
