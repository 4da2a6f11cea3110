"""The `diffperf` command line: train, infer, validate, sensitivity, sweep, list.

Every command accepts `--json` (exactly one JSON object on stdout, SI units); exit 0 on
success and 2 on bad input, with a one-line message on stderr naming the field.
"""

import argparse
import dataclasses
import math
import re

import equinox as eqx

from .. import io
from ..core.relax import Exact
from ..core.units import DTYPES
from ..model.economics import hourly_cost, usd_per_million_tokens
from ..model.fidelity import FIDELITIES, tier
from ..model.load import ARRIVALS, PHASES, capacity, served
from ..model.serving import (
    SPECULATIVE,
    continuous_batching,
    disaggregated,
    draft_model,
    serve,
    speculative_tpot,
)
from ..model.train import train_step
from ..specs.mapping import (
    ATTENTION_KERNELS,
    LORA_TARGETS,
    RECOMPUTE_MODULES,
    Parallelism,
    Serving,
    check_mapping,
    check_serving,
    recomputed_modules,
)
from ..specs.scheduler import Scheduler
from ..specs.workload import Precision

__all__ = ["train_result", "infer_result", "train_job", "infer_job"]


class UsageError(ValueError):
    """Bad command-line input: reported on one line, exit status 2."""


class Interrupted(Exception):
    """A long command stopped by Ctrl-C: reported on one line, exit status 130."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage otherwise)
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name}={v} must be >= 1")
        return v

    return parse


positive_int = _positive_int  # public name for the other command modules


def json_safe(x):
    """JSON-safe copy of a result: NaN/inf become null (JSON has neither)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist") and not isinstance(x, str):  # numpy / JAX arrays
        return json_safe(x.tolist())
    return x


def _fidelity_argument(p):
    p.add_argument(
        "--fidelity", choices=FIDELITIES, default="detailed",
        help="detailed per-operator model, or the roofline tier",
    )  # fmt: skip


def _fraction(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number") from None
        if not 0.0 <= v <= 1.0:
            raise argparse.ArgumentTypeError(f"{name}={v:g} must be in [0, 1]")
        return v

    return parse


def _set_argument(p):
    p.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE",
        help="set a hardware leaf for a what-if, e.g. chip.hbm_bandwidth=4e12 "
        "(SI units; repeatable; see `dp.leaf_paths`)",
    )  # fmt: skip


def with_leaves(cluster, items: list[str]):
    """The cluster with `--set PATH=VALUE` leaves replaced (UsageError if bad)."""
    import jax.numpy as jnp

    from ..core.paths import get_leaf, leaf_paths, set_leaf

    paths = None
    for item in items:
        path, sep, text = item.partition("=")
        path = path.strip().removeprefix("hardware.")
        try:
            value = float(text)
        except ValueError:
            value = None
        if not sep or value is None:
            raise UsageError(f"--set {item!r} must be PATH=VALUE with a number VALUE")
        paths = paths or set(leaf_paths(cluster))
        if path not in paths:
            raise UsageError(
                f"--set {path!r}: not a hardware leaf (e.g. chip.hbm_bandwidth, "
                "scale_out.bandwidth; list: dp.leaf_paths(cluster))"
            )
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"--set {path}={text}: must be a finite number >= 0")
        old = get_leaf(cluster, path)
        cluster = set_leaf(cluster, path, jnp.asarray(value, dtype=old.dtype))
    return cluster


def _attention_argument(p):
    p.add_argument(
        "--attention-kernel",
        choices=ATTENTION_KERNELS,
        default="fa3",
        help="fa3: the chip's best fused kernel (FA3/cuDNN on Hopper+, FA2 before); "
        "fa2: FlashAttention-2 (slower on Hopper/Blackwell by the chip's "
        "attention_fa2_efficiency); unfused: GEMM-softmax-GEMM",
    )


_ARCH_INT = (
    "layers",
    "hidden",
    "heads",
    "kv_heads",
    "head_dim",
    "ffn_hidden",
    "vocab",
    "n_experts",
    "top_k",
    "shared_experts",
    "moe_ffn_hidden",
)


def _architecture_arguments(p):
    """Architecture flags: override the named model's fields, or define an unknown one.

    The vocabulary of `io.architecture` (the measurement CSVs' columns); defining a
    model needs --layers --hidden --heads --vocab and a sequence length.
    """
    g = p.add_argument_group(
        "model architecture (override --model's fields, or define an unknown model)"
    )
    for key in _ARCH_INT:
        flag = "--" + key.replace("_", "-")
        g.add_argument(flag, type=_positive_int(flag), dest=f"arch_{key}")
    g.add_argument(
        "--mlp-activation",
        choices=("swiglu", "geglu", "relu", "gelu", "squared_relu"),
        dest="arch_mlp_activation",
    )
    g.add_argument(
        "--tied-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="arch_tied_embeddings",
    )


def architecture_flags(args, seq_len) -> dict:
    """The architecture fields given on the command line (`io.architecture`)."""
    out = {
        key[len("arch_") :]: value
        for key, value in vars(args).items()
        if key.startswith("arch_") and value is not None
    }
    if out and seq_len:
        out["seq_len"] = seq_len  # used only when the flags define the model
    return out


def resolved_names(hardware: str, model: str, overrides: dict | None = None) -> dict:
    """`resolved_hardware` / `resolved_model`: what the names resolved to.

    `overrides` are the architecture fields that changed (or defined) the model.
    """
    out = {"resolved_hardware": io.resolve_hardware(hardware).as_dict()}
    try:
        out["resolved_model"] = io.resolve_workload(model).as_dict()
    except ValueError:  # defined by architecture flags
        out["resolved_model"] = {"text": model, "spec": None, "how": "architecture"}
    out["resolved_model"]["architecture"] = dict(overrides or {})
    return out


def add_train(sub):
    p = sub.add_parser("train", help="time, memory and MFU of one training step")
    train_arguments(p)
    _fidelity_argument(p)
    emit_argument(p, "train")
    p.add_argument("--json", action="store_true")
    return p


def emit_argument(p, job: str):
    """--emit FRAMEWORK: print the framework's launch flags for the mapping."""
    from .emit import SERVE_FRAMEWORKS, TRAIN_FRAMEWORKS

    choices = TRAIN_FRAMEWORKS if job == "train" else SERVE_FRAMEWORKS
    p.add_argument(
        "--emit", choices=choices, metavar="|".join(choices),
        help="also print this framework's launch flags for the mapping "
        "(JSON key 'launch')",
    )  # fmt: skip


def train_launch(args, cluster, model, mapping) -> dict:
    """The `launch` object of --emit for a training mapping."""
    from .emit import train_launch as emit

    return emit(args.emit, cluster, model, mapping, gpus=args.gpus, dtype=args.dtype)


def serve_launch(args, model, serving, pools=None) -> dict:
    """The `launch` object of --emit for a serving mapping (and its pools)."""
    from .emit import model_id
    from .emit import serve_launch as emit

    try:
        aliases = list(io.meta("workloads", args.model).get("aliases", ()))
    except (ValueError, OSError):  # a Hugging Face config.json has no [meta]
        aliases = []
    name = model_id(args.model, aliases)
    launch = emit(
        args.emit, model, serving, gpus=args.gpus, weights=args.dtype,
        kv_dtype=args.kv_dtype or args.dtype, model_name=name, pools=pools,
    )  # fmt: skip
    if "/" not in name:
        launch["notes"].append(
            f"{name}: replace with the checkpoint's path or Hugging Face id"
        )
    return launch


def train_arguments(p):
    """The job flags of `diffperf train` (shared with `sensitivity train`)."""
    p.add_argument("--hardware", required=True, help="name, alias or TOML path")
    p.add_argument("--model", required=True, help="name, alias, TOML or config.json")
    p.add_argument("--gpus", required=True, type=_positive_int("--gpus"))
    p.add_argument(
        "--stack",
        help="software-stack profile (hardware/stacks/: megatron_core, trtllm, vllm, "
        "...); default: the hardware family's training stack",
    )
    for axis in ("tp", "pp", "cp", "ep", "etp", "vpp"):
        p.add_argument(f"--{axis}", type=_positive_int(f"--{axis}"), default=1)
    p.add_argument("--dp", type=_positive_int("--dp"), help="default gpus/(tp·pp·cp)")
    p.add_argument(
        "--ep-overlap",
        type=float,
        default=0.0,
        help="share of the MoE all-to-all overlapped with compute, 0..1",
    )
    p.add_argument(
        "--capacity-factor",
        type=float,
        help="MoE token dropping at this capacity factor (>= 1); default: the "
        "model's (0 = dropless)",
    )
    p.add_argument("--microbatch", type=_positive_int("--microbatch"), default=1)
    p.add_argument("--global-batch", type=_positive_int("--global-batch"))
    p.add_argument("--seq-len", type=_positive_int("--seq-len"))
    p.add_argument("--recompute", choices=("none", "selective", "full"), default="none")
    p.add_argument(
        "--recompute-modules",
        help="with --recompute selective: comma-separated modules to recompute, "
        "Megatron-core's --recompute-modules names: "
        + ", ".join(RECOMPUTE_MODULES)
        + " (default core_attn)",
    )
    p.add_argument(
        "--sequence-parallel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on when tp > 1",
    )
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=1)
    _attention_argument(p)
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="GEMM math dtype")
    _architecture_arguments(p)
    _set_argument(p)
    for what in ("optimizer", "activations"):
        p.add_argument(
            f"--offload-{what}",
            type=_fraction(f"--offload-{what}"),
            default=0.0,
            help=f"fraction of the {what} kept in the memory tier (host / CXL / C2C)",
        )
    p.add_argument(
        "--shard-group",
        type=_positive_int("--shard-group"),
        help="hybrid sharding: ZeRO shards over this many data-parallel ranks and the "
        "shards' gradients are all-reduced across the rest (HSDP; MaxText's fsdp axis)",
    )
    p.add_argument(
        "--finetune",
        choices=("full", "lora", "frozen"),
        default="full",
        help="lora: frozen base plus LoRA adapters; frozen: no weight gradients",
    )
    p.add_argument("--lora-rank", type=_positive_int("--lora-rank"), default=16)
    p.add_argument(
        "--lora-targets",
        default="qkv,attn_out",
        help="comma-separated projections: " + ", ".join(LORA_TARGETS),
    )


def _recompute_modules(args) -> tuple[str, ...]:
    """The --recompute-modules names, checked (UsageError)."""
    text = getattr(args, "recompute_modules", None)
    if text is None:
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in RECOMPUTE_MODULES]
    if bad or not names:
        raise UsageError(
            f"--recompute-modules={text!r} must be comma-separated names among "
            f"{', '.join(RECOMPUTE_MODULES)}"
        )
    if args.recompute != "selective":
        raise UsageError(
            f"--recompute-modules needs --recompute selective, not {args.recompute}"
        )
    return names


def _finetune(args) -> dict:
    """Parallelism fields of --finetune / --lora-rank / --lora-targets (UsageError)."""
    if args.finetune == "full":
        return {}
    if args.finetune == "frozen":
        return dict(trainable=0.0)
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise UsageError(
            f"--lora-targets={args.lora_targets!r} must be comma-separated names "
            f"among {', '.join(LORA_TARGETS)}"
        )
    return dict(trainable=0.0, lora_rank=float(args.lora_rank), lora_targets=targets)


def infer_arguments(p):
    """The job flags of `diffperf infer` (shared with `sensitivity infer`)."""
    p.add_argument("--hardware", required=True, help="name, alias or TOML path")
    p.add_argument("--model", required=True, help="name, alias, TOML or config.json")
    p.add_argument("--gpus", required=True, type=_positive_int("--gpus"))
    p.add_argument(
        "--stack",
        help="software-stack profile (hardware/stacks/: megatron_core, trtllm, vllm, "
        "...); default: the hardware family's serving stack",
    )
    for axis in ("tp", "pp", "ep", "etp"):
        p.add_argument(f"--{axis}", type=_positive_int(f"--{axis}"), default=1)
    p.add_argument(
        "--attention-dp", type=_positive_int("--attention-dp"), default=1,
        help="MoE models: attention data-parallel ranks of tp chips each, experts "
        "spread over all tp·attention_dp chips by --ep·--etp (TensorRT-LLM "
        "enable_attention_dp, SGLang --enable-dp-attention, vLLM --data-parallel-size "
        "with --enable-expert-parallel); --batch counts the sequences of all ranks",
    )  # fmt: skip
    p.add_argument("--batch", type=_positive_int("--batch"), default=1)
    p.add_argument("--input-len", type=_positive_int("--input-len"), default=1024)
    p.add_argument("--output-len", type=_positive_int("--output-len"), default=128)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights and math (default: the checkpoint's format when the model "
        "name states one, e.g. ...-FP8, else bf16)",
    )
    p.add_argument(
        "--kv-dtype",
        choices=DTYPES,
        help="KV cache (default: the checkpoint's, e.g. fp8 for nvidia/...-FP8 "
        "and -FP4, else --dtype)",
    )
    _set_argument(p)
    p.add_argument(
        "--graphs", action="store_true", help="decode steps replayed as CUDA graphs"
    )
    _attention_argument(p)
    p.add_argument(
        "--offload-kv",
        type=_fraction("--offload-kv"),
        default=0.0,
        help="fraction of the KV cache kept in the memory tier (host / CXL / C2C)",
    )
    _architecture_arguments(p)


def add_infer(sub):
    p = sub.add_parser("infer", help="TTFT, TPOT, throughput and memory of serving")
    infer_arguments(p)
    _fidelity_argument(p)
    p.add_argument(
        "--disaggregate",
        metavar="PREFILL_GPUS:DECODE_GPUS",
        help="separate prefill and decode pools: PREFILL_GPUS:DECODE_GPUS or xPyD "
        "workers (layouts --prefill-tp/pp, --decode-tp/pp; default --tp/--pp)",
    )
    p.add_argument(
        "--kv-tier", choices=("auto", "scale_up", "scale_out", "pcie"), default="auto",
        help="how a disaggregated deployment moves the KV cache",
    )  # fmt: skip
    for pool in ("prefill", "decode"):
        for axis in ("tp", "pp"):
            p.add_argument(
                f"--{pool}-{axis}", type=_positive_int(f"--{pool}-{axis}"),
                help=f"--disaggregate: {axis} of a {pool} worker (default --{axis})",
            )  # fmt: skip
    p.add_argument(
        "--prefill-batch", type=_positive_int("--prefill-batch"), default=1,
        help="--disaggregate: prompts per prefill step of a prefill worker",
    )  # fmt: skip
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--draft-model", help="speculative decoding: the draft model")
    spec.add_argument(
        "--speculative", choices=SPECULATIVE,
        help="speculative decoding with the model's own MTP module or an EAGLE head",
    )  # fmt: skip
    p.add_argument("--draft-tokens", type=_positive_int("--draft-tokens"), default=4)
    p.add_argument(
        "--acceptance", type=float, default=0.7, help="draft token acceptance rate"
    )
    p.add_argument(
        "--acceptance-length", type=float,
        help="mean tokens accepted per verify step, bonus token included "
        "(overrides --acceptance)",
    )  # fmt: skip
    p.add_argument("--ttft-slo", type=float, help="TTFT target [s] for goodput")
    p.add_argument("--tpot-slo", type=float, help="TPOT target [s] for goodput")
    emit_argument(p, "infer")
    load_arguments(p)
    p.add_argument("--json", action="store_true")
    return p


def _positive_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{name}={text} must be > 0 and finite")
        return v

    return parse


def load_arguments(p):
    """Flags of the load models (closed loop at a concurrency, open loop at a rate)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--concurrency", type=_positive_int("--concurrency"),
        help="closed loop: N clients in flight on all --gpus (vllm bench serve "
        "--max-concurrency, aiperf/genai-perf concurrency)",
    )  # fmt: skip
    g.add_argument(
        "--request-rate", type=_positive_float("--request-rate"),
        help="open loop: requests/s on all --gpus (MLPerf Server, vllm bench serve "
        "--request-rate)",
    )  # fmt: skip
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                   help="open-loop arrival process")  # fmt: skip
    p.add_argument(
        "--phases", choices=PHASES, default="spread",
        help="closed loop: clients' phases spread (varied lengths) or synchronized "
        "(started together with fixed lengths, as benchmark tools run: waves)",
    )  # fmt: skip
    p.add_argument(
        "--reserved-output", type=float, default=1.0,
        help="engine: share of a request's output tokens whose KV cache counts at "
        "admission (1: TensorRT-LLM GUARANTEED_NO_EVICT; 0.5: vLLM/SGLang paged "
        "allocation, the mean held)",
    )  # fmt: skip
    p.add_argument(
        "--max-batch", type=_positive_int("--max-batch"), default=256,
        help="engine: requests running at once per replica (vLLM --max-num-seqs, "
        "TensorRT-LLM max_batch_size, SGLang --max-running-requests)",
    )  # fmt: skip
    p.add_argument(
        "--max-tokens-per-step", type=_positive_int("--max-tokens-per-step"),
        default=8192, help="engine: tokens per step (vLLM --max-num-batched-tokens, "
        "TensorRT-LLM max_num_tokens)",
    )  # fmt: skip
    p.add_argument(
        "--chunked-prefill-budget", type=_positive_int("--chunked-prefill-budget"),
        help="engine: prompt tokens per step (SGLang --chunked-prefill-size); "
        "default --max-tokens-per-step",
    )  # fmt: skip
    p.add_argument(
        "--separate-prefill", action="store_true",
        help="engine: steps with prompt work run no decodes (SGLang without "
        "--enable-mixed-chunk)",
    )  # fmt: skip


def scheduler_of(args) -> Scheduler:
    """The engine's Scheduler of `load_arguments` flags (UsageError if inconsistent)."""
    budget = args.chunked_prefill_budget or args.max_tokens_per_step
    if not 0.0 <= args.reserved_output <= 1.0:
        raise UsageError(
            f"--reserved-output={args.reserved_output:g} must be in [0, 1]"
        )
    if args.phases == "synchronized" and args.request_rate is not None:
        raise UsageError("--phases synchronized is a closed loop: give --concurrency")
    if not args.separate_prefill and args.max_batch >= args.max_tokens_per_step:
        raise UsageError(
            f"--max-batch={args.max_batch} must be < --max-tokens-per-step="
            f"{args.max_tokens_per_step} (each running request decodes one token "
            "per step)"
        )
    return Scheduler(
        max_batch=args.max_batch, max_tokens_per_step=args.max_tokens_per_step,
        chunked_prefill_budget=budget, mixed=not args.separate_prefill,
        reserved_output=args.reserved_output,
    )  # fmt: skip


def load_result(cluster, model, serving, *, gpus, scheduler, concurrency=None,
                request_rate=None, arrival="poisson",
                phases="spread") -> dict:  # fmt: skip
    """The load keys of `diffperf infer --json` (Exact model, all replicas of `gpus`).

    The offered load is split evenly over the gpus/(tp·pp·attention_dp) replicas.
    """
    replicas = gpus / float(serving.chips)
    kw = dict(scheduler=scheduler, arrival=arrival)
    if concurrency is not None:
        r = served(cluster, model, serving, concurrency=concurrency / replicas,
                   phases=phases, **kw)  # fmt: skip
    else:
        r = served(cluster, model, serving, request_rate=request_rate / replicas, **kw)
    cap = float(capacity(cluster, model, serving, **kw))

    def finite(x):  # a saturated open loop has no steady state: null in the JSON
        x = float(x)
        return x if math.isfinite(x) else None

    out = {
        "ttft_s": finite(r.ttft),
        "tpot_s": finite(r.tpot),
        "e2e_latency_s": finite(r.e2e_latency),
    }
    for name, key in (("ttft", "ttft_pct"), ("tpot", "tpot_pct"),
                      ("e2e_latency", "e2e_pct")):  # fmt: skip
        for q, v in zip(("p50", "p90", "p99"), getattr(r, key), strict=True):
            out[f"{name}_{q}_s"] = finite(v)
    rate = float(r.requests_per_s)
    if concurrency is None:  # beyond saturation the replica serves its capacity
        rate = min(rate, cap)
    tokens = rate * float(serving.output_len) * replicas
    out |= {
        "requests_per_s": rate * replicas,
        "output_tokens_per_s": tokens,
        "output_tokens_per_s_per_gpu": tokens / gpus,
        "output_tokens_per_s_per_user": finite(r.output_tokens_per_s_per_user),
        "saturated": bool(r.saturated),
        "max_request_rate": float(cap) * replicas,
        "load": {
            "mode": "closed" if concurrency is not None else "open",
            "concurrency": concurrency,
            "request_rate": request_rate,
            "arrival": arrival if request_rate is not None else None,
            "phases": phases if concurrency is not None else None,
            "replicas": replicas,
            "max_batch": float(scheduler.max_batch),
            "max_tokens_per_step": float(scheduler.max_tokens_per_step),
            "chunked_prefill_budget": float(scheduler.chunked_prefill_budget),
            "reserved_output": float(scheduler.reserved_output),
            "mixed_prefill": scheduler.mixed,
            "batch_limit": float(r.batch_limit),
            "utilization": float(r.utilization),
            "saturation_concurrency": float(r.saturation_concurrency) * replicas,
            "decodes_per_step": float(r.decodes),
            "prefill_tokens_per_step": float(r.prefill_tokens),
            "step_time_s": float(r.step_time),
            "prefill_steps": float(r.prefill_steps),
            "queue_wait_s": float(r.queue_wait),
        },
    }
    return out


def _pools(text: str, p_replica: int, d_replica: int) -> tuple[int, int]:
    """(prefill, decode) chips of `--disaggregate` "P:D" (GPUs) or "xPyD" (workers)."""
    workers = re.fullmatch(r"(\d+)P(\d+)D", text.strip(), flags=re.IGNORECASE)
    if workers:
        x, y = (int(g) for g in workers.groups())
        if x < 1 or y < 1:
            raise UsageError(f"--disaggregate={text!r} needs >= 1 worker of each kind")
        return x * p_replica, y * d_replica
    try:
        p, d = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(
            f"--disaggregate={text!r} must be PREFILL_GPUS:DECODE_GPUS (e.g. 8:16) or "
            "xPyD workers (e.g. 2P1D)"
        ) from None
    for name, n, replica in (("PREFILL_GPUS", p, p_replica),
                             ("DECODE_GPUS", d, d_replica)):  # fmt: skip
        if n < replica or n % replica:
            raise UsageError(
                f"--disaggregate {name}={n} must be a multiple of a worker's chips "
                f"(tp·pp·attention_dp)={replica}"
            )
    return p, d


def add_validate(sub):
    p = sub.add_parser("validate", help="accuracy against a CSV of measured runs")
    p.add_argument("--data", required=True, help="training or inference CSV")
    _fidelity_argument(p)
    p.add_argument("--json", action="store_true")
    return p


def add_list(sub):
    p = sub.add_parser("list", help="bundled hardware or workload specs")
    p.add_argument("kind", choices=("hardware", "workloads"))
    p.add_argument("--json", action="store_true")
    return p


def train_result(cluster, model, mapping, *, dtype_peak: str | None = None) -> dict:
    """The `diffperf train --json` object for a concrete job (Exact model)."""
    b = train_step(cluster, model, mapping, relax=Exact())
    peak = cluster.chip.peak_flops(dtype_peak or model.precision.math)
    per_gpu = b.model_flops_per_s_per_gpu
    return {
        "step_time_s": float(b.total),
        "tokens_per_s_per_gpu": float(b.tokens_per_s_per_gpu),
        "model_tflops_per_gpu": float(per_gpu) / 1e12,
        "mfu": float(per_gpu / peak),
        "hfu": float(b.hardware_flops / (b.total * b.chips) / peak),
        "memory_per_gpu_bytes": float(b.memory_per_gpu),
        "memory_capacity_bytes": float(b.memory_capacity),
        "memory_excess_bytes": float(b.memory_excess),
        "feasible": bool(b.feasible),
        "breakdown": {k: float(v) for k, v in b.terms().items()},
        "overlapped": {k: float(v) for k, v in b.overlapped().items()},
        "nic_bytes_per_step_per_gpu": float(b.nic_bytes),
        "nic_demand_bytes_per_s_per_gpu": float(b.nic_demand),
        "nic_demand_bytes_per_s_per_node": float(
            b.nic_demand * cluster.host.chips_per_node
        ),
        "nic_bandwidth_bytes_per_s_per_gpu": float(cluster.scale_out_bandwidth()),
        "offload_memory_per_gpu_bytes": float(b.offload_memory),
        "offload_capacity_per_gpu_bytes": float(b.offload_capacity),
    }


def run_train(args) -> dict:
    cluster, model, mapping = train_job(args)
    launch = train_launch(args, cluster, model, mapping) if args.emit else None
    cluster, mapping = tier(args.fidelity, cluster, mapping)
    out = train_result(cluster, model, mapping)
    arch = architecture_flags(args, args.seq_len)
    out |= resolved_names(args.hardware, args.model, arch) | {
        "fidelity": args.fidelity,
        "hardware": cluster.name,
        "stack": args.stack or io.default_stack(args.hardware),
        "model": model.name,
        "mapping": {
            "gpus": args.gpus,
            "tp": args.tp,
            "pp": args.pp,
            "dp": int(mapping.dp),
            "cp": args.cp,
            "ep": args.ep,
            "etp": args.etp,
            "ep_overlap": args.ep_overlap,
            "vpp": args.vpp,
            "microbatch": args.microbatch,
            "global_batch": float(mapping.batch()),
            "seq_len": float(mapping.tokens(model)),
            "recompute": args.recompute,
            "recompute_modules": list(recomputed_modules(mapping)),
            "sequence_parallel": mapping.sequence_parallel,
            "zero": args.zero,
            "attention_kernel": args.attention_kernel,
            "dtype": args.dtype,
            "offload_optimizer": args.offload_optimizer,
            "offload_activations": args.offload_activations,
            "shard_group": float(mapping.shard_group),
            "trainable": float(mapping.trainable),
            "lora_rank": float(mapping.lora_rank),
            "lora_targets": list(mapping.lora_targets),
        },
    }
    if launch is not None:
        out["launch"] = launch
    return out


def train_job(args):
    """(cluster, model, mapping) of `train_arguments` flags, checked (UsageError)."""
    cluster = with_leaves(io.load_hardware(args.hardware, stack=args.stack), args.set)
    model = io.load_workload(args.model, architecture_flags(args, args.seq_len))
    model = with_precision(model, Precision.training(args.dtype))
    if args.capacity_factor is not None:
        # dataclasses.replace re-runs the workload's checks on the new value
        model = dataclasses.replace(model, capacity_factor=args.capacity_factor)
    if float(cluster.chip.peak_flops(args.dtype)) <= 0:
        raise UsageError(
            f"--dtype={args.dtype}: {cluster.name} has no {args.dtype} tensor "
            "throughput (flops_" + args.dtype + " = 0)"
        )
    inner = args.tp * args.pp * args.cp
    dp = args.dp if args.dp is not None else args.gpus // inner
    if args.gpus % inner and args.dp is None:
        raise UsageError(f"--gpus={args.gpus} must be a multiple of tp·pp·cp={inner}")
    sp = args.sequence_parallel if args.sequence_parallel is not None else args.tp > 1
    mapping = Parallelism(
        tp=args.tp,
        pp=args.pp,
        dp=dp,
        cp=args.cp,
        ep=args.ep,
        etp=args.etp,
        vpp=args.vpp,
        ep_overlap=args.ep_overlap,
        microbatch=args.microbatch,
        global_batch=args.global_batch or dp * args.microbatch,
        seq_len=args.seq_len or 0,
        recompute=args.recompute,
        recompute_modules=_recompute_modules(args),
        sequence_parallel=sp,
        zero=args.zero,
        attention_kernel=args.attention_kernel,
        offload_optimizer=args.offload_optimizer,
        offload_activations=args.offload_activations,
        shard_group=float(args.shard_group or 0),
        **_finetune(args),
    )
    check_mapping(model, mapping, gpus=args.gpus)
    return cluster, model, mapping


def infer_result(cluster, model, serving, *, gpus=None, ttft_slo=None,
                 tpot_slo=None, pools=None, kv_tier="auto", layouts=None
                 ) -> dict:  # fmt: skip
    """The `diffperf infer --json` object for a concrete serving job (Exact model).

    Static batch metrics, plus the continuous-batching steady state and its cost on
    `gpus` chips, goodput under the SLOs, and with `pools` = (prefill, decode) chips
    the disaggregated deployment and its colocated comparison; `layouts` =
    (prefill, decode) `Serving`s of its workers (default: one-prompt prefill steps
    and `serving` for decode, both with `serving`'s degrees).
    """
    r = serve(cluster, model, serving, relax=Exact())
    gpus = gpus or float(serving.chips)
    cb = continuous_batching(cluster, model, serving)
    cb_rate = float(cb["output_tokens_per_s"]) * gpus / float(serving.chips)
    usd_h = float(hourly_cost(cluster, gpus))
    slo_t = float("inf") if ttft_slo is None else ttft_slo
    slo_d = float("inf") if tpot_slo is None else tpot_slo
    meets = float(cb["ttft"]) <= slo_t and float(cb["tpot"]) <= slo_d
    out = {
        "ttft_s": float(r.ttft),
        "tpot_s": float(r.tpot),
        "e2e_latency_s": float(r.e2e_latency),
        "output_tokens_per_s": float(r.output_tokens_per_s),
        "output_tokens_per_s_per_gpu": float(r.output_tokens_per_s_per_gpu),
        "max_batch": int(r.max_batch),
        "memory_per_gpu_bytes": float(r.memory_per_gpu),
        "memory_capacity_bytes": float(r.memory_capacity),
        "feasible": bool(r.feasible),
        "kv_cache_bytes_per_token_per_gpu": float(r.kv_bytes_per_token),
        "offload_memory_per_gpu_bytes": float(r.offload_memory),
        "breakdown": {
            "prefill": {k: float(v) for k, v in r.prefill.terms().items()},
            "decode_step": {k: float(v) for k, v in r.decode.terms().items()},
        },
        "continuous_batching": {
            "ttft_s": float(cb["ttft"]),
            "tpot_s": float(cb["tpot"]),
            "output_tokens_per_s": cb_rate,
            "goodput_tokens_per_s": cb_rate if meets else 0.0,
            "usd_per_hour": usd_h,
            "usd_per_million_output_tokens": usd_per_million_tokens(usd_h, cb_rate),
            "nic_demand_bytes_per_s_per_gpu": float(cb["nic_demand"]),
        },
    }
    if pools is not None:
        p_chips, d_chips = pools
        if layouts is None:
            pre = eqx.tree_at(lambda s: s.batch, serving, serving.batch * 0 + 1.0)
            layouts = (pre, serving)
        pre, dec = layouts
        d = disaggregated(
            cluster, model, pre, dec, prefill_chips=p_chips, decode_chips=d_chips,
            ttft_slo=slo_t, tpot_slo=slo_d, kv_tier=kv_tier,
        )  # fmt: skip
        out["disaggregated"] = {
            "prefill_gpus": p_chips,
            "decode_gpus": d_chips,
            "prefill_workers": float(d.prefill_workers),
            "decode_workers": float(d.decode_workers),
            "prefill_layout": {
                "tp": float(pre.tp),
                "pp": float(pre.pp),
                "batch": float(pre.batch),
            },
            "decode_layout": {
                "tp": float(dec.tp),
                "pp": float(dec.pp),
                "batch": float(dec.batch),
            },
            "prefill_requests_per_s": float(d.prefill_requests_per_s),
            "decode_requests_per_s": float(d.decode_requests_per_s),
            "balanced_decode_workers_per_prefill_worker": float(
                d.balanced_decode_per_prefill
            ),
            "ttft_s": float(d.ttft),
            "tpot_s": float(d.tpot),
            "kv_transfer_s": float(d.kv_transfer),
            "kv_bytes_per_request": float(d.kv_bytes),
            "kv_bandwidth_demand_bytes_per_s": float(d.kv_bandwidth_demand),
            "kv_nic_demand_bytes_per_s_per_gpu": float(d.kv_nic_demand),
            "requests_per_s": float(d.requests_per_s),
            "output_tokens_per_s": float(d.output_tokens_per_s),
            "goodput_requests_per_s": float(d.goodput),
            "usd_per_million_output_tokens": float(d.usd_per_million_tokens),
            "decode_memory_per_gpu_bytes": float(d.decode_memory_per_gpu),
            "decode_feasible": bool(d.decode_feasible),
        }
    return out


def infer_job(args):
    """(cluster, model, serving, precision) of `infer_arguments` flags (UsageError)."""
    stack = args.stack or io.default_stack(args.hardware, "serving")
    cluster = with_leaves(io.load_hardware(args.hardware, stack=stack), args.set)
    context = args.input_len + args.output_len
    model = io.load_workload(args.model, architecture_flags(args, context))
    try:
        found = io.resolve_workload(args.model)
    except ValueError:
        found = None
    if args.dtype is None:  # the checkpoint's format, as its name states (...-FP8)
        args.dtype = (found and found.precision) or "bf16"
    # the KV cache: --kv-dtype, else the checkpoint's (ModelOpt: fp8), else --dtype
    kv = args.kv_dtype or (found and found.kv_cache) or args.dtype
    math_dtype = args.dtype if args.dtype not in ("int4",) else "bf16"
    prec = Precision(math=math_dtype, weights=args.dtype, kv_cache=kv)
    model = with_precision(model, prec)
    if float(cluster.chip.peak_flops(math_dtype)) <= 0:
        raise UsageError(
            f"--dtype={args.dtype}: {cluster.name} has no {math_dtype} tensor "
            f"throughput (flops_{math_dtype} = 0)"
        )
    serving = Serving(
        tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, batch=args.batch,
        attention_dp=args.attention_dp, input_len=args.input_len,
        output_len=args.output_len, graphs=args.graphs, offload_kv=args.offload_kv,
        attention_kernel=args.attention_kernel,
    )  # fmt: skip
    return cluster, model, serving, prec


def _layouts(args, model, serving):
    """(prefill, decode) worker `Serving`s of the --prefill-*/--decode-* flags."""
    out = []
    for pool, batch in (("prefill", args.prefill_batch), ("decode", args.batch)):
        tp = getattr(args, f"{pool}_tp") or args.tp
        pp = getattr(args, f"{pool}_pp") or args.pp
        worker = dataclasses.replace(serving, tp=tp, pp=pp, batch=batch)
        try:
            check_serving(model, worker)
        except ValueError as e:
            raise UsageError(f"{pool} worker: {e}") from None
        out.append(worker)
    return tuple(out)


def run_infer(args) -> dict:
    cluster, model, serving, prec = infer_job(args)
    cluster, _ = tier(args.fidelity, cluster)
    replica = args.tp * args.pp * args.attention_dp
    pools = layouts = None
    if args.disaggregate:
        layouts = _layouts(args, model, serving)
        pools = _pools(args.disaggregate, *(int(s.chips) for s in layouts))
    if pools is None:
        check_serving(model, serving, gpus=args.gpus if args.gpus < replica else None)
        if args.gpus % replica:
            what = "tp·pp" if args.attention_dp == 1 else "tp·pp·attention_dp"
            raise UsageError(
                f"--gpus={args.gpus} must be a multiple of {what}={replica}"
            )
    else:
        check_serving(model, serving)
        if sum(pools) != args.gpus:
            raise UsageError(
                f"--gpus={args.gpus} must equal PREFILL_GPUS + DECODE_GPUS"
            )
    out = infer_result(
        cluster, model, serving, gpus=args.gpus, ttft_slo=args.ttft_slo,
        tpot_slo=args.tpot_slo, pools=pools, kv_tier=args.kv_tier, layouts=layouts,
    )  # fmt: skip
    if args.draft_model or args.speculative:
        if not 0.0 <= args.acceptance < 1.0:
            raise UsageError(f"--acceptance={args.acceptance} must be in [0, 1)")
        tau = args.acceptance_length
        if tau is not None and not 1.0 <= tau <= args.draft_tokens + 1:
            raise UsageError(
                f"--acceptance-length={tau:g} must be in [1, --draft-tokens + 1 = "
                f"{args.draft_tokens + 1}]"
            )
        if args.draft_model:
            draft = with_precision(io.load_workload(args.draft_model), prec)
        else:
            draft = draft_model(model, args.speculative)
        tpot = speculative_tpot(
            cluster, model, draft, serving, k=float(args.draft_tokens),
            acceptance=args.acceptance, acceptance_length=tau,
        )  # fmt: skip
        base = out["tpot_s"]  # the static batch's (load keys come below)
        out["speculative"] = {
            "method": args.speculative or "draft_model",
            "draft_model": draft.name,
            "draft_tokens": args.draft_tokens,
            "acceptance": args.acceptance if tau is None else None,
            "acceptance_length": tau,
            "tpot_s": float(tpot),
            "speedup": float(base / tpot),
        }
    if args.concurrency is not None or args.request_rate is not None:
        static = {k: out[k] for k in ("ttft_s", "tpot_s", "e2e_latency_s",
                                      "output_tokens_per_s",
                                      "output_tokens_per_s_per_gpu")}  # fmt: skip
        out["static_batch"] = static
        out |= load_result(
            cluster, model, serving, gpus=args.gpus, scheduler=scheduler_of(args),
            concurrency=args.concurrency, request_rate=args.request_rate,
            arrival=args.arrival, phases=args.phases,
        )  # fmt: skip
    arch = architecture_flags(args, args.input_len + args.output_len)
    out |= resolved_names(args.hardware, args.model, arch) | {
        "fidelity": args.fidelity,
        "hardware": cluster.name,
        "stack": args.stack or io.default_stack(args.hardware, "serving"),
        "model": model.name,
        "mapping": {"gpus": args.gpus, "tp": args.tp, "pp": args.pp, "ep": args.ep,
                    "etp": args.etp, "attention_dp": args.attention_dp,
                    "batch": args.batch, "input_len": args.input_len,
                    "output_len": args.output_len, "dtype": args.dtype,
                    "kv_dtype": prec.kv_cache, "graphs": args.graphs,
                    "attention_kernel": args.attention_kernel},
    }  # fmt: skip
    if args.emit:
        out["launch"] = serve_launch(args, model, serving, pools)
    return out


def print_launch(launch: dict):
    """The --emit commands, one per role, ready to paste."""
    print(f"launch ({launch['version']}):")
    for c in launch["commands"]:
        times = f"  # x{c['count']}" if c["count"] > 1 else ""
        print(f"  [{c['role']}]{times}\n  {c['shell']}")
    for name, text in launch["files"].items():
        print(f"  file {name}:")
        for line in text.splitlines():
            print(f"    {line}")
    for note in launch["notes"]:
        print(f"  note: {note}")


def print_infer(out: dict):
    if "launch" in out:
        print_launch(out["launch"])
    m = out["mapping"]
    if "load" in out:
        return print_load(out)
    print(f"{out['model']} on {m['gpus']} × {out['hardware']}, batch {m['batch']}, "
          f"{m['input_len']} in / {m['output_len']} out")  # fmt: skip
    print(f"  TTFT             {1e3 * out['ttft_s']:.4g} ms")
    print(f"  TPOT             {1e3 * out['tpot_s']:.4g} ms")
    print(f"  end-to-end       {out['e2e_latency_s']:.4g} s")
    print(f"  output tokens/s  {out['output_tokens_per_s']:.5g} per replica "
          f"({out['output_tokens_per_s_per_gpu']:.4g} per GPU)")  # fmt: skip
    mem, cap = out["memory_per_gpu_bytes"], out["memory_capacity_bytes"]
    fit = "fits" if out["feasible"] else "DOES NOT FIT"
    print(f"  memory/GPU       {mem / 1e9:.1f} GB of {cap / 1e9:.0f} GB ({fit}); "
          f"max batch {out['max_batch']}")  # fmt: skip
    cb = out["continuous_batching"]
    print(f"  continuous batching: TTFT {1e3 * cb['ttft_s']:.4g} ms, TPOT "
          f"{1e3 * cb['tpot_s']:.4g} ms, {cb['output_tokens_per_s']:.5g} tokens/s on "
          f"{m['gpus']} GPUs, ${cb['usd_per_million_output_tokens']:.3g} per M tokens, "
          f"goodput {cb['goodput_tokens_per_s']:.5g} tokens/s")  # fmt: skip
    if "disaggregated" in out:
        d = out["disaggregated"]
        print(f"  disaggregated {d['prefill_workers']:g}P{d['decode_workers']:g}D "
              f"({d['prefill_gpus']}:{d['decode_gpus']} GPUs; pools sustain "
              f"{d['prefill_requests_per_s']:.4g} and {d['decode_requests_per_s']:.4g} "
              f"req/s; balanced at "
              f"{d['balanced_decode_workers_per_prefill_worker']:.3g} decode workers "
              "per prefill worker)")  # fmt: skip
        print(f"  disaggregated {d['prefill_gpus']}:{d['decode_gpus']}: TTFT "
              f"{1e3 * d['ttft_s']:.4g} ms (KV transfer {1e3 * d['kv_transfer_s']:.3g} "
              f"ms), TPOT {1e3 * d['tpot_s']:.4g} ms, {d['output_tokens_per_s']:.5g} "
              f"tokens/s, goodput {d['goodput_requests_per_s']:.4g} req/s, "
              f"${d['usd_per_million_output_tokens']:.3g} per M tokens")  # fmt: skip
    if "speculative" in out:
        sp = out["speculative"]
        acc = (
            f"acceptance length {sp['acceptance_length']:g}"
            if sp["acceptance_length"]
            else f"acceptance {sp['acceptance']}"
        )
        print(f"  speculative ({sp['draft_model']}, k={sp['draft_tokens']}, "
              f"{acc}): TPOT {1e3 * sp['tpot_s']:.4g} ms "
              f"({sp['speedup']:.2f}x)")  # fmt: skip
    for phase, terms in out["breakdown"].items():
        total = sum(terms.values())
        print(f"  {phase} ({1e3 * total:.4g} ms):")
        for name, sec in sorted(terms.items(), key=lambda kv: -kv[1]):
            if sec > 0:
                print(f"    {name:<16} {1e3 * sec:10.4g} ms  {sec / total:6.1%}")


def print_load(out: dict):
    m, ld = out["mapping"], out["load"]
    what = (f"concurrency {ld['concurrency']}" if ld["mode"] == "closed" else
            f"{ld['request_rate']:g} requests/s ({ld['arrival']})")  # fmt: skip
    print(f"{out['model']} on {m['gpus']} × {out['hardware']} ({ld['replicas']:g} "
          f"replicas), {what}, {m['input_len']} in / {m['output_len']} out"
          )  # fmt: skip
    ms = lambda k: float("nan") if out[k] is None else 1e3 * out[k]  # noqa: E731
    for name in ("ttft", "tpot", "e2e_latency"):
        print(f"  {name:<12} mean {ms(name + '_s'):9.4g} ms   p50 "
              f"{ms(name + '_p50_s'):9.4g}   p90 {ms(name + '_p90_s'):9.4g}   p99 "
              f"{ms(name + '_p99_s'):9.4g}")  # fmt: skip
    user = out["output_tokens_per_s_per_user"] or float("nan")
    print(f"  output tokens/s {out['output_tokens_per_s']:.5g} "
          f"({out['output_tokens_per_s_per_gpu']:.4g} per GPU, "
          f"{user:.4g} per user)")  # fmt: skip
    state = "SATURATED" if out["saturated"] else "stable"
    print(f"  {state}: utilization {ld['utilization']:.2f}; max request rate "
          f"{out['max_request_rate']:.4g}/s; batch limit {ld['batch_limit']:.0f} "
          f"per replica; {ld['decodes_per_step']:.1f} decodes and "
          f"{ld['prefill_tokens_per_step']:.0f} prompt tokens per step of "
          f"{1e3 * ld['step_time_s']:.4g} ms")  # fmt: skip


def with_precision(model, precision):
    return eqx.tree_at(lambda m: m.precision, model, precision)


def print_train(out: dict):
    if "launch" in out:
        print_launch(out["launch"])
    print(f"{out['model']} on {out['mapping']['gpus']} × {out['hardware']}")
    print(f"  step time        {out['step_time_s']:.4g} s")
    print(f"  tokens/s/GPU     {out['tokens_per_s_per_gpu']:.5g}")
    print(
        f"  model TFLOP/s/GPU {out['model_tflops_per_gpu']:.4g}  (MFU {out['mfu']:.1%})"
    )
    mem, cap = out["memory_per_gpu_bytes"], out["memory_capacity_bytes"]
    fit = "fits" if out["feasible"] else "DOES NOT FIT"
    print(f"  memory/GPU       {mem / 1e9:.1f} GB of {cap / 1e9:.0f} GB ({fit})")
    total = out["step_time_s"]
    for name, sec in sorted(out["breakdown"].items(), key=lambda kv: -kv[1]):
        if sec > 0:
            print(f"    {name:<16} {sec:10.4g} s  {sec / total:6.1%}")


def list_specs(args) -> dict:
    kind = args.kind
    names = io.hardware_names() if kind == "hardware" else io.workload_names()
    items = {n: io.meta(kind, n).get("name", n) for n in names}
    if not args.json:
        for n, title in items.items():
            print(f"{n:<28} {title}")
    return {kind: items}
