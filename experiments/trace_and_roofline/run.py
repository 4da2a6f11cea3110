"""Timeline, breakdown bars and roofline of GPT-3 175B training and Llama-2-70B serving.

Runs the `diffperf trace` and `diffperf roofline` commands (the command line, as a
user would, through `python -m diffperf.cli`) and collects their --json summaries in
results.json. See README.md in this folder.
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = [
    "--hardware",
    "dgx_h100",
    "--model",
    "gpt3_175b",
    "--gpus",
    "1024",
    "--tp",
    "8",
    "--pp",
    "8",
    "--global-batch",
    "128",
    "--recompute",
    "selective",
]
INFER = [
    "--hardware",
    "dgx_h100",
    "--model",
    "llama2_70b",
    "--gpus",
    "8",
    "--tp",
    "8",
    "--batch",
    "8",
    "--input-len",
    "2048",
    "--output-len",
    "256",
]


def run(*argv) -> dict:
    cmd = [sys.executable, "-m", "diffperf.cli", *argv, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(
            f"diffperf {' '.join(argv)} failed ({done.returncode}): {done.stderr}"
        )
    return json.loads(done.stdout)


def rel(summary: dict) -> dict:
    """Paths relative to this folder (results.json must not name the checkout)."""
    return {
        k: (str(Path(v).relative_to(HERE)) if k in ("out", "png") else v)
        for k, v in summary.items()
    }


results = {
    "train": rel(
        run(
            "trace",
            "train",
            *TRAIN,
            "--out",
            str(HERE / "train_step.json"),
            "--png",
            str(HERE / "train_bars.png"),
            "--vs",
            "vpp=6",
            "--vs",
            "tp=4,pp=16",
            "--vs",
            "hardware=dgx_a100",
        )
    ),
    "infer": rel(
        run(
            "trace",
            "infer",
            *INFER,
            "--out",
            str(HERE / "serve_step.json"),
            "--png",
            str(HERE / "serve_bars.png"),
            "--vs",
            "batch=64",
        )
    ),
    "roofline": rel(run("roofline", *INFER, "--out", str(HERE / "roofline.png"))),
}
(HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
t, i = results["train"], results["infer"]
print(
    f"train: {t['step_time_s']:.4g} s per step, {t['n_events']} events, critical "
    f"path {t['critical_path_s']:.4g} s; serve: TTFT {1e3 * i['ttft_s']:.4g} ms, "
    f"TPOT {1e3 * i['tpot_s']:.4g} ms"
)
