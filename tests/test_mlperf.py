"""MLPerf Inference rows (Offline, Server, Interactive) in `validate`: the load model's
saturated rate, the largest Poisson rate meeting LoadGen's p99 limits, and the latency
statistics at the run's rate (`diffperf/validation/mlperf.py`)."""

import pytest

from diffperf.model.load import capacity, mlperf_server, served
from diffperf.validation import mlperf
from diffperf.validation.serving import validate_infer_rows

BASE = dict(
    source="MLPerf Inference (synthetic test rows)",
    model="Llama 3.1 8B",
    gpu="H100-SXM-80GB",
    num_gpus="8",
    tp="1",
    pp="1",
    dtype="fp8",
    input_len="800",
    output_len="120",
    framework="TensorRT-LLM",
)
ROWS = [
    BASE | dict(metric="offline_tokens_per_s", value="60000", unit="tokens/s"),
    BASE | dict(metric="server_completed_tokens_per_s", value="50000", unit="tokens/s"),
    BASE
    | dict(
        metric="server_completed_samples_per_s", value="9", unit="samples/s per GPU"
    ),
    BASE | dict(metric="server_ttft_p99", value="900", unit="ms"),
    BASE | dict(metric="server_tpot_mean", value="20", unit="ms"),
    BASE
    | dict(
        model="llama3_1-8b-interactive",
        metric="server_completed_tokens_per_s",
        value="30000",
        unit="tokens/s",
    ),
    BASE
    | dict(
        model="Qwen3-32B",
        metric="server_completed_tokens_per_s",
        value="1",
        unit="tokens/s",
    ),
    BASE
    | dict(
        model="Qwen3-32B",
        metric="server_completed_tokens_per_s",
        value="9000",
        unit="tokens/s",
        ttft_limit_ms="2000",
        tpot_limit_ms="100",
    ),
    BASE | dict(metric="server_completed_tokens_per_s", value="1", output_len=""),
]


@pytest.fixture(scope="module")
def report():
    return validate_infer_rows(ROWS)


@pytest.fixture(scope="module")
def replica():
    """The replica of the rows: Llama 3.1 8B fp8 on one H100, TensorRT-LLM's engine."""
    row = BASE | dict(batch="1")
    from diffperf.validation.serving import resolve_infer_row

    cluster, model, serving = resolve_infer_row(row | dict(metric=ROWS[0]["metric"]))
    assert model.precision.kv_cache == "fp8"  # TensorRT-LLM serves ModelOpt fp8
    sched = mlperf.bench_scheduler("TensorRT-LLM", cluster, model, serving)
    assert float(sched.max_batch) > 256  # sized by the KV cache, as trtllm-bench
    return cluster, model, serving, sched


def _result(report, i):
    return next(r for r in report["results"] if r["row"] == i)


def test_offline_is_the_saturated_rate_of_every_replica(report, replica):
    cluster, model, serving, sched = replica
    lam = float(capacity(cluster, model, serving, scheduler=sched))
    got = _result(report, 0)
    assert got["scenario"] == "offline"
    assert got["predicted"] == pytest.approx(8 * lam * 120, rel=1e-6)


def test_server_rate_meets_the_benchmark_limits_per_scope(report, replica):
    cluster, model, serving, sched = replica
    ttft, tpot, _ = mlperf.LIMITS["llama3_1_8b"]["server"]
    lam, r = mlperf_server(
        cluster, model, serving, ttft_p99=ttft, tpot_p99=tpot, scheduler=sched
    )
    assert float(r.ttft_pct[2]) <= ttft and float(r.tpot_pct[2]) <= tpot
    tokens, samples = _result(report, 1), _result(report, 2)
    assert tokens["scenario"] == "server"
    assert tokens["predicted"] == pytest.approx(8 * lam * 120, rel=1e-6)
    assert samples["predicted"] == pytest.approx(lam, rel=1e-6)  # per GPU = per replica
    # Server at most the saturated (Offline) rate
    assert tokens["predicted"] <= _result(report, 0)["predicted"] * (1 + 1e-9)


def test_latency_statistics_are_taken_at_the_runs_rate(report, replica):
    cluster, model, serving, sched = replica
    rate = 9.0  # the run's samples/s per GPU row: 72 queries/s over 8 replicas
    assert mlperf.with_server_rates(ROWS)[3]["target_qps"] == repr(72.0)
    r = served(cluster, model, serving, request_rate=rate, scheduler=sched)
    p99, mean = _result(report, 3), _result(report, 4)
    if bool(r.saturated):
        assert p99["miss"].startswith("the model saturates") and p99["ape"] == 1.0
    else:
        assert p99["predicted"] == pytest.approx(1e3 * float(r.ttft_pct[2]), rel=1e-6)
        assert mean["predicted"] == pytest.approx(1e3 * float(r.tpot), rel=1e-6)


def test_interactive_benchmark_names_take_the_tighter_limits(report):
    inter, server = _result(report, 5), _result(report, 1)
    assert inter["scenario"] == "interactive"
    assert inter["resolved_model"]["spec"] == "llama3_1_8b"
    assert 0 < inter["predicted"] < server["predicted"]


def test_unknown_benchmark_needs_limit_columns(report):
    refused = _result(report, 6)
    assert "ttft_limit_ms and tpot_limit_ms" in refused["reason"]
    given = _result(report, 7)
    assert given["predicted"] > 0 and "reason" not in given


def test_mlperf_rows_need_the_dataset_lengths(report):
    assert "needs output_len" in _result(report, 8)["reason"]


def test_scenario_and_limit_columns_are_checked():
    assert mlperf.scenario({"scenario": "Interactive"}) == "interactive"
    assert mlperf.scenario({"model": "llama2-70b-interactive"}) == "interactive"
    assert mlperf.scenario({"model": "Llama 2 70B"}) == "server"
    assert mlperf.model_text({"model": "llama2-70b-interactive"}) == "llama2-70b"
    with pytest.raises(ValueError, match="column scenario='batch'"):
        mlperf.scenario({"scenario": "batch"})
    with pytest.raises(ValueError, match="column ttft_limit_ms='-5'"):
        mlperf.benchmark_limits({"ttft_limit_ms": "-5"}, "llama2_70b")
    assert mlperf.benchmark_limits({}, "gpt_j_6b") == (None, None, 20.0)
    assert mlperf.benchmark_limits({"tpot_limit_ms": "50"}, "llama2_70b") == (
        None,
        0.05,
        None,
    )


def test_a_query_latency_limit_is_met(replica):
    """GPT-J's Server limit is the p99 query latency (`e2e_p99`): the rate found meets
    it, and a 10% higher one does not (or saturates)."""
    cluster, model, serving, sched = replica
    lam, r = mlperf_server(cluster, model, serving, e2e_p99=2.0, scheduler=sched)
    assert 0 < lam and float(r.e2e_pct[2]) <= 2.0
    more = served(cluster, model, serving, request_rate=1.1 * lam, scheduler=sched)
    assert bool(more.saturated) or float(more.e2e_pct[2]) > 2.0


def test_mlperf_server_limits_must_be_positive_seconds(replica):
    cluster, model, serving, sched = replica
    for bad in (-2.0, 0.0, float("nan")):
        with pytest.raises(
            ValueError, match=r"mlperf_server\(e2e_p99=.*must be seconds > 0"
        ):
            mlperf_server(cluster, model, serving, e2e_p99=bad, scheduler=sched)
