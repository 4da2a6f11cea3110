"""Low precision as it runs: which GEMMs go low, quantize kernels, per-dtype leaves."""

import csv
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.core.units import BYTES
from diffperf.model.layer import (
    BF16_OPS,
    head_time,
    layer_forward,
    quant_bytes_per_element,
    quantize_bytes,
)
from diffperf.model.phases import phase_shape
from diffperf.model.train import layer_passes, training_shape
from diffperf.specs.workload import Precision
from diffperf.validation.frameworks import dtype_recipe
from diffperf.validation.training import resolve_training_row

from .helpers import get_leaf, scale_leaf

ROOT = Path(__file__).resolve().parents[1]
H100 = dp.load_hardware("h100_sxm")
B200 = dp.load_hardware("b200")
LLAMA8 = dp.load_workload("llama3_8b")
QWEN_MOE = dp.load_workload("qwen3_30b_a3b")
MAP8 = dp.Parallelism(tp=1, dp=8, microbatch=2, global_batch=64, seq_len=4096)
MAP_MOE = dp.Parallelism(tp=1, dp=8, ep=8, microbatch=1, global_batch=64, seq_len=4096)
EXACT = dp.Exact()


def _with(model, precision):
    return eqx.tree_at(lambda m: m.precision, model, precision)


def _step(cluster, model, mapping):
    return dp.train_step(cluster, model, mapping)


def _ops(cluster, model, mapping):
    s = training_shape(model, mapping, EXACT)
    lay = layer_forward(cluster, model, s, EXACT)
    ops = lay["gemm_ops"]
    return s, lay, dict(zip(ops["names"], np.asarray(ops["time"]), strict=True))


# ---- what stays bf16 -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp8", "fp4"])
def test_router_head_and_attention_do_not_change_with_the_math_dtype(dtype):
    """The MoE router, the logits GEMM and attention run in bf16 under any recipe."""
    cluster = B200
    bf16 = _with(QWEN_MOE, Precision.training("bf16"))
    low = _with(QWEN_MOE, Precision.training(dtype))
    s16, lay16, ops16 = _ops(cluster, bf16, MAP_MOE)
    s8, lay8, ops8 = _ops(cluster, low, MAP_MOE)
    assert set(BF16_OPS) <= set(ops8)
    for name in BF16_OPS:
        np.testing.assert_allclose(ops8[name], ops16[name], rtol=1e-12)
    assert ops8["expert_up"] < ops16["expert_up"]  # linear GEMMs do go low
    np.testing.assert_allclose(float(lay8["attn"]), float(lay16["attn"]), rtol=1e-12)
    h16 = float(head_time(cluster, bf16, s16, EXACT))
    h8 = float(head_time(cluster, low, s8, EXACT))
    np.testing.assert_allclose(h8, h16, rtol=1e-12)
    # and none of them depends on the low-precision peak
    faster = scale_leaf(cluster, f"chip.flops_{dtype}", 2.0)
    _, lay_f, ops_f = _ops(faster, low, MAP_MOE)
    for name in BF16_OPS:
        np.testing.assert_allclose(ops_f[name], ops8[name], rtol=1e-12)
    assert float(head_time(faster, low, s8, EXACT)) == h8
    assert ops_f["expert_up"] < ops8["expert_up"]


def test_bf16_layers_one_runs_every_gemm_at_the_bf16_time():
    fp8 = _with(LLAMA8, Precision.training("fp8", bf16_layers=1.0))
    bf16 = _with(LLAMA8, Precision.training("bf16"))
    _, lay8, _ = _ops(H100, fp8, MAP8)
    _, lay16, _ = _ops(H100, bf16, MAP8)
    np.testing.assert_allclose(float(lay8["gemm"]), float(lay16["gemm"]), rtol=1e-12)
    np.testing.assert_allclose(float(lay8["elem"]), float(lay16["elem"]), rtol=1e-12)
    precisions = [Precision.training("fp8", bf16_layers=f) for f in (0.0, 0.25, 0.5)]
    steps = [float(_step(H100, _with(LLAMA8, p), MAP8).matmul) for p in precisions]
    assert steps[0] < steps[1] < steps[2]


# ---- quantize kernels ------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe,dtype,per_element",
    [
        ("delayed", "fp8", 2.0 + 2 * 1.0),
        ("current", "fp8", 2 * 2.0 + 2 * 1.0),
        ("block", "fp8", 2.0 + 2 * (1.0 + 4 / 128)),
        ("mx", "fp8", 2.0 + 2 * (1.0 + 1 / 32)),
        ("nvfp4", "fp4", 2 * 2.0 + 2 * (0.5 + 1 / 16)),
    ],
)
def test_quantize_bytes_match_the_closed_form(recipe, dtype, per_element):
    """Σ over the linear GEMMs of the input (forward) and output-gradient (backward)
    elements, times the recipe's bytes per element, times (1 − bf16 share)."""
    share = 0.25
    model = _with(LLAMA8, Precision.training(dtype, recipe, bf16_layers=share))
    q = quant_bytes_per_element(recipe, 2.0, BYTES[dtype], 2.0)
    assert q == pytest.approx(per_element, rel=1e-12)
    s = training_shape(model, MAP8, EXACT)
    m = model
    T, D, F = float(s.tokens), float(m.d_model), float(m.d_ff)
    NH, KH = float(m.n_heads * m.head_dim), float(m.n_kv_heads * m.head_dim)
    inputs = T * (D + NH + D + F)  # qkv, attn_out, mlp_up (+gate), mlp_down
    outputs = T * ((NH + 2 * KH) + D + 2 * F + D)
    fwd, bwd, kernels = quantize_bytes(model, s)
    np.testing.assert_allclose(float(fwd), (1 - share) * inputs * q, rtol=1e-12)
    np.testing.assert_allclose(float(bwd), (1 - share) * outputs * q, rtol=1e-12)
    passes = 2.0 if recipe in ("current", "nvfp4") else 1.0
    np.testing.assert_allclose(float(kernels), (1 - share) * 4 * passes, rtol=1e-12)


def test_inference_quantizes_one_layout_and_no_gradients():
    model = _with(LLAMA8, Precision(math="fp8", weights="fp8"))
    serving = dp.Serving(tp=1, batch=4, input_len=2048, output_len=128)
    s = phase_shape(model, serving, EXACT, "prefill")
    fwd, bwd, _ = quantize_bytes(model, s)
    T, D, F = float(s.tokens), float(model.d_model), float(model.d_ff)
    NH = float(model.n_heads * model.head_dim)
    q = 2.0 + 1.0  # delayed/static per-tensor scale: read bf16, write fp8 once
    np.testing.assert_allclose(float(fwd), T * (D + NH + D + F) * q, rtol=1e-12)
    assert float(bwd) == 0.0
    nvfp4 = _with(LLAMA8, Precision(math="fp4", weights="fp4"))
    s4 = phase_shape(nvfp4, serving, EXACT, "prefill")
    fwd4, _, kernels4 = quantize_bytes(nvfp4, s4)
    q4 = 2.0 + (0.5 + 1 / 16)  # calibrated tensor scale: one pass
    np.testing.assert_allclose(float(fwd4), T * (D + NH + D + F) * q4, rtol=1e-12)
    assert float(kernels4) == 4.0


def test_sixteen_bit_math_has_no_quantize_work():
    s = training_shape(LLAMA8, MAP8, EXACT)
    fwd, bwd, kernels = quantize_bytes(LLAMA8, s)
    assert float(fwd) == float(bwd) == kernels == 0.0


def test_backward_pass_carries_the_gradient_quantize_not_twice_the_forward():
    fp8 = _with(LLAMA8, Precision.training("fp8", "current"))
    a = layer_passes(H100, fp8, MAP8, relax=EXACT)
    b = layer_passes(H100, LLAMA8, MAP8, relax=EXACT)
    q = a.layer["quant"]
    np.testing.assert_allclose(
        float(a.forward["elementwise"] - b.forward["elementwise"]),
        float(q["forward"]),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        float(a.backward["elementwise"] - b.backward["elementwise"]),
        float(q["backward"]),
        rtol=1e-9,
    )
    assert float(q["backward"]) != pytest.approx(2.0 * float(q["forward"]))


def test_recipes_order_by_their_traffic():
    steps = {
        r: float(
            _step(H100, _with(LLAMA8, Precision.training("fp8", r)), MAP8).elementwise
        )
        for r in ("delayed", "block", "current")
    }
    assert steps["delayed"] < steps["block"] < steps["current"]


# ---- the Precision fields --------------------------------------------------------


def test_precision_defaults_and_checks():
    assert Precision().scaling == "none"
    assert Precision(math="fp8").scaling == "delayed"
    assert Precision(math="mxfp8").scaling == "mx"
    assert Precision(math="fp4").scaling == "nvfp4"
    assert Precision.training("fp4").bf16_layers == 0.16
    assert Precision.training("fp8").bf16_layers == 0.0
    assert Precision.training("fp4", bf16_layers=0.0).bf16_layers == 0.0
    with pytest.raises(ValueError, match="recipe='tensorwise'"):
        Precision(math="fp8", recipe="tensorwise")
    with pytest.raises(ValueError, match="recipe='nvfp4'"):
        Precision(math="fp8", recipe="nvfp4")
    with pytest.raises(ValueError, match="bf16_layers=1.5"):
        Precision(math="fp8", bf16_layers=1.5)


# ---- CSV dtype strings -----------------------------------------------------------

BRIDGE = "Megatron-Bridge / NeMo 26.04"
TABLE = [
    ("fp8", "NeMo 24.07", False, ("fp8", "delayed")),
    ("FP8", BRIDGE, False, ("fp8", "current")),
    ("FP8-CS", BRIDGE, True, ("fp8", "current")),
    ("FP8-MX", BRIDGE, True, ("fp8", "mx")),
    ("MXFP8", BRIDGE, True, ("fp8", "mx")),
    ("NVFP4", BRIDGE, True, ("fp4", "nvfp4")),
    ("amp_fp8", "Composer/llm-foundry (PyTorch)", False, ("fp8", "delayed")),
    ("FP8-presumed-unstated", BRIDGE, False, ("fp8", "current")),
    ("FP8-presumed-unstated [primary value]", BRIDGE, True, ("fp8", "current")),
    (
        "FP8-presumed-unstated [value in parentheses: alt quantization granularity]",
        BRIDGE,
        True,
        ("fp8", "mx"),
    ),
    (
        "FP8-presumed-unstated [value in parentheses: alt quantization granularity]",
        BRIDGE,
        False,
        ("fp8", "block"),
    ),
    ("BF16", BRIDGE, True, ("bf16", "none")),
    ("bf16", "Megatron-LM", False, ("bf16", "none")),
    ("amp_bf16", "Composer", False, ("bf16", "none")),
    ("fp16 mixed", "Megatron-LM (2021)", False, ("bf16", "none")),
    ("", "", False, ("bf16", "none")),
]


@pytest.mark.parametrize("text,framework,mx,expected", TABLE)
def test_dtype_cells_map_to_math_and_recipe(text, framework, mx, expected):
    assert dtype_recipe(text, framework, mx) == expected


def test_unknown_dtype_cell_is_a_one_line_error():
    with pytest.raises(ValueError, match="dtype 'int4'"):
        dtype_recipe("int4", "", False)


def test_every_dtype_of_the_training_csv_resolves():
    with open(ROOT / "data" / "training_calibration.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {}
    for row in rows:
        key = (row["dtype"], row["gpu"])
        if key in seen:
            continue
        _, cluster, model, *_ = resolve_training_row(row)
        seen[key] = model.precision
    nvfp4 = [p for (d, _), p in seen.items() if d == "NVFP4"]
    assert nvfp4 and all(p.scaling == "nvfp4" and p.bf16_layers == 0.16 for p in nvfp4)
    mx = [p for (d, _), p in seen.items() if d in ("MXFP8", "FP8-MX")]
    assert mx and all(p.scaling == "mx" for p in mx)
    cs = [p for (d, _), p in seen.items() if d == "FP8-CS"]
    assert cs and all(p.scaling == "current" for p in cs)


def test_recipe_and_bf16_layers_columns_override_the_table():
    with open(ROOT / "data" / "training_calibration.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["dtype"] == "FP8-CS")
    _, _, model, *_ = resolve_training_row(row | {"recipe": "block", "bf16_layers": ""})
    assert model.precision.scaling == "block"
    _, _, model, *_ = resolve_training_row(row | {"bf16_layers": "0.1"})
    assert model.precision.bf16_layers == 0.1
    with pytest.raises(ValueError, match="column recipe='tensor'"):
        resolve_training_row(row | {"recipe": "tensor"})
    with pytest.raises(ValueError, match="column bf16_layers=2"):
        resolve_training_row(row | {"bf16_layers": "2"})


# ---- per-dtype efficiency leaves -------------------------------------------------


def test_old_low_precision_key_still_loads_as_both_leaves(tmp_path):
    text = (ROOT / "hardware" / "b200.toml").read_text()
    assert "fp8_efficiency" not in text  # the family's default speaks
    text = text.replace("[chip]\n", "[chip]\nlow_precision_efficiency = 0.8\n", 1)
    path = tmp_path / "old_b200.toml"
    path.write_text(text)
    chip = dp.load_hardware(path).chip
    assert float(chip.fp8_efficiency) == float(chip.fp4_efficiency) == 0.8


CASES = [
    (H100, LLAMA8, "fp8", "chip.fp8_efficiency", "chip.fp4_efficiency"),
    (B200, QWEN_MOE, "fp4", "chip.fp4_efficiency", "chip.fp8_efficiency"),
]


@pytest.mark.parametrize("cluster,model,dtype,live,dead", CASES, ids=["fp8", "fp4"])
def test_dtype_leaves_have_finite_gradients_matching_finite_differences(
    cluster, model, dtype, live, dead
):
    """d T / d log x (float64, Smooth) of the leaf of the dtype in use; 0 for the
    other dtype class's leaf."""
    relax = dp.Smooth(16.0)
    mapping = MAP_MOE if float(model.n_experts) else MAP8
    low = _with(model, Precision.training(dtype))
    cluster = scale_leaf(cluster, live, 0.8)  # off the bound of 1

    def f(c):
        return dp.train_step(c, low, mapping, relax=relax).total

    grads = jax.grad(f)(cluster)
    g, x = float(get_leaf(grads, live)), float(get_leaf(cluster, live))
    eps = float(np.cbrt(np.finfo(np.float64).eps))
    fd = (
        float(f(scale_leaf(cluster, live, np.exp(eps))))
        - float(f(scale_leaf(cluster, live, np.exp(-eps))))
    ) / (2 * eps)
    assert np.isfinite(g) and g < 0  # a more efficient low-precision GEMM is faster
    np.testing.assert_allclose(g * x, fd, rtol=1e-5)
    assert float(get_leaf(grads, dead)) == 0.0
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(np.all(np.isfinite(v))) for v in leaves)
