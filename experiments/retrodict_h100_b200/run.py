"""H100 -> B200 retrodiction: given what designers knew in 2024, what would we build?

Starts from the H100 SXM5 system and gives the optimizer what the B200 designers had:
B200's process and price structure (its anchored [cost] leaves), B200's power
(1000 W) and a reticle per die (858 mm²), B200's capex per chip as the cost envelope,
HBM3/HBM3e, NVLink5-class SerDes, fp4 as an optional format, one or two dies, and the
2024 workloads (Llama-3.1-405B training on 1024 chips, Llama-3-70B serving on one
8-GPU replica). `dp.codesign` enumerates the discrete choices (dies, HBM generation
and stacks, fp4) and optimizes peak FLOP/s, L2 SRAM and scale-up bandwidth by gradient
for each combination; `dp.robust_design` then picks the best design for the 50/50
training + serving mix among the per-job optima, nominally and on samples of the
efficiency leaves. Each answer is compared with B200 leaf by leaf.

The study is `dp.retrodict`, run by `dp.retrodict_study`; this file declares its
chips, envelope, workloads and variables (with config.toml).

Run: `.venv/bin/python experiments/retrodict_h100_b200/run.py` (about 5 minutes on
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
