"""Workloads: decoder-only transformers (dense or mixture-of-experts) and precisions.

Notation (scaling-book letters): L layers, D d_model, F d_ff, N query heads, K kv heads,
H head_dim, V vocabulary, E routed experts, k experts per token, Fe expert width, ℓ the
latent width of a LatentMoE (D when absent).

Hybrid models (Nemotron-H, Jamba, ...) mix layer types: of the L layers a share
`attention_fraction` has an attention mixer, `ssm_fraction` a Mamba-2 mixer and
`mlp_fraction` an MLP (dense or MoE). A standard transformer has 1, 0, 1; Nemotron-H,
whose layers are each one of attention, Mamba-2 or MoE, has fractions summing to 1.
Mamba-2 (Dao & Gu 2024) sizes: Hs SSM heads of Ps channels (d_in = Hs·Ps), G groups
of B/C with state size Ns, a causal conv of width w.
Sizes are float leaves: an analytical model never shapes arrays by them, so they can be
vmapped and differentiated like hardware values.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..core.checks import check_fields, concrete
from ..core.relax import as_float
from ..core.units import BYTES

__all__ = [
    "Precision",
    "Transformer",
    "LOW_PRECISION",
    "RECIPES",
    "DEFAULT_RECIPE",
    "TRAINING_BF16_LAYERS",
]

_F = dict(converter=as_float)
_MIX = ("attention_fraction", "ssm_fraction", "mlp_fraction")


def _dtype(x: str, field: str) -> str:
    if x not in BYTES:
        raise ValueError(f"Precision({field}={x!r}) must be one of {', '.join(BYTES)}")
    return x


LOW_PRECISION = ("fp8", "int8", "fp4", "mxfp8", "mxfp4", "nvfp4")
"""Math dtypes narrower than 16 bits: their GEMMs need quantized (scaled) operands."""

RECIPES = ("delayed", "current", "block", "mx", "nvfp4")
"""Scaling recipes of low-precision GEMMs (`Precision.recipe`), as Transformer Engine
names them (github:NVIDIA/TransformerEngine docs/features/low_precision_training):
  - delayed: FP8 per-tensor scaling from the amax history of past iterations
    (`DelayedScaling`, TE's default recipe; also the static per-tensor scales of
    FP8 inference engines);
  - current: FP8 per-tensor current scaling (`Float8CurrentScaling`, Megatron-Bridge
    "fp8_cs"): the scale comes from this tensor's amax, a separate reduction pass;
  - block: FP8 block scaling, 1×128 activation tiles and 128×128 weight blocks with
    fp32 scales (`Float8BlockScaling`, DeepSeek-V3 §3.3, Megatron-Bridge "fp8_sc";
    Hopper);
  - mx: OCP microscaling, 32-element blocks with an E8M0 scale (`MXFP8BlockScaling`,
    Megatron-Bridge "fp8_mx"; Blackwell);
  - nvfp4: NVFP4, E2M1 values in 16-element blocks with an E4M3 scale and an fp32
    per-tensor scale (`NVFP4BlockScaling`; Blackwell; arXiv:2509.25149).
Both per-tensor recipes are what issue #14 calls "tensor" scaling."""

_RECIPE_DTYPES = {
    "delayed": ("fp8", "int8"),
    "current": ("fp8", "int8"),
    "block": ("fp8",),
    "mx": ("fp8", "mxfp8", "fp4", "mxfp4"),
    "nvfp4": ("fp4", "nvfp4"),
}
"""Math dtypes each recipe can scale (a 4-bit recipe needs a 4-bit GEMM)."""

DEFAULT_RECIPE = {
    "fp8": "delayed",
    "int8": "delayed",
    "mxfp8": "mx",
    "mxfp4": "mx",
    "fp4": "nvfp4",
    "nvfp4": "nvfp4",
}
"""The recipe of a low-precision math dtype whose `recipe` is "auto": TE's default
(delayed scaling) for FP8/INT8, the format's own block scaling for MX and NVFP4."""

TRAINING_BF16_LAYERS = {"nvfp4": 0.16}
"""Share of layers a training recipe keeps in BF16 by default (`Precision.training`).
NVFP4: "selective high-precision layers", the last layers in BF16 (NVIDIA,
"Pretraining Large Language Models with NVFP4", arXiv:2509.25149, §4); Megatron-Bridge
`nemotron_3_super_bf16_with_nvfp4_mixed` keeps the last 14 of Nemotron 3 Super's 88
layers (0.16; github:NVIDIA-NeMo/Megatron-Bridge
src/megatron/bridge/training/mixed_precision.py), the recipe of its NVFP4 performance
runs. FP8 recipes: 0; the per-tensor current-scaling preset keeps the first and last
layer in BF16, but Megatron-Bridge's performance configurations turn that off
(scripts/performance/utils/precision.py: `first_last_layers_bf16 = False`), and its
MXFP8, block and delayed presets keep none."""


class Precision(eqx.Module):
    """Dtype of each tensor class (static labels; bytes from `core.units.BYTES`).

    `math` picks the tensor-core peak of the layers' linear GEMMs; the others set bytes
    moved and stored. Defaults are the usual mixed-precision recipe: bf16
    weights/activations, fp32 gradient reduction, fp32 Adam state and master weights.

    Low-precision math (`LOW_PRECISION`) runs as the Transformer Engine / Megatron
    recipes run it: the linear layers' GEMMs (QKV, attention output, MLP, expert,
    shared-expert, Mamba projections) in `math`, scaled by `recipe` (`RECIPES`; "auto":
    `DEFAULT_RECIPE`); the core attention, the MoE router, the embedding and the output
    logits GEMM stay in bf16 (`model.layer.BF16_OPS`, `layer.head_time`), and a share
    `bf16_layers` of the layers keeps all its GEMMs in bf16 (Megatron
    `--num-layers-at-start/end-in-bf16`). Both are static: they pick kernels, not
    amounts.
    """

    math: str = eqx.field(static=True, default="bf16")
    weights: str = eqx.field(static=True, default="bf16")
    activations: str = eqx.field(static=True, default="bf16")
    kv_cache: str = eqx.field(static=True, default="bf16")
    grads: str = eqx.field(static=True, default="fp32")
    optimizer: str = eqx.field(static=True, default="fp32")
    recipe: str = eqx.field(static=True, default="auto")
    bf16_layers: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        for f in ("math", "weights", "activations", "kv_cache", "grads", "optimizer"):
            _dtype(getattr(self, f), f)
        if self.recipe != "auto" and self.recipe not in RECIPES:
            raise ValueError(
                f"Precision(recipe={self.recipe!r}) must be auto or one of "
                f"{', '.join(RECIPES)}"
            )
        fits = _RECIPE_DTYPES.get(self.recipe, ())
        if self.recipe != "auto" and self.low and self.math not in fits:
            raise ValueError(
                f"Precision(recipe={self.recipe!r}) scales "
                f"{'/'.join(_RECIPE_DTYPES[self.recipe])} math, not math={self.math!r}"
            )
        share = self.bf16_layers
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ValueError(f"Precision(bf16_layers={share!r}) must be a number")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"Precision(bf16_layers={share:g}) must be in [0, 1]")

    def bytes(self, tensor_class: str) -> float:
        """Bytes per element of a tensor class ("weights", "activations", ...)."""
        return BYTES[getattr(self, tensor_class)]

    @property
    def low(self) -> bool:
        """The linear GEMMs run narrower than 16 bits (`LOW_PRECISION`)."""
        return self.math in LOW_PRECISION

    @property
    def scaling(self) -> str:
        """The scaling recipe in effect.

        `recipe`, "auto" resolved by `DEFAULT_RECIPE`; "none" for 16/32-bit math.
        """
        if not self.low:
            return "none"
        return DEFAULT_RECIPE[self.math] if self.recipe == "auto" else self.recipe

    @classmethod
    def training(
        cls, dtype: str, recipe: str = "auto", bf16_layers: float | None = None
    ) -> "Precision":
        """The precision of a training run whose GEMMs run in `dtype`.

        Low-precision (fp8/fp4) training keeps its primary weights in that dtype (fp32
        master weights live in the optimizer state), bf16 activations between GEMMs, and
        casts GEMM inputs (Transformer Engine's fp8 parameters and recipe). `recipe`
        as `Precision.recipe`; `bf16_layers` defaults to the recipe's
        `TRAINING_BF16_LAYERS` share.
        """
        if dtype in ("bf16", "fp16", "fp32", "tf32"):
            return cls(
                math=dtype,
                weights=dtype if dtype != "tf32" else "fp32",
                activations=dtype if dtype != "tf32" else "fp32",
            )
        base = cls(math=_dtype(dtype, "math"), weights=dtype, recipe=recipe)
        if bf16_layers is None:
            bf16_layers = TRAINING_BF16_LAYERS.get(base.scaling, 0.0)
        return cls(
            math=dtype, weights=dtype, recipe=recipe, bf16_layers=float(bf16_layers)
        )


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
    capacity_factor: Array = eqx.field(**_F, default=0.0)  # 0: dropless
    d_ff_shared: Array = eqx.field(**_F, default=0.0)  # 0: n_shared_experts·d_ff_expert
    moe_latent_dim: Array = eqx.field(**_F, default=0.0)  # 0: experts act on D
    n_mtp_layers: Array = eqx.field(**_F, default=0.0)  # multi-token-prediction blocks
    attention_fraction: Array = eqx.field(**_F, default=1.0)
    ssm_fraction: Array = eqx.field(**_F, default=0.0)
    mlp_fraction: Array = eqx.field(**_F, default=1.0)
    ssm_heads: Array = eqx.field(**_F, default=0.0)
    ssm_head_dim: Array = eqx.field(**_F, default=0.0)
    ssm_state_dim: Array = eqx.field(**_F, default=0.0)
    ssm_groups: Array = eqx.field(**_F, default=0.0)
    ssm_conv_width: Array = eqx.field(**_F, default=4.0)
    ssm_chunk: Array = eqx.field(**_F, default=128.0)
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
                "ssm_chunk",
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
                "capacity_factor",
                "d_ff_shared",
                "moe_latent_dim",
                "n_mtp_layers",
                "ssm_heads",
                "ssm_head_dim",
                "ssm_state_dim",
                "ssm_groups",
                "ssm_conv_width",
            ),
            fraction=(
                "sliding_fraction",
                "attention_fraction",
                "ssm_fraction",
                "mlp_fraction",
            ),
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
        cf = concrete(self.capacity_factor)
        if cf is not None and 0 < cf < 1:
            raise ValueError(
                f"Transformer(capacity_factor={cf:g}) must be 0 (dropless) or >= 1"
            )
        ssm, heads = concrete(self.ssm_fraction), concrete(self.ssm_heads)
        if ssm and not heads:
            raise ValueError(
                f"Transformer(ssm_fraction={ssm:g}) needs ssm_heads, ssm_head_dim, "
                "ssm_state_dim and ssm_groups > 0"
            )
        parts = [concrete(getattr(self, f)) for f in _MIX]
        if None not in parts and parts[0] + parts[1] + parts[2] <= 0:
            raise ValueError(
                "Transformer(attention_fraction + ssm_fraction + mlp_fraction) "
                "must be > 0"
            )
        dense, layers = concrete(self.n_dense_layers), concrete(self.n_layers)
        if None not in (dense, layers, parts[2]) and dense > parts[2] * layers + 1e-6:
            raise ValueError(
                f"Transformer(n_dense_layers={dense:g}) must be <= the layers with an "
                f"MLP, mlp_fraction·n_layers={parts[2] * layers:g}"
            )

    # ---- derived sizes (elements), all differentiable -------------------------------
    @property
    def mlp_mats(self) -> float:
        """Weight matrices per MLP: 3 for gated (up, gate, down), 2 for plain."""
        return 3.0 if self.mlp == "gated" else 2.0

    @property
    def moe_fraction(self) -> Array:
        """Fraction of MoE layers: mlp_fraction − n_dense_layers / L (0 if dense)."""
        is_moe = jnp.where(self.n_experts > 0, 1.0, 0.0)
        return is_moe * (self.mlp_fraction - self.n_dense_layers / self.n_layers)

    @property
    def dense_mlp_fraction(self) -> Array:
        """Fraction of layers with a dense MLP of width F."""
        return self.mlp_fraction - self.moe_fraction

    @property
    def sublayers(self) -> Array:
        """Blocks per layer, each with its norm and residual (2 for a transformer)."""
        return self.attention_fraction + self.ssm_fraction + self.mlp_fraction

    @property
    def expert_input_dim(self) -> Array:
        """ℓ: the width the routed experts act on (LatentMoE) [elements], else D."""
        return jnp.where(self.moe_latent_dim > 0, self.moe_latent_dim, self.d_model)

    @property
    def shared_width(self) -> Array:
        """Total width of the shared experts [elements]: d_ff_shared, else S·Fe."""
        return jnp.where(
            self.d_ff_shared > 0,
            self.d_ff_shared,
            self.n_shared_experts * self.d_ff_expert,
        )

    @property
    def expert_load(self) -> Array:
        """Tokens at the busiest expert over the mean: capacity factor, else imbalance.

        Token dropping (capacity_factor c ≥ 1) pads every expert's buffer to c·mean
        tokens (Megatron-core `moe_pad_expert_input_to_capacity`) and drops what
        exceeds it; dropless routing sends the busiest expert `expert_imbalance`·mean
        tokens.
        """
        return jnp.where(
            self.capacity_factor > 0, self.capacity_factor, self.expert_imbalance
        )

    @property
    def ssm_inner(self) -> Array:
        """d_in = Hs·Ps, the Mamba-2 inner width [elements]."""
        return self.ssm_heads * self.ssm_head_dim

    def ssm_in_proj_width(self) -> Array:
        """Mamba-2 in_proj outputs: z, x (2·d_in), B, C (2·G·Ns), dt (Hs) [elements]."""
        return (
            2.0 * self.ssm_inner
            + 2.0 * self.ssm_groups * self.ssm_state_dim
            + self.ssm_heads
        )

    def ssm_params(self) -> Array:
        """Weights of one Mamba-2 mixer [elements] (Dao & Gu 2024, Megatron MambaMixer).

        D·(2·d_in + 2·G·Ns + Hs) (in_proj) + (d_in + 2·G·Ns)·w (conv)
        + d_in·D (out_proj) + d_in (gated norm) + 3·Hs (A, D, dt bias).
        """
        conv = (self.ssm_inner + 2.0 * self.ssm_groups * self.ssm_state_dim) * (
            self.ssm_conv_width
        )
        return (
            self.d_model * self.ssm_in_proj_width()
            + conv
            + self.ssm_inner * self.d_model
            + self.ssm_inner
            + 3.0 * self.ssm_heads
        )

    def ssm_state_bytes(self) -> Array:
        """Recurrent state of one sequence in one Mamba-2 layer [B] (decode cache).

        SSM state Hs·Ps·Ns in fp32 plus the conv window (d_in + 2·G·Ns)·(w − 1) in the
        KV-cache dtype; constant in the context length.
        """
        conv = (self.ssm_inner + 2.0 * self.ssm_groups * self.ssm_state_dim) * (
            self.ssm_conv_width - 1.0
        )
        return 4.0 * self.ssm_inner * self.ssm_state_dim + conv * self.precision.bytes(
            "kv_cache"
        )

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
        """Weights of one routed expert [elements]: (3 or 2)·ℓ·Fe."""
        return self.mlp_mats * self.expert_input_dim * self.d_ff_expert

    def moe_dense_params(self) -> Array:
        """Weights of an MoE block outside the routed experts [elements].

        Shared experts (3 or 2)·D·Fs, router D·E and, for a LatentMoE, the projections
        into and out of the latent 2·D·ℓ.
        """
        latent = jnp.where(self.moe_latent_dim > 0, 2.0 * self.d_model, 0.0)
        return (
            self.mlp_mats * self.d_model * self.shared_width
            + self.d_model * self.n_experts
            + latent * self.moe_latent_dim
        )

    def moe_layer_params(self) -> Array:
        """Weights of one MoE block [elements]: E·expert + shared, router, latent."""
        return self.n_experts * self.expert_params() + self.moe_dense_params()

    def embedding_params(self) -> Array:
        """Input embedding plus output projection [elements]: V·D·(1 if tied else 2)."""
        return self.vocab_size * self.d_model * (1.0 if self.tied_embeddings else 2.0)

    def nonexpert_layer_params(self) -> Array:
        """Mean weights per layer outside the routed experts [elements].

        a·attention + s·SSM + dense share·MLP + MoE share·(shared, router, latent)
        + one norm D per block; a, s the attention and SSM fractions.
        """
        return (
            self.attention_fraction * self.attention_params()
            + self.ssm_fraction * self.ssm_params()
            + self.dense_mlp_fraction * self.dense_mlp_params()
            + self.moe_fraction * self.moe_dense_params()
            + self.sublayers * self.d_model
        )

    def layer_params(self) -> Array:
        """Mean weights per layer [elements], all layer types mixed by their share."""
        experts = self.moe_fraction * self.n_experts * self.expert_params()
        return self.nonexpert_layer_params() + experts

    def mtp_params(self) -> Array:
        """Weights of the multi-token-prediction modules [elements].

        DeepSeek-V3 (§2.2): each module is one transformer block (attention and the
        MoE or dense MLP of a full layer), a 2D×D projection and two norms; the
        embedding and output head are shared with the main model.
        """
        attn = self.attention_params()
        mlp = jnp.where(
            self.n_experts > 0, self.moe_layer_params(), self.dense_mlp_params()
        )
        block = attn + mlp + 2.0 * self.d_model * self.d_model + 4.0 * self.d_model
        return self.n_mtp_layers * block

    def params(self) -> Array:
        """Total parameters [elements]: L·layer + MTP + embeddings + final norm."""
        return (
            self.n_layers * self.layer_params()
            + self.mtp_params()
            + self.embedding_params()
            + self.d_model
        )

    def active_params(self) -> Array:
        """Parameters used per token [elements]: routed experts count k of E."""
        active = self.moe_fraction * self.top_k * self.expert_params()
        per_layer = self.nonexpert_layer_params() + active
        return self.n_layers * per_layer + self.embedding_params() + self.d_model
