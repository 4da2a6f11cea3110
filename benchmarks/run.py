"""Evaluation-speed benchmarks of the training-step model. Prints one JSON object.

    python benchmarks/run.py [--configs 1000000] [--chunk 65536]

Measures, on the default JAX device:
  - eager: one `train_step` call without jit (what a notebook user sees first)
  - jit_single: one jitted call after compilation, and the compile time
  - vmap_sweep: configurations per second of a jitted, vmapped sweep over hardware
    leaves (HBM bandwidth × peak FLOP/s × NIC bandwidth × NVLink domain size), chunked,
    and of one that also varies the mapping (tp, pp, dp, microbatch)
  - grad: one reverse-mode pass over all hardware leaves (the sensitivity analysis)
  - configs_per_s_batch_N: one vmapped call of N configurations (1e6: ten of 1e5)
  - grad_over_eval: cost of a gradient over the cost of an evaluation
  - speedup_vs_llm_analysis: our vmapped configs/s over llm-analysis's (PyPI), if
    installed, on the same kind of training configurations
"""

import argparse
import json
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import diffperf as dp


def _timeit(fn, *, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _llm_analysis_ratio(our_configs_per_s: float, n: int = 200) -> dict:
    """Time llm-analysis's `train` on n training configurations (Llama-2-7B, A100)."""
    try:
        import logging

        from llm_analysis.analysis import train
    except ImportError:
        return {"llm_analysis": "not installed (pip install llm-analysis)"}
    logging.disable(logging.CRITICAL)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for tp in rng.choice([1, 2, 4, 8], n):
        train(model_name="NousResearch_Llama-2-7b-hf", gpu_name="a100-sxm-80gb",
              dtype_name="w16a16e16", total_num_gpus=64, tp_size=int(tp), pp_size=1,
              global_batch_size=512, batch_size_per_gpu=1, seq_len=4096,
              flops_efficiency=0.5, hbm_memory_efficiency=0.9, log_level="ERROR",
              total_num_tokens=512 * 4096)  # fmt: skip
    theirs = n / (time.perf_counter() - t0)
    return {"llm_analysis_configs_per_s": theirs,
            "speedup_vs_llm_analysis": our_configs_per_s / theirs}  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=65_536)
    args = ap.parse_args(argv)

    cluster = dp.load_hardware("dgx_h100")
    model = dp.load_workload("llama3_70b")
    mapping = dp.Parallelism(
        tp=4, pp=8, dp=32, vpp=5, microbatch=1, global_batch=1024, seq_len=8192
    )
    out = {
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "workload": "llama3_70b on dgx_h100, tp4 pp8 dp32 vpp5",
    }

    out["eager_s"] = _timeit(
        lambda: dp.train_step(cluster, model, mapping).total, repeat=3
    )

    step = eqx.filter_jit(lambda c: dp.train_step(c, model, mapping).total)
    t0 = time.perf_counter()
    jax.block_until_ready(step(cluster))
    out["jit_compile_s"] = time.perf_counter() - t0
    out["jit_single_s"] = _timeit(lambda: step(cluster), repeat=50)

    def one(x):
        bw, fl, nic, size = x
        c = eqx.tree_at(
            lambda c: (
                c.chip.hbm_bandwidth,
                c.chip.flops_bf16,
                c.scale_out.bandwidth,
                c.scale_up.size,
            ),
            cluster,
            (bw, fl, nic, size),
        )
        return dp.train_step(c, model, mapping).total

    sweep = jax.jit(jax.vmap(one))
    rng = np.random.default_rng(0)
    lo = np.array([1e12, 4e14, 12.5e9, 4.0])
    hi = np.array([8e12, 4e15, 200e9, 72.0])
    n = args.configs
    xs = lo + (hi - lo) * rng.random((n, 4))
    chunk = min(args.chunk, n)
    first = jnp.asarray(xs[:chunk])
    t0 = time.perf_counter()
    jax.block_until_ready(sweep(first))
    out["vmap_compile_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = []
    for i in range(0, n - n % chunk, chunk):
        results.append(sweep(jnp.asarray(xs[i : i + chunk])))
    jax.block_until_ready(results)
    dt = time.perf_counter() - t0
    evaluated = len(results) * chunk
    out |= {
        "vmap_configs": evaluated,
        "vmap_chunk": chunk,
        "vmap_s": dt,
        "vmap_configs_per_s": evaluated / dt,
    }

    # Sweep 2: hardware leaves and the mapping (tp, pp, dp, microbatch) vary together.
    def two(x):
        bw, fl, nic, size, tp, pp, dp_, mb = x
        c = eqx.tree_at(
            lambda c: (c.chip.hbm_bandwidth, c.chip.flops_bf16, c.scale_out.bandwidth,
                       c.scale_up.size),
            cluster, (bw, fl, nic, size),
        )  # fmt: skip
        mp = eqx.tree_at(
            lambda m: (m.tp, m.pp, m.dp, m.microbatch), mapping, (tp, pp, dp_, mb)
        )
        return dp.train_step(c, model, mp).total

    sweep2 = jax.jit(jax.vmap(two))
    choice = rng.choice
    maps = np.stack(
        [choice([1.0, 2.0, 4.0, 8.0], n), choice([1.0, 2.0, 4.0, 8.0], n),
         choice([8.0, 16.0, 32.0, 64.0], n), choice([1.0, 2.0], n)],
        axis=1,
    )  # fmt: skip
    xs2 = np.concatenate([xs, maps], axis=1)
    jax.block_until_ready(sweep2(jnp.asarray(xs2[:chunk])))
    t0 = time.perf_counter()
    results = [
        sweep2(jnp.asarray(xs2[i : i + chunk])) for i in range(0, n - n % chunk, chunk)
    ]
    jax.block_until_ready(results)
    dt = time.perf_counter() - t0
    out["vmap_mapping_configs_per_s"] = len(results) * chunk / dt

    # (a) configurations/s at one vmapped call of each batch size (1e6: chunks of 1e5)
    for size in (1, 1_000, 100_000, 1_000_000):
        per_call = min(size, 100_000)
        x = jnp.asarray(xs2[:per_call])
        jax.block_until_ready(sweep2(x))  # compile this shape
        t0 = time.perf_counter()
        res = [sweep2(x) for _ in range(max(1, size // per_call))]
        jax.block_until_ready(res)
        out[f"configs_per_s_batch_{size}"] = size / (time.perf_counter() - t0)

    # (b) gradient cost / evaluation cost, one configuration and a vmapped batch
    grad_one = jax.jit(jax.grad(lambda x: two(x)))
    x1 = jnp.asarray(xs2[0])
    one_jit = jax.jit(two)
    jax.block_until_ready((grad_one(x1), one_jit(x1)))
    t_eval = _timeit(lambda: one_jit(x1), repeat=50)
    t_grad = _timeit(lambda: grad_one(x1), repeat=50)
    batch_grad = jax.jit(jax.vmap(jax.grad(two)))
    xb = jnp.asarray(xs2[:10_000])
    jax.block_until_ready(batch_grad(xb))
    t_beval = _timeit(lambda: sweep2(xb), repeat=5)
    t_bgrad = _timeit(lambda: batch_grad(xb), repeat=5)
    out["grad_over_eval_single"] = t_grad / t_eval
    out["grad_over_eval_batch_1e4"] = t_bgrad / t_beval

    # (d) the peer a user would pick today: llm-analysis (if installed), same configs
    out |= _llm_analysis_ratio(out["vmap_mapping_configs_per_s"])

    smooth = eqx.filter_jit(
        eqx.filter_grad(
            lambda c: dp.train_step(c, model, mapping, relax=dp.Smooth()).total
        )
    )
    jax.block_until_ready(smooth(cluster))
    out["grad_all_hardware_leaves_s"] = _timeit(lambda: smooth(cluster), repeat=20)
    leaves = jax.tree_util.tree_leaves(eqx.filter(cluster, eqx.is_inexact_array))
    out["hardware_leaves"] = len(leaves)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
