"""Launch flags: a diffperf mapping as the arguments of a training or serving framework.

`train_launch` turns a concrete `Parallelism` into the command of Megatron-LM,
NeMo (Megatron-Bridge), MaxText or torchtitan; `serve_launch` turns a `Serving` (and,
when disaggregated, the prefill/decode pools) into vLLM, SGLang, TensorRT-LLM or
Dynamo commands. Every flag emitted is looked up in `FRAMEWORKS[name].flags`, the
flag names documented for the stated version (a name missing from the table is a bug
here, raised as `RuntimeError`, and `tests/test_emit.py` checks every case against the
table). Versions and where each table was checked:

Stated versions and what each table was checked against:

- megatron: Megatron-LM main at commit 000c4ac (Megatron-Core 0.14/0.15 era):
  `megatron/training/arguments.py` (`_add_distributed_args`, `_add_training_args`,
  `_add_moe_args`, `_add_mixed_precision_args`, `_add_transformer_engine_args`,
  `_add_network_size_args`).
- nemo: Megatron-Bridge 0.3.1 (NeMo's LLM training library) on Megatron-Core 0.16.1:
  fields of `ConfigContainer` (`model.*` = `ModelParallelConfig`/`TransformerConfig`,
  `train.*` = `TrainingConfig`, `ddp.*`, `optimizer.*`, `dataset.seq_length`), the
  `mixed_precision` recipe names of `training/mixed_precision.py`; Hydra-style
  `key=value` overrides (`training/utils/omegaconf_utils.py`).
- maxtext: MaxText at commit 003b416: keys of `src/MaxText/configs/base.yml`
  (`key=value` overrides on the command line).
- torchtitan: torchtitan 0.2.0: `torchtitan/config/job_config.py` (`JobConfig`
  sections; tyro command line `--section.field`).
- vllm: vLLM 0.31.0 (the version Dynamo 1.6.1 pins): the engine-argument reference and
  Dynamo 1.6.1's vLLM config modifiers (`profiler/utils/config_modifiers/vllm.py`).
- sglang: SGLang 0.5.23: `sglang/srt/arg_groups/fields/*.py` (flag = `--` + field
  name with `-`, plus aliases).
- trtllm: TensorRT-LLM 1.1: the `trtllm-serve` command reference (1.1.0rc5 docs) and
  the disaggregated YAML keys (`context_servers`, `generation_servers`,
  `cache_transceiver_config`).
- dynamo: NVIDIA Dynamo 1.6.1 with its vLLM backend: `dynamo/vllm/backend_args.py`
  (`--disaggregation-mode`), `dynamo/vllm/args.py` (a prefill worker needs
  `--kv-transfer-config`), `dynamo/frontend/frontend_args.py` (`--http-port`).

What diffperf models but a framework cannot say is listed under `notes` instead of
being approximated silently (e.g. a fractional `ep_overlap`, attention TP > 1 under
TensorRT-LLM's attention DP, offloading a fraction of the activations).

Attention data parallelism (`Serving.attention_dp` = a ranks of tp chips, experts over
all tp·a chips): TensorRT-LLM `enable_attention_dp: true` with `--tp_size` = tp·a
(attention TP is 1 there; `Mapping.enable_attention_dp` in `tensorrt_llm/mapping.py`);
SGLang `--tp-size` tp·a `--dp-size` a `--enable-dp-attention` (attention TP =
tp_size/dp_size: the DP-attention guide of docs.sglang.io); vLLM `--data-parallel-size`
a with `--tensor-parallel-size` tp and `--enable-expert-parallel` (experts over tp·dp).
"""

import dataclasses
import json
import math

__all__ = ["TRAIN_FRAMEWORKS", "SERVE_FRAMEWORKS", "FRAMEWORKS", "train_launch",
           "serve_launch", "shell"]  # fmt: skip

TRAIN_FRAMEWORKS = ("megatron", "nemo", "maxtext", "torchtitan")
SERVE_FRAMEWORKS = ("vllm", "sglang", "trtllm", "dynamo")


@dataclasses.dataclass(frozen=True)
class Framework:
    """A framework's stated version, source and documented flag names."""

    version: str
    source: str
    flags: frozenset


_MEGATRON = frozenset({
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size",
    "--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank",
    "--context-parallel-size", "--expert-model-parallel-size",
    "--expert-tensor-parallel-size", "--micro-batch-size", "--global-batch-size",
    "--seq-length", "--sequence-parallel", "--recompute-granularity",
    "--recompute-modules",
    "--recompute-method", "--recompute-num-layers", "--use-distributed-optimizer",
    "--use-megatron-fsdp", "--data-parallel-sharding-strategy", "--overlap-grad-reduce",
    "--overlap-param-gather", "--bf16", "--fp16", "--fp8-format", "--attention-backend",
    "--moe-token-dispatcher-type", "--moe-expert-capacity-factor",
    "--moe-pad-expert-input-to-capacity", "--overlap-moe-expert-parallel-comm",
    "--optimizer-cpu-offload", "--optimizer-offload-fraction",
})  # fmt: skip
_NEMO = frozenset({
    "model.tensor_model_parallel_size", "model.pipeline_model_parallel_size",
    "model.virtual_pipeline_model_parallel_size", "model.context_parallel_size",
    "model.expert_model_parallel_size", "model.expert_tensor_parallel_size",
    "model.sequence_parallel", "model.seq_length", "dataset.seq_length",
    "train.micro_batch_size", "train.global_batch_size", "model.recompute_granularity",
    "model.recompute_modules",
    "model.recompute_method", "model.recompute_num_layers", "mixed_precision",
    "ddp.use_distributed_optimizer", "optimizer.use_distributed_optimizer",
    "ddp.use_megatron_fsdp", "ddp.data_parallel_sharding_strategy",
    "ddp.overlap_grad_reduce", "ddp.overlap_param_gather",
    "model.moe_token_dispatcher_type", "model.moe_expert_capacity_factor",
    "model.moe_pad_expert_input_to_capacity", "model.overlap_moe_expert_parallel_comm",
    "optimizer.optimizer_cpu_offload", "optimizer.optimizer_offload_fraction",
})  # fmt: skip
_MAXTEXT = frozenset({
    *(f"{tier}_{axis}_parallelism" for tier in ("ici", "dcn")
      for axis in ("data", "fsdp", "tensor", "pipeline", "context", "expert")),
    "per_device_batch_size", "max_target_length", "remat_policy",
    "num_pipeline_microbatches", "num_layers_per_pipeline_stage", "quantization",
    "attention", "shard_optimizer_over_data", "optimizer_memory_host_offload",
    "capacity_factor", "hardware", "run_name",
})  # fmt: skip
_TORCHTITAN = frozenset({
    "--parallelism.tensor_parallel_degree", "--parallelism.pipeline_parallel_degree",
    "--parallelism.context_parallel_degree", "--parallelism.expert_parallel_degree",
    "--parallelism.expert_tensor_parallel_degree",
    "--parallelism.data_parallel_shard_degree",
    "--parallelism.data_parallel_replicate_degree",
    "--parallelism.fsdp_reshard_after_forward",
    "--parallelism.pipeline_parallel_schedule",
    "--parallelism.pipeline_parallel_microbatch_size",
    "--parallelism.pipeline_parallel_layers_per_stage", "--training.local_batch_size",
    "--training.global_batch_size", "--training.seq_len",
    "--training.enable_cpu_offload",
    "--activation_checkpoint.mode", "--activation_checkpoint.selective_ac_option",
    "--model.converters",
})  # fmt: skip
_VLLM = frozenset({
    "--model", "--tensor-parallel-size", "--pipeline-parallel-size",
    "--data-parallel-size", "--enable-expert-parallel", "--max-num-seqs",
    "--max-model-len", "--kv-cache-dtype", "--quantization", "--enforce-eager",
    "--kv-transfer-config",
})  # fmt: skip
_SGLANG = frozenset({
    "--model-path", "--tp-size", "--pp-size", "--dp-size", "--ep-size",
    "--max-running-requests", "--context-length", "--kv-cache-dtype", "--quantization",
    "--cuda-graph-backend-decode", "--disaggregation-mode", "--enable-dp-attention",
    "--disaggregation-transfer-backend",
})  # fmt: skip
_TRTLLM = frozenset({
    "--backend", "--tp_size", "--pp_size", "--ep_size", "--max_batch_size",
    "--max_seq_len", "--max_num_tokens", "--extra_llm_api_options", "--port", "-c",
})  # fmt: skip
_DYNAMO = _VLLM | {"--disaggregation-mode", "--http-port"}

FRAMEWORKS = {
    "megatron": Framework(
        "Megatron-LM main @ 000c4ac (Megatron-Core 0.14/0.15 era)",
        "NVIDIA/Megatron-LM megatron/training/arguments.py",
        _MEGATRON,
    ),
    "nemo": Framework(
        "Megatron-Bridge 0.3.1 (NeMo LLM training), Megatron-Core 0.16.1",
        "megatron.bridge.training.config.ConfigContainer fields; Hydra overrides",
        _NEMO,
    ),
    "maxtext": Framework(
        "MaxText @ 003b416",
        "AI-Hypercomputer/maxtext src/MaxText/configs/base.yml",
        _MAXTEXT,
    ),
    "torchtitan": Framework(
        "torchtitan 0.2.0", "torchtitan/config/job_config.py (JobConfig)", _TORCHTITAN
    ),
    "vllm": Framework(
        "vLLM 0.31.0", "vLLM engine arguments (vllm serve --help)", _VLLM
    ),
    "sglang": Framework(
        "SGLang 0.5.23", "sglang/srt/arg_groups/fields (launch_server args)", _SGLANG
    ),
    "trtllm": Framework(
        "TensorRT-LLM 1.1",
        "trtllm-serve command reference; disaggregated YAML",
        _TRTLLM,
    ),
    "dynamo": Framework(
        "NVIDIA Dynamo 1.6.1 (vLLM 0.31.0 backend)",
        "dynamo/vllm/backend_args.py, dynamo/frontend/frontend_args.py",
        _DYNAMO,
    ),
}


def shell(argv: list[str]) -> str:
    """The command line of an argv, quoted for a POSIX shell."""
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


class _Args:
    """Flags of one framework, each checked against its documented names."""

    def __init__(self, framework: str, style: str = "space"):
        self.known = FRAMEWORKS[framework].flags
        self.style = style  # "space": --flag value; "equals": key=value
        self.argv: list[str] = []

    def add(self, flag: str, value=None):
        if flag not in self.known:
            raise RuntimeError(f"emit: {flag!r} is not a documented flag here")
        if isinstance(value, (list, tuple)):  # Megatron nargs="*" / a Hydra list
            if self.style == "equals":
                self.argv.append(f"{flag}=[{','.join(map(_text, value))}]")
            else:
                self.argv += [flag, *map(_text, value)]
        elif self.style == "equals":
            self.argv.append(f"{flag}={_text(value)}")
        else:
            self.argv += [flag] if value is None else [flag, _text(value)]
        return self


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _modules_note(j, what: str) -> None:
    """A note where a framework cannot name Megatron-core's recompute modules."""
    if j.mapping.recompute_modules:
        j.notes.append(
            f"--recompute-modules={','.join(j.mapping.recompute_modules)}: "
            f"{what} does not select modules by name; the modelled memory and "
            "recompute time are Megatron-core's for those modules"
        )


def _int(x) -> int:
    return int(round(float(x)))


def _launch(framework: str, commands: list[dict], notes: list[str], files=None):
    fw = FRAMEWORKS[framework]
    for c in commands:
        c["shell"] = shell(c["argv"])
    return {
        "framework": framework,
        "version": fw.version,
        "source": fw.source,
        "commands": commands,
        "files": files or {},
        "notes": notes,
    }


def _torchrun(cluster, gpus: int) -> list[str]:
    per_node = max(1, _int(cluster.host.chips_per_node))
    nproc = min(gpus, per_node)
    return ["torchrun", "--nnodes", str(math.ceil(gpus / nproc)),
            "--nproc-per-node", str(nproc)]  # fmt: skip


def train_launch(framework: str, cluster, model, mapping, *, gpus: int, dtype: str):
    """The launch command of a training framework for a concrete mapping.

    Args:
        framework: one of `TRAIN_FRAMEWORKS`.
        cluster: the hardware (node size for the launcher, scale-up domain).
        model: the workload.
        mapping: a concrete `Parallelism`.
        gpus: chips of the job.
        dtype: the GEMM math dtype ("bf16", "fp8", ...).

    Returns:
        dict with framework, version, source, commands (role, count, argv, shell),
        files (name → text) and notes.

    Raises:
        ValueError: an unknown framework.
    """
    if framework not in TRAIN_FRAMEWORKS:
        raise ValueError(
            f"--emit={framework!r} for training must be one of "
            f"{', '.join(TRAIN_FRAMEWORKS)}"
        )
    job = _TrainJob(cluster, model, mapping, gpus, dtype)
    return {"megatron": _megatron, "nemo": _nemo, "maxtext": _maxtext,
            "torchtitan": _torchtitan}[framework](job)  # fmt: skip


@dataclasses.dataclass
class _TrainJob:
    cluster: object
    model: object
    mapping: object
    gpus: int
    dtype: str

    def __post_init__(self):
        m, model = self.mapping, self.model
        self.tp, self.pp, self.dp = _int(m.tp), _int(m.pp), _int(m.dp)
        self.cp, self.ep, self.etp, self.vpp = (
            _int(m.cp), _int(m.ep), _int(m.etp), _int(m.vpp)
        )  # fmt: skip
        self.mb, self.gb = _int(m.microbatch), _int(m.batch())
        self.seq = _int(m.tokens(model))
        self.layers = _int(model.n_layers)
        self.moe = float(model.n_experts) > 0
        self.cf = float(model.capacity_factor)
        self.ep_overlap = float(m.ep_overlap)
        self.notes: list[str] = []

    def layers_per_virtual_stage(self) -> int | None:
        chunks = self.pp * self.vpp
        return self.layers // chunks if self.layers % chunks == 0 else None


def _megatron(j: _TrainJob) -> dict:
    a, m = _Args("megatron"), j.mapping
    a.add("--tensor-model-parallel-size", j.tp)
    a.add("--pipeline-model-parallel-size", j.pp)
    if j.vpp > 1:
        per = j.layers_per_virtual_stage()
        if per is not None:
            a.add("--num-layers-per-virtual-pipeline-stage", per)
        else:
            a.add("--num-virtual-stages-per-pipeline-rank", j.vpp)
    if j.cp > 1:
        a.add("--context-parallel-size", j.cp)
    if j.moe:
        a.add("--expert-model-parallel-size", j.ep)
        a.add("--expert-tensor-parallel-size", j.etp)
        if j.ep > 1:
            a.add("--moe-token-dispatcher-type", "alltoall")
        if j.cf > 0:
            a.add("--moe-expert-capacity-factor", j.cf)
            a.add("--moe-pad-expert-input-to-capacity")
        if j.ep_overlap > 0:
            a.add("--overlap-moe-expert-parallel-comm")
            _partial(j, "ep_overlap", "--overlap-moe-expert-parallel-comm")
    a.add("--micro-batch-size", j.mb).add("--global-batch-size", j.gb)
    a.add("--seq-length", j.seq)
    if m.sequence_parallel and j.tp > 1:
        a.add("--sequence-parallel")
    if m.recompute != "none":
        a.add("--recompute-granularity", m.recompute)
        if m.recompute == "full":
            a.add("--recompute-method", "uniform").add("--recompute-num-layers", 1)
        if m.recompute_modules:  # else Megatron-core's default, core_attn
            a.add("--recompute-modules", list(m.recompute_modules))
    if m.zero == 1:
        a.add("--use-distributed-optimizer")
    elif m.zero >= 2:
        strategy = "optim_grads" if m.zero == 2 else "optim_grads_params"
        a.add("--use-megatron-fsdp").add("--data-parallel-sharding-strategy", strategy)
    if float(m.dp_overlap) > 0 and j.dp > 1:
        a.add("--overlap-grad-reduce")
        if m.zero >= 1:
            a.add("--overlap-param-gather")
    _precision_flags(j, a, {"bf16": ["--bf16"], "fp16": ["--fp16"],
                            "fp8": ["--bf16", ("--fp8-format", "hybrid")]})  # fmt: skip
    backend = {"fa3": "fused", "fa2": "flash", "unfused": "unfused"}
    a.add("--attention-backend", backend[m.attention_kernel])
    _offload(j, a, "--optimizer-cpu-offload", "--optimizer-offload-fraction")
    argv = [*_torchrun(j.cluster, j.gpus), "pretrain_gpt.py", *a.argv]
    j.notes.append(
        "model architecture, data and optimizer flags come from your own "
        "pretrain_gpt.py script; these are the mapping's"
    )
    return _launch("megatron", [dict(role="trainer", count=1, argv=argv)], j.notes)


def _precision_flags(j: _TrainJob, a: _Args, table: dict):
    flags = table.get(j.dtype)
    if flags is None:
        j.notes.append(
            f"--dtype={j.dtype}: no precision flag emitted; set the framework's "
            "recipe for it by hand"
        )
        return
    for f in flags:
        a.add(*f) if isinstance(f, tuple) else a.add(f)


def _partial(j: _TrainJob, field: str, flag: str):
    value = float(getattr(j.mapping, field))
    if 0 < value < 1:
        j.notes.append(
            f"{field}={value:g} was modelled; {flag} is on/off (all of it overlapped)"
        )


def _offload(j: _TrainJob, a: _Args, on: str, fraction: str | None):
    opt = float(j.mapping.offload_optimizer)
    if opt > 0:
        a.add(on, True if a.style == "equals" else None)
        if fraction is not None:
            a.add(fraction, opt)
    if float(j.mapping.offload_activations) > 0:
        j.notes.append(
            "offload_activations was modelled as a fraction of the stored "
            "activations; the framework offloads whole layers: set it by hand"
        )


def _nemo(j: _TrainJob) -> dict:
    a, m = _Args("nemo", style="equals"), j.mapping
    a.add("model.tensor_model_parallel_size", j.tp)
    a.add("model.pipeline_model_parallel_size", j.pp)
    if j.vpp > 1:
        a.add("model.virtual_pipeline_model_parallel_size", j.vpp)
    a.add("model.context_parallel_size", j.cp)
    if j.moe:
        a.add("model.expert_model_parallel_size", j.ep)
        a.add("model.expert_tensor_parallel_size", j.etp)
        if j.ep > 1:
            a.add("model.moe_token_dispatcher_type", "alltoall")
        if j.cf > 0:
            a.add("model.moe_expert_capacity_factor", j.cf)
            a.add("model.moe_pad_expert_input_to_capacity", True)
        if j.ep_overlap > 0:
            a.add("model.overlap_moe_expert_parallel_comm", True)
            _partial(j, "ep_overlap", "overlap_moe_expert_parallel_comm")
    a.add("model.sequence_parallel", bool(m.sequence_parallel and j.tp > 1))
    a.add("model.seq_length", j.seq).add("dataset.seq_length", j.seq)
    a.add("train.micro_batch_size", j.mb).add("train.global_batch_size", j.gb)
    if m.recompute != "none":
        a.add("model.recompute_granularity", m.recompute)
        if m.recompute == "full":
            a.add("model.recompute_method", "uniform")
            a.add("model.recompute_num_layers", 1)
        if m.recompute_modules:
            a.add("model.recompute_modules", list(m.recompute_modules))
    if m.zero >= 1:
        a.add("ddp.use_distributed_optimizer", True)
        a.add("optimizer.use_distributed_optimizer", True)
    if m.zero >= 2:
        strategy = "optim_grads" if m.zero == 2 else "optim_grads_params"
        a.add("ddp.use_megatron_fsdp", True)
        a.add("ddp.data_parallel_sharding_strategy", strategy)
    if float(m.dp_overlap) > 0 and j.dp > 1:
        a.add("ddp.overlap_grad_reduce", True)
        if m.zero >= 1:
            a.add("ddp.overlap_param_gather", True)
    recipes = {"bf16": "bf16_mixed", "fp16": "fp16_mixed",
               "fp8": "bf16_with_fp8_current_scaling_mixed",
               "fp4": "bf16_with_nvfp4_mixed"}  # fmt: skip
    if j.dtype in recipes:
        a.add("mixed_precision", recipes[j.dtype])
    else:
        j.notes.append(f"--dtype={j.dtype}: no Megatron-Bridge mixed-precision recipe")
    _offload(
        j, a, "optimizer.optimizer_cpu_offload", "optimizer.optimizer_offload_fraction"
    )
    argv = [*_torchrun(j.cluster, j.gpus), "RECIPE_SCRIPT.py", *a.argv]
    j.notes.append(
        "RECIPE_SCRIPT.py: your Megatron-Bridge recipe entry point (e.g. a pretrain "
        "script calling a recipe from megatron.bridge.recipes); the key=value "
        "arguments are its Hydra-style overrides"
    )
    return _launch("nemo", [dict(role="trainer", count=1, argv=argv)], j.notes)


def _split(axes: list[tuple[str, int]], slice_size: int) -> dict[str, tuple[int, int]]:
    """Each mesh axis's (ICI, DCN) degree: innermost axes fill the slice first."""
    left, out = slice_size, {}
    for name, degree in axes:
        ici = max(d for d in range(1, degree + 1) if degree % d == 0 and left % d == 0)
        out[name] = (ici, degree // ici)
        left //= ici
    return out


def _maxtext(j: _TrainJob) -> dict:
    a, m = _Args("maxtext", style="equals"), j.mapping
    a.add("run_name", "diffperf")
    tpu = "tpu" in j.cluster.name.lower()
    domain = max(1, _int(j.cluster.scale_up.size))
    slice_size = math.gcd(domain, j.gpus)
    data = j.dp
    expert = 1
    if j.moe and j.ep > 1:
        if j.dp % j.ep == 0:
            data, expert = j.dp // j.ep, j.ep
        else:
            j.notes.append(
                f"ep={j.ep} does not divide dp={j.dp}: MaxText's expert axis is a "
                "batch axis of its own; not emitted"
            )
    data_axis = "fsdp" if m.zero == 3 else "data"
    axes = [("tensor", j.tp), ("expert", expert), ("context", j.cp),
            (data_axis, data), ("pipeline", j.pp)]  # fmt: skip
    split = _split(axes, slice_size)
    ici_product = math.prod(ici for ici, _ in split.values())
    if ici_product != slice_size:
        j.notes.append(
            f"the ICI axes multiply to {ici_product}, not the {slice_size} devices of "
            "a slice: MaxText needs the product of ici_* to equal them"
        )
    for name, (ici, dcn) in split.items():
        a.add(f"ici_{name}_parallelism", ici)
        a.add(f"dcn_{name}_parallelism", dcn)
    if m.zero in (1, 2):
        a.add("shard_optimizer_over_data", True)
    a.add("per_device_batch_size", _text(j.gb / j.gpus))
    a.add("max_target_length", j.seq)
    if j.pp > 1:
        a.add("num_pipeline_microbatches", j.gb // (j.dp * j.mb))
        per = j.layers_per_virtual_stage()
        if per is not None:
            a.add("num_layers_per_pipeline_stage", per)
    remat = {"none": "minimal_with_context", "selective": "minimal", "full": "full"}
    a.add("remat_policy", remat[m.recompute])
    _modules_note(j, "MaxText's remat_policy")
    if j.dtype == "fp8":
        a.add("quantization", "fp8")
    elif j.dtype != "bf16":
        j.notes.append(f"--dtype={j.dtype}: no MaxText quantization setting emitted")
    kernels = {"fa3": "flash" if tpu else "cudnn_flash_te", "fa2": "flash",
               "unfused": "dot_product"}  # fmt: skip
    a.add("attention", kernels[m.attention_kernel])
    if j.moe and j.cf > 0:
        a.add("capacity_factor", j.cf)
    if float(m.offload_optimizer) > 0:
        a.add("optimizer_memory_host_offload", True)
        if float(m.offload_optimizer) < 1:
            j.notes.append("MaxText offloads all of the optimizer state, not a share")
    a.add("hardware", "tpu" if tpu else "gpu_multiprocess")
    argv = ["python3", "-m", "MaxText.train", "src/MaxText/configs/base.yml", *a.argv]
    j.notes.append(
        f"ICI = one scale-up domain ({slice_size} devices of {j.cluster.name}); "
        "add model_name=... for the model"
    )
    return _launch("maxtext", [dict(role="trainer", count=1, argv=argv)], j.notes)


def _torchtitan(j: _TrainJob) -> dict:
    a, m = _Args("torchtitan"), j.mapping
    p = "--parallelism."
    a.add(p + "tensor_parallel_degree", j.tp)
    a.add(p + "pipeline_parallel_degree", j.pp)
    if j.cp > 1:
        a.add(p + "context_parallel_degree", j.cp)
    if j.moe:
        a.add(p + "expert_parallel_degree", j.ep)
        a.add(p + "expert_tensor_parallel_degree", j.etp)
    if m.zero == 0:
        a.add(p + "data_parallel_replicate_degree", j.dp)
        a.add(p + "data_parallel_shard_degree", 1)
    else:
        a.add(p + "data_parallel_replicate_degree", 1)
        a.add(p + "data_parallel_shard_degree", j.dp)
        if m.zero in (1, 2):
            a.add(p + "fsdp_reshard_after_forward", "never")
            j.notes.append(
                f"zero={m.zero}: torchtitan shards with FSDP2; parameters kept "
                "after forward (reshard never) is the closest to ZeRO-1/2"
            )
    if j.pp > 1:
        a.add(p + "pipeline_parallel_schedule", "Interleaved1F1B" if j.vpp > 1
              else "1F1B")  # fmt: skip
        a.add(p + "pipeline_parallel_microbatch_size", j.mb)
        if j.vpp > 1 and j.layers_per_virtual_stage() is not None:
            a.add(
                p + "pipeline_parallel_layers_per_stage", j.layers_per_virtual_stage()
            )
        a.add("--training.local_batch_size", j.gb // j.dp)
    else:
        a.add("--training.local_batch_size", j.mb)
    a.add("--training.global_batch_size", j.gb).add("--training.seq_len", j.seq)
    ac = {"none": ["none"], "selective": ["selective", "op"], "full": ["full"]}
    a.add("--activation_checkpoint.mode", ac[m.recompute][0])
    if m.recompute == "selective":
        a.add("--activation_checkpoint.selective_ac_option", "op")
    _modules_note(j, "torchtitan's op-level selective checkpointing")
    if j.dtype == "fp8":
        a.add("--model.converters", "quantize.linear.float8")
    elif j.dtype != "bf16":
        j.notes.append(f"--dtype={j.dtype}: no torchtitan converter emitted")
    if j.tp > 1 and not m.sequence_parallel:
        j.notes.append("torchtitan 0.2.0 always uses sequence parallelism with TP")
    if float(m.offload_optimizer) > 0:
        a.add("--training.enable_cpu_offload")
        j.notes.append("torchtitan's CPU offload moves parameters, gradients and "
                       "optimizer state (FSDP2 CPUOffloadPolicy)")  # fmt: skip
    argv = [*_torchrun(j.cluster, j.gpus), "-m", "torchtitan.train",
            "--job.config_file", "TRAIN_CONFIG.toml", *a.argv]  # fmt: skip
    j.notes.append("TRAIN_CONFIG.toml: the model's torchtitan train config")
    return _launch("torchtitan", [dict(role="trainer", count=1, argv=argv)], j.notes)


# ---------------------------------------------------------------- serving


def model_id(name: str, aliases: list[str]) -> str:
    """A Hugging Face id among the aliases (contains '/'), else the given name."""
    return next((a for a in aliases if "/" in a), name)


def serve_launch(framework: str, model, serving, *, gpus: int, weights: str,
                 kv_dtype: str, model_name: str, pools=None):  # fmt: skip
    """The launch commands of a serving framework for a concrete serving mapping.

    Args:
        framework: one of `SERVE_FRAMEWORKS`.
        model: the workload.
        serving: a concrete `Serving` (one replica of tp·pp chips).
        gpus: all chips; replicas = gpus / (tp·pp) when colocated.
        weights: the weight dtype ("bf16", "fp8", ...).
        kv_dtype: the KV-cache dtype.
        model_name: the checkpoint the engine loads (a Hugging Face id or a path).
        pools: (prefill chips, decode chips) of a disaggregated deployment, or None.

    Returns:
        dict with framework, version, source, commands (role, count, argv, shell),
        files (name → text) and notes.

    Raises:
        ValueError: an unknown framework.
    """
    if framework not in SERVE_FRAMEWORKS:
        raise ValueError(
            f"--emit={framework!r} for serving must be one of "
            f"{', '.join(SERVE_FRAMEWORKS)}"
        )
    s = _ServeJob(model, serving, gpus, weights, kv_dtype, model_name, pools)
    return {"vllm": _vllm, "sglang": _sglang, "trtllm": _trtllm,
            "dynamo": _dynamo}[framework](s)  # fmt: skip


@dataclasses.dataclass
class _ServeJob:
    model: object
    serving: object
    gpus: int
    weights: str
    kv_dtype: str
    name: str
    pools: tuple | None

    def __post_init__(self):
        s = self.serving
        self.tp, self.pp = _int(s.tp), _int(s.pp)
        self.ep, self.etp = _int(s.ep), _int(s.etp)
        self.adp = _int(s.attention_dp)  # attention data-parallel ranks
        self.batch = _int(s.batch)
        self.max_len = _int(s.input_len) + _int(s.output_len)
        self.replica = self.tp * self.pp * self.adp
        self.replicas = max(1, self.gpus // self.replica)
        self.moe = float(self.model.n_experts) > 0
        self.graphs = bool(s.graphs)
        self.notes: list[str] = []

    def pool_replicas(self) -> tuple[int, int]:
        p, d = self.pools
        return p // self.replica, d // self.replica


_PRODUCER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_producer"})
_CONSUMER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_consumer"})


def _vllm_args(j: _ServeJob, framework: str, batch: int, dp: bool) -> _Args:
    """The engine arguments of vLLM (`vllm serve` takes the model positionally)."""
    a = _Args(framework)
    if framework == "dynamo":
        a.add("--model", j.name)
    a.add("--tensor-parallel-size", j.tp).add("--pipeline-parallel-size", j.pp)
    if j.ep > 1:
        a.add("--enable-expert-parallel")
        if j.ep * j.etp != j.tp * j.adp:
            j.notes.append(
                f"ep={j.ep}, etp={j.etp}: vLLM's expert parallel size is tp·dp of "
                f"the server ({j.tp * j.adp}), so experts are split over all its ranks"
            )
    if j.adp > 1:  # attention data parallelism: one server per replica
        a.add("--data-parallel-size", j.adp)
    elif dp and j.replicas > 1:
        a.add("--data-parallel-size", j.replicas)
    a.add("--max-num-seqs", batch).add("--max-model-len", j.max_len)
    if j.kv_dtype.startswith("fp8"):
        a.add("--kv-cache-dtype", "fp8")
    if j.weights.startswith("fp8"):
        a.add("--quantization", "fp8")
    if not j.graphs:
        a.add("--enforce-eager")
        j.notes.append(
            "--enforce-eager: diffperf modelled eager kernel launches; rerun with "
            "--graphs to model CUDA graphs and drop the flag"
        )
    return a


def _vllm(j: _ServeJob) -> dict:
    if j.pools is not None:
        np_, nd = j.pool_replicas()
        pre = _vllm_args(j, "vllm", 1, dp=False).add("--kv-transfer-config", _PRODUCER)
        dec = _vllm_args(j, "vllm", j.batch, dp=False).add(
            "--kv-transfer-config", _CONSUMER
        )
        j.notes.append("disaggregated vLLM needs a proxy in front of the two pools "
                       "(e.g. Dynamo: --emit dynamo)")  # fmt: skip
        serve = ["vllm", "serve", j.name]
        cmds = [dict(role="prefill", count=np_, argv=[*serve, *pre.argv]),
                dict(role="decode", count=nd, argv=[*serve, *dec.argv])]  # fmt: skip
        return _launch("vllm", cmds, _dedup(j.notes))
    # one server; --data-parallel-size would also widen EP, so MoE replicas run apart
    together = not (j.moe and j.ep > 1) and j.adp == 1
    a = _vllm_args(j, "vllm", j.batch, dp=together)
    count = 1 if together else j.replicas
    argv = ["vllm", "serve", j.name, *a.argv]
    return _launch("vllm", [dict(role="server", count=count, argv=argv)], j.notes)


def _dedup(notes: list[str]) -> list[str]:
    return list(dict.fromkeys(notes))


def _sglang_args(j: _ServeJob, batch: int, dp: bool) -> _Args:
    a = _Args("sglang")
    a.add("--model-path", j.name).add("--tp-size", j.tp * j.adp).add("--pp-size", j.pp)
    if j.ep > 1:
        a.add("--ep-size", j.ep)
    if j.adp > 1:  # attention TP = tp_size / dp_size
        a.add("--dp-size", j.adp).add("--enable-dp-attention")
    elif dp and j.replicas > 1:
        a.add("--dp-size", j.replicas)
    a.add("--max-running-requests", batch).add("--context-length", j.max_len)
    if j.kv_dtype.startswith("fp8"):
        a.add("--kv-cache-dtype", "fp8_e4m3")
    if j.weights.startswith("fp8"):
        a.add("--quantization", "fp8")
    if not j.graphs:
        a.add("--cuda-graph-backend-decode", "disabled")
    return a


def _sglang(j: _ServeJob) -> dict:
    launch = ["python", "-m", "sglang.launch_server"]
    if j.pools is None:
        a = _sglang_args(j, j.batch, dp=True)
        count = j.replicas if j.adp > 1 else 1
        return _launch("sglang", [dict(role="server", count=count,
                                       argv=[*launch, *a.argv])], j.notes)  # fmt: skip
    np_, nd = j.pool_replicas()
    pre = _sglang_args(j, 1, dp=False).add("--disaggregation-mode", "prefill")
    dec = _sglang_args(j, j.batch, dp=False).add("--disaggregation-mode", "decode")
    for a in (pre, dec):
        a.add("--disaggregation-transfer-backend", "nixl")
    j.notes.append("start a router in front of the prefill and decode servers "
                   "(SGLang model gateway in PD mode)")  # fmt: skip
    cmds = [dict(role="prefill", count=np_, argv=[*launch, *pre.argv]),
            dict(role="decode", count=nd, argv=[*launch, *dec.argv])]  # fmt: skip
    return _launch("sglang", cmds, j.notes)


def _trtllm_args(j: _ServeJob, batch: int, extra: str | None) -> _Args:
    a = _Args("trtllm")
    a.add("--backend", "pytorch").add("--tp_size", j.tp * j.adp).add("--pp_size", j.pp)
    if j.ep > 1:
        a.add("--ep_size", j.ep)
    a.add("--max_batch_size", batch).add("--max_seq_len", j.max_len)
    if extra:
        a.add("--extra_llm_api_options", extra)
    return a


def _trtllm_extra(j: _ServeJob, disagg: bool) -> str:
    lines = []
    if j.adp > 1:  # every tp_size rank runs attention alone (attention TP = 1)
        lines += ["enable_attention_dp: true"]
        if j.tp > 1:
            j.notes.append(
                f"attention_dp={j.adp} with tp={j.tp}: TensorRT-LLM's attention DP "
                f"runs attention on each of the {j.tp * j.adp} ranks alone (attention "
                "TP 1); the emitted server differs from the modelled one"
            )
    if j.kv_dtype.startswith("fp8"):
        lines += ["kv_cache_config:", "  dtype: fp8"]
    if not j.graphs:
        lines += ["cuda_graph_config: null"]
    if disagg:
        lines += ["disable_overlap_scheduler: true",
                  "cache_transceiver_config:", "  backend: DEFAULT"]  # fmt: skip
    return "\n".join(lines) + "\n" if lines else ""


def _trtllm(j: _ServeJob) -> dict:
    if j.weights.startswith("fp8"):
        j.notes.append("fp8 weights: serve an FP8-quantized checkpoint "
                       "(TensorRT-LLM reads the quantization from it)")  # fmt: skip
    if j.pools is None:
        extra = _trtllm_extra(j, disagg=False)
        a = _trtllm_args(j, j.batch, "extra.yaml" if extra else None)
        files = {"extra.yaml": extra} if extra else {}
        cmds = [dict(role="server", count=j.replicas,
                     argv=["trtllm-serve", j.name, *a.argv])]  # fmt: skip
        return _launch("trtllm", cmds, j.notes, files)
    np_, nd = j.pool_replicas()
    extra = _trtllm_extra(j, disagg=True)
    ctx = _trtllm_args(j, 1, "extra.yaml").add("--port", "PORT")
    gen = _trtllm_args(j, j.batch, "extra.yaml").add("--port", "PORT")
    urls_c = [f"localhost:{8001 + i}" for i in range(np_)]
    urls_g = [f"localhost:{8001 + np_ + i}" for i in range(nd)]
    config = "\n".join([
        f"model: {j.name}", "hostname: localhost", "port: 8000", "backend: pytorch",
        "context_servers:", f"  num_instances: {np_}",
        f"  tensor_parallel_size: {j.tp * j.adp}", f"  pipeline_parallel_size: {j.pp}",
        "  urls:", *(f'    - "{u}"' for u in urls_c),
        "generation_servers:", f"  num_instances: {nd}",
        f"  tensor_parallel_size: {j.tp * j.adp}", f"  pipeline_parallel_size: {j.pp}",
        "  urls:", *(f'    - "{u}"' for u in urls_g),
    ]) + "\n"  # fmt: skip
    j.notes.append("PORT: each context server listens on one of the context_servers "
                   "urls and each generation server on one of generation_servers "
                   "(edit the hosts for several nodes)")  # fmt: skip
    cmds = [
        dict(role="context", count=np_, argv=["trtllm-serve", j.name, *ctx.argv]),
        dict(role="generation", count=nd, argv=["trtllm-serve", j.name, *gen.argv]),
        dict(role="router", count=1, argv=["trtllm-serve", "disaggregated", "-c",
                                           "disagg_config.yaml"]),
    ]  # fmt: skip
    for c in cmds[2:]:
        for flag in c["argv"][2:]:
            if flag.startswith("-") and flag not in _TRTLLM:
                raise RuntimeError(f"emit: {flag!r} is not a documented flag here")
    files = {"extra.yaml": extra, "disagg_config.yaml": config}
    return _launch("trtllm", cmds, j.notes, files)


def _dynamo(j: _ServeJob) -> dict:
    front = _Args("dynamo").add("--http-port", 8000)
    cmds = [dict(role="frontend", count=1,
                 argv=["python", "-m", "dynamo.frontend", *front.argv])]  # fmt: skip
    worker = ["python", "-m", "dynamo.vllm"]
    if j.pools is None:
        a = _vllm_args(j, "dynamo", j.batch, dp=False)
        cmds.append(dict(role="worker", count=j.replicas, argv=[*worker, *a.argv]))
        return _launch("dynamo", cmds, _dedup(j.notes))
    np_, nd = j.pool_replicas()
    pre = _vllm_args(j, "dynamo", 1, dp=False)
    pre.add("--disaggregation-mode", "prefill").add("--kv-transfer-config", _PRODUCER)
    dec = _vllm_args(j, "dynamo", j.batch, dp=False)
    dec.add("--disaggregation-mode", "decode").add("--kv-transfer-config", _CONSUMER)
    cmds += [dict(role="prefill", count=np_, argv=[*worker, *pre.argv]),
             dict(role="decode", count=nd, argv=[*worker, *dec.argv])]  # fmt: skip
    return _launch("dynamo", cmds, _dedup(j.notes))
