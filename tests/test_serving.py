"""Serving objectives: continuous batching, speculative decoding, cost, P/D split."""

import jax
import numpy as np
import pytest

import diffperf as dp
from diffperf.cli import main

DGX = dp.load_hardware("dgx_h100")
NVL72 = dp.load_hardware("gb200_nvl72")
LLAMA70 = dp.load_workload("llama2_70b")
LLAMA7 = dp.load_workload("llama2_7b")
S = dp.Serving(tp=8, batch=32, input_len=2048, output_len=256)


def test_continuous_batching_costs_more_per_step_than_pure_decode():
    cb = dp.continuous_batching(DGX, LLAMA70, S)
    dec = dp.decode_step(DGX, LLAMA70, S).total
    assert float(cb["tpot"]) > float(dec)
    np.testing.assert_allclose(float(cb["output_tokens_per_s"]), 32 / float(cb["tpot"]))


def test_speculative_decoding_formula_limits():
    """acceptance → 0: one token per round costs k drafts + a verify; more acceptance
    never hurts."""
    base = dp.Serving(tp=8, batch=1, input_len=1024, output_len=128)
    t0 = float(dp.speculative_tpot(DGX, LLAMA70, LLAMA7, base, k=4.0, acceptance=0.0))
    t9 = float(dp.speculative_tpot(DGX, LLAMA70, LLAMA7, base, k=4.0, acceptance=0.9))
    draft = float(dp.decode_step(DGX, LLAMA7, base, context=1024 + 64).total)
    assert t0 > 4 * draft and t9 < t0
    expected = (1 - 0.9**5) / (1 - 0.9)
    assert t0 / t9 == pytest.approx(expected, rel=1e-9)


def test_hourly_cost_is_linear_in_chips():
    np.testing.assert_allclose(
        float(dp.hourly_cost(DGX, 16)), 2 * float(dp.hourly_cost(DGX, 8))
    )


def test_disaggregated_kv_transfer_uses_nvlink_inside_a_domain():
    pre = dp.Serving(tp=8, batch=1, input_len=2048, output_len=256)
    nvl = dp.disaggregated(NVL72, LLAMA70, pre, S, prefill_chips=16, decode_chips=16)
    dgx = dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=16, decode_chips=16)
    assert float(nvl.kv_bytes) == float(dgx.kv_bytes)
    # 2048 tokens × 80 layers × 2 (K, V) × 8 KV heads × 128 × 2 B
    np.testing.assert_allclose(float(dgx.kv_bytes), 2048 * 80 * 2 * 8 * 128 * 2.0)
    assert float(nvl.kv_transfer) < float(dgx.kv_transfer)


def test_goodput_is_zero_when_an_slo_is_missed_and_rate_otherwise():
    pre = dp.Serving(tp=8, batch=1, input_len=2048, output_len=256)
    ok = dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=8, decode_chips=8)
    miss = dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=8, decode_chips=8,
                            tpot_slo=1e-4)  # fmt: skip
    assert float(ok.goodput) == float(ok.requests_per_s) > 0
    assert float(miss.goodput) == 0.0


def test_disaggregation_gradients_are_finite():
    pre = dp.Serving(tp=8, batch=1, input_len=2048, output_len=256)

    def f(c):
        d = dp.disaggregated(
            c, LLAMA70, pre, S, prefill_chips=16.0, decode_chips=16.0,
            relax=dp.Smooth(),
        )  # fmt: skip
        return d.output_tokens_per_s

    g = jax.grad(f)(DGX)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert float(g.chip.hbm_bandwidth) > 0  # decode-bound pool: more bandwidth helps


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--disaggregate", "8-8"], "must be PREFILL_GPUS:DECODE_GPUS"),
        (
            ["--disaggregate", "4:12"],
            "PREFILL_GPUS=4 must be a multiple of a worker's chips "
            "(tp·pp·attention_dp)=8",
        ),
        (["--disaggregate", "8:16"], "--gpus=16 must equal PREFILL_GPUS + DECODE_GPUS"),
    ],
)
def test_disaggregate_flag_errors(capsys, argv, pattern):
    rc = main(["infer", "--hardware", "dgx_h100", "--model", "llama2_70b", "--gpus",
               "16", "--tp", "8", *argv])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and pattern in err


def test_disaggregate_json(capsys):
    import json

    rc = main(["infer", "--hardware", "gb200_nvl72", "--model", "llama3_70b", "--gpus",
               "32", "--tp", "8", "--batch", "64", "--disaggregate", "16:16",
               "--ttft-slo", "2", "--tpot-slo", "0.05", "--json"])  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    d = data["disaggregated"]
    assert d["prefill_gpus"] == 16 and d["kv_bytes_per_request"] > 0
    assert data["continuous_batching"]["usd_per_million_output_tokens"] > 0


def test_kv_over_pcie_is_slower_than_nvlink_and_bad_tier_is_an_error():
    pre = dp.Serving(tp=8, batch=1, input_len=2048, output_len=256)
    up = dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=8, decode_chips=8,
                          kv_tier="scale_up")  # fmt: skip
    pcie = dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=8, decode_chips=8,
                            kv_tier="pcie")  # fmt: skip
    assert float(pcie.kv_transfer) > float(up.kv_transfer)
    with pytest.raises(ValueError, match="kv_tier='cxl' must be"):
        dp.disaggregated(DGX, LLAMA70, pre, S, prefill_chips=8, decode_chips=8,
                         kv_tier="cxl")  # fmt: skip


def test_weight_only_int4_reads_fewer_bytes_and_pays_dequantization():
    import equinox as eqx

    int4 = eqx.tree_at(lambda m: m.precision, LLAMA70,
                       dp.Precision(math="bf16", weights="int4"))  # fmt: skip
    # DGX-A100: its fitted GEMM curve keeps batch-1 GEMVs memory-bound (H100's fitted
    # matmul_half_dim makes int4 GEMVs compute-bound: a known limitation, see notes).
    a100 = dp.load_hardware("dgx_a100")
    small = dp.Serving(tp=8, batch=1, input_len=1024, output_len=128)
    d16 = dp.decode_step(a100, LLAMA70, small)
    d4 = dp.decode_step(a100, int4, small)
    assert float(d4.matmul) < 0.4 * float(d16.matmul)  # 4x fewer weight bytes
    assert float(d4.elementwise) > float(d16.elementwise)  # dequantization
    r = dp.serve(a100, int4, small)
    assert float(r.memory_per_gpu) < float(
        dp.serve(a100, LLAMA70, small).memory_per_gpu
    )


def test_microscaling_formats_use_their_peak_and_bytes():
    b200 = dp.load_hardware("b200")
    assert float(b200.chip.peak_flops("nvfp4")) == float(b200.chip.flops_fp4)
    assert float(b200.chip.peak_flops("mxfp8")) == float(b200.chip.flops_fp8)
    assert dp.Precision(weights="nvfp4").bytes("weights") == pytest.approx(0.5625)


def test_mixed_step_attention_is_decode_plus_prompt_prefill():
    cb = dp.continuous_batching(DGX, LLAMA70, S)
    dec = dp.decode_step(DGX, LLAMA70, S)
    ratio = float(cb["step"].attention / dec.attention)
    assert 1.0 < ratio < 1.0 + 2048 / 256  # not every token over the full context
    assert float(cb["ttft"]) >= float(cb["tpot"])  # at least one step


def test_graphs_replay_decode_steps_only_prompt_steps_launch_from_the_host():
    """`Serving.graphs` removes the CPU launch time of decode steps; a prefill, or a
    mixed step with prompt tokens, is launched kernel by kernel (engines capture
    decode batches only): a short prompt of an MoE model with many kernels per layer
    is bound by the launches (host_stall > 0), its decode step is not, and an empty
    prompt share leaves a mixed step graphed."""
    from diffperf.model.phases import mixed_step

    hw = dp.load_hardware("b200", stack="trtllm")  # an engine's host costs
    moe = dp.load_workload("gpt_oss_120b")
    s = dp.Serving(tp=8, batch=1, input_len=256, output_len=64, graphs=True)
    eager = dp.Serving(tp=8, batch=1, input_len=256, output_len=64, graphs=False)
    pre = dp.prefill(hw, moe, s)
    assert float(pre.host_stall) > 0.0
    assert float(pre.total) == pytest.approx(float(dp.prefill(hw, moe, eager).total))
    assert float(dp.decode_step(hw, moe, s).host_stall) == 0.0
    assert float(dp.decode_step(hw, moe, eager).host_stall) > 0.0
    dec_only = mixed_step(hw, moe, s, decodes=8.0, prefill_tokens=0.0)
    with_prompt = mixed_step(hw, moe, s, decodes=8.0, prefill_tokens=256.0)
    assert float(dec_only.host_stall) == 0.0 < float(with_prompt.host_stall)


def test_cli_speculative(capsys):
    import json

    rc = main(["infer", "--hardware", "dgx_h100", "--model", "llama2_70b", "--gpus",
               "8", "--tp", "8", "--draft-model", "llama2_7b", "--acceptance", "0.8",
               "--json"])  # fmt: skip
    sp = json.loads(capsys.readouterr().out)["speculative"]
    assert rc == 0 and sp["speedup"] > 1.0 and sp["draft_model"] == "llama2_7b"


def test_pipeline_keeps_pp_microbatches_in_flight():
    """PP 4 at batch 32: a token passes all stages of its 8-sequence microbatch
    (TPOT), and the replica emits 32 tokens per pass: ~4× a lone microbatch."""
    pp4 = dp.Serving(tp=2, pp=4, batch=32, input_len=1024, output_len=128)
    one = dp.Serving(tp=2, pp=4, batch=8, input_len=1024, output_len=128)
    r = dp.serve(DGX, LLAMA70, pp4)
    np.testing.assert_allclose(
        float(r.tpot), float(dp.decode_step(DGX, LLAMA70, one).total), rtol=1e-9
    )
    lone = 8 / float(dp.decode_step(DGX, LLAMA70, one).total)
    decode_rate = 32 / float(r.tpot)
    assert decode_rate == pytest.approx(4 * lone, rel=1e-9)
    # TTFT: 4 prompt microbatches leave the pipeline after (4 + 4 − 1) stage times
    pre = float(dp.prefill(DGX, LLAMA70, one).total)
    assert float(r.ttft) == pytest.approx(pre * 7 / 4, rel=1e-9)
    # pp = 1 is unchanged: one microbatch of the whole batch
    flat = dp.Serving(tp=8, batch=32, input_len=1024, output_len=128)
    assert float(dp.serve(DGX, LLAMA70, flat).tpot) == pytest.approx(
        float(dp.decode_step(DGX, LLAMA70, flat).total), rel=1e-12
    )


def test_mtp_and_eagle_drafts_are_one_block_of_the_target():
    from diffperf.model.serving import draft_model

    ds = dp.load_workload("deepseek_v3")
    mtp = draft_model(ds, "mtp")
    # DeepSeek-V3's MTP module: one MoE block + shared embedding/head, ~14B params
    # with the embeddings (technical report: 671B main + 14B MTP)
    assert 11e9 < float(mtp.params()) < 16e9 and float(mtp.n_layers) == 1.0
    eagle = draft_model(LLAMA70, "eagle")
    assert float(eagle.n_experts) == 0.0 and float(eagle.d_ff) == float(LLAMA70.d_ff)
    base = dp.Serving(tp=8, batch=8, input_len=1024, output_len=256)
    t0 = float(dp.decode_step(DGX, LLAMA70, base).total)
    t = float(dp.speculative_tpot(DGX, LLAMA70, "eagle", base, k=6.0,
                                  acceptance_length=3.5))  # fmt: skip
    assert t < t0  # a one-layer draft and 3.5 tokens per verify pay off
    slower = float(dp.speculative_tpot(DGX, LLAMA70, "eagle", base, k=6.0,
                                       acceptance_length=1.0))  # fmt: skip
    assert slower > t0  # nothing accepted: drafting is pure overhead
    with pytest.raises(ValueError, match="speculative='medusa' must be one of"):
        draft_model(LLAMA70, "medusa")


def test_disaggregated_worker_counts_and_balance():
    pre = dp.Serving(tp=4, batch=1, input_len=2048, output_len=256)
    dec = dp.Serving(tp=8, batch=64, input_len=2048, output_len=256)
    d = dp.disaggregated(DGX, LLAMA70, pre, dec, prefill_chips=8, decode_chips=16)
    assert float(d.prefill_workers) == 2 and float(d.decode_workers) == 2
    assert float(d.requests_per_s) == pytest.approx(
        min(float(d.prefill_requests_per_s), float(d.decode_requests_per_s))
    )
    # at the balanced ratio both pools sustain the same rate
    y = 2 * float(d.balanced_decode_per_prefill)
    bal = dp.disaggregated(DGX, LLAMA70, pre, dec, prefill_chips=8,
                           decode_chips=8 * y)  # fmt: skip
    assert float(bal.prefill_requests_per_s) == pytest.approx(
        float(bal.decode_requests_per_s), rel=1e-9
    )


def test_xpyd_flag(capsys):
    import json

    rc = main(["infer", "--hardware", "dgx_h100", "--model", "llama3_70b", "--gpus",
               "16", "--tp", "8", "--batch", "64", "--disaggregate", "2P1D",
               "--prefill-tp", "4", "--speculative", "eagle", "--acceptance-length",
               "3", "--json"])  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    d = data["disaggregated"]
    assert d["prefill_workers"] == 2 and d["decode_workers"] == 1
    assert d["prefill_gpus"] == 8 and d["decode_gpus"] == 8
    assert d["prefill_layout"]["tp"] == 4 and d["decode_layout"]["tp"] == 8
    assert data["speculative"]["method"] == "eagle"
    assert data["speculative"]["acceptance_length"] == 3
