"""Selective recompute by module (Megatron-core `--recompute-modules`)."""

import equinox as eqx
import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.model.memory import train_memory_parts
from diffperf.model.train import layer_passes, module_recompute, training_shape
from diffperf.specs.mapping import recomputed_modules

from .helpers import get_leaf, scale_leaf

H100 = dp.load_hardware("h100_sxm")
B200 = dp.load_hardware("b200")
EXACT = dp.Exact()
GPT_OSS = dp.load_workload("gpt_oss_120b")
DSV3 = dp.load_workload("deepseek_v3")


def _map(**kw):
    base = dict(tp=1, pp=1, dp=64, ep=8, microbatch=4, global_batch=1280, seq_len=4096)
    return dp.Parallelism(**(base | kw))


def _acts(model, mapping, cluster=B200):
    return float(
        train_memory_parts(model, mapping, cluster.chip, relax=EXACT)["activations"]
    )


def test_modules_are_checked_and_default_to_core_attention():
    with pytest.raises(ValueError, match="recompute_modules"):
        _map(recompute="selective", recompute_modules=("attn",))
    with pytest.raises(ValueError, match="needs recompute='selective'"):
        _map(recompute="none", recompute_modules=("moe_act",))
    assert recomputed_modules(_map(recompute="selective")) == ("core_attn",)
    assert recomputed_modules(_map(recompute="full")) == ()
    plain = dp.train_step(B200, GPT_OSS, _map(recompute="selective"))
    named = dp.train_step(
        B200, GPT_OSS, _map(recompute="selective", recompute_modules=("core_attn",))
    )
    assert float(plain.total) == pytest.approx(float(named.total), rel=1e-12)


def test_layernorm_and_moe_act_store_their_inputs_only():
    """bf16: − (sublayers·D·b + k·load·Fe·b) per token and layer, every layer stored."""
    none = _map()
    sel = _map(recompute="selective", recompute_modules=("layernorm", "moe_act"))
    saved = _acts(GPT_OSS, none) - _acts(GPT_OSS, sel)
    m = GPT_OSS
    tokens = 4 * 4096  # microbatch·S, one microbatch in flight (pp = 1)
    per_token = 2.0 * float(m.d_model) * 2.0 + float(m.top_k * m.d_ff_expert) * 2.0
    np.testing.assert_allclose(saved, tokens * float(m.n_layers) * per_token, rtol=1e-9)


def test_layernorm_recompute_saves_nothing_under_fp8():
    """With fp8 GEMMs the linear keeps its own quantized copy of the norm output."""
    fp8 = eqx.tree_at(lambda m: m.precision, GPT_OSS, dp.Precision.training("fp8"))
    none = _map()
    sel = _map(recompute="selective", recompute_modules=("layernorm",))
    assert _acts(fp8, none) == pytest.approx(_acts(fp8, sel), rel=1e-12)


def test_mla_up_proj_keeps_the_latents_instead_of_q_k_v():
    mp = dict(pp=16, dp=16, ep=8, microbatch=1, global_batch=2048)
    none = _map(**mp)
    sel = _map(**mp, recompute="selective", recompute_modules=("mla_up_proj",))
    m = DSV3
    qkv = float((m.n_heads + 2 * m.n_kv_heads) * m.head_dim)
    latent = float(m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
    b = float(m.precision.bytes("activations"))
    per_layer = float(m.attention_fraction) * (qkv - latent) * b * 4096
    layers = float(m.n_layers) / 16
    in_flight = 16.0  # min(p, m) microbatches on the first 1F1B stage
    saved = _acts(m, none) - _acts(m, sel)
    np.testing.assert_allclose(saved, per_layer * layers * in_flight, rtol=1e-9)


def test_recomputed_modules_add_their_forward_time_to_the_backward():
    none = _map()
    sel = _map(recompute="selective", recompute_modules=("layernorm", "moe_act"))
    a = layer_passes(B200, GPT_OSS, none, relax=EXACT)
    b = layer_passes(B200, GPT_OSS, sel, relax=EXACT)
    s = training_shape(GPT_OSS, sel, EXACT)
    extra = module_recompute(B200, GPT_OSS, s, b.layer, sel)
    assert float(extra["matmul"]) == 0.0 and float(extra["elementwise"]) > 0.0
    np.testing.assert_allclose(
        float(b.backward["recompute"] - a.backward["recompute"]),
        float(extra["elementwise"]),
        rtol=1e-9,
    )
    # layernorm: read and write D per block and SP token; moe_act: read up·F, write F
    m = GPT_OSS
    q = (
        16384 * 8.0 * float(m.d_model)  # 2 blocks, read + write, b = 2
        + 16384 * 3.0 * float(m.top_k * m.d_ff_expert) * 2.0
    )
    beta = float(B200.chip.hbm_bandwidth * B200.chip.memory_efficiency)
    np.testing.assert_allclose(float(extra["elementwise"]), q / beta, rtol=1e-9)
    # the up-projections of MLA are GEMMs: recompute time and executed FLOP grow
    mp = dict(pp=16, dp=16, ep=8, microbatch=1, global_batch=2048)
    plain = dp.train_step(B200, DSV3, _map(**mp))
    up = dp.train_step(
        B200,
        DSV3,
        _map(**mp, recompute="selective", recompute_modules=("mla_up_proj",)),
    )
    assert float(up.recompute) > float(plain.recompute)
    assert float(up.hardware_flops) > float(plain.hardware_flops)
    assert float(up.model_flops) == pytest.approx(float(plain.model_flops), rel=1e-12)


def test_module_recompute_gradient_matches_finite_differences_in_float64():
    relax = dp.Smooth(16.0)
    sel = _map(recompute="selective", recompute_modules=("layernorm", "moe_act"))
    path = "chip.hbm_bandwidth"

    def f(c):
        return dp.train_step(c, GPT_OSS, sel, relax=relax).recompute

    g = float(get_leaf(jax.grad(f)(B200), path)) * float(get_leaf(B200, path))
    eps = float(np.cbrt(np.finfo(np.float64).eps))
    fd = (
        float(f(scale_leaf(B200, path, np.exp(eps))))
        - float(f(scale_leaf(B200, path, np.exp(-eps))))
    ) / (2 * eps)
    assert g < 0
    np.testing.assert_allclose(g, fd, rtol=1e-5)


# ---- the Megatron-Bridge rows that ran --------------------------------------------


def _bridge_rows():
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "training_calibration.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {i: r for i, r in enumerate(rows) if "Megatron-Bridge" in r["source"]}


def test_bridge_rows_take_the_recipes_recompute_modules():
    """The recipes' recompute modules for GPT-OSS-120B and DeepSeek-V3; the other
    rows keep their settings."""
    from diffperf.validation.training import resolve_training_row

    rows = _bridge_rows()
    seen = set()
    for i, row in rows.items():
        _, _, model, mapping, *_ = resolve_training_row(row)
        name = model.name
        if name == "gpt_oss_120b":
            assert mapping.recompute_modules == ("layernorm", "moe_act"), i
        elif name == "deepseek_v3":
            assert "mla_up_proj" in mapping.recompute_modules, i
        else:
            assert mapping.recompute == "none" and not mapping.recompute_modules, i
        seen.add(name)
    assert {"gpt_oss_120b", "deepseek_v3", "qwen3_30b_a3b"} <= seen
    other = {
        "source": "x",
        "model": "Llama 3 8B",
        "gpu": "H100",
        "num_gpus": "8",
        "tp": "1",
        "dp": "8",
        "microbatch": "1",
        "global_batch": "128",
        "seq_len": "8192",
        "framework": "Megatron-LM",
        "measured_tokens_per_s_per_gpu": "1",
    }
    _, _, model, mapping, *_ = resolve_training_row(other)
    assert not mapping.recompute_modules


@pytest.mark.parametrize("index", [54, 96])
def test_moe_rows_that_ran_fit_in_memory(index):
    """DeepSeek-V3 rows on B200 the model called out of memory before the recipes'
    recompute modules (mla_up_proj, mlp)."""
    from diffperf.model.memory import train_memory
    from diffperf.validation.training import resolve_training_row

    _, cluster, model, mapping, *_ = resolve_training_row(_bridge_rows()[index])
    need = float(train_memory(model, mapping, cluster.chip, relax=EXACT))
    assert need <= float(cluster.chip.hbm_capacity)
