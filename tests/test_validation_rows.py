"""Rows as measurement tables print them: architecture columns, LoRA, TPU meshes,
units, and the accounting of `diffperf validate` (issue #16)."""

import dataclasses

import pytest

import diffperf as dp
from diffperf import io
from diffperf.model.data_parallel import dp_collectives, stage_params
from diffperf.model.memory import train_memory_parts
from diffperf.validation.common import summarize
from diffperf.validation.common import throughput_scope as _scope
from diffperf.validation.frameworks import parse_mesh, profile, source_flops
from diffperf.validation.serving import predict_infer_row
from diffperf.validation.training import predict_row, resolve_training_row

from .helpers import tree_allclose

ARCH = dict(layers="4", hidden="512", heads="8", kv_heads="2", ffn_hidden="1536",
            mlp_activation="swiglu", tied_embeddings="false", vocab="32000",
            seq_len="1024")  # fmt: skip


def _toml(tmp_path, name, text):
    path = tmp_path / f"{name}.toml"
    path.write_text('[meta]\nschema = 1\nsource = "test"\n' + text)
    return path


def test_architecture_row_equals_the_same_model_as_toml(tmp_path):
    row_model = io.load_workload("proxy_model", ARCH)
    native = _toml(tmp_path, "proxy_model", """
[model]
n_layers = 4
d_model = 512
n_heads = 8
n_kv_heads = 2
head_dim = 64
d_ff = 1536
vocab_size = 32000
max_seq_len = 1024
mlp = "gated"
tied_embeddings = false
""")  # fmt: skip
    vocab = _toml(tmp_path, "proxy_model", "[model]\n" + "\n".join(
        f"{k} = {v if v.isdigit() or v in ('true', 'false') else repr(v)}"
        for k, v in ARCH.items()
    ))  # fmt: skip
    assert row_model == io.load_workload(native)
    assert row_model == io.load_workload(vocab)


def test_a_proxy_overrides_a_named_model_in_a_row_a_toml_and_flags(tmp_path):
    row = io.load_workload("meta-llama/Llama-3.1-405B", {"layers": "8"})
    base = io.load_workload("llama3_1_405b")
    assert float(row.n_layers) == 8.0 and float(row.d_model) == float(base.d_model)
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        '[meta]\nschema = 1\nsource = "test"\nextends = "llama3_1_405b"\n'
        "[model]\nn_layers = 8\n"
    )
    assert tree_allclose(row, dataclasses.replace(io.load_workload(toml),
                                                  name=row.name))  # fmt: skip
    with pytest.raises(ValueError, match="to define it give .*hidden"):
        io.load_workload("Unknown-7B", {"layers": "8"})
    with pytest.raises(ValueError, match="mlp_activation='tanh' must be one of"):
        io.load_workload("llama3_1_405b", {"mlp_activation": "tanh"})


def _lora_row(**extra):
    return {
        "source": "test", "model": "tiny", "gpu": "H100 SXM5 80GB", "num_gpus": "1",
        "tp": "1", "pp": "1", "microbatch": "2", "global_batch": "4", "dtype": "bf16",
        "framework": "NeMo 24.07", "zero": "0", "measured_tokens_per_s_per_gpu": "1e4",
    } | ARCH | extra  # fmt: skip


def test_lora_row_memory_and_flops_match_closed_forms():
    _, cluster, model, full, _, _ = resolve_training_row(_lora_row())
    _, _, _, lora, _, _ = resolve_training_row(
        _lora_row(finetune="lora", lora_rank="16", lora_targets="qkv,o_proj")
    )
    assert (lora.trainable, lora.lora_rank, lora.lora_targets) == (
        0.0, 16.0, ("qkv", "attn_out"))  # fmt: skip
    L, D, N, K, H, F = 4, 512, 8, 2, 64, 1536
    r, tokens = 16, 4 * 1024
    p_lora = L * r * ((D + (N + 2 * K) * H) + (N * H + D))  # qkv and o adapters
    p_gemm = (2 * D * N * H + 2 * D * K * H) + 3 * D * F  # a layer's GEMM weights
    # memory: frozen base has no gradient or Adam state; adapters have all three
    parts = train_memory_parts(model, lora, cluster.chip, relax=dp.Exact())
    dense, _ = stage_params(model, lora)
    assert float(parts["weights"]) == pytest.approx(2 * (float(dense) + p_lora))
    assert float(parts["gradients"]) == pytest.approx(4 * p_lora)
    assert float(parts["optimizer"]) == pytest.approx(12 * p_lora)
    full_parts = train_memory_parts(model, full, cluster.chip, relax=dp.Exact())
    adapter_acts = L * tokens / 2 * 2 * r * 2  # r-wide A outputs of 2 targets, bf16
    assert float(parts["activations"] - full_parts["activations"]) == pytest.approx(
        adapter_acts
    )
    # FLOPs: the base skips its wgrad (one of three passes of its GEMMs); adapters
    # run all three passes: Δ = T·L·(2·P_gemm − 6·P_lora/L)
    b_full, b_lora = (dp.train_step(cluster, model, m) for m in (full, lora))
    delta = float(b_full.hardware_flops - b_lora.hardware_flops)
    assert delta == pytest.approx(tokens * (L * 2 * p_gemm - 6 * p_lora), rel=1e-9)
    model_delta = float(b_full.model_flops - b_lora.model_flops)
    active = float(model.active_params())
    assert model_delta == pytest.approx(tokens * (2 * active - 6 * p_lora), rel=1e-9)
    assert float(b_lora.total) < float(b_full.total)
    # the adapters' gradients are all-reduced in fp32 (4 B each)
    assert float(dp_collectives(model, lora)[0].nbytes) == pytest.approx(4 * p_lora)


def test_tpu_v5p_mesh_row_is_a_slice_with_hybrid_sharding_over_dcn():
    row = {
        "source": "test", "model": "synthetic", "gpu": "TPU v5p", "num_gpus": "512",
        "mesh": "ici_fsdp_parallelism=256, dcn_data_parallelism=2", "microbatch": "2",
        "global_batch": "1024", "dtype": "bf16", "framework": "MaxText (JAX/XLA)",
        "recompute": "full", "measured_tflops_per_gpu": "250", "flops_formula": "6n",
    } | ARCH  # fmt: skip
    kind, cluster, model, mapping, gpus, names = resolve_training_row(row)
    assert (kind, cluster.name, gpus) == ("maxtext", "tpu_v5p_pod", 512)
    assert float(cluster.scale_up.size) == 256.0  # one slice is the ICI domain
    assert [float(d.size) for d in cluster.scale_up.dims] == [4.0, 8.0, 8.0]
    assert (float(mapping.dp), float(mapping.shard_group), mapping.zero) == (
        512.0, 256.0, 3)  # fmt: skip
    kinds = {
        (r.kind, float(r.group), float(r.stride))
        for r in dp_collectives(model, mapping)
    }
    assert ("all_reduce", 2.0, 256.0) in kinds  # the shard's gradient crosses DCN
    res = predict_row(row)
    assert res["metric"] == "tflops_per_gpu" and res["ape"] >= 0
    flops = source_flops("6n", model, 1024.0, 1024.0)
    assert res["predicted"] == pytest.approx(flops / res["step_time_s"] / 512 / 1e12)
    assert res["resolved_hardware"]["spec"] == "tpu_v5p"


def test_mesh_counting_and_profiles():
    assert parse_mesh("ici_fsdp=16,ici_tensor=16,dcn_data=2") == dict(
        tp=16, pp=1, cp=1, ep=1, dp=32, fsdp=16, ici=256)  # fmt: skip
    with pytest.raises(ValueError, match="mesh"):
        parse_mesh("ici_banana=4")
    assert profile("Megatron-LM (2020)") == "megatron_legacy"
    assert profile("Megatron-Core (2024)") == profile("NeMo 24.07") == "megatron"
    assert profile("MaxText (JAX/XLA), Oct 2023") == "maxtext"
    assert profile("") == "generic"


def test_trainium_neuron_cores_are_counted_per_chip():
    row = _lora_row(gpu="trn1.32xlarge", num_gpus="32", tp="8", microbatch="1",
                    global_batch="4", count_unit="device",
                    framework="NeuronX")  # fmt: skip
    _, cluster, _, mapping, gpus, _ = resolve_training_row(row)
    # 32 NeuronCores = 16 chips; TP 8 over cores = TP 4 over chips
    assert (cluster.name, gpus, float(mapping.tp), float(mapping.dp)) == (
        "trn1", 16, 4.0, 4.0)  # fmt: skip
    # Trainium2 at LNC = 1: 8 logical NeuronCores per chip, so 128 of them = 16 chips
    trn2 = row | {
        "gpu": "trn2.48xlarge",
        "num_gpus": "128",
        "tp": "8",
        "lnc": "1",
        "global_batch": "16",
    }
    _, cluster, _, mapping, gpus, _ = resolve_training_row(trn2)
    assert (cluster.name, gpus, float(mapping.tp), float(mapping.dp)) == (
        "trn2", 16, 1.0, 16.0)  # fmt: skip


def test_summary_counts_excluded_refused_and_infeasible_rows():
    rows = [
        dict(row=0, source="A", hardware="h", model="m", ape=0.1, feasible=True),
        dict(row=1, source="A", hardware="h", model="m", ape=0.3, feasible=False),
        dict(
            row=2,
            source="A",
            hardware="h",
            model="m",
            ape=5.0,
            feasible=True,
            excluded="contradicts its source",
        ),  # fmt: skip
        dict(row=3, source="A", reason="unknown hardware"),
    ]
    out = summarize(rows)
    assert (out["rows"], out["rows_predicted"], out["rows_refused"]) == (4, 3, 1)
    assert (out["rows_excluded"], out["rows_infeasible"]) == (1, 1)
    assert out["mape"] == pytest.approx(0.2)  # the infeasible row is scored
    assert out["mape_with_excluded"] == pytest.approx(5.4 / 3)
    group = out["by_source"]["A"]
    assert group["mape"] == pytest.approx(0.2) and group["infeasible"] == 1
    assert group["mape_with_excluded"] == pytest.approx(5.4 / 3)
    assert out["refused"] == {"unknown hardware": 1}


def test_throughput_units_are_honoured():
    row = {"source": "t", "model": "llama2_7b", "gpu": "H100", "num_gpus": "8",
           "tp": "1", "dtype": "fp16", "batch": "8", "input_len": "128",
           "metric": "offline_samples_per_s", "value": "10",
           "unit": "samples/s"}  # fmt: skip
    with pytest.raises(ValueError, match="needs output_len"):
        predict_infer_row(row)
    with pytest.raises(ValueError, match="must be s, ms or us"):
        predict_infer_row(row | {"metric": "ttft", "unit": "tokens"})
    assert _scope("output tokens/s per GPU") == "gpu"
    assert _scope("tokens/s per node") == "node"
    assert _scope("output tokens/s (per-GPU vs total not stated)") == "gpu"
    assert _scope("tokens/s per replica") == "replica"
    assert _scope("output tokens/s") == "system"


def test_cli_defines_a_model_by_flags_and_fine_tunes_it(capsys):
    import json

    from diffperf.cli.main import main

    argv = ["train", "--hardware", "h100_sxm", "--model", "tiny-proxy", "--gpus", "8",
            "--layers", "2", "--hidden", "256", "--heads", "4", "--vocab", "1000",
            "--seq-len", "256", "--mlp-activation", "swiglu", "--shard-group", "4",
            "--zero", "3", "--finetune", "lora", "--lora-targets", "qkv,mlp_down",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resolved_model"]["how"] == "architecture"
    assert out["mapping"]["lora_targets"] == ["qkv", "mlp_down"]
    assert (out["mapping"]["trainable"], out["mapping"]["shard_group"]) == (0.0, 4.0)
    assert main(argv[:-3] + ["--lora-targets", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--lora-targets" in err and err.count("\n") == 1
