"""AIConfigurator's silicon CSV: detection, names, precisions, predictions, refusals."""

import csv
from pathlib import Path

import jax.numpy as jnp
import pytest

import diffperf as dp
from diffperf.validation import aiconfigurator as aic
from diffperf.validation.run import read_measurements

DATA = Path(__file__).resolve().parents[1] / "data" / "serving_silicon_calibration.csv"


def _rows():
    with open(DATA, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_the_file_is_recognised_by_its_columns(tmp_path):
    rows = _rows()
    kind, read = read_measurements(DATA)
    assert kind == "aiconfigurator" and len(read) == len(rows) == 3936
    columns = [c for c in rows[0] if c != "moe_ep_size"]
    bad = _write(tmp_path / "x.csv", rows[:2], columns)
    with pytest.raises(ValueError, match="lacks the column 'moe_ep_size'"):
        read_measurements(bad)


def test_every_system_and_model_of_the_file_resolves():
    for system, stem in aic.SYSTEMS.items():
        assert dp.load_hardware(stem).chip is not None, system
    paths = {r["model_path"] for r in _rows()}
    for path in paths:
        stem, model = aic._model(path)
        assert stem == aic.MODELS[path] and float(model.params()) > 1e9
    assert aic.SYSTEMS["gb200"] == "gb200" and aic.SYSTEMS["b200_sxm"] == "b200"


def _row(**kw):
    base = dict(
        model_path="openai/gpt-oss-120b", precision="fp4", gemm_quant_mode="nvfp4",
        moe_quant_mode="nvfp4",
    )  # fmt: skip
    return base | kw


def test_precisions():
    h100 = dp.load_hardware("h100_sxm").chip
    b200 = dp.load_hardware("b200").chip
    p = aic._precision(_row(), h100)  # gpt-oss on Hopper: MXFP4 weights, bf16 math
    assert (p.math, p.weights) == ("bf16", "mxfp4")
    assert aic._precision(_row(), b200).math == "mxfp4"
    ds = dict(model_path="deepseek-ai/DeepSeek-R1")
    with pytest.raises(ValueError, match="no FP4 cores"):
        aic._precision(_row(**ds), h100)
    assert aic._precision(_row(**ds), b200).weights == "nvfp4"
    fp8 = _row(**ds, precision="fp8", gemm_quant_mode="fp8", moe_quant_mode="fp8_block")
    assert (aic._precision(fp8, h100).math, aic._precision(fp8, h100).weights) == (
        "fp8",
        "fp8",
    )
    int4 = dict(gemm_quant_mode="int4_wo", moe_quant_mode="int4_wo")
    w4 = _row(**ds, precision="int4", **int4)
    assert (aic._precision(w4, b200).math, aic._precision(w4, b200).weights) == (
        "bf16",
        "int4",
    )
    blank = _row(**ds, precision="", gemm_quant_mode="", moe_quant_mode="")
    assert aic._precision(blank, h100).math == "bf16"
    # quantized checkpoints cache K/V in fp8, bf16 ones (and weight-only int4) in bf16
    assert aic._precision(fp8, h100).kv_cache == "fp8"
    assert aic._precision(_row(), h100).kv_cache == "fp8"
    assert aic._precision(w4, b200).kv_cache == "bf16"
    assert aic._precision(blank, h100).kv_cache == "bf16"
    with pytest.raises(ValueError, match="is not one of"):
        odd = dict(precision="int2", gemm_quant_mode="int2", moe_quant_mode="")
        aic._precision(_row(**ds, **odd), h100)


def test_layouts_concurrency_and_refusals():
    rows = _rows()
    agg = [r for r in rows if r["mode"] == "agg"]
    wide = next(r for r in agg if r["attention_dp_size"] == "16")
    r = aic.resolve_aic_row(wide)
    s = r["serving"]
    assert float(s.attention_dp) == 16 and float(s.chips) == 16
    assert r["concurrency"] == float(wide["batch_size"]) * 16
    assert r["concurrency"] == aic.silicon_concurrency(wide)
    dis = [r for r in rows if r["mode"] == "disagg"]
    blind = next(r for r in dis if not r["prefill_num_workers"])
    with pytest.raises(ValueError, match="without worker counts"):
        aic.resolve_aic_row(blind)
    xpyd = next(r for r in rows if r["mode"] == "disagg" and r["prefill_num_workers"])
    r = aic.resolve_aic_row(xpyd)
    assert r["kind"] == "disagg" and r["concurrency"] == aic.silicon_concurrency(xpyd)
    assert r["workers"] == (
        float(xpyd["prefill_num_workers"]),
        float(xpyd["decode_num_workers"]),
    )
    with pytest.raises(ValueError, match="system 'tpu_v9' is not one of"):
        aic.resolve_aic_row(dict(wide, system="tpu_v9"))


def test_a_few_small_rows_are_predicted_and_every_row_accounted(tmp_path):
    rows = _rows()
    small = [
        r for r in rows
        if r["model_path"] == "meta-llama/Llama-3.1-8B-Instruct" and r["mode"] == "agg"
        and r["system"] == "h100_sxm" and r["backend"] == "trtllm"
    ][:3]  # fmt: skip
    blind = [r for r in rows if r["mode"] == "disagg" and not r["prefill_num_workers"]]
    path = _write(tmp_path / "aic.csv", small + blind[:2])
    calls = []
    out = dp.validate(path, progress=lambda done, total: calls.append((done, total)))
    assert out["kind"] == "aiconfigurator" and out["rows"] == 5
    assert calls[-1] == (5, 5)
    assert out["rows_predicted"] == 3 and out["rows_refused"] == 2
    assert out["refused"] == {
        "disaggregated run without worker counts (prefill_num_workers, "
        "decode_num_workers)": 2
    }
    scored = [r for r in out["results"] if "ape" in r]
    assert len(scored) == 6  # two results per predicted row
    for i in range(3):
        mine = [r for r in scored if r["row"] == i]
        assert sorted(r["metric"] for r in mine) == ["tpot", "ttft"]
        for r in mine:
            assert 0 < r["predicted"] < 1e5 and r["measured"] > 0
            assert r["ape"] == pytest.approx(abs(r["predicted"] / r["measured"] - 1))
    # TPOT of an 8B model on one H100 at a few requests: a few milliseconds
    tpot = [r["predicted"] for r in scored if r["metric"] == "tpot"]
    assert all(2.0 < t < 30.0 for t in tpot)
    assert [r["row"] for r in out["results"] if "reason" in r] == [3, 4]
    assert out["coverage"] == pytest.approx(3 / 5)
    assert set(out["by_system"]) == {"h100_sxm"} and out["ttft"]["rows"] == 3


def test_scheduler_admits_every_client():
    assert float(aic._scheduler(512).max_batch) == 512
    assert float(aic._scheduler(jnp.asarray(3.0)).max_batch) == 3
    # KV admission by the tokens held: all of the output reserved by TensorRT-LLM,
    # half of it (the mean over a request's life) by vLLM's and SGLang's paged caches
    assert float(aic._scheduler(8, "trtllm").reserved_output) == 1.0
    assert float(aic._scheduler(8, "vllm").reserved_output) == 0.5
    assert float(aic._scheduler(8, "sglang").reserved_output) == 0.5
    # vLLM and TensorRT-LLM mix prompt chunks with decodes; SGLang by default not
    assert aic._scheduler(8, "vllm").mixed and aic._scheduler(8, "trtllm").mixed
    assert not aic._scheduler(8, "sglang").mixed


def test_aggregated_rows_run_synchronized_waves():
    """The benchmark starts its clients together with fixed lengths: the prediction is
    `serve_load(phases="synchronized")`, whose TTFT at 64 clients of 1024-token prompts
    (8 chunk steps) is several times the spread-phase one."""
    from diffperf.model.load import serve_load

    rows = [
        r for r in _rows()
        if r["model_path"] == "meta-llama/Llama-3.1-8B-Instruct" and r["mode"] == "agg"
        and r["system"] == "h100_sxm" and r["backend"] == "trtllm"
    ]  # fmt: skip
    row = dict(rows[0], batch_size="64", isl="1024", osl="128")
    res = aic.resolve_aic_row(row)
    got = aic._predict_agg({0: res})[0]
    args = (res["cluster"], res["model"], res["serving"])
    kw = dict(concurrency=64.0, scheduler=aic._scheduler(64.0, "trtllm"))
    waves = serve_load(*args, phases="synchronized", rounds=aic.ROUNDS, **kw)
    assert got["ttft"] == pytest.approx(float(waves.ttft), rel=1e-4)
    assert got["tpot"] == pytest.approx(float(waves.tpot), rel=1e-4)
    first = serve_load(*args, phases="synchronized", **kw)  # the first wave alone
    assert float(first.ttft) > 2.0 * float(serve_load(*args, **kw).ttft)
    # 50 requests per client: the later rounds' rolling pipeline dominates the mean
    assert float(waves.ttft) < 0.5 * float(first.ttft)


def test_rows_that_contradict_themselves_are_refused_with_the_data_reason():
    """Issue #16: refusals name the data, not the model. 15 SGLang Qwen3.5-397B rows
    give tp_size 64 for a 32-head model (their ids say tp8_ep8); 19 vLLM Qwen3-235B
    rows give more MoE ranks (moe_tp·moe_ep) than GPUs (tp·attention_dp)."""
    rows = _rows()
    wide = next(
        r for r in rows
        if r["model_path"] == "Qwen/Qwen3.5-397B-A17B" and r["tp_size"] == "64"
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"tp_size=64 exceeds the model's 32 attention heads: the row contradicts "
        r"itself \(id .*tp8_ep8",
    ):
        aic.resolve_aic_row(wide)
    over = next(
        r for r in rows
        if r["model_path"] == "Qwen/Qwen3-235B-A22B-FP8" and r["tp_size"] == "1"
        and r["moe_tp_size"] == "2"
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match="moe_tp_size·moe_ep_size=2 exceed tp_size·attention_dp_size=1 GPUs",
    ):
        aic.resolve_aic_row(over)
