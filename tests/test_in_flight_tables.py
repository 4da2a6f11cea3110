"""Throughput tables of in-flight batching engines (TensorRT-LLM >= 0.10,
trtllm-bench, vLLM, SGLang) without a batch are predicted as the Offline rate, under
the benchmark's own engine limits; NVIDIA ModelOpt checkpoints carry an fp8 KV cache."""

import math

import pytest

import diffperf as dp
from diffperf.io import resolve_workload
from diffperf.validation import mlperf
from diffperf.validation.serving import predict_infer_row, resolve_infer_row


@pytest.mark.parametrize(
    "name, precision, kv",
    [
        ("nvidia/Llama-3.1-8B-Instruct-FP8", "fp8", "fp8"),
        ("nvidia/Llama-3.3-70B-Instruct-FP4", "fp4", "fp8"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "fp8", None),
        ("meta-llama/Llama-3.1-8B-Instruct", None, None),
    ],
)
def test_modelopt_checkpoints_set_an_fp8_kv_cache(name, precision, kv):
    found = resolve_workload(name)
    assert (found.precision, found.kv_cache) == (precision, kv)


@pytest.mark.parametrize(
    "framework, expected",
    [
        ("TensorRT-LLM v0.6.1", False),
        ("TensorRT-LLM v0.9.0", False),
        ("TensorRT-LLM v0.10", True),
        ("TensorRT-LLM 1.0 (PyTorch backend)", True),
        ("trtllm-bench", True),
        ("vLLM 0.8.4", True),
        ("SGLang 0.4", True),
        ("FasterTransformer", False),
        ("", False),
    ],
)
def test_in_flight_by_framework_and_version(framework, expected):
    assert mlperf.in_flight(framework) is expected


def _row(**kw):
    row = dict(source="test", model="nvidia/Llama-3.1-8B-Instruct-FP8", gpu="H100 SXM",
               num_gpus="1", tp="1", pp="1", dtype="", batch="", input_len="128",
               output_len="2048", metric="total_output_throughput", value="20000",
               unit="tokens/s",
               framework="TensorRT-LLM 1.0 (trtllm-bench)")  # fmt: skip
    return row | kw


def test_trtllm_bench_limits_follow_its_tuning_heuristic():
    """max_batch_size and max_num_tokens as trtllm-bench's finetune_setting rounds
    them, from the requests of S_in + S_out tokens the KV cache holds."""
    cluster, model, serving = resolve_infer_row(_row(batch="1"))
    held = float(dp.serve(cluster, model, serving).max_batch)  # S_in + S_out each
    s = mlperf.bench_scheduler("TensorRT-LLM 1.0", cluster, model, serving)
    raw = min(held, 4096.0)
    step = 32 if raw < 256 else (128 if raw < 1024 else 256)
    tokens = min(raw * (1 + 128 / 2048), 32768.0)
    tok = max(2048.0, 256 * math.ceil(tokens / 256))
    assert float(s.max_tokens_per_step) == tok
    # the batch as rounded, below the token budget (decodes first)
    assert float(s.max_batch) == min(max(64.0, step * math.ceil(raw / step)), tok - 1)
    assert float(s.reserved_output) == 1.0
    vllm = mlperf.bench_scheduler("vLLM 0.8", cluster, model, serving)
    assert (float(vllm.max_batch), float(vllm.max_tokens_per_step)) == (1024, 16384)
    assert float(vllm.reserved_output) == 0.5  # pages as tokens come
    a100 = dp.load_hardware("a100_sxm4_80gb")
    small = mlperf.bench_scheduler("vLLM 0.8", a100, model, serving)
    assert (float(small.max_batch), float(small.max_tokens_per_step)) == (256, 8192)
    other = mlperf.bench_scheduler("SGLang 0.4", cluster, model, serving)
    assert float(other.max_batch) == float(dp.Scheduler().max_batch)


def test_rows_without_a_batch_from_in_flight_engines_run_offline():
    fp8_kv = predict_infer_row(_row())
    assert fp8_kv["scenario"] == "offline (in-flight batching)"
    assert fp8_kv["metric"] == "total_output_throughput"
    # a static-batch table (TensorRT-LLM before v0.10) keeps the largest static batch
    static = predict_infer_row(_row(framework="TensorRT-LLM v0.6.1"))
    assert "scenario" not in static and static["predicted"] > 0
    # TensorRT-LLM's fp8 rows are ModelOpt checkpoints: the same fp8 KV cache
    named = predict_infer_row(_row(model="Llama 3.1 8B", dtype="fp8"))
    assert named["predicted"] == pytest.approx(fp8_kv["predicted"], rel=1e-6)
    # a bf16 KV cache (vLLM's default for other fp8 checkpoints) holds half the
    # requests: less output
    bf16_kv = predict_infer_row(_row(model="Llama-3.1-8B", dtype="fp8",
                                     framework="vLLM 0.8"))  # fmt: skip
    assert bf16_kv["predicted"] < 0.8 * fp8_kv["predicted"]
    # pipeline stages keep microbatches in flight: PP2 on two GPUs beats one GPU
    pp2 = predict_infer_row(_row(num_gpus="2", pp="2"))
    assert 1.4 * fp8_kv["predicted"] < pp2["predicted"] < 2.2 * fp8_kv["predicted"]
