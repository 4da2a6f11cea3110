"""Which hardware spec matters most for training, prefill and decode?

Elasticities d log(time) / d log(spec) of Llama-3-70B on DGX-H100 for three jobs, from
one backward pass each, and a tornado chart per job (every spec ±20%, Exact model).

Run: `.venv/bin/python experiments/sensitivity_train_vs_serve/run.py` (about 20 s).
Writes results.json, tornado_train.png, tornado_prefill.png, tornado_decode.png and
elasticities.png (the three jobs side by side) next to this file.
"""

import json
from pathlib import Path

import equinox as eqx
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffperf as dp  # noqa: E402

HERE = Path(__file__).resolve().parent
SPECS = [r for r in dp.RESOURCES] + ["chip.matmul_efficiency", "host.serve_overhead"]


def jobs():
    cluster = dp.load_hardware("dgx_h100")
    model = dp.load_workload("llama3_70b")
    train_map = dp.Parallelism(tp=8, pp=4, dp=8, vpp=5, microbatch=1, global_batch=512,
                               seq_len=8192, recompute="selective")  # fmt: skip
    serving = dp.Serving(tp=8, batch=32, input_len=2048, output_len=256)
    smooth = dp.Smooth(16.0)
    return cluster, {
        "train": lambda c, r=smooth: dp.train_step(c, model, train_map, relax=r).total,
        "prefill": lambda c, r=smooth: dp.prefill(c, model, serving, relax=r).total,
        "decode": lambda c, r=smooth: dp.decode_step(c, model, serving, relax=r).total,
    }


def main():
    cluster, metrics = jobs()
    results = {}
    for job, f in metrics.items():
        el = dp.elasticities(f, cluster)
        specs = {p: el[p] for p in SPECS if p in el}
        leaf, e = dp.binding_resource(el)
        exact = eqx.filter_jit(lambda c, f=f: f(c, dp.Exact()))
        nominal = float(exact(cluster))
        ranked = sorted(specs.items(), key=lambda kv: -abs(kv[1]))[:10]
        rows = []
        for path, _ in ranked:
            lo = float(exact(dp.scale_leaf(cluster, path, 0.8)))
            hi = float(exact(dp.scale_leaf(cluster, path, 1.2)))
            rows.append((path, lo, hi))
        dp.tornado(rows, nominal, path=HERE / f"tornado_{job}.png",
                title=f"Llama-3-70B {job} on DGX-H100: each spec ±20%",
                xlabel=f"{job} time [s]")  # fmt: skip
        results[job] = dict(time_s=nominal, binding=leaf, binding_elasticity=e,
                            elasticities=specs)  # fmt: skip
        print(f"{job:<8} {nominal:9.4g} s  binding: {leaf} ({e:+.3f})")
    fig, ax = plt.subplots(figsize=(9, 5))
    shown = [p for p in SPECS if max(abs(results[j]["elasticities"].get(p, 0))
                                     for j in results) > 0.01]  # fmt: skip
    width = 0.27
    for k, job in enumerate(results):
        vals = [results[job]["elasticities"].get(p, 0.0) for p in shown]
        ax.barh([i + (k - 1) * width for i in range(len(shown))], vals, height=width,
                label=job)  # fmt: skip
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("elasticity d log(time) / d log(spec)")
    ax.set_title("Llama-3-70B on DGX-H100: what each job's time is sensitive to")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "elasticities.png", dpi=120)
    results["device"] = str(jax.devices()[0])
    (HERE / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
