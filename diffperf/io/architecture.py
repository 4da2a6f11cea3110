"""Models defined or changed by architecture fields (CSV columns, CLI flags, TOML keys).

The vocabulary is that of the measurement CSVs (`data/README.md`):

| field | Transformer field | notes |
|---|---|---|
| layers | n_layers | |
| hidden | d_model | |
| heads | n_heads | query heads |
| kv_heads | n_kv_heads | default: heads (multi-head attention) |
| head_dim | head_dim | default: hidden / heads |
| ffn_hidden | d_ff | default: 4·hidden |
| mlp_activation | mlp | swiglu, geglu → "gated"; relu, gelu, squared_relu → "plain" |
| tied_embeddings | tied_embeddings | true/false; default true |
| vocab | vocab_size | |
| seq_len | max_seq_len | only for a model the fields define (see below) |
| n_experts, top_k | n_experts, top_k | MoE routed experts |
| shared_experts, moe_ffn_hidden | n_shared_experts, d_ff_expert | MoE |
| params_B | (check) | the total parameters in billions a source prints |

When the name is a known model, the fields present override its spec (a 405B proxy
with `layers = 8`); when it is unknown, the fields define the model, and `layers`,
`hidden`, `heads`, `vocab` and `seq_len` are required. The defaults for what a row
leaves blank are Megatron-LM's argument defaults (`megatron/training/arguments.py`:
`ffn_hidden_size` = 4·hidden, `num_query_groups` = heads, `kv_channels` =
hidden/heads, GeLU MLP, embeddings shared with the output layer unless
`--untie-embeddings-and-output-weights`). A named model keeps its context: a row's
`seq_len` is the mapping's sequence length. A model the fields define whose parameter
count differs from a stated `params_B` by more than 20% is an error (a wrong column).
"""

import dataclasses
import re

from ..specs.workload import Transformer

__all__ = [
    "ARCHITECTURE_FIELDS",
    "architecture_values",
    "defined_fields",
    "with_architecture",
]

ARCHITECTURE_FIELDS = {
    "layers": "n_layers",
    "hidden": "d_model",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "head_dim": "head_dim",
    "ffn_hidden": "d_ff",
    "mlp_activation": "mlp",
    "tied_embeddings": "tied_embeddings",
    "vocab": "vocab_size",
    "seq_len": "max_seq_len",
    "n_experts": "n_experts",
    "top_k": "top_k",
    "shared_experts": "n_shared_experts",
    "moe_ffn_hidden": "d_ff_expert",
    "params_B": None,
}
"""Vocabulary (rows, CLI flags with `-` for `_`, TOML keys) → Transformer field."""

_ACTIVATIONS = {
    "swiglu": "gated",
    "geglu": "gated",
    "relu": "plain",
    "gelu": "plain",
    "squared_relu": "plain",
}
_REQUIRED = ("layers", "hidden", "heads", "vocab", "seq_len")


def architecture_values(source: dict, where: str = "column") -> dict:
    """The architecture fields present (non-blank) in a row / flags, parsed.

    Numbers become floats, `mlp_activation` "gated"/"plain" and `tied_embeddings` a
    bool. Raises ValueError naming the field and what is allowed.
    """
    out = {}
    for key in ARCHITECTURE_FIELDS:
        raw = source.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        text = str(raw).strip().lower()
        if key == "mlp_activation":
            if text not in _ACTIVATIONS:
                raise ValueError(
                    f"{where} mlp_activation={raw!r} must be one of "
                    f"{', '.join(_ACTIVATIONS)}"
                )
            out[key] = _ACTIVATIONS[text]
        elif key == "tied_embeddings":
            if text not in ("true", "false", "yes", "no", "1", "0", "y", "n"):
                raise ValueError(
                    f"{where} tied_embeddings={raw!r} must be true or false"
                )
            out[key] = text in ("true", "yes", "1", "y")
        else:
            try:
                value = float(re.sub(r"[,_]", "", text))
            except ValueError:
                raise ValueError(f"{where} {key}={raw!r} must be a number") from None
            if not value > 0 and key not in ("n_experts", "shared_experts", "top_k"):
                raise ValueError(f"{where} {key}={raw!r} must be > 0")
            out[key] = value
    return out


def defined_fields(values: dict) -> dict:
    """Transformer keyword arguments of a model the fields define (defaults applied).

    `values` (from `architecture_values`) must hold the required fields.
    """
    h, n = values["hidden"], values["heads"]
    moe = values.get("n_experts", 0.0) > 0
    return dict(
        n_layers=values["layers"],
        d_model=h,
        n_heads=n,
        n_kv_heads=values.get("kv_heads", n),
        head_dim=values.get("head_dim", h / n),
        d_ff=values.get("ffn_hidden", 4.0 * h),
        vocab_size=values["vocab"],
        max_seq_len=values["seq_len"],
        mlp=values.get("mlp_activation", "plain"),
        tied_embeddings=values.get("tied_embeddings", True),
        n_experts=values.get("n_experts", 0.0),
        top_k=values.get("top_k", 0.0) if moe else 0.0,
        n_shared_experts=values.get("shared_experts", 0.0) if moe else 0.0,
        d_ff_expert=values.get("moe_ffn_hidden", 0.0) if moe else 0.0,
    )


def with_architecture(
    base: Transformer | None, values: dict, name: str = "custom"
) -> Transformer:
    """`base` with the fields of `values` (from `architecture_values`) applied.

    With `base` None the fields define the model (module docstring).

    Raises:
        ValueError: a required field is missing, a value is out of range, or the
            parameter count contradicts `params_B`.
    """
    stated = values.get("params_B")
    if base is None:
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise ValueError(
                f"model {name!r} is not a known spec; to define it give the "
                f"architecture field(s) {', '.join(missing)}"
            )
        table = defined_fields(values)
        try:
            model = Transformer(**table, name=re.sub(r"\W+", "_", name).strip("_"))
        except ValueError as e:
            raise ValueError(f"model {name!r}: {e}") from None
        if stated:
            count = float(model.params()) / 1e9
            if abs(count - stated) > 0.2 * stated:
                raise ValueError(
                    f"model {name!r}: the architecture fields give {count:.3g}B "
                    f"parameters but params_B={stated:g}"
                )
        return model
    change = {
        ARCHITECTURE_FIELDS[k]: v
        for k, v in values.items()
        if ARCHITECTURE_FIELDS[k] and k != "seq_len"
    }
    if "hidden" in values or "heads" in values:
        if "head_dim" not in values:
            d, n = float(base.d_model), float(base.n_heads)
            if abs(float(base.head_dim) - d / n) < 1e-9:  # the standard H = D/N
                change["head_dim"] = values.get("hidden", d) / values.get("heads", n)
    if not change:
        return base
    try:
        return dataclasses.replace(base, **change)
    except ValueError as e:
        raise ValueError(f"model {base.name!r}: {e}") from None
