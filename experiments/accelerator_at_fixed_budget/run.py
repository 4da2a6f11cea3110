"""Which accelerator for GPT-3-175B / Llama-3.1-405B training at a fixed $ budget?

For each model, on 1024 chips:
  1. today's systems (A100, H100, B200, MI300X, TPU v5p): the best mapping of each
     (every valid tp·pp·dp·microbatch·vpp, Exact model), its step time, tokens/s and
     tokens per $ (TCO: capex over 4 years + energy, `dp.hourly_cost`);
  2. co-design from the H100 system: FLOP/s, HBM bandwidth, SRAM and scale-up
     bandwidth chosen by `optimize` (with the mapping) to
     (a) maximize tokens/s under the capex of 1024 H100 systems (the fixed $), and
     (b) maximize tokens per $ of TCO,
     both within a reticle-sized die (858 mm²) and 1200 W per chip, with the cost,
     area and power model anchored on H100 (`[cost]` in hardware/README.md).

Run: `.venv/bin/python experiments/accelerator_at_fixed_budget/run.py` (a few minutes).
Writes results.json, tokens_per_usd.png and designs.png next to this file.
"""

import json
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffperf as dp  # noqa: E402

HERE = Path(__file__).resolve().parent
CFG = tomllib.loads((HERE / "config.toml").read_text())


def _job(model_name: str, seq: int, batch: int):
    model = dp.load_workload(model_name)
    precision = dp.Precision.training(CFG["dtype"])
    model = eqx.tree_at(lambda m: m.precision, model, precision)
    base = dp.Parallelism(tp=8, pp=8, dp=CFG["gpus"] // 64, microbatch=1,
                          global_batch=batch, seq_len=seq, vpp=2,
                          recompute="selective")  # fmt: skip
    return model, base


def best_mapping(cluster, model, base) -> dict:
    """The fastest valid mapping of the job on this system (Exact, all mappings)."""
    maps = dp.enumerate_mappings(model, base, CFG["gpus"])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *maps)

    def one(m):
        b = dp.train_step(cluster, model, m)
        return jnp.where(b.feasible, b.total, jnp.inf), b.tokens

    times, tokens = (np.asarray(a) for a in jax.jit(jax.vmap(one))(stacked))
    i = int(np.argmin(times))
    if not np.isfinite(times[i]):
        return dict(feasible=False)
    usd_h = float(dp.hourly_cost(cluster, CFG["gpus"]))
    tok_s = float(tokens[i] / times[i])
    m = maps[i]
    return dict(
        feasible=True,
        step_time_s=float(times[i]),
        tokens_per_s=tok_s,
        usd_per_hour=usd_h,
        tokens_per_usd=tok_s * 3600.0 / usd_h,
        capex_usd=float(CFG["gpus"] * dp.capex_per_chip(cluster)),
        mapping={
            f: int(round(float(getattr(m, f))))
            for f in ("tp", "pp", "dp", "microbatch", "vpp")
        },  # fmt: skip
    )


def main():
    vary = {k: tuple(v) for k, v in CFG["vary"].items()}
    start = dp.load_hardware(CFG["start"])
    capex_h100 = float(CFG["gpus"] * dp.capex_per_chip(start))
    results = dict(gpus=CFG["gpus"], capex_budget_usd=capex_h100, models={})
    for name, spec in CFG["models"].items():
        model, base = _job(name, spec["seq_len"], spec["global_batch"])
        today = {d: best_mapping(dp.load_hardware(d), model, base)
                 for d in CFG["devices"]}  # fmt: skip
        designs = {}
        for label, objective, budgets in (
            ("max_tokens_per_s_at_h100_capex", "tokens_per_s",
             {**CFG["budgets"], "capex_usd": capex_h100}),
            ("max_tokens_per_usd", "tokens_per_usd", dict(CFG["budgets"])),
        ):  # fmt: skip
            r = dp.optimize(start, model, base, vary=vary, objective=objective,
                            budgets=budgets, search_mapping=True, steps=CFG["steps"],
                            starts=CFG["starts"])  # fmt: skip
            best = r["best"]
            hw = dp.load_hardware(CFG["start"])
            for p, v in best["hardware"].items():
                hw = dp.set_leaf(hw, p, jnp.asarray(v))
            designs[label] = dict(
                objective=objective,
                budgets=budgets,
                hardware=best["hardware"],
                mapping=best["mapping"],
                value=best["value"],
                binding_budgets=best["binding_budgets"],
                bounds_hit=best["bounds_hit"],
                binding_resource=best["binding_resource"],
                random_search_value=r["baseline"]["value"],
                evaluations=r["evaluations"],
                seconds=r["seconds"],
                metrics=best_mapping(hw, model, base),
                die_area_mm2=float(dp.die_area(hw) * 1e6),
                tdp_w=float(dp.chip_tdp(hw)),
                chip_price_usd=float(dp.chip_price(hw)),
            )
        results["models"][name] = dict(today=today, codesign=designs)
        print(
            json.dumps({name: {k: v.get("tokens_per_usd") for k, v in today.items()}})
        )
        for k, d in designs.items():
            print(
                name, k, json.dumps(d["hardware"]), d["metrics"].get("tokens_per_usd")
            )
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    plot(results)


def plot(results):
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4))
    for ax, name in zip(np.atleast_1d(axes), models, strict=True):
        r = results["models"][name]
        labels, vals = [], []
        for d, m in r["today"].items():
            labels.append(d)
            vals.append(m.get("tokens_per_usd", 0.0) if m["feasible"] else 0.0)
        for k, d in r["codesign"].items():
            labels.append("co-design:\n" + k.replace("_", " "))
            vals.append(d["metrics"].get("tokens_per_usd", 0.0))
        colors = ["tab:gray"] * len(r["today"]) + ["tab:blue"] * len(r["codesign"])
        ax.barh(labels, vals, color=colors)
        ax.set_xlabel("training tokens per $ (TCO)")
        ax.set_title(f"{name} on {results['gpus']} chips")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(HERE / "tokens_per_usd.png", dpi=120)
    plt.close(fig)

    start = dp.load_hardware(CFG["start"])
    paths = list(CFG["vary"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / (2 * len(models))
    k = 0
    for name in models:
        for label, d in results["models"][name]["codesign"].items():
            ratio = [d["hardware"][p] / float(dp.get_leaf(start, p)) for p in paths]
            ax.bar(np.arange(len(paths)) + k * width, ratio, width,
                   label=f"{name}: {label.replace('_', ' ')}")  # fmt: skip
            k += 1
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(paths)) + 0.4 - width / 2, paths, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("co-designed / H100")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "designs.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
