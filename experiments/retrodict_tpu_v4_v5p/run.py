"""TPU v4 -> v5p retrodiction: given what designers knew in 2023, what would we build?

Starts from the TPU v4 pod and gives the optimizer what the v5p designers had: v5p's
process and price structure (its anchored [cost] leaves; v5p's die area, TDP and price
are estimates), its power and a reticle per die, its capex per chip as the cost
envelope, HBM2e/HBM3, fp8 as an optional format, one or two dies, and the 2023
workloads (GPT-3 175B training on 1024 chips, Llama-2-70B serving on one 8-chip
replica). `dp.codesign` enumerates the discrete choices and optimizes peak FLOP/s,
on-chip SRAM and ICI bandwidth (every torus axis's links follow it) by gradient for
each combination; `dp.robust_design` then picks the best design for the 50/50 mix.
Each answer is compared with v5p leaf by leaf.

The study is `dp.retrodict`, run by `dp.retrodict_study`; this file declares its
chips, envelope, workloads and variables (with config.toml).

Run: `.venv/bin/python experiments/retrodict_tpu_v4_v5p/run.py` (about 5 minutes on
2 cores). Writes results.json and balance.png next to this file.
"""

import tomllib
from pathlib import Path

import diffperf as dp

HERE = Path(__file__).resolve().parent
CFG = tomllib.loads((HERE / "config.toml").read_text())


def jobs() -> dict:
    """The workloads of config.toml: one training job and one serving replica."""
    t, s = CFG["train"], CFG["serve"]
    train = dp.Parallelism(
        tp=t["tp"], pp=t["pp"], dp=t["gpus"] // (t["tp"] * t["pp"]),
        microbatch=t["microbatch"], vpp=t["vpp"], global_batch=t["global_batch"],
        seq_len=t["seq_len"], recompute="selective",
    )  # fmt: skip
    serve = dp.Serving(tp=s["tp"], batch=s["batch"], input_len=s["input_len"],
                       output_len=s["output_len"])  # fmt: skip
    return {
        "train": dp.Job(dp.load_workload(t["model"]), train, t["objective"],
                        precision=dp.narrowest_precision(t["formats"], training=True)),
        "serve": dp.Job(dp.load_workload(s["model"]), serve, s["objective"],
                        precision=dp.narrowest_precision(s["formats"], training=False)),
    }  # fmt: skip


def main():
    r = dp.retrodict_study(
        CFG,
        jobs(),
        chips={"train": CFG["train"]["gpus"], "serve": CFG["serve"]["tp"]},
        out_dir=HERE,
    )
    print(f"{r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
