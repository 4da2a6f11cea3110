"""The command-line contract: keys, exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest

from diffperf.cli import main

KEYS = {
    "step_time_s",
    "tokens_per_s_per_gpu",
    "model_tflops_per_gpu",
    "mfu",
    "memory_per_gpu_bytes",
    "feasible",
    "breakdown",
}


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_json_contract(capsys):
    rc, out, err = run(
        capsys,
        "train",
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
        "--vpp",
        "6",
        "--global-batch",
        "2048",
        "--recompute",
        "selective",
        "--json",
    )
    assert rc == 0, err
    data = json.loads(out)
    assert KEYS <= set(data)
    assert (
        abs(sum(data["breakdown"].values()) - data["step_time_s"])
        < 1e-9 * data["step_time_s"]
    )
    assert 0 < data["mfu"] < 1 and isinstance(data["feasible"], bool)
    assert data["mapping"]["dp"] == 16


def test_train_text_output(capsys):
    rc, out, _ = run(
        capsys,
        "train",
        "--hardware",
        "h100_sxm",
        "--model",
        "llama3_8b",
        "--gpus",
        "8",
        "--global-batch",
        "64",
        "--seq-len",
        "8192",
    )
    assert rc == 0 and "tokens/s/GPU" in out and "matmul" in out


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (
            ["--hardware", "h100_sxn", "--model", "gpt3_175b", "--gpus", "8"],
            "did you mean h100_sxm",
        ),
        (
            [
                "--hardware",
                "h100_sxm",
                "--model",
                "llama3_70b",
                "--gpus",
                "6",
                "--tp",
                "3",
                "--dp",
                "2",
            ],
            "--tp=3 must divide",
        ),
        (
            [
                "--hardware",
                "h100_sxm",
                "--model",
                "llama3_70b",
                "--gpus",
                "10",
                "--tp",
                "8",
                "--dp",
                "1",
            ],
            "--gpus=10 must equal tp·pp·dp·cp=8",
        ),
        (
            ["--hardware", "h100_sxm", "--model", "llama3_70b", "--gpus", "0"],
            "--gpus=0 must be >= 1",
        ),
        (
            [
                "--hardware",
                "a100_sxm4_80gb",
                "--model",
                "llama3_8b",
                "--gpus",
                "8",
                "--dtype",
                "fp8",
            ],
            "no fp8 tensor throughput",
        ),
        (
            [
                "--hardware",
                "h100_sxm",
                "--model",
                "llama3_8b",
                "--gpus",
                "8",
                "--recompute",
                "some",
            ],
            "invalid choice",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, pattern):
    rc, out, err = run(capsys, "train", *argv)
    assert rc == 2
    assert pattern in err and err.count("\n") == 1 and "Traceback" not in err


def test_negative_bandwidth_file_exits_2(capsys, tmp_path):
    from .test_specs import _h100_text

    p = tmp_path / "bad.toml"
    p.write_text(_h100_text().replace("bandwidth = ", "bandwidth = -", 1))
    rc, _, err = run(
        capsys, "train", "--hardware", str(p), "--model", "llama3_8b", "--gpus", "8"
    )
    assert rc == 2 and "must be > 0" in err


def test_validate_malformed_csv_exits_2(capsys, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("gpu,model,num_gpus,measured_tokens_per_s_per_gpu\nH100,x\n")
    rc, _, err = run(capsys, "validate", "--data", str(p))
    assert rc == 2 and "line 2" in err
    rc, _, err = run(capsys, "validate", "--data", str(tmp_path / "missing.csv"))
    assert rc == 2 and "cannot read" in err


def test_console_script_is_installed():
    proc = subprocess.run(
        [sys.executable, "-m", "diffperf.cli", "list", "hardware", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "h100_sxm" in json.loads(proc.stdout)["hardware"]
