"""Evaluation speed of the training-step model against llm-analysis, on one job.

    python benchmarks/run.py [--configs 200000] [--repeats 7] [--sample 1000]
                             [--out benchmarks/results_cpu.json]

The job (the same for both tools, in the same run): GPT-3 175B trained on A100 SXM4
80GB (diffperf: `dgx_a100`; llm-analysis 0.2.2: `megatron-lm-175b` on
`a100-sxm-80gb`), global batch 1536 of 2048 tokens, bf16, with tp ∈ {1, 2, 4, 8},
pp ∈ {1, 2, 4, 8, 16}, dp ∈ {1, ..., 64}, microbatch ∈ {1, 2, 4} (every combination
that fits the model) varying together with a hardware scale s, log-uniform in
[0.5, 2], that multiplies peak bf16 FLOP/s, HBM bandwidth and the NVLink and
InfiniBand bandwidths. Each configuration gives a step time and the memory per GPU.

Measured on the default JAX device, float32, Exact model:
  - batched: `configs` configurations in one `jax.jit(jax.vmap(...))` call, repeated
    `repeats` times (median, min, max, quartiles of wall time; CPU time too, since
    XLA may use several threads);
  - llm-analysis: its own per-configuration loop (`LLMAnalysis(...).training(...)`,
    configs built once per configuration as its `train()` does) timed on `repeats`
    disjoint samples of `sample` of the same configurations, extrapolated per
    configuration to the batched run's size;
  - the two ratios: batched configs/s over llm-analysis configs/s, and one jitted
    diffperf call against one llm-analysis call;
  - gradient cost / evaluation cost (d step time / d the 8 inputs: 4 hardware
    leaves and tp, pp, dp, microbatch) for one configuration and for a vmapped batch
    of 10,000, as the median of `repeats` interleaved pairs with their spread;
  - eager call, compile times, configs/s per batch size, and the gradient of the
    step time w.r.t. every hardware leaf (Smooth), as in the sensitivity analysis.
Prints and writes one JSON object.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from machine import environment

import diffperf as dp

HERE = Path(__file__).resolve().parent
HARDWARE, MODEL = "dgx_a100", "gpt3_175b"
PEER = dict(model="megatron-lm-175b", gpu="a100-sxm-80gb", dtype="w16a16e16")
GLOBAL_BATCH, SEQ = 1536, 2048
DEGREES = dict(
    tp=(1, 2, 4, 8), pp=(1, 2, 4, 8, 16), dp=(1, 2, 4, 8, 16, 32, 64), mb=(1, 2, 4)
)
SCALED = (
    "chip.flops_bf16",
    "chip.hbm_bandwidth",
    "scale_up.bandwidth",
    "scale_out.bandwidth",
)
"""Hardware leaves multiplied by the scale s (their llm-analysis counterparts:
peak_fp16_TFLOPS, hbm_bandwidth, intra_node_bandwidth, inter_node_bandwidth)."""
SCALE = (0.5, 2.0)
GRAD_BATCH = 10_000


def stats(values) -> dict:
    """Median, min, max and quartiles of repeated measurements."""
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return dict(
        median=float(med), min=float(v.min()), max=float(v.max()), q1=float(q1),
        q3=float(q3), n=len(v),
    )  # fmt: skip


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of the process) of `repeats` calls of fn."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def job():
    """(cluster, model, base mapping, the valid (tp, pp, dp, mb) combinations)."""
    cluster = dp.load_hardware(HARDWARE)
    model = dp.load_workload(MODEL)
    base = dp.Parallelism(
        tp=8, pp=8, dp=8, microbatch=1, global_batch=GLOBAL_BATCH, seq_len=SEQ
    )
    combos, invalid = [], 0
    for tp in DEGREES["tp"]:
        for pp in DEGREES["pp"]:
            for d in DEGREES["dp"]:
                for mb in DEGREES["mb"]:
                    m = dp.Parallelism(
                        tp=tp, pp=pp, dp=d, microbatch=mb,
                        global_batch=GLOBAL_BATCH, seq_len=SEQ,
                    )  # fmt: skip
                    try:
                        dp.check_mapping(model, m)
                    except ValueError:
                        invalid += 1
                        continue
                    combos.append((tp, pp, d, mb))
    return cluster, model, base, np.asarray(combos, dtype=float), invalid


def configurations(cluster, combos, n: int, seed: int = 0) -> np.ndarray:
    """[n, 9]: the 4 scaled hardware leaves, tp, pp, dp, microbatch, and s."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.uniform(np.log(SCALE[0]), np.log(SCALE[1]), n))
    nominal = np.array([float(dp.get_leaf(cluster, p)) for p in SCALED])
    maps = combos[rng.integers(0, len(combos), n)]
    return np.concatenate([nominal * s[:, None], maps, s[:, None]], axis=1)


def model_fn(cluster, model, base, relax=None):
    """x (the first 8 columns of a configuration) → (step time [s], memory [B],
    feasible)."""
    relax = relax or dp.Exact()

    def f(x):
        c = cluster
        for i, path in enumerate(SCALED):
            c = dp.set_leaf(c, path, x[i])
        m = base
        for i, field in enumerate(("tp", "pp", "dp", "microbatch")):
            m = dp.set_leaf(m, field, x[4 + i])
        b = dp.train_step(c, model, m, relax=relax)
        return b.total, b.memory_per_gpu, b.feasible

    return f


def llm_analysis_loop(rows: np.ndarray) -> dict:
    """Time llm-analysis on the configurations `rows` (its own loop, one by one)."""
    from llm_analysis.analysis import ActivationRecomputation, LLMAnalysis
    from llm_analysis.config import (
        ParallelismConfig,
        get_dtype_config_by_name,
        get_gpu_config_by_name,
        get_model_config_by_name,
    )

    logging.disable(logging.CRITICAL)
    mc = get_model_config_by_name(PEER["model"])
    gc = get_gpu_config_by_name(PEER["gpu"])
    dc = get_dtype_config_by_name(PEER["dtype"])
    step, memory, failed = [], [], 0
    c0, t0 = time.process_time(), time.perf_counter()
    for *_, tp, pp, d, mb, s in rows:
        gpu = dataclasses.replace(
            gc,
            peak_fp16_TFLOPS=gc.peak_fp16_TFLOPS * s,
            hbm_bandwidth_in_GB_per_sec=gc.hbm_bandwidth_in_GB_per_sec * s,
            intra_node_bandwidth_in_GB_per_sec=gc.intra_node_bandwidth_in_GB_per_sec
            * s,
            inter_node_bandwidth_in_GB_per_sec=gc.inter_node_bandwidth_in_GB_per_sec
            * s,
        )
        par = ParallelismConfig(
            tp_size=int(tp), pp_size=int(pp), dp_size=int(d), sp_size=int(tp)
        )
        try:
            r = LLMAnalysis(mc, gpu, dc, par).training(
                batch_size_per_gpu=int(mb), global_batch_size=GLOBAL_BATCH,
                seq_len=SEQ, activation_recomputation=ActivationRecomputation.NONE,
            )  # fmt: skip
            step.append(r["latency_per_iter"])
            memory.append(r["(weight+op_state+grad+act)_memory_per_gpu"])
        except Exception:  # noqa: BLE001 - counted and reported, never hidden
            failed += 1
            step.append(np.nan)
            memory.append(np.nan)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(seconds=seconds, cpu=cpu, step=step, memory=memory, failed=failed)


def _spearman(a, b) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    ra = np.argsort(np.argsort(np.asarray(a)[ok]))
    rb = np.argsort(np.argsort(np.asarray(b)[ok]))
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(xs, batched_wall, batched_cpu, single_s, args, ours_step) -> dict:
    """llm-analysis on `repeats` disjoint samples of the configurations, and ratios."""
    try:
        version = importlib.metadata.version("llm-analysis")
    except importlib.metadata.PackageNotFoundError:
        return {"llm_analysis": "not installed (pip install -e '.[bench]')"}
    k, n = args.sample, len(xs)
    per_config, cpu_per_config, failed, steps, ours = [], [], 0, [], []
    for r in range(args.repeats):
        rows = xs[r * k : (r + 1) * k]
        out = llm_analysis_loop(rows)
        per_config.append(out["seconds"] / len(rows))
        cpu_per_config.append(out["cpu"] / len(rows))
        failed += out["failed"]
        steps += out["step"]
        ours += list(ours_step[r * k : (r + 1) * k])
    rate = [1.0 / t for t in per_config]
    theirs_per_s = 1.0 / float(np.median(per_config))
    ours_per_s = n / float(np.median(batched_wall))
    return dict(
        llm_analysis_version=version,
        llm_analysis_sample=k,
        llm_analysis_samples=args.repeats,
        llm_analysis_failed=failed,
        llm_analysis_configs_per_s=stats(rate),
        llm_analysis_call_s=stats(per_config),
        llm_analysis_extrapolated_s=n * float(np.median(per_config)),
        batched_over_llm_analysis=ours_per_s / theirs_per_s,
        llm_analysis_configs_per_cpu_s=1.0 / float(np.median(cpu_per_config)),
        batched_over_llm_analysis_cpu=(n / float(np.median(batched_cpu)))
        * float(np.median(cpu_per_config)),
        llm_analysis_call_over_jitted_call=float(np.median(per_config)) / single_s,
        step_time_rank_correlation=_spearman(np.asarray(ours), np.asarray(steps)),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sample", type=int, default=1000, help="llm-analysis sample")
    ap.add_argument("--out", help="JSON path (default benchmarks/results_<dev>.json)")
    args = ap.parse_args(argv)
    if args.repeats < 7 or args.configs < GRAD_BATCH or args.sample < 1:
        raise SystemExit("--repeats must be ≥ 7, --configs ≥ 10000, --sample ≥ 1")
    device = jax.devices()[0]
    out = dict(
        **environment(),
        diffperf=dp.__version__,
        job=dict(
            hardware=HARDWARE,
            model=MODEL,
            peer=PEER,
            global_batch=GLOBAL_BATCH,
            seq_len=SEQ,
            degrees=DEGREES,
            scaled=list(SCALED),
            scale=list(SCALE),
        ),  # fmt: skip
    )
    cluster, model, base, combos, invalid = job()
    out["job"] |= dict(mappings=len(combos), invalid_mappings=invalid)
    xs = configurations(cluster, combos, args.configs)
    f = model_fn(cluster, model, base)

    # one configuration: eager, compile, jitted call
    x1 = jnp.asarray(xs[0, :8], dtype=float)
    out["eager_s"] = stats(timed(lambda: f(x1), 3)[0])
    one = jax.jit(f)
    t0 = time.perf_counter()
    jax.block_until_ready(one(x1))
    out["jit_compile_s"] = time.perf_counter() - t0
    calls = 200  # each call waits for its result, as a one-at-a-time loop must
    per_call = [
        w / calls
        for w in timed(
            lambda: [jax.block_until_ready(one(x1)) for _ in range(calls)],
            args.repeats,
        )[0]
    ]
    out["jitted_call_s"] = stats(per_call)

    # the batched call: all configurations at once
    batched = jax.jit(jax.vmap(f))
    x = jnp.asarray(xs[:, :8], dtype=float)
    t0 = time.perf_counter()
    step, _, feasible = jax.block_until_ready(batched(x))
    out["vmap_compile_s"] = time.perf_counter() - t0
    wall, cpu = timed(lambda: batched(x), args.repeats)
    n = len(xs)
    out["batched"] = dict(
        configs=n,
        wall_s=stats(wall),
        cpu_s=stats(cpu),
        configs_per_s=n / float(np.median(wall)),
        configs_per_cpu_s=n / float(np.median(cpu)),
        feasible_share=float(np.mean(np.asarray(feasible))),
    )
    # configs/s at other batch sizes (one vmapped call each)
    out["configs_per_s_by_batch"] = {}
    for size in (1, 1_000, 100_000):
        xb = x[:size]
        jax.block_until_ready(batched(xb))
        w = timed(lambda xb=xb: batched(xb), args.repeats)[0]
        out["configs_per_s_by_batch"][str(size)] = size / float(np.median(w))
    out["configs_per_s_by_batch"][str(n)] = out["batched"]["configs_per_s"]

    # the peer, on the same configurations
    out |= compare(
        xs, wall, cpu, out["jitted_call_s"]["median"], args, np.asarray(step)
    )

    # gradient cost / evaluation cost, interleaved pairs
    total = lambda v: f(v)[0]  # noqa: E731
    g1 = jax.jit(jax.grad(total))
    e1 = jax.jit(total)
    jax.block_until_ready((g1(x1), e1(x1)))
    calls = 100
    ratio1 = []
    for _ in range(args.repeats):
        te = timed(lambda: [jax.block_until_ready(e1(x1)) for _ in range(calls)], 1)
        tg = timed(lambda: [jax.block_until_ready(g1(x1)) for _ in range(calls)], 1)
        te, tg = te[0][0], tg[0][0]
        ratio1.append(tg / te)
    gb = jax.jit(jax.vmap(jax.grad(total)))
    eb = jax.jit(jax.vmap(total))
    xg = x[:GRAD_BATCH]
    jax.block_until_ready((gb(xg), eb(xg)))
    ratio_b, ratio_cpu, te_b, tg_b = [], [], [], []
    calls = 20  # per timing, so that one preemption does not decide a repeat
    for _ in range(args.repeats):
        (we,), (ce,) = timed(lambda: [eb(xg) for _ in range(calls)], 1)
        (wg,), (cg,) = timed(lambda: [gb(xg) for _ in range(calls)], 1)
        te_b.append(we / calls)
        tg_b.append(wg / calls)
        ratio_b.append(wg / we)
        ratio_cpu.append(cg / ce)
    out["grad_over_eval_single"] = stats(ratio1)
    out["grad_over_eval_batch"] = stats(ratio_b) | dict(
        batch=GRAD_BATCH, eval_s=stats(te_b), grad_s=stats(tg_b)
    )
    out["grad_over_eval_batch_cpu"] = stats(ratio_cpu)

    # sensitivity: gradient of the step time w.r.t. every hardware leaf (Smooth)
    mapping = dp.Parallelism(
        tp=8, pp=8, dp=8, microbatch=1, global_batch=GLOBAL_BATCH, seq_len=SEQ
    )
    smooth = dp.Smooth()
    sens = eqx.filter_jit(
        eqx.filter_grad(lambda c: dp.train_step(c, model, mapping, relax=smooth).total)
    )
    t0 = time.perf_counter()
    jax.block_until_ready(sens(cluster))
    out["grad_all_hardware_leaves_compile_s"] = time.perf_counter() - t0
    out["grad_all_hardware_leaves_s"] = stats(timed(lambda: sens(cluster), 20)[0])
    out["hardware_leaves"] = len(dp.leaf_paths(cluster))
    out["load_average_end"] = list(os.getloadavg())

    path = Path(args.out or HERE / f"results_{device.platform}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
