"""Demo: a GPT-3 175B training step on DGX H100s, its breakdown and its sensitivities.

Run: `make demo` (or `python experiments/demo_gpt3_175b_dgx_h100/run.py`).
Writes results.json next to this file: the step's figures and breakdown, every
hardware elasticity, and how long the sensitivity analysis took (compile included);
BENCHMARKS.md's demo line is generated from it (`make report`).
"""

import json
import os
import time
import tomllib
from pathlib import Path

import equinox as eqx
import jax

import diffperf as dp

HERE = Path(__file__).resolve().parent


def train_result(cluster, model, mapping) -> dict:
    """Step time, throughput, MFU, memory and breakdown of the job (Exact model)."""
    b = dp.train_step(cluster, model, mapping, relax=dp.Exact())
    per_gpu = float(b.model_flops_per_s_per_gpu)
    return {
        "step_time_s": float(b.total),
        "tokens_per_s_per_gpu": float(b.tokens_per_s_per_gpu),
        "model_tflops_per_gpu": per_gpu / 1e12,
        "mfu": per_gpu / float(cluster.chip.peak_flops(model.precision.math)),
        "memory_per_gpu_bytes": float(b.memory_per_gpu),
        "feasible": bool(b.feasible),
        "breakdown": {k: float(v) for k, v in b.terms().items()},
    }


def main():
    cfg = tomllib.loads((HERE / "config.toml").read_text())
    cluster = dp.load_hardware(cfg["hardware"])
    model = dp.load_workload(cfg["model"])
    model = eqx.tree_at(
        lambda m: m.precision, model, dp.Precision.training(cfg["dtype"])
    )
    mapping = dp.Parallelism(**cfg["mapping"])
    dp.check_mapping(model, mapping)

    result = train_result(cluster, model, mapping)
    gpus = int(mapping.chips)
    print(
        f"{cfg['model']} on {gpus} GPUs of {cfg['hardware']} ({cfg['dtype']}), "
        f"mapping tp={cfg['mapping']['tp']} pp={cfg['mapping']['pp']} "
        f"dp={cfg['mapping']['dp']} vpp={cfg['mapping']['vpp']}"
    )
    print(
        f"  step time {result['step_time_s']:.3f} s, "
        f"{result['tokens_per_s_per_gpu']:.0f} tokens/s/GPU, "
        f"{result['model_tflops_per_gpu']:.0f} model TFLOP/s/GPU "
        f"(MFU {result['mfu']:.1%}), "
        f"memory {result['memory_per_gpu_bytes'] / 1e9:.1f} GB/GPU "
        f"({'fits' if result['feasible'] else 'does NOT fit'})"
    )
    print("\n  breakdown of the step (exposed seconds):")
    total = result["step_time_s"]
    for name, sec in sorted(result["breakdown"].items(), key=lambda kv: -kv[1]):
        if sec > 0:
            bar = "█" * round(40 * sec / total)
            print(f"    {name:<16}{sec:9.4f} s {sec / total:6.1%} {bar}")

    relax = dp.Smooth(cfg["sharpness"])
    t0 = time.perf_counter()
    el = dp.elasticities(
        lambda c: dp.train_step(c, model, mapping, relax=relax).total, cluster
    )
    seconds = time.perf_counter() - t0
    ranked = sorted(el.items(), key=lambda kv: -abs(kv[1]))[: cfg["top"]]
    print(
        f"\n  top hardware sensitivities, d log(step time) / d log(parameter) "
        f"({len(el)} leaves, one backward pass, {seconds:.2f} s incl. compile):"
    )
    for path, e in ranked:
        print(f"    {path:<32}{e:+.3f}   (+10% → {100 * (1.1**e - 1):+.2f}% step time)")
    out = dict(
        config=cfg,
        result=result,
        elasticities=el,
        sensitivity=dict(leaves=len(el), seconds_incl_compile=seconds),
        device=str(jax.devices()[0]),
        machine=dict(cpus=os.cpu_count(), jax=jax.__version__),
    )
    (HERE / "results.json").write_text(json.dumps(out, indent=1, sort_keys=True))
    print(f"\n  wrote {HERE / 'results.json'}")


if __name__ == "__main__":
    main()
