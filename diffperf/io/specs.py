"""Loading hardware and workload specs (TOML, HF config.json); resolving names.

The only module of the library that touches files. Specs live in `hardware/` and
`workloads/` at the repository root; an installed wheel carries copies under
`diffperf/_specs/`. A name is a path, a file stem, an alias from `[meta] aliases`
(compared after lower-casing and dropping spaces and `-_.(),/`), or a name as people
write it (vendor tables, papers, MLPerf, cloud instances, TPU slices, Hugging Face ids;
the rules are in `io.names`). A hardware name's power limit and TPU slice are applied
to the loaded spec (`io.systems`).
"""

import copy
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..model.economics import anchor
from ..specs.hardware import (
    Chip,
    Cluster,
    Cost,
    Dimension,
    Host,
    MemoryTier,
    NetworkTier,
)
from ..specs.workload import Transformer
from . import names as _names
from .architecture import (
    ARCHITECTURE_FIELDS,
    architecture_values,
    defined_fields,
    with_architecture,
)
from .systems import power_cap, tpu_slice

__all__ = [
    "load_hardware",
    "load_workload",
    "hardware_names",
    "workload_names",
    "spec_dir",
    "from_hf_config",
    "resolve_hardware",
    "resolve_workload",
    "family_names",
    "family_chain",
    "stack_names",
    "stack_meta",
    "default_stack",
    "stack_for_framework",
    "stack_leaf_paths",
    "STACK_LEAVES",
]

_HERE = Path(__file__).resolve().parents[1]  # the diffperf package


def spec_dir(kind: str) -> Path:
    """The folder holding the bundled `hardware` or `workloads` TOML files."""
    for base in (_HERE / "_specs", _HERE.parent):
        if (base / kind).is_dir():
            return base / kind
    raise FileNotFoundError(f"no bundled {kind}/ folder next to {_HERE}")


normalize = _names.normalize


@dataclass(frozen=True)
class _Spec:
    stem: str
    path: Path
    aliases: tuple[str, ...]


_PARSED: dict[Path, tuple[int, int, dict]] = {}


def _read_toml(path: Path) -> dict:
    """A TOML file's tables (a fresh copy; parsed once per file version).

    Parsed tables are kept by path and re-read when the file's modification time or
    size changes, so a validation over hundreds of rows parses each spec once.
    """
    try:
        st = Path(path).stat()
        hit = _PARSED.get(Path(path))
        if hit is None or hit[:2] != (st.st_mtime_ns, st.st_size):
            with open(path, "rb") as f:
                hit = (st.st_mtime_ns, st.st_size, tomllib.load(f))
            _PARSED[Path(path)] = hit
        return copy.deepcopy(hit[2])
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: malformed TOML: {e}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None


_CACHE: dict[str, tuple[tuple, dict[str, _Spec]]] = {}


def _registry(kind: str) -> dict[str, _Spec]:
    """Stem → spec of the bundled files of a kind, rebuilt when a file changes.

    One entry per kind: hardware and workload look-ups alternate in a validation.
    """
    paths = sorted(spec_dir(kind).glob("*.toml"))
    key = tuple((p, p.stat().st_mtime_ns) for p in paths)
    if kind not in _CACHE or _CACHE[kind][0] != key:
        specs = {}
        for path in paths:
            meta = _read_toml(path).get("meta", {})
            specs[path.stem] = _Spec(path.stem, path, tuple(meta.get("aliases", ())))
        _CACHE[kind] = (key, specs)
    return _CACHE[kind][1]


def _is_path(name: str) -> bool:
    p = Path(name)
    return p.suffix in (".toml", ".json") or p.is_file()


def resolve_hardware(name: str | Path) -> _names.HardwareName:
    """What a hardware name resolves to (`io.names.HardwareName`).

    Raises:
        ValueError: unknown (with close matches) or ambiguous (with the candidates).
    """
    text = str(name)
    if _is_path(text):
        return _names.HardwareName(text, Path(text).stem, "path")
    reg = _registry("hardware")
    return _names.parse_hardware(text, {s: v.aliases for s, v in reg.items()})


def resolve_workload(name: str | Path) -> _names.WorkloadName:
    """What a model name resolves to (`io.names.WorkloadName`).

    Raises:
        ValueError: unknown (with close matches) or ambiguous (with the candidates).
    """
    text = str(name)
    if _is_path(text):
        return _names.WorkloadName(text, Path(text).stem, "path")
    reg = _registry("workloads")
    return _names.parse_workload(
        text, {s: v.aliases for s, v in reg.items()}, _published
    )


def _published(stem: str):
    reg = _registry("workloads")
    return (
        _read_toml(reg[stem].path).get("meta", {}).get("params")
        if stem in reg
        else None
    )


def resolve_path(kind: str, name: str) -> Path:
    """Path of a spec given its name (module docstring); ValueError if unknown."""
    p = Path(name)
    if _is_path(name):
        if not p.is_file():
            raise ValueError(f"{kind} file {name!r} does not exist")
        return p
    found = resolve_hardware(name) if kind == "hardware" else resolve_workload(name)
    return _registry(kind)[found.spec].path


STACK_LEAVES = {
    "chip": ("kernel_overhead",),
    "host": (
        "dispatch_overhead",
        "sync_overhead",
        "step_overhead",
        "serve_overhead",
        "moe_host_ops",
    ),
}
"""The leaves a software-stack profile sets (`hardware/stacks/*.toml`): launch, host
and synchronization costs that belong to the framework or engine, not to the silicon.
They live in the `Chip` and `Host` pytrees so the cost model reads them where they act;
a hardware or family file must not set them (`stack_leaf_paths`)."""


def stack_leaf_paths() -> tuple[str, ...]:
    """Dotted `Cluster` paths of the software-stack leaves (`STACK_LEAVES`)."""
    return tuple(f"{t}.{k}" for t, keys in STACK_LEAVES.items() for k in keys)


def _sub_specs(sub: str) -> dict[str, Path]:
    """Stem → path of `hardware/<sub>/*.toml` (families, stacks)."""
    folder = spec_dir("hardware") / sub
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def family_names() -> list[str]:
    """Stems of the architecture-family files (`hardware/families/`)."""
    return sorted(_sub_specs("families"))


def stack_names() -> list[str]:
    """Stems of the software-stack profiles (`hardware/stacks/`)."""
    return sorted(_sub_specs("stacks"))


def _base_path(kind: str, base: str) -> Path:
    """The file an `extends` names: a family (hardware/families/) or a spec."""
    if kind == "hardware" and base in _sub_specs("families"):
        return _sub_specs("families")[base]
    return resolve_path(kind, base)


def family_chain(name: str | Path) -> list[str]:
    """Families a hardware spec extends, root first; [] outside any family.

    E.g. ["blackwell", "blackwell_ultra"] for gb300.
    """
    fams = _sub_specs("families")
    path = resolve_path("hardware", str(name))
    chain, seen = [], set()
    while True:
        base = _read_toml(path).get("meta", {}).get("extends")
        if not base or base in seen:
            return chain[::-1]
        seen.add(base)
        if base in fams:
            chain.append(base)
            path = fams[base]
        else:
            path = resolve_path("hardware", base)


def default_stack(name: str | Path, kind: str = "training") -> str | None:
    """The software stack a hardware spec runs by default.

    The spec's own or its nearest family's `[meta] stack` (training) or
    `serve_stack` (serving; else the training stack); None if none names one.
    """
    own = _read_toml(resolve_path("hardware", str(name))).get("meta", {})
    fams = _sub_specs("families")
    metas = [own] + [
        _read_toml(fams[f]).get("meta", {}) for f in reversed(family_chain(name))
    ]
    keys = ["stack"] if kind == "training" else ["serve_stack", "stack"]
    for key in keys:  # serving falls back to the training stack
        for meta in metas:
            if key in meta:
                return meta[key]
    return None


def stack_meta(stack: str) -> dict:
    """The `[meta]` table of a software-stack profile."""
    return _read_toml(_stack_path(stack)).get("meta", {})


def _stack_path(stack: str) -> Path:
    stacks = _sub_specs("stacks")
    if stack not in stacks:
        raise ValueError(
            f"unknown software stack {stack!r}; allowed: {', '.join(stacks) or 'none'}"
        )
    return stacks[stack]


def stack_for_framework(framework: str, fallback: str | None = None) -> str | None:
    """The stack whose `[meta] frameworks` patterns match a framework as printed.

    ("Megatron-Bridge / NeMo 25.09", "TensorRT-LLM v0.6.1", "vLLM ..."): the stack
    with the longest pattern contained in the text (case-insensitive; so
    "TensorRT-LLM v0.5" beats "TensorRT-LLM"); `fallback` when none matches.
    """
    text = (framework or "").lower()
    best, best_len = fallback, 0
    for stem, path in _sub_specs("stacks").items():
        for pat in _read_toml(path).get("meta", {}).get("frameworks", ()):
            if pat.lower() in text and len(pat) > best_len:
                best, best_len = stem, len(pat)
    return best


def _stack_overlay(data: dict, stack: str) -> dict:
    """A merged hardware TOML with a stack profile's leaves set (`STACK_LEAVES`)."""
    path = _stack_path(stack)
    prof = _read_toml(path)
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for table, values in prof.items():
        if table == "meta":
            continue
        allowed = STACK_LEAVES.get(table, ())
        bad = set(values) - set(allowed) if isinstance(values, dict) else {table}
        if bad:
            raise ValueError(
                f"{path.name} [{table}]: {', '.join(sorted(bad))} not a stack leaf; "
                f"allowed: {', '.join(stack_leaf_paths())}"
            )
        out.setdefault(table, {}).update(values)
    return out


def _merged(kind: str, path: Path, seen: tuple = ()) -> dict:
    """The TOML of a spec with `[meta] extends` applied (tables merged key by key)."""
    data = _read_toml(path)
    base = data.get("meta", {}).get("extends")
    if not base:
        return data
    if base in seen:
        raise ValueError(f"{path}: [meta] extends loops through {base!r}")
    parent = _merged(kind, _base_path(kind, base), seen + (base,))
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in parent.items()}
    for table, values in data.items():
        if isinstance(values, dict):
            out.setdefault(table, {}).update(values)
        else:
            out[table] = values
    out["meta"] = dict(data.get("meta", {}))
    return out


_TEXT_KEYS = {"mlp", "attention", "topology", "name", "kind"}
_BOOL_KEYS = {"tied_embeddings", "in_network_reduction"}
_INT_KEYS = {"pcie_gen"}


def _build(cls, table: dict | None, where: str, *, fixed: dict | None = None):
    """cls(**table); unknown / missing keys and bad values raise ValueError."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: missing table")
    fields = {f for f in cls.__dataclass_fields__ if f not in (fixed or {})}
    unknown = set(table) - fields
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    for key, value in table.items():
        if key in _TEXT_KEYS:
            ok = isinstance(value, str)
        elif key in _BOOL_KEYS:
            ok = isinstance(value, bool)
        elif key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key == "dims":
            ok = isinstance(value, tuple)  # converted from an array of tables
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"{where}: {key} = {value!r} has the wrong type")
    try:
        return cls(**table, **(fixed or {}))
    except TypeError as e:
        missing = re.findall(r"'(\w+)'", str(e))
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _check_meta(meta: dict, path: Path):
    if meta.get("schema") != 1:
        raise ValueError(f"{path}: [meta] schema must be 1")
    if not meta.get("source"):
        raise ValueError(
            f"{path}: [meta] source is required (where the numbers come from)"
        )


def load_hardware(
    name: str | Path, ici_chips: int | None = None, stack: str | None = None
) -> Cluster:
    """A `Cluster` from a hardware name (module docstring) or TOML path.

    The spec's `[meta] extends` chain (other specs, architecture families in
    `hardware/families/`) is merged, then a software-stack profile
    (`hardware/stacks/`) sets the launch and host leaves (`STACK_LEAVES`): `stack`,
    else the spec's or its family's default training stack (`default_stack`).

    A power limit in the name caps the chip's power; a TPU slice name (v5p-512) cuts
    the pod's ICI domain to the slice (`io.systems`). `ici_chips` (a mesh's ICI axes)
    asks for a scale-up domain of that many chips: a TPU host spec becomes a slice of
    its pod spec.

    Raises:
        ValueError: unknown or ambiguous name, malformed TOML, unknown or missing
            keys, a value out of range (e.g. a negative bandwidth), or an ICI domain
            the hardware cannot have, or an unknown stack.
    """
    found = resolve_hardware(name)
    reg = _registry("hardware")
    path = (
        resolve_path("hardware", str(name))
        if found.how == "path"
        else reg[found.spec].path
    )
    cluster = _load_hardware_path(path, stack)
    if found.power_w is not None:
        cluster = power_cap(cluster, found.power_w)
    chips = found.slice_chips
    if ici_chips and chips and ici_chips != chips:
        raise ValueError(
            f"the mesh's ICI axes span {ici_chips} chips but {name!r} is a slice of "
            f"{chips}"
        )
    chips = chips or ici_chips
    if chips and chips != round(float(cluster.scale_up.size)):
        if chips > float(cluster.scale_up.size):
            family = _names.HARDWARE_TRAITS.get(found.spec, ("",))[0]
            pods = [
                s
                for s, t in _names.HARDWARE_TRAITS.items()
                if t[0] == family and t[3] == "pod" and s in reg
            ]
            if not pods:
                raise ValueError(
                    f"an ICI domain of {chips} chips exceeds {cluster.name}'s scale-up "
                    f"domain ({float(cluster.scale_up.size):g} chips)"
                )
            cluster = _load_hardware_path(reg[pods[0]].path, stack)
            if found.power_w is not None:
                cluster = power_cap(cluster, found.power_w)
        if cluster.scale_up.dims and chips < float(cluster.scale_up.size):
            cluster = tpu_slice(cluster, chips)
        elif chips > float(cluster.scale_up.size):
            cluster = tpu_slice(cluster, chips)
    return cluster


_CLUSTERS: dict[tuple, tuple[tuple, Cluster]] = {}


def _load_hardware_path(path: Path, stack: str | None = None) -> Cluster:
    """The `Cluster` of a spec file; a bundled spec's is built once per version.

    Clusters are immutable pytrees, so the same object is returned for a bundled
    spec while no file under `hardware/` (specs, families, stacks) changes.
    """
    root = spec_dir("hardware")
    if not Path(path).resolve().is_relative_to(root.resolve()):
        return _build_cluster(path, stack)
    version = tuple((p, p.stat().st_mtime_ns) for p in sorted(root.rglob("*.toml")))
    key = (Path(path).resolve(), stack)
    hit = _CLUSTERS.get(key)
    if hit is None or hit[0] != version:
        hit = (version, _build_cluster(path, stack))
        _CLUSTERS[key] = hit
    return hit[1]


def _build_cluster(path: Path, stack: str | None = None) -> Cluster:
    data = _merged("hardware", path)
    _check_meta(data.get("meta", {}), path)
    stack = stack or default_stack(path)
    if stack is not None:
        data = _stack_overlay(data, stack)
    where = path.name
    cost = data.get("cost", {})
    tier = data.get("memory_tier")
    cluster = Cluster(
        chip=_build(Chip, _chip_table(data.get("chip")), f"{where} [chip]"),
        scale_up=_tier(data.get("scale_up"), f"{where} [scale_up]"),
        scale_out=_tier(data.get("scale_out"), f"{where} [scale_out]"),
        host=_build(Host, data.get("host"), f"{where} [host]"),
        name=path.stem,
        cost=_build(Cost, cost, f"{where} [cost]"),
        memory_tier=None
        if tier is None
        else _build(MemoryTier, tier, f"{where} [memory_tier]"),
    )
    return anchor(cluster, given=frozenset(cost))


DEPRECATED_CHIP_KEYS = {
    "low_precision_efficiency": ("fp8_efficiency", "fp4_efficiency"),
}
"""Chip keys of earlier schemas and the keys they set (where the table does not).
`low_precision_efficiency`, one leaf for every sub-16-bit GEMM, is now split per dtype
class; the old key is still read, as both, so older files load unchanged."""


def _chip_table(table):
    """The [chip] table with deprecated keys (`DEPRECATED_CHIP_KEYS`) renamed."""
    if not isinstance(table, dict):
        return table
    out = dict(table)
    for old, new in DEPRECATED_CHIP_KEYS.items():
        if old in out:
            value = out.pop(old)
            for key in new:
                out.setdefault(key, value)
    return out


def _tier(table, where: str) -> NetworkTier:
    """A `NetworkTier`; its `dims` is an array of tables, one `Dimension` each."""
    if isinstance(table, dict) and isinstance(table.get("dims"), list):
        dims = tuple(
            _build(Dimension, d, f"{where} dims[{i}]")
            for i, d in enumerate(table["dims"])
        )
        table = table | {"dims": dims}
    return _build(NetworkTier, table, where)


def load_workload(name: str | Path, architecture: dict | None = None) -> Transformer:
    """A `Transformer` from a workload name, TOML path or HF `config.json` path.

    A TOML may start from another model with `[meta] extends = "<name>"` and change
    some of its `[model]` keys (a 405B proxy with `n_layers = 8`); its `[model]` table
    may use the field names or the architecture vocabulary of the measurement CSVs
    (`layers`, `hidden`, ...: `io.architecture`). `architecture` (a CSV row or CLI
    flags) overrides the named model's fields, or defines the model when the name is
    unknown.

    Raises:
        ValueError: unknown name without the fields that define a model, ambiguous
            name, malformed file, unknown/missing keys, bad values.
    """
    values = architecture_values(architecture or {})
    try:
        path = resolve_path("workloads", str(name))
    except _names.UnknownName:
        if not values:
            raise
        return with_architecture(None, values, str(name))
    if path.suffix == ".json":
        model = from_hf_config(path)
    else:
        data = _merged("workloads", path)
        _check_meta(data.get("meta", {}), path)
        model = _build(
            Transformer,
            _model_table(data.get("model"), path),
            f"{path.name} [model]",
            fixed={"name": path.stem},
        )
    return with_architecture(model, values) if values else model


def _model_table(table, path: Path):
    """A `[model]` table whose CSV-vocabulary keys (`layers = 8`) became fields.

    Vocabulary keys change the fields they name; when the table (after `extends`)
    lacks a model's required fields, the vocabulary defines it with the defaults of
    `io.architecture` (as a CSV row would).
    """
    if not isinstance(table, dict):
        return table
    vocab = {k: v for k, v in table.items() if ARCHITECTURE_FIELDS.get(k)}
    if not vocab:
        return table
    where = f"{path.name} [model]"
    values = architecture_values({k: str(v) for k, v in vocab.items()}, where)
    rest = {k: v for k, v in table.items() if k not in vocab}
    required = ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len")
    if all(k in rest for k in required):
        fields = {ARCHITECTURE_FIELDS[k]: v for k, v in values.items()}
        if "seq_len" in values:
            fields["max_seq_len"] = values["seq_len"]
    else:
        need = ("layers", "hidden", "heads", "vocab", "seq_len")
        missing = [
            k for k in need if k not in values and ARCHITECTURE_FIELDS[k] not in rest
        ]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
        merged = values | {
            k: float(rest[ARCHITECTURE_FIELDS[k]])
            for k in ("layers", "hidden", "heads", "vocab", "seq_len")
            if k not in values
        }
        fields = defined_fields(merged)
    out = rest | fields
    for k, v in out.items():  # whole floats back to ints for _build's type checks
        if isinstance(v, float) and v.is_integer():
            out[k] = int(v)
    return out


def published_params(name: str) -> float | None:
    """The `[meta] params` count of a bundled workload, if given."""
    return _read_toml(resolve_path("workloads", name)).get("meta", {}).get("params")


def from_hf_config(path: str | Path) -> Transformer:
    """A `Transformer` from a Hugging Face `config.json`.

    Understands Llama, Mistral, Qwen, GPT-2, Mixtral, Qwen-MoE, GPT-OSS, DeepSeek-V3
    and Nemotron-H (hybrid Mamba-2 / attention / MoE, LatentMoE) style keys. Multi-token
    prediction modules (`num_nextn_predict_layers`) are left out, as at inference.

    Raises:
        ValueError: the file is not JSON or lacks the hidden size / layer / head keys.
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config: {e}") from None
    cfg = cfg.get("text_config", cfg)

    def get(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        if default is None:
            raise ValueError(f"{path}: config.json lacks {' / '.join(keys)}")
        return default

    d = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    act = str(
        get("mlp_hidden_act", "hidden_act", "activation_function", default="silu")
    )
    gated = (
        act in ("silu", "swiglu", "gelu_pytorch_tanh")
        or "llama" in str(cfg.get("model_type", ""))
        or cfg.get("model_type")
        in (
            "mistral",
            "qwen2",
            "qwen3",
            "qwen3_moe",
            "mixtral",
            "gpt_oss",
            "deepseek_v3",
            "gemma",
        )
    )
    experts = get("num_local_experts", "num_experts", "n_routed_experts", default=0)
    mla = cfg.get("kv_lora_rank") is not None
    table = dict(
        n_layers=get("num_hidden_layers", "n_layer"),
        d_model=d,
        n_heads=heads,
        n_kv_heads=get("num_key_value_heads", default=heads),
        head_dim=get("head_dim", default=d // heads),
        d_ff=get("intermediate_size", "n_inner", default=4 * d),
        vocab_size=get("vocab_size"),
        max_seq_len=get("max_position_embeddings", "n_positions", "seq_length"),
        mlp="gated" if gated else "plain",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", not gated)),
        n_experts=experts,
        top_k=get("num_experts_per_tok", "experts_per_token", default=0)
        if experts
        else 0,
        d_ff_expert=get("moe_intermediate_size", "intermediate_size", default=0)
        if experts
        else 0,
        n_shared_experts=get("n_shared_experts", default=0) if experts else 0,
        n_dense_layers=get("first_k_dense_replace", default=0) if experts else 0,
        sliding_window=get("sliding_window", default=0) or 0,
    )
    table |= _hybrid_keys(cfg, get)
    if mla:
        table |= dict(
            attention="mla",
            head_dim=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
            q_lora_rank=cfg.get("q_lora_rank") or 0,
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
        )
    name = re.sub(r"\W+", "_", str(cfg.get("_name_or_path", path.parent.name)))
    return _build(Transformer, table, path.name, fixed={"name": name or "hf_config"})


_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}


def _hybrid_keys(cfg: dict, get) -> dict:
    """Transformer keys of a Nemotron-H hybrid (layer pattern, Mamba-2, LatentMoE).

    Each layer of `hybrid_override_pattern` (M Mamba-2, * attention, - MLP, E MoE) or
    `layers_block_type` is one block; their shares become the mix fractions.
    """
    kinds = cfg.get("layers_block_type")
    if not kinds and cfg.get("hybrid_override_pattern"):
        kinds = [_PATTERN.get(c, "mamba") for c in cfg["hybrid_override_pattern"]]
    out = {}
    if cfg.get("moe_shared_expert_intermediate_size"):
        out["d_ff_shared"] = cfg["moe_shared_expert_intermediate_size"]
    if cfg.get("moe_latent_size"):
        out["moe_latent_dim"] = cfg["moe_latent_size"]
    if not kinds:
        return out
    n = len(kinds)
    count = {k: sum(1 for x in kinds if x == k) for k in ("mamba", "attention")}
    out |= dict(
        n_layers=n,
        attention_fraction=count["attention"] / n,
        ssm_fraction=count["mamba"] / n,
        mlp_fraction=sum(1 for x in kinds if x in ("mlp", "moe")) / n,
    )
    if count["mamba"]:
        out |= dict(
            ssm_heads=get("mamba_num_heads"),
            ssm_head_dim=get("mamba_head_dim"),
            ssm_state_dim=get("ssm_state_size"),
            ssm_groups=get("n_groups"),
            ssm_conv_width=get("conv_kernel", default=4),
            ssm_chunk=get("chunk_size", default=128),
        )
    return out


def hardware_names() -> list[str]:
    """Stems of the bundled hardware specs."""
    return sorted(_registry("hardware"))


def workload_names() -> list[str]:
    """Stems of the bundled workload specs."""
    return sorted(_registry("workloads"))


def meta(kind: str, name: str) -> dict:
    """The `[meta]` table of a bundled spec (after `extends`)."""
    return _merged(kind, resolve_path(kind, name)).get("meta", {})


def read_csv(path: str | Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV file; ValueError if missing, empty or ragged."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except OSError as e:
        raise ValueError(f"--data={str(path)!r}: cannot read: {e.strerror}") from None
    except csv.Error as e:
        raise ValueError(f"--data={str(path)!r}: malformed CSV: {e}") from None
    if not columns:
        raise ValueError(f"--data={str(path)!r}: empty CSV (no header)")
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ValueError(
                f"--data={str(path)!r}: line {i} has a different number of fields "
                f"than the header ({len(columns)})"
            )
    return columns, rows
