"""The attention kernel as a software choice: fa3 (chip's best) / fa2 / unfused."""

import json

import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.cli import main
from diffperf.model.ops import attention_time
from diffperf.validation.frameworks import PROFILES, profile

from .helpers import get_leaf, scale_leaf

A100 = dp.load_hardware("a100_sxm4_80gb")
H100 = dp.load_hardware("h100_sxm")
MPT7 = dp.load_workload("llama3_8b")
EXACT = dp.Exact()
LONG = dict(tp=1, dp=8, microbatch=1, global_batch=8, seq_len=16384, zero=3)


def _step(cluster, kernel, relax=EXACT, **kw):
    mapping = dp.Parallelism(**(LONG | kw), attention_kernel=kernel)
    return dp.train_step(cluster, MPT7, mapping, relax=relax)


def test_fa2_on_a100_equals_the_default_kernel():
    """FlashAttention-2 is Ampere's best fused kernel: leaf 1, identical step."""
    assert float(A100.chip.attention_fa2_efficiency) == 1.0
    a, b = _step(A100, "fa2"), _step(A100, "fa3")
    assert float(a.total) == float(b.total)
    assert float(a.attention) == float(b.attention)


def test_fa2_on_h100_is_slower_by_the_leaf():
    leaf = float(H100.chip.attention_fa2_efficiency)
    assert 0.3 < leaf < 1.0  # the FA3 paper prior (hardware/h100_sxm.toml)
    fa2, fa3 = _step(H100, "fa2"), _step(H100, "fa3")
    assert float(fa2.attention) > float(fa3.attention)
    assert float(fa2.total) > float(fa3.total)
    # only attention changes; its compute time scales by exactly 1/leaf
    assert float(fa2.matmul) == float(fa3.matmul)
    shape = dict(
        batch=1.0, q_tokens=16384.0, kv_tokens=8192.0, seq=16384.0, heads=32.0,
        kv_heads=8.0, head_dim_qk=128.0, head_dim_v=128.0, peak=H100.chip.flops_bf16,
        nbytes=2.0, relax=dp.Exact(),
    )  # fmt: skip
    t2, f2 = attention_time(H100.chip, fa2=True, **shape)
    t3, f3 = attention_time(H100.chip, **shape)
    assert float(f2) == float(f3)
    np.testing.assert_allclose(float(t2) * leaf, float(t3), rtol=1e-12)
    # at leaf 1 the two kernels agree on Hopper too
    same = scale_leaf(H100, "chip.attention_fa2_efficiency", 1.0 / leaf)
    assert float(_step(same, "fa2").total) == float(_step(same, "fa3").total)


def test_unfused_kernel_equals_flash_attention_false():
    a = _step(H100, "unfused", recompute="full")
    m = dp.Parallelism(**LONG, recompute="full", flash_attention=False)
    b = dp.train_step(H100, MPT7, m)
    assert float(a.total) == float(b.total)
    assert float(a.memory_per_gpu) == float(b.memory_per_gpu)
    assert float(a.attention) > float(_step(H100, "fa3", recompute="full").attention)


def test_bad_kernel_raises_value_error_naming_the_field():
    with pytest.raises(ValueError, match="attention_kernel='fa4'"):
        dp.Parallelism(attention_kernel="fa4")
    with pytest.raises(ValueError, match="attention_kernel='flash'"):
        dp.Serving(attention_kernel="flash")
    with pytest.raises(ValueError, match="attention_fa2_efficiency=1.5"):
        scale_leaf(A100, "chip.attention_fa2_efficiency", 1.5).chip.__check_init__()


def test_fa2_leaf_gradient_is_finite_and_matches_finite_difference():
    """d T / d log x of the new leaf (float64, Smooth), live only for fa2 jobs."""
    relax = dp.Smooth(16.0)
    path = "chip.attention_fa2_efficiency"

    def f(c, kernel="fa2"):
        return _step(c, kernel, relax=relax).total

    g = float(get_leaf(jax.grad(f)(H100), path))
    x = float(get_leaf(H100, path))
    eps = 1e-5
    fd = (
        float(f(scale_leaf(H100, path, np.exp(eps))))
        - float(f(scale_leaf(H100, path, np.exp(-eps))))
    ) / (2 * eps)
    assert np.isfinite(g) and g < 0  # a faster FA2 kernel shortens the step
    np.testing.assert_allclose(g * x, fd, rtol=1e-5)
    assert float(get_leaf(jax.grad(lambda c: f(c, "fa3"))(H100), path)) == 0.0


def test_serving_prefill_with_fa2_is_slower_on_h100():
    model = dp.load_workload("llama3_8b")
    kw = dict(tp=1, batch=8, input_len=8000, output_len=16)
    fa2 = dp.serve(H100, model, dp.Serving(**kw, attention_kernel="fa2"))
    fa3 = dp.serve(H100, model, dp.Serving(**kw))
    assert float(fa2.ttft) > float(fa3.ttft)
    a100 = [
        dp.serve(A100, model, dp.Serving(**kw, attention_kernel=k))
        for k in ("fa2", "fa3")
    ]
    assert float(a100[0].ttft) == float(a100[1].ttft)


TRAIN = ["train", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus", "8"]
TRAIN += ["--seq-len", "16384", "--zero", "3", "--json"]


def test_cli_attention_kernel_flag(capsys):
    out = {}
    for kernel in ("fa3", "fa2", "unfused"):
        assert main([*TRAIN, "--attention-kernel", kernel]) == 0
        out[kernel] = json.loads(capsys.readouterr().out)
        assert out[kernel]["mapping"]["attention_kernel"] == kernel
    assert main(TRAIN) == 0  # default: the chip's best kernel
    default = json.loads(capsys.readouterr().out)
    assert default["step_time_s"] == out["fa3"]["step_time_s"]
    assert out["fa2"]["step_time_s"] > out["fa3"]["step_time_s"]
    infer = ["infer", "--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus", "1"]
    assert main([*infer, "--attention-kernel", "fa2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mapping"]["attention_kernel"] == "fa2"


@pytest.mark.parametrize("cmd", ["train", "infer"])
def test_cli_bad_attention_kernel_exits_2(capsys, cmd):
    argv = ["--hardware", "h100_sxm", "--model", "llama3_8b", "--gpus", "8"]
    rc = main([cmd, *argv, "--attention-kernel", "fa4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--attention-kernel" in err and "fa4" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "source,framework,kernel",
    [
        ("MosaicML llm-foundry MPT training benchmarks", "Composer/llm-foundry", "fa2"),
        ("NVIDIA NeMo docs performance_summary.md", "NeMo 24.07", "fa3"),
        ("NVIDIA Megatron-Bridge docs", "Megatron-Bridge / NeMo 25.09", "fa3"),
        ("Narayanan et al., SC'21", "Megatron-LM (2021)", "unfused"),
        ("Megatron-LM README (Sept 2020)", "Megatron-LM (2020)", "unfused"),
        ("some lab's blog", "Composer/llm-foundry (PyTorch FSDP)", "fa2"),
        ("some lab's blog", "", "fa3"),
        # the 2024 Megatron-LM README: its wording must not make it a 2020 run
        ("Megatron-LM README (2024) weak scaling", "Megatron-Core (2024)", "fa3"),
        ("Megatron-LM README", "Megatron-LM (2024)", "fa3"),
    ],
)
def test_validation_rows_resolve_the_kernel_from_framework(source, framework, kernel):
    # the default comes from the framework column only; the source text is not read
    del source
    assert PROFILES[profile(framework)]["kernel"] == kernel
