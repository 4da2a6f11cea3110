"""Workloads: decoder-only transformers (dense or mixture-of-experts) and precisions.

Notation (scaling-book letters): L layers, D d_model, F d_ff, N query heads, K kv heads,
H head_dim, V vocabulary, E routed experts, k experts per token, Fe expert width.
Sizes are float leaves: an analytical model never shapes arrays by them, so they can be
vmapped and differentiated like hardware values.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._checks import check_fields, concrete
from ._relax import as_float
from ._units import BYTES

__all__ = ["Precision", "Transformer"]

_F = dict(converter=as_float)


def _dtype(x: str, field: str) -> str:
    if x not in BYTES:
        raise ValueError(f"Precision({field}={x!r}) must be one of {', '.join(BYTES)}")
    return x


class Precision(eqx.Module):
    """Dtype of each tensor class (static labels; bytes from `_units.BYTES`).

    `math` picks the tensor-core peak; the others set bytes moved and stored. Defaults
    are the usual mixed-precision recipe: bf16 weights/activations, fp32 gradient
    reduction, fp32 Adam state and master weights.
    """

    math: str = eqx.field(static=True, default="bf16")
    weights: str = eqx.field(static=True, default="bf16")
    activations: str = eqx.field(static=True, default="bf16")
    kv_cache: str = eqx.field(static=True, default="bf16")
    grads: str = eqx.field(static=True, default="fp32")
    optimizer: str = eqx.field(static=True, default="fp32")

    def __check_init__(self):
        for f in ("math", "weights", "activations", "kv_cache", "grads", "optimizer"):
            _dtype(getattr(self, f), f)

    def bytes(self, tensor_class: str) -> float:
        """Bytes per element of a tensor class ("weights", "activations", ...)."""
        return BYTES[getattr(self, tensor_class)]

    @classmethod
    def training(cls, dtype: str) -> "Precision":
        """The precision of a training run whose GEMMs run in `dtype`.

        Low-precision (fp8/fp4) training keeps its primary weights in that dtype (fp32
        master weights live in the optimizer state), bf16 activations between GEMMs, and
        casts GEMM inputs (Transformer Engine's fp8 parameters and recipe).
        """
        if dtype in ("bf16", "fp16", "fp32", "tf32"):
            return cls(
                math=dtype,
                weights=dtype if dtype != "tf32" else "fp32",
                activations=dtype if dtype != "tf32" else "fp32",
            )
        return cls(math=_dtype(dtype, "math"), weights=dtype)


class Transformer(eqx.Module):
    """A decoder-only transformer, dense or MoE (fields: workloads/README.md).

    Attention is multi-head (K = N), grouped-query (1 < K < N) or multi-query (K = 1);
    `attention="mla"` is DeepSeek's multi-head latent attention. MoE layers replace the
    MLP by E routed experts (k per token) plus shared experts; the first
    `n_dense_layers` keep a dense MLP of width F.
    """

    n_layers: Array = eqx.field(**_F)
    d_model: Array = eqx.field(**_F)
    n_heads: Array = eqx.field(**_F)
    n_kv_heads: Array = eqx.field(**_F)
    head_dim: Array = eqx.field(**_F)
    d_ff: Array = eqx.field(**_F)
    vocab_size: Array = eqx.field(**_F)
    max_seq_len: Array = eqx.field(**_F)
    sliding_window: Array = eqx.field(**_F, default=0.0)
    sliding_fraction: Array = eqx.field(**_F, default=0.0)
    n_experts: Array = eqx.field(**_F, default=0.0)
    top_k: Array = eqx.field(**_F, default=0.0)
    d_ff_expert: Array = eqx.field(**_F, default=0.0)
    n_shared_experts: Array = eqx.field(**_F, default=0.0)
    n_dense_layers: Array = eqx.field(**_F, default=0.0)
    q_lora_rank: Array = eqx.field(**_F, default=0.0)
    kv_lora_rank: Array = eqx.field(**_F, default=0.0)
    qk_rope_head_dim: Array = eqx.field(**_F, default=0.0)
    v_head_dim: Array = eqx.field(**_F, default=0.0)
    expert_imbalance: Array = eqx.field(**_F, default=1.0)  # max/mean tokens per expert
    mlp: Literal["gated", "plain"] = eqx.field(static=True, default="gated")
    tied_embeddings: bool = eqx.field(static=True, default=False)
    attention: Literal["standard", "mla"] = eqx.field(static=True, default="standard")
    precision: Precision = Precision()
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        check_fields(
            self,
            positive=(
                "n_layers",
                "d_model",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "d_ff",
                "vocab_size",
                "max_seq_len",
                "expert_imbalance",
            ),
            nonneg=(
                "sliding_window",
                "n_experts",
                "top_k",
                "d_ff_expert",
                "n_shared_experts",
                "n_dense_layers",
                "q_lora_rank",
                "kv_lora_rank",
                "qk_rope_head_dim",
                "v_head_dim",
            ),
            fraction=("sliding_fraction",),
        )
        if self.mlp not in ("gated", "plain"):
            raise ValueError(f"Transformer(mlp={self.mlp!r}) must be gated or plain")
        if self.attention not in ("standard", "mla"):
            raise ValueError(
                f"Transformer(attention={self.attention!r}) must be standard or mla"
            )
        n, k = concrete(self.n_heads), concrete(self.n_kv_heads)
        if n is not None and k is not None and n % k:
            raise ValueError(f"Transformer(n_kv_heads={k:g}) must divide n_heads={n:g}")
        e, top = concrete(self.n_experts), concrete(self.top_k)
        if e is not None and top is not None and e > 0 and not 0 < top <= e:
            raise ValueError(
                f"Transformer(top_k={top:g}) must be in 1..n_experts={e:g}"
            )

    # ---- derived sizes (elements), all differentiable -------------------------------
    @property
    def mlp_mats(self) -> float:
        """Weight matrices per MLP: 3 for gated (up, gate, down), 2 for plain."""
        return 3.0 if self.mlp == "gated" else 2.0

    @property
    def moe_fraction(self) -> Array:
        """Fraction of layers that are MoE layers (0 for dense models)."""
        is_moe = jnp.where(self.n_experts > 0, 1.0, 0.0)
        return is_moe * (1.0 - self.n_dense_layers / self.n_layers)

    def attention_params(self) -> Array:
        """Weights of one attention block [elements].

        Standard: D·N·H (Q) + 2·D·K·H (K, V) + N·H·D (O).
        MLA: D·q + q·N·H (Q; D·N·H when q_lora_rank = 0) + D·(c + Hr) + c·N·(Hn + Hv)
        + N·Hv·D, with c = kv_lora_rank, Hr = rope dim, Hn = H − Hr, Hv = v_head_dim.
        """
        d, n, h = self.d_model, self.n_heads, self.head_dim
        if self.attention == "mla":
            q = self.q_lora_rank
            wq = jnp.where(q > 0, d * q + q * n * h, d * n * h)
            c, hr, hv = self.kv_lora_rank, self.qk_rope_head_dim, self.v_head_dim
            return wq + d * (c + hr) + c * n * (h - hr + hv) + n * hv * d
        return 2.0 * d * n * h + 2.0 * d * self.n_kv_heads * h

    def dense_mlp_params(self) -> Array:
        """Weights of one dense MLP [elements]: (3 or 2)·D·F."""
        return self.mlp_mats * self.d_model * self.d_ff

    def expert_params(self) -> Array:
        """Weights of one routed expert [elements]: (3 or 2)·D·Fe."""
        return self.mlp_mats * self.d_model * self.d_ff_expert

    def moe_layer_params(self) -> Array:
        """Weights of one MoE block [elements]: (E + shared)·expert + router D·E."""
        e = self.n_experts + self.n_shared_experts
        return e * self.expert_params() + self.d_model * self.n_experts

    def embedding_params(self) -> Array:
        """Input embedding plus output projection [elements]: V·D·(1 if tied else 2)."""
        return self.vocab_size * self.d_model * (1.0 if self.tied_embeddings else 2.0)

    def layer_params(self) -> Array:
        """Mean weights per layer [elements], MoE and dense layers mixed by count."""
        f = self.moe_fraction
        mlp = f * self.moe_layer_params() + (1.0 - f) * self.dense_mlp_params()
        return self.attention_params() + mlp + 2.0 * self.d_model

    def params(self) -> Array:
        """Total parameters [elements]: L·layer + embeddings + final norm."""
        return (
            self.n_layers * self.layer_params() + self.embedding_params() + self.d_model
        )

    def active_params(self) -> Array:
        """Parameters used per token [elements]: routed experts count k of E."""
        f = self.moe_fraction
        moe = (self.top_k + self.n_shared_experts) * self.expert_params()
        moe = moe + self.d_model * self.n_experts
        mlp = f * moe + (1.0 - f) * self.dense_mlp_params()
        per_layer = self.attention_params() + mlp + 2.0 * self.d_model
        return self.n_layers * per_layer + self.embedding_params() + self.d_model
