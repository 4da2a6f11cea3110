"""H100 -> GB200 NVL72 retrodiction: a 72-GPU NVLink domain as a priced design choice.

Starts from the H100 SXM5 system and gives the optimizer what the GB200 designers had:
GB200's process and price structure (its anchored [cost] leaves), 1200 W per GPU, a
reticle per die, GB200 NVL72's capex per GPU as the cost envelope, HBM3e, NVLink5 and
fp4, and three 2024 workloads: Llama-3.1-405B training on 1024 chips, Llama-3-70B
serving on an 8-GPU tensor-parallel replica and DeepSeek-V3 serving with wide expert
parallelism (EP 64 over 64 attention-DP ranks). `dp.codesign` enumerates dies and HBM
stacks and optimizes peak FLOP/s, L2 SRAM and scale-up bandwidth by gradient; then, at
each job's best package, the NVLink domain size (8, 36 or 72 GPUs), which
`dp.apply_design` prices with `dp.domain_cost` (copper spine, switch trays, liquid
cooling). `dp.robust_design` picks the best design for the equal-share mix. Each
answer is compared with GB200 NVL72 leaf by leaf.

The study is `dp.retrodict`, run by `dp.retrodict_study`; this file declares its
chips, envelope, workloads and variables (with config.toml).

Run: `.venv/bin/python experiments/retrodict_h100_gb200_nvl72/run.py` (about 10
minutes on 2 busy cores). Writes results.json and balance.png next to this file.
"""

import tomllib
from pathlib import Path

import diffperf as dp

HERE = Path(__file__).resolve().parent
CFG = tomllib.loads((HERE / "config.toml").read_text())


def jobs() -> dict:
    """The workloads of config.toml: training, dense serving and MoE serving."""
    t, s, e = CFG["train"], CFG["serve"], CFG["serve_moe"]
    train = dp.Parallelism(
        tp=t["tp"], pp=t["pp"], dp=t["gpus"] // (t["tp"] * t["pp"]),
        microbatch=t["microbatch"], vpp=t["vpp"], global_batch=t["global_batch"],
        seq_len=t["seq_len"], recompute="selective",
    )  # fmt: skip
    serve = dp.Serving(tp=s["tp"], batch=s["batch"], input_len=s["input_len"],
                       output_len=s["output_len"])  # fmt: skip
    moe = dp.Serving(ep=e["ep"], attention_dp=e["attention_dp"], batch=e["batch"],
                     input_len=e["input_len"], output_len=e["output_len"])  # fmt: skip
    return {
        "train": dp.Job(dp.load_workload(t["model"]), train, t["objective"],
                        precision=dp.narrowest_precision(t["formats"], training=True)),
        "serve": dp.Job(dp.load_workload(s["model"]), serve, s["objective"],
                        precision=dp.narrowest_precision(s["formats"], training=False)),
        "serve_moe": dp.Job(dp.load_workload(e["model"]), moe, e["objective"],
                            precision=dp.narrowest_precision(e["formats"],
                                                             training=False)),
    }  # fmt: skip


def main():
    r = dp.retrodict_study(
        CFG,
        jobs(),
        chips={
            "train": CFG["train"]["gpus"],
            "serve": CFG["serve"]["tp"],
            "serve_moe": CFG["serve_moe"]["attention_dp"],
        },
        out_dir=HERE,
    )
    print(f"{r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
