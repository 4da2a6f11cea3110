"""The parallel mapping (`Parallelism`) and its validation against a workload.

Degrees are float leaves (t = tp, p = pp, d = dp, c = cp, e = ep, v = vpp), so a relaxed
mapping can be optimized; reporting uses integer mappings re-scored with `Exact()`.
Rank order, innermost first, follows Megatron-LM: tp, cp, dp, pp. Expert parallelism is
carved out of the tp·cp·dp ranks of a stage (expert tensor parallel size etp, default
1).
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.checks import check_fields, concrete
from ..core.relax import as_float
from .workload import Transformer

ATTENTION_KERNELS = ("fa3", "fa2", "unfused")
"""`attention_kernel` values: the chip's best fused kernel (FlashAttention-3 / cuDNN
on Hopper and Blackwell, FlashAttention-2 before), FlashAttention-2, or unfused
GEMM-softmax-GEMM (`model.ops.attention_work`)."""


def _check_kernel(obj) -> None:
    if obj.attention_kernel not in ATTENTION_KERNELS:
        raise ValueError(
            f"{type(obj).__name__}(attention_kernel={obj.attention_kernel!r}) must be "
            + ", ".join(ATTENTION_KERNELS)
        )


def resolved_attention_kernel(obj) -> str:
    """The attention kernel a mapping runs: "unfused" when `flash_attention=False`."""
    return obj.attention_kernel if obj.flash_attention else "unfused"


LORA_TARGETS = ("qkv", "attn_out", "mlp_up", "mlp_down")
"""Projections LoRA can adapt (`model.finetune`): GEMM names of the layer."""

RECOMPUTE_MODULES = ("core_attn", "layernorm", "moe_act", "mla_up_proj", "mlp")
"""Modules a selective recompute can re-run, by Megatron-core's `--recompute-modules`
names (`TransformerConfig.recompute_modules`, core_r0.12+): core_attn (the core
attention), layernorm (the norms before attention / Mamba-2 / MLP blocks), moe_act
(the routed experts' activation function), mla_up_proj (MLA's Q and K/V
up-projections, with RoPE), mlp (the dense MLP blocks). Each stores its input and
recomputes its output in the backward pass (`model.memory`, `model.train`)."""


def recomputed_modules(mapping) -> tuple[str, ...]:
    """The modules a mapping's selective recompute re-runs (`RECOMPUTE_MODULES`).

    `recompute_modules` under recompute="selective", else Megatron-core's default
    ("core_attn",); none for recompute "none" and "full" (full re-runs the layer).
    """
    if mapping.recompute != "selective":
        return ()
    return tuple(mapping.recompute_modules) or ("core_attn",)


__all__ = [
    "LORA_TARGETS",
    "RECOMPUTE_MODULES",
    "recomputed_modules",
    "Parallelism",
    "Serving",
    "check_mapping",
    "check_serving",
    "ATTENTION_KERNELS",
    "resolved_attention_kernel",
]

_F = dict(converter=as_float)


class Parallelism(eqx.Module):
    """How a training (or serving) job is laid out on chips.

    Chips used: tp·pp·dp·cp. A step processes `global_batch` sequences of `seq_len`
    tokens in m = global_batch / (dp·microbatch) microbatches per pipeline.

    Fields with a `_overlap` suffix are the fraction of that communication the framework
    hides behind compute (0 = fully exposed, 1 = hidden where compute is long enough).
    `flash_attention=False` models frameworks that materialize the attention scores
    (Megatron-LM before 2022), the same as `attention_kernel="unfused"`;
    `attention_kernel="fa2"` runs FlashAttention-2 where the chip has a faster fused
    kernel (Hopper/Blackwell: `Chip.attention_fa2_efficiency`), "fa3" (default) the
    chip's best. `ep_overlap` is the share of the MoE dispatch/combine
    all-to-all run concurrently with computation of another microbatch or of the shared
    experts (Megatron-core `overlap_moe_expert_parallel_comm` / DeepEP-style 1F1B
    overlap, `moe_shared_expert_overlap`); it hides at most the layer's compute of
    all its passes. `tp_overlap` hides TP collectives behind the GEMMs of their pass
    (`model.train.layer_passes`).
    `offload_optimizer` and `offload_activations` are the
    fractions of the optimizer state and of the stored activations kept in the
    cluster's `MemoryTier` (host DRAM / CXL / Grace) instead of HBM
    (`model/offchip.py`).

    `shard_group` is the number of data-parallel ranks (of dp·cp) a ZeRO stage shards
    over; the shards are replicated across the dp·cp / shard_group groups, whose
    gradients are all-reduced (hybrid sharding: PyTorch HSDP, MaxText's ICI `fsdp`
    axis under DCN `data` parallelism, DeepSpeed ZeRO++ hpZ). 0 shards over all of
    dp·cp (plain ZeRO / FSDP FULL_SHARD).

    `recompute` "selective" re-runs the `recompute_modules` (`RECOMPUTE_MODULES`,
    Megatron-core's `--recompute-modules`; default core_attn) in the backward pass
    and stores their inputs instead of their outputs; "full" re-runs the whole layer.

    Fine-tuning (`model.finetune`): `trainable` is the fraction of the base weights
    that are trained (1 = pre-training or full fine-tuning, 0 = a frozen base, as
    under LoRA); `lora_rank` r and `lora_targets` (names in `LORA_TARGETS`) add LoRA
    adapters to those projections.
    """

    tp: Array = eqx.field(**_F, default=1.0)
    pp: Array = eqx.field(**_F, default=1.0)
    dp: Array = eqx.field(**_F, default=1.0)
    cp: Array = eqx.field(**_F, default=1.0)
    ep: Array = eqx.field(**_F, default=1.0)
    etp: Array = eqx.field(**_F, default=1.0)
    vpp: Array = eqx.field(**_F, default=1.0)
    microbatch: Array = eqx.field(**_F, default=1.0)
    global_batch: Array = eqx.field(**_F, default=0.0)  # 0: dp·microbatch (one per dp)
    seq_len: Array = eqx.field(**_F, default=0.0)  # tokens; 0: the model's max_seq_len
    tp_overlap: Array = eqx.field(**_F, default=0.0)
    dp_overlap: Array = eqx.field(**_F, default=1.0)
    ep_overlap: Array = eqx.field(**_F, default=0.0)
    offload_optimizer: Array = eqx.field(**_F, default=0.0)  # fraction to host
    offload_activations: Array = eqx.field(**_F, default=0.0)  # fraction to host
    shard_group: Array = eqx.field(**_F, default=0.0)  # ZeRO ranks; 0: all of dp·cp
    trainable: Array = eqx.field(**_F, default=1.0)  # trained share of base weights
    lora_rank: Array = eqx.field(**_F, default=0.0)  # r of the LoRA adapters
    lora_targets: tuple[str, ...] = eqx.field(static=True, default=())
    recompute: Literal["none", "selective", "full"] = eqx.field(
        static=True, default="none"
    )
    recompute_modules: tuple[str, ...] = eqx.field(static=True, default=())
    sequence_parallel: bool = eqx.field(static=True, default=True)
    zero: int = eqx.field(static=True, default=1)
    flash_attention: bool = eqx.field(static=True, default=True)
    attention_kernel: Literal["fa3", "fa2", "unfused"] = eqx.field(
        static=True, default="fa3"
    )

    def __check_init__(self):
        check_fields(
            self,
            positive=("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "microbatch"),
            nonneg=("global_batch", "seq_len", "shard_group", "lora_rank"),
            fraction=(
                "tp_overlap",
                "dp_overlap",
                "ep_overlap",
                "offload_optimizer",
                "offload_activations",
                "trainable",
            ),
        )
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(
                f"Parallelism(lora_targets) {', '.join(map(repr, bad))} must be among "
                + ", ".join(LORA_TARGETS)
            )
        rank = concrete(self.lora_rank)
        if self.lora_targets and rank is not None and not rank > 0:
            raise ValueError("Parallelism(lora_rank) must be > 0 with lora_targets")
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(
                f"Parallelism(recompute={self.recompute!r}) must be none, selective "
                "or full"
            )
        bad = [x for x in self.recompute_modules if x not in RECOMPUTE_MODULES]
        if bad:
            raise ValueError(
                f"Parallelism(recompute_modules) {', '.join(map(repr, bad))} must be "
                "among " + ", ".join(RECOMPUTE_MODULES)
            )
        if self.recompute_modules and self.recompute != "selective":
            raise ValueError(
                "Parallelism(recompute_modules) needs recompute='selective', "
                f"not {self.recompute!r}"
            )
        if self.zero not in (0, 1, 2, 3):
            raise ValueError(f"Parallelism(zero={self.zero!r}) must be 0, 1, 2 or 3")
        _check_kernel(self)

    @property
    def chips(self) -> Array:
        """Chips in the job: tp·pp·dp·cp."""
        return self.tp * self.pp * self.dp * self.cp

    def batch(self) -> Array:
        """Sequences per optimizer step."""
        return jnp.where(
            self.global_batch > 0, self.global_batch, self.dp * self.microbatch
        )

    def microbatches(self) -> Array:
        """m: microbatches per pipeline per step = global_batch / (dp·microbatch)."""
        return self.batch() / (self.dp * self.microbatch)

    def tokens(self, model: Transformer) -> Array:
        """Training sequence length S [tokens]."""
        return jnp.where(self.seq_len > 0, self.seq_len, model.max_seq_len)

    def zero_group(self) -> Array:
        """Data-parallel ranks a ZeRO stage shards over: shard_group, else dp·cp."""
        return jnp.where(self.shard_group > 0, self.shard_group, self.dp * self.cp)


def _int(x, what: str) -> int | None:
    v = concrete(x)
    if v is None:
        return None
    if abs(v - round(v)) > 1e-6:
        raise ValueError(f"{what}={v:g} must be a whole number")
    return round(v)


def _model_sizes(model: Transformer, t: int) -> dict | None:
    """Whole-number sizes of a concrete model after checking `tp` against its heads.

    Returns None for a traced workload (grad / vmap). Raises ValueError when t does not
    divide the query heads, or neither divides the other for the KV heads.
    """
    sizes = {
        k: _int(getattr(model, k), k)
        for k in ("n_heads", "n_kv_heads", "n_layers", "n_experts")
    }
    if None in sizes.values():
        return None
    heads, kv = sizes["n_heads"], sizes["n_kv_heads"]
    if heads % t:
        raise ValueError(f"--tp={t} must divide the model's n_heads={heads}")
    if kv % t and t % kv:
        raise ValueError(f"--tp={t} must divide n_kv_heads={kv} or be a multiple of it")
    return sizes


def check_mapping(model: Transformer, mapping: Parallelism, gpus: int | None = None):
    """Raises ValueError if an integer mapping does not fit the model (concrete values).

    Checks: degrees are whole numbers; tp divides the query and kv heads (or kv heads
    divide tp, replicated as Megatron does); pp·vpp ≤ layers (uneven stages are allowed,
    as in Megatron); ep divides experts and tp·cp·dp/etp;
    microbatch·dp divides the global batch; cp·2 divides the sequence; and, if `gpus` is
    given, gpus = tp·pp·dp·cp. Traced values are skipped.
    """
    names = ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "microbatch")
    deg = {n: _int(getattr(mapping, n), f"Parallelism({n})") for n in names}
    if any(v is None for v in deg.values()):
        return
    t = deg["tp"]
    sizes = _model_sizes(model, t)
    if sizes is None:
        return
    layers, experts = sizes["n_layers"], sizes["n_experts"]
    if deg["pp"] * deg["vpp"] > layers:
        raise ValueError(
            f"--pp·--vpp={deg['pp'] * deg['vpp']} must be <= n_layers={layers}"
        )
    if experts:
        if experts % deg["ep"]:
            raise ValueError(f"--ep={deg['ep']} must divide n_experts={experts}")
        group = t * deg["cp"] * deg["dp"]
        if group % (deg["ep"] * deg["etp"]):
            raise ValueError(
                f"--ep·etp={deg['ep'] * deg['etp']} must divide tp·cp·dp={group}"
            )
    elif deg["ep"] != 1:
        raise ValueError(f"--ep={deg['ep']} must be 1 for a dense model")
    group = _int(mapping.shard_group, "Parallelism(shard_group)")
    if group and (deg["dp"] * deg["cp"]) % group:
        raise ValueError(
            f"shard_group={group} must divide dp·cp={deg['dp'] * deg['cp']}"
        )
    gb = _int(mapping.global_batch, "--global-batch")
    if gb and gb % (deg["dp"] * deg["microbatch"]):
        raise ValueError(
            f"--global-batch={gb} must be a multiple of dp·microbatch="
            f"{deg['dp'] * deg['microbatch']}"
        )
    seq = _int(mapping.tokens(model), "--seq-len")
    max_seq = _int(model.max_seq_len, "max_seq_len")
    if seq is not None and deg["cp"] > 1 and seq % (2 * deg["cp"]):
        raise ValueError(f"--seq-len={seq} must be a multiple of 2·cp={2 * deg['cp']}")
    del max_seq  # training may exceed the pretraining context (long-context runs)
    if gpus is not None:
        n = t * deg["pp"] * deg["dp"] * deg["cp"]
        if n != gpus:
            raise ValueError(f"--gpus={gpus} must equal tp·pp·dp·cp={n}")


class Serving(eqx.Module):
    """How a model is served: parallel degrees of one replica and the request shape.

    A replica uses tp·pp·attention_dp chips and runs `batch` sequences at once, each
    with `input_len` prompt tokens and `output_len` generated tokens.

    Attention data parallelism (`attention_dp` = a > 1; DeepSeek-style wide expert
    parallelism: TensorRT-LLM `enable_attention_dp`, SGLang `--enable-dp-attention`,
    vLLM `--data-parallel-size` with `--enable-expert-parallel`): the replica's
    attention, dense MLP and shared-expert weights are replicated on a ranks of tp
    chips each, and every rank runs its own B/a of the batch (and holds their KV
    caches); the routed experts are sharded over all tp·a chips (ep·etp = tp·a), and
    each MoE layer dispatches every rank's tokens to them and combines the results
    (all-to-all over the ep ranks). On one chip a layer is then the layer of a
    tp-way replica at batch B/a whose experts are spread over ep·etp chips
    (`model.phases.serving_shape`). `graphs=True` replays
    each decode step as one captured graph (CUDA graphs / XLA), so the CPU does not
    launch kernels one by one. `flash_attention` and `attention_kernel` as in
    `Parallelism`. `offload_kv` is the fraction of the KV cache kept in the
    cluster's `MemoryTier` and streamed in every step (`model.phases._phase`).
    """

    tp: Array = eqx.field(**_F, default=1.0)
    pp: Array = eqx.field(**_F, default=1.0)
    ep: Array = eqx.field(**_F, default=1.0)
    etp: Array = eqx.field(**_F, default=1.0)
    attention_dp: Array = eqx.field(**_F, default=1.0)  # attention data-parallel ranks
    batch: Array = eqx.field(**_F, default=1.0)
    input_len: Array = eqx.field(**_F, default=128.0)
    output_len: Array = eqx.field(**_F, default=128.0)
    offload_kv: Array = eqx.field(**_F, default=0.0)  # KV fraction in the memory tier
    graphs: bool = eqx.field(static=True, default=False)
    flash_attention: bool = eqx.field(static=True, default=True)
    attention_kernel: Literal["fa3", "fa2", "unfused"] = eqx.field(
        static=True, default="fa3"
    )

    def __check_init__(self):
        check_fields(
            self,
            positive=(
                "tp",
                "pp",
                "ep",
                "etp",
                "attention_dp",
                "batch",
                "input_len",
                "output_len",
            ),
            fraction=("offload_kv",),
        )
        _check_kernel(self)

    @property
    def chips(self) -> Array:
        """Chips of one replica: tp·pp·attention_dp."""
        return self.tp * self.pp * self.attention_dp

    @property
    def rank_batch(self) -> Array:
        """Sequences on one attention rank: batch / attention_dp."""
        return self.batch / self.attention_dp


def check_serving(model: Transformer, serving: Serving, gpus: int | None = None):
    """Raises ValueError if a concrete serving mapping does not fit the model.

    Checks: whole degrees; tp divides the query heads, and the KV heads divide tp or tp
    divides them; pp ≤ layers; ep divides the experts and ep·etp divides
    tp·attention_dp; attention_dp > 1 only for MoE models; the context input + output
    fits the model's maximum; and, if `gpus` is given, gpus = tp·pp·attention_dp.
    """
    names = ("tp", "pp", "ep", "etp", "attention_dp", "batch")
    deg = {n: _int(getattr(serving, n), f"Serving({n})") for n in names}
    if any(v is None for v in deg.values()):
        return
    t = deg["tp"]
    sizes = _model_sizes(model, t)
    if sizes is None:
        return
    layers, experts = sizes["n_layers"], sizes["n_experts"]
    if deg["pp"] > layers:
        raise ValueError(f"--pp={deg['pp']} must be <= n_layers={layers}")
    if experts and experts % deg["ep"]:
        raise ValueError(f"--ep={deg['ep']} must divide n_experts={experts}")
    a = deg["attention_dp"]
    if experts and (t * a) % (deg["ep"] * deg["etp"]):
        where = f"tp={t}" if a == 1 else f"tp·attention_dp={t * a}"
        raise ValueError(
            f"--ep·etp={deg['ep'] * deg['etp']} must divide {where} (a replica's "
            "experts are spread over its chips)"
        )
    if not experts and deg["ep"] != 1:
        raise ValueError(f"--ep={deg['ep']} must be 1 for a dense model")
    if not experts and a != 1:
        raise ValueError(
            f"attention_dp={a} must be 1 for a dense model (use replicas instead)"
        )
    ctx = concrete(serving.input_len + serving.output_len)
    limit = concrete(model.max_seq_len)
    if ctx is not None and limit is not None and ctx > limit:
        raise ValueError(
            f"--input-len + --output-len = {ctx:g} exceeds the model's maximum "
            f"context max_seq_len={limit:g}"
        )
    if gpus is not None and gpus != t * deg["pp"] * a:
        what = "tp·pp" if a == 1 else "tp·pp·attention_dp"
        raise ValueError(f"--gpus={gpus} must equal {what}={t * deg['pp'] * a}")
