"""--emit: a mapping as the launch flags of training and serving frameworks."""

import json

import pytest

import diffperf as dp
from diffperf.cli import main
from diffperf.cli.emit import (
    FRAMEWORKS,
    SERVE_FRAMEWORKS,
    TRAIN_FRAMEWORKS,
    serve_launch,
    train_launch,
)

DGX = dp.load_hardware("dgx_h100")
GPT3 = dp.load_workload("gpt3_175b")  # 96 layers, dense
DSV3 = dp.load_workload("deepseek_v3")  # 61 layers, 256 experts
DENSE = dp.Parallelism(tp=8, pp=8, dp=16, vpp=6, microbatch=1, global_batch=2048,
                       recompute="selective", sequence_parallel=True)  # fmt: skip
MOE = dp.Parallelism(pp=8, dp=32, ep=32, microbatch=1, global_batch=4096,
                     seq_len=4096, recompute="full", ep_overlap=1.0)  # fmt: skip


def _flags(framework: str, argv: list[str]) -> list[str]:
    """The framework flags of an argv (after the launcher)."""
    if framework in ("nemo", "maxtext"):
        return [a.split("=", 1)[0] for a in argv if "=" in a and not a.startswith("-")]
    launcher = {"--nnodes", "--nproc-per-node", "--job.config_file"}
    return [a for a in argv if a.startswith("-") and a not in launcher and a != "-m"]


def _value(argv: list[str], flag: str) -> str:
    for a in argv:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return argv[argv.index(flag) + 1]


def _check_documented(launch: dict):
    known = FRAMEWORKS[launch["framework"]].flags
    for c in launch["commands"]:
        for flag in _flags(launch["framework"], c["argv"]):
            assert flag in known, (launch["framework"], flag)
    assert launch["version"] and launch["source"]


@pytest.mark.parametrize("framework", TRAIN_FRAMEWORKS)
@pytest.mark.parametrize("case", ["dense", "moe"])
def test_every_training_flag_is_documented(framework, case):
    model, mapping = (GPT3, DENSE) if case == "dense" else (DSV3, MOE)
    gpus = int(mapping.tp * mapping.pp * mapping.dp * mapping.cp)
    _check_documented(
        train_launch(framework, DGX, model, mapping, gpus=gpus, dtype="fp8")
    )


def test_megatron_dense():
    out = train_launch("megatron", DGX, GPT3, DENSE, gpus=1024, dtype="fp8")
    (cmd,) = out["commands"]
    assert cmd["argv"][:6] == ["torchrun", "--nnodes", "128", "--nproc-per-node",
                               "8", "pretrain_gpt.py"]  # fmt: skip
    assert cmd["argv"][6:] == [
        "--tensor-model-parallel-size", "8", "--pipeline-model-parallel-size", "8",
        "--num-layers-per-virtual-pipeline-stage", "2",  # 96 layers / (8·6)
        "--micro-batch-size", "1", "--global-batch-size", "2048",
        "--seq-length", "2048", "--sequence-parallel",
        "--recompute-granularity", "selective", "--use-distributed-optimizer",
        "--overlap-grad-reduce", "--overlap-param-gather",
        "--bf16", "--fp8-format", "hybrid", "--attention-backend", "fused",
    ]  # fmt: skip


def test_megatron_moe():
    argv = train_launch("megatron", DGX, DSV3, MOE, gpus=256, dtype="bf16")["commands"][
        0
    ]["argv"]
    assert _value(argv, "--expert-model-parallel-size") == "32"
    assert _value(argv, "--expert-tensor-parallel-size") == "1"
    assert _value(argv, "--moe-token-dispatcher-type") == "alltoall"
    assert "--overlap-moe-expert-parallel-comm" in argv
    assert _value(argv, "--recompute-granularity") == "full"
    assert _value(argv, "--recompute-method") == "uniform"
    assert "--sequence-parallel" not in argv  # tp = 1
    assert "--num-layers-per-virtual-pipeline-stage" not in argv


def test_nemo_overrides():
    argv = train_launch("nemo", DGX, DSV3, MOE, gpus=256, dtype="fp8")["commands"][0][
        "argv"
    ]
    assert "model.expert_model_parallel_size=32" in argv
    assert "model.pipeline_model_parallel_size=8" in argv
    assert "train.global_batch_size=4096" in argv
    assert "mixed_precision=bf16_with_fp8_current_scaling_mixed" in argv
    assert "ddp.use_distributed_optimizer=true" in argv
    assert "model.overlap_moe_expert_parallel_comm=true" in argv


def test_maxtext_puts_inner_axes_on_ici():
    argv = train_launch("maxtext", DGX, GPT3, DENSE, gpus=1024, dtype="bf16")[
        "commands"
    ][0]["argv"]
    ici = {"tensor": 8, "data": 1, "pipeline": 1}
    dcn = {"tensor": 1, "data": 16, "pipeline": 8}
    for axis in ici:
        assert _value(argv, f"ici_{axis}_parallelism") == str(ici[axis])
        assert _value(argv, f"dcn_{axis}_parallelism") == str(dcn[axis])
    assert _value(argv, "per_device_batch_size") == "2"  # 2048 / 1024
    assert _value(argv, "num_pipeline_microbatches") == "128"  # 2048 / (16·1)
    assert _value(argv, "remat_policy") == "minimal"
    moe = train_launch("maxtext", DGX, DSV3, MOE, gpus=256, dtype="bf16")
    margv = moe["commands"][0]["argv"]
    # EP 32 carved out of DP 32: the expert axis fills the 8-GPU slice
    assert _value(margv, "ici_expert_parallelism") == "8"
    assert _value(margv, "dcn_expert_parallelism") == "4"
    assert _value(margv, "dcn_data_parallelism") == "1"


def test_torchtitan_pipeline_batches():
    argv = train_launch("torchtitan", DGX, GPT3, DENSE, gpus=1024, dtype="bf16")[
        "commands"
    ][0]["argv"]
    assert _value(argv, "--parallelism.pipeline_parallel_schedule") == (
        "Interleaved1F1B"
    )
    assert _value(argv, "--training.local_batch_size") == "128"  # 2048 / dp 16
    assert _value(argv, "--parallelism.pipeline_parallel_microbatch_size") == "1"
    assert _value(argv, "--parallelism.data_parallel_shard_degree") == "16"
    moe = train_launch("torchtitan", DGX, DSV3, MOE, gpus=256, dtype="bf16")
    assert (
        _value(moe["commands"][0]["argv"], "--parallelism.expert_parallel_degree")
        == "32"
    )


LLAMA = dp.load_workload("llama3_70b")
DENSE_SERVE = dp.Serving(tp=8, batch=64, input_len=2048, output_len=256)
MOE_SERVE = dp.Serving(tp=8, pp=2, ep=8, batch=64, input_len=4096, output_len=512)


def _serve(framework, model, serving, gpus, pools=None, dtype="bf16"):
    out = serve_launch(framework, model, serving, gpus=gpus, weights=dtype,
                       kv_dtype=dtype, model_name="org/model", pools=pools)  # fmt: skip
    _check_documented(out)
    return out


@pytest.mark.parametrize("framework", SERVE_FRAMEWORKS)
def test_every_serving_flag_is_documented(framework):
    _serve(framework, LLAMA, DENSE_SERVE, 32)
    _serve(framework, DSV3, MOE_SERVE, 32, dtype="fp8")
    _serve(framework, DSV3, MOE_SERVE, 32, pools=(16, 16))


def test_vllm_dense_and_moe():
    (cmd,) = _serve("vllm", LLAMA, DENSE_SERVE, 32)["commands"]
    assert cmd["argv"][:3] == ["vllm", "serve", "org/model"] and cmd["count"] == 1
    assert _value(cmd["argv"], "--tensor-parallel-size") == "8"
    assert _value(cmd["argv"], "--data-parallel-size") == "4"  # 32 GPUs / 8
    assert _value(cmd["argv"], "--max-num-seqs") == "64"
    assert _value(cmd["argv"], "--max-model-len") == "2304"
    (moe,) = _serve("vllm", DSV3, MOE_SERVE, 32, dtype="fp8")["commands"]
    # vLLM's DP would widen EP over replicas: two separate servers instead
    assert moe["count"] == 2 and "--data-parallel-size" not in moe["argv"]
    assert "--enable-expert-parallel" in moe["argv"]
    assert _value(moe["argv"], "--pipeline-parallel-size") == "2"
    assert _value(moe["argv"], "--kv-cache-dtype") == "fp8"


def test_sglang_dense_moe_and_pd():
    (cmd,) = _serve("sglang", LLAMA, DENSE_SERVE, 32)["commands"]
    assert _value(cmd["argv"], "--tp-size") == "8"
    assert _value(cmd["argv"], "--dp-size") == "4"
    (moe,) = _serve("sglang", DSV3, MOE_SERVE, 16)["commands"]
    assert _value(moe["argv"], "--ep-size") == "8" and "--dp-size" not in moe["argv"]
    pre, dec = _serve("sglang", DSV3, MOE_SERVE, 32, pools=(16, 16))["commands"]
    assert _value(pre["argv"], "--disaggregation-mode") == "prefill"
    assert _value(dec["argv"], "--disaggregation-mode") == "decode"
    assert _value(dec["argv"], "--max-running-requests") == "64"
    assert pre["count"] == dec["count"] == 1


def test_trtllm_and_dynamo_disaggregated():
    out = _serve("trtllm", DSV3, MOE_SERVE, 48, pools=(16, 32))
    ctx, gen, router = out["commands"]
    assert (ctx["count"], gen["count"]) == (1, 2)
    assert _value(gen["argv"], "--ep_size") == "8"
    cfg = out["files"]["disagg_config.yaml"]
    assert "context_servers:\n  num_instances: 1" in cfg
    assert "generation_servers:\n  num_instances: 2" in cfg
    assert router["argv"] == ["trtllm-serve", "disaggregated", "-c",
                              "disagg_config.yaml"]  # fmt: skip
    dyn = _serve("dynamo", DSV3, MOE_SERVE, 48, pools=(16, 32))["commands"]
    assert [c["role"] for c in dyn] == ["frontend", "prefill", "decode"]
    assert [c["count"] for c in dyn] == [1, 1, 2]
    assert _value(dyn[1]["argv"], "--disaggregation-mode") == "prefill"
    assert "kv_producer" in _value(dyn[1]["argv"], "--kv-transfer-config")
    assert "kv_consumer" in _value(dyn[2]["argv"], "--kv-transfer-config")


def test_the_flags_the_issue_names_are_in_the_tables():
    assert {"--tensor-model-parallel-size", "--pipeline-model-parallel-size",
            "--num-layers-per-virtual-pipeline-stage", "--micro-batch-size",
            "--global-batch-size", "--sequence-parallel",
            "--recompute-granularity"} <= FRAMEWORKS["megatron"].flags  # fmt: skip
    assert {"--tensor-parallel-size", "--pipeline-parallel-size",
            "--max-num-seqs"} <= FRAMEWORKS["vllm"].flags  # fmt: skip
    assert {"--tp-size", "--dp-size", "--ep-size"} <= FRAMEWORKS["sglang"].flags


def test_cli_emit(capsys):
    flags = ["--hardware", "dgx_h100", "--model", "llama3_8b", "--gpus", "16",
             "--tp", "2", "--global-batch", "64", "--json"]  # fmt: skip
    assert main(["train", *flags, "--emit", "megatron"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["launch"]["framework"] == "megatron" and "step_time_s" in out
    assert "--tensor-model-parallel-size" in out["launch"]["commands"][0]["argv"]
    assert main(["train", *flags, "--emit", "vllm"]) == 2
    assert "--emit" in capsys.readouterr().err
    iflags = ["--hardware", "dgx_h100", "--model", "llama3_8b", "--gpus", "4",
              "--tp", "2", "--batch", "8", "--disaggregate", "2:2",
              "--json"]  # fmt: skip
    assert main(["infer", *iflags, "--emit", "dynamo"]) == 0
    out = json.loads(capsys.readouterr().out)
    roles = [c["role"] for c in out["launch"]["commands"]]
    assert roles == ["frontend", "prefill", "decode"] and "ttft_s" in out


WIDE_EP = dp.Serving(tp=1, attention_dp=8, ep=8, batch=256, input_len=1024,
                     output_len=1024)  # fmt: skip


def test_attention_dp_in_every_engine():
    """Attention DP x wide EP: one replica of tp·attention_dp = 8 GPUs, 2 replicas."""
    out = _serve("trtllm", DSV3, WIDE_EP, 16, dtype="fp8")
    (srv,) = out["commands"]
    assert srv["count"] == 2 and _value(srv["argv"], "--tp_size") == "8"
    assert _value(srv["argv"], "--ep_size") == "8"
    assert "enable_attention_dp: true" in out["files"]["extra.yaml"]
    assert not out["notes"] or "attention TP" not in " ".join(out["notes"])
    (sg,) = _serve("sglang", DSV3, WIDE_EP, 16)["commands"]
    assert sg["count"] == 2 and "--enable-dp-attention" in sg["argv"]
    assert _value(sg["argv"], "--tp-size") == "8"
    assert _value(sg["argv"], "--dp-size") == "8"
    (vl,) = _serve("vllm", DSV3, WIDE_EP, 16)["commands"]
    assert vl["count"] == 2 and "--enable-expert-parallel" in vl["argv"]
    assert _value(vl["argv"], "--tensor-parallel-size") == "1"
    assert _value(vl["argv"], "--data-parallel-size") == "8"
    # attention TP 2 under attention DP: TensorRT-LLM cannot say it, and says so
    tp2 = dp.Serving(tp=2, attention_dp=4, ep=8, batch=256)
    out = _serve("trtllm", DSV3, tp2, 8)
    assert _value(out["commands"][0]["argv"], "--tp_size") == "8"
    assert any("attention TP 1" in n for n in out["notes"])
    # disaggregated: the worker yaml counts every rank of a worker
    out = _serve("trtllm", DSV3, WIDE_EP, 32, pools=(16, 16))
    assert "tensor_parallel_size: 8" in out["files"]["disagg_config.yaml"]


def test_cli_attention_dp(capsys):
    flags = ["infer", "--hardware", "h200_sxm", "--model", "deepseek_v3", "--gpus",
             "16", "--dtype", "fp8", "--ep", "8", "--batch", "128",
             "--json"]  # fmt: skip
    assert main([*flags, "--tp", "8"]) == 0
    tp8 = json.loads(capsys.readouterr().out)
    assert main([*flags, "--attention-dp", "8", "--emit", "sglang"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["mapping"]["attention_dp"] == 8 and wide["mapping"]["tp"] == 1
    assert "--enable-dp-attention" in wide["launch"]["commands"][0]["argv"]
    # MLA under TP 8 replicates the latent KV on every chip; attention DP does not
    assert wide["max_batch"] > tp8["max_batch"]
    assert main([*flags[:6], "12", *flags[7:], "--attention-dp", "8"]) == 2
    assert "tp·pp·attention_dp=8" in capsys.readouterr().err
    dense = ["infer", "--hardware", "h200_sxm", "--model", "llama3_8b", "--gpus", "2",
             "--attention-dp", "2"]  # fmt: skip
    assert main(dense) == 2
    assert "attention_dp=2 must be 1 for a dense model" in capsys.readouterr().err


def test_recompute_modules_flag_and_emit(capsys):
    """--recompute-modules reaches the mapping, the JSON, the memory model and the
    Megatron / Megatron-Bridge flags; frameworks that cannot name modules say so."""
    flags = ["--hardware", "dgx_h100", "--model", "deepseek_v3", "--gpus", "256",
             "--pp", "8", "--ep", "32", "--global-batch", "4096", "--seq-len", "4096",
             "--recompute", "selective", "--json"]  # fmt: skip
    assert main(["train", *flags]) == 0
    attn = json.loads(capsys.readouterr().out)
    assert attn["mapping"]["recompute_modules"] == ["core_attn"]  # Megatron's default
    mods = ["--recompute-modules", "core_attn,moe_act,layernorm"]
    assert main(["train", *flags, *mods, "--emit", "megatron"]) == 0
    more = json.loads(capsys.readouterr().out)
    assert more["mapping"]["recompute_modules"] == ["core_attn", "moe_act", "layernorm"]
    # recomputing more modules keeps fewer activations and re-runs more work
    assert more["memory_per_gpu_bytes"] < attn["memory_per_gpu_bytes"]
    assert more["breakdown"]["recompute"] > attn["breakdown"]["recompute"]
    argv = more["launch"]["commands"][0]["argv"]
    i = argv.index("--recompute-modules")
    assert argv[i + 1 : i + 4] == ["core_attn", "moe_act", "layernorm"]
    mapping = dp.Parallelism(pp=8, dp=32, ep=32, global_batch=4096, seq_len=4096,
                             recompute="selective",
                             recompute_modules=("core_attn", "moe_act"))  # fmt: skip
    nemo = train_launch("nemo", DGX, DSV3, mapping, gpus=256, dtype="bf16")["commands"][
        0
    ]["argv"]
    assert _value(nemo, "model.recompute_modules") == "[core_attn,moe_act]"
    titan = train_launch("torchtitan", DGX, DSV3, mapping, gpus=256, dtype="bf16")
    assert any("--recompute-modules=core_attn,moe_act" in n for n in titan["notes"])
    for bad, why in ((["--recompute-modules", "attention"], "among core_attn"),
                     (["--recompute-modules", "mlp", "--recompute", "full"],
                      "needs --recompute selective")):  # fmt: skip
        assert main(["train", *flags, *bad]) == 2
        assert why in capsys.readouterr().err
