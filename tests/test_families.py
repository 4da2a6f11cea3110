"""Architecture families and software-stack profiles: contracts and resolution."""

import tomllib
from pathlib import Path

import pytest

import diffperf as dp
from diffperf import io
from diffperf.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted((ROOT / "hardware" / "families").glob("*.toml"))
STACKS = sorted((ROOT / "hardware" / "stacks").glob("*.toml"))
DEVICES = sorted((ROOT / "hardware").glob("*.toml"))
STACK_KEYS = {(t, k) for t, keys in io.STACK_LEAVES.items() for k in keys}


def _toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_there_are_families_and_stacks():
    assert {p.stem for p in FAMILIES} >= {"ampere", "hopper", "blackwell", "tpu"}
    assert {p.stem for p in STACKS} >= {"megatron_core", "trtllm", "vllm", "maxtext"}
    assert dp.family_names() == [p.stem for p in FAMILIES]
    assert dp.stack_names() == [p.stem for p in STACKS]


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.stem)
def test_family_contract(path):
    data = _toml(path)
    meta = data["meta"]
    assert meta["schema"] == 1 and meta["source"] and meta["name"]
    for key in ("stack", "serve_stack"):
        if key in meta:
            assert meta[key] in dp.stack_names(), (key, meta[key])
    if "extends" in meta:
        assert meta["extends"] in dp.family_names()
    assert set(data) <= {"meta", "chip", "scale_up", "scale_out", "host"}
    for table, values in data.items():
        if table != "meta":
            for key in values:
                assert (table, key) not in STACK_KEYS, f"{table}.{key} is software"


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.stem)
def test_stack_contract(path):
    data = _toml(path)
    meta = data["meta"]
    assert meta["schema"] == 1 and meta["source"] and meta["name"]
    assert meta["kind"] in ("training", "serving")
    assert isinstance(meta["frameworks"], list)
    keys = {(t, k) for t, v in data.items() if t != "meta" for k in v}
    assert keys == STACK_KEYS  # a profile sets every software leaf
    for table, values in data.items():
        for key, value in values.items():
            if table != "meta":
                assert value > 0, (key, value)


@pytest.mark.parametrize("path", DEVICES, ids=lambda p: p.stem)
def test_devices_leave_software_to_stacks(path):
    data = _toml(path)
    for table, values in data.items():
        if isinstance(values, dict) and table != "meta":
            bad = [k for k in values if (table, k) in STACK_KEYS]
            assert not bad, f"{path.name} [{table}] sets stack leaves {bad}"
    assert io.default_stack(path.stem) in dp.stack_names()
    assert io.default_stack(path.stem, "serving") in dp.stack_names()


def test_new_sku_inherits_its_family():
    """A chip written with only its datasheet and `extends` takes the family's
    efficiencies: B300 and GB300 are Blackwell (Ultra) parts."""
    fam = _toml(ROOT / "hardware" / "families" / "blackwell.toml")["chip"]
    for name in ("b300", "gb300", "gb200"):
        chip = dp.load_hardware(name).chip
        assert float(chip.matmul_efficiency) == pytest.approx(
            fam["matmul_efficiency"], rel=1e-6
        )
    assert dp.family_chain("gb300_nvl72") == ["blackwell", "blackwell_ultra"]
    assert dp.family_chain("cerebras_wse3") == []


@pytest.mark.parametrize(
    "framework, stack",
    [
        ("Megatron-Bridge / NeMo 25.09", "megatron_bridge"),
        ("NeMo 24.07", "megatron_core"),
        ("Megatron-LM (2021)", "megatron_lm"),
        ("Composer/llm-foundry (PyTorch FSDP)", "composer_fsdp"),
        ("MaxText", "maxtext"),
        ("TensorRT-LLM v0.6.1", "trtllm_0_6"),
        ("trtllm", "trtllm"),
        ("vllm", "vllm"),
        ("TensorRT-LLM v0.5.0 (TensorRT 9.1)", "trtllm_0_5"),
        ("vLLM (per Splitwise paper; unverified)", "vllm_v0"),
        ("FasterTransformer", "fastertransformer"),
        ("PyTorch (LLMCompass run_on_gpu harness)", "pytorch_eager"),
        ("SGLang 0.4", "sglang"),
    ],
)
def test_stack_for_framework(framework, stack):
    assert dp.stack_for_framework(framework) == stack


def test_unknown_framework_falls_back():
    assert dp.stack_for_framework("my own trainer") is None
    assert dp.stack_for_framework("my own trainer", "generic") == "generic"


def test_stack_sets_the_software_leaves():
    a = dp.load_hardware("h100_sxm", stack="megatron_core")
    b = dp.load_hardware("h100_sxm", stack="pytorch_eager")
    prof = _toml(ROOT / "hardware" / "stacks" / "pytorch_eager.toml")
    assert float(b.chip.kernel_overhead) == pytest.approx(
        prof["chip"]["kernel_overhead"], rel=1e-6
    )
    assert float(a.chip.matmul_efficiency) == float(b.chip.matmul_efficiency)
    with pytest.raises(ValueError, match="unknown software stack 'nope'; allowed"):
        dp.load_hardware("h100_sxm", stack="nope")


def test_cli_stack_flag(capsys):
    args = ["train", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus",
            "8", "--json"]  # fmt: skip
    import json

    assert main(args + ["--stack", "megatron_core"]) == 0
    core = json.loads(capsys.readouterr().out)
    assert main(args + ["--stack", "pytorch_eager"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert core["stack"] == "megatron_core" and eager["stack"] == "pytorch_eager"
    assert core["step_time_s"] != eager["step_time_s"]
    assert main(args + ["--stack", "nope"]) == 2
    assert "unknown software stack" in capsys.readouterr().err
