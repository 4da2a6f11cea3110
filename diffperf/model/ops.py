"""Per-operator roofline with smooth efficiency curves and an SRAM-aware traffic model.

Each operator takes T_op = max(F / (π·ε), Q / (β·η))  [s], with F its FLOP, π the peak
of its dtype, ε its efficiency, Q its HBM traffic [B], β the HBM bandwidth and η the
memory efficiency (the roofline of Williams et al. 2009, made smooth by `relax.max`).
Fixed per-kernel costs are counted apart (`kernel_overhead`).

GEMM (M×K by K×N), following the tiling analysis of the JAX scaling book and CUTLASS:
    F = 2·M·K·N
    ε = ε_max · x / (x + x_½),  x = 3 / (1/M + 1/K + 1/N)  (effective dimension)
    Q = b·M·K·max(N/τ, 1) + b_w·K·N·max(M/τ, 1) + b·M·N,  τ = sqrt(SRAM / (3·b))
with τ the square output tile that fits in on-chip SRAM and b_w the bytes of a weight
element: a larger SRAM means fewer re-reads of the inputs (traffic ∝ 1/sqrt(SRAM)),
bounded below by reading each input once.

Grouped GEMM (the experts of an MoE layer, `count` GEMMs of M rows each): each expert's
rows are tiled along M by the kernel's CTA tile τ_M, and a partly filled tile computes
at the cost of a full one, so the tensor cores run the padded rows
    M_pad = M + τ_M·(1 + exp(−M/τ_M))/2     (`padded_rows`)
one full tile for an expert with a handful of rows (M → 0), half a tile of waste on
average once the rows per expert vary over more than a tile (M ≫ τ_M):
    F_exec = 2·M_pad·K·N·count,  ε = ε(x(M_pad))
while the HBM traffic stays that of the M real rows. τ_M = `GROUPED_TILE_M` = 128:
DeepGEMM's M-grouped contiguous layout aligns every expert's rows to its 128-row
block (`get_m_alignment_for_contiguous_layout`, github.com/deepseek-ai/DeepGEMM), the
CUTLASS 3.x Hopper/Blackwell grouped kernels tile M by 128 (1-SM) or 256 (2-SM
tcgen05) rows (CUTLASS examples 57_hopper_grouped_gemm, 75_blackwell_grouped_gemm),
and Transformer Engine's `GroupedLinear` runs one cuBLAS GEMM per expert
(`nvte_multi_stream_cublas_gemm`), each padded to its own tiles.

Fused (Flash) attention (Dao et al. 2022): F = 2·B·Sq·Skv·N·(Hqk + Hv), efficiency ε(x)
times `attention_efficiency` (times `attention_fa2_efficiency` when the job runs
FlashAttention-2 on a chip with a faster fused kernel); traffic reads Q, K, V and
writes O once, plus K/V re-reads per query block Br = core_sram / (4·H·b) for the
share of K/V that misses the L2.

Mamba-2 state-space scan (SSD, Dao & Gu 2024 §6, chunk length Q): per token
    F = 2·G·Q·Ns + Hs·(2·Q·Ps + 4·Ns·Ps)
(C·Bᵀ within a chunk per group, the masked scores times X, chunk states and the output
from the carried state), at ε(x)·attention_efficiency; traffic reads x, B, C, dt and
writes y once, plus the fp32 intermediates the kernels pass through HBM: C·Bᵀ per chunk
(written and read) and the chunk states (written, read and rewritten by the state
passing, read by the output kernel). A decode step updates the state recurrently:
F = 6·Hs·Ps·Ns, traffic dominated by reading and writing the fp32 state.
"""

import jax.numpy as jnp
from jaxtyping import Array

from ..core.relax import AbstractRelax, as_float
from ..specs.hardware import Chip

__all__ = [
    "GROUPED_TILE_M",
    "SERVING_TILE_M",
    "padded_rows",
    "gemm_time",
    "gemm_work",
    "memory_time",
    "attention_time",
    "attention_work",
    "ssm_scan_time",
]


GROUPED_TILE_M = 128.0
"""Rows of one CTA tile along M of a grouped (per-expert) GEMM [rows]: DeepGEMM's
per-expert M alignment of its grouped contiguous layout, the 128-row tile of the
CUTLASS Hopper/Blackwell grouped GEMM kernels (module docstring). Training."""

SERVING_TILE_M = 16.0
"""Rows of the M tile of an inference engine's fused MoE GEMM [rows]. The serving
kernels pick their tile by the rows per expert instead of padding to a fixed 128:
vLLM's and SGLang's Triton `fused_moe` default config takes BLOCK_SIZE_M = 16 while the
tokens do not outnumber the experts (64 above; tuned configs per shape), and
TensorRT-LLM autotunes its CUTLASS MoE GEMM tactics, which include 16-row tiles and
swapped-AB kernels for few rows. The smallest tile bounds the waste at decode, where
the rows per expert are few; at prefill the larger tiles are full."""


def padded_rows(m, tile=GROUPED_TILE_M) -> Array:
    """Expected rows the tensor cores run for a GEMM of m rows tiled by `tile` [rows].

    M_pad = M + τ·(1 + exp(−M/τ))/2: τ for an expert with almost no rows, M + τ/2 (half
    a tile wasted on average) when the per-expert row counts spread over more than a
    tile. Smooth in M (one expression for Exact and Smooth: the per-expert counts are
    themselves averages over experts and steps). `tile` 0 leaves m unchanged.
    """
    m, tile = as_float(m), as_float(tile)
    safe = jnp.where(tile > 0, tile, 1.0)
    pad = tile * (1.0 + jnp.exp(-m / safe)) / 2.0
    return m + jnp.where(tile > 0, pad, 0.0)


def _efficiency(chip: Chip, x) -> Array:
    """ε = ε_max · x / (x + x_½) for a GEMM of effective dimension x."""
    return chip.matmul_efficiency * x / (x + chip.matmul_half_dim)


def memory_time(chip: Chip, nbytes) -> Array:
    """Q / (β·η): time to stream Q bytes through HBM [s]."""
    return as_float(nbytes) / (chip.hbm_bandwidth * chip.memory_efficiency)


def gemm_time(
    chip: Chip,
    m,
    k,
    n,
    *,
    count=1.0,
    peak,
    nbytes: float,
    weight_nbytes: float | None = None,
    m_tile=0.0,
    relax: AbstractRelax,
) -> Array:
    """Time of `count` GEMMs of shape (m×k)·(k×n) [s] (vectorized over op arrays).

    Args:
        chip: the accelerator.
        m: rows of the left operand [elements] (dims are clamped to ≥ 1, so an absent
            op with count or weight 0 costs 0).
        k: the contracted dimension [elements].
        n: columns of the right operand [elements].
        count: number of such GEMMs (e.g. local experts of a grouped GEMM).
        peak: tensor peak of the math dtype [FLOP/s].
        nbytes: bytes per element of the M×K input and M×N output.
        weight_nbytes: bytes per element of the K×N operand (the weights; quantized
            weights are read at their own width); default `nbytes`.
        m_tile: τ_M of a grouped GEMM whose per-expert rows are padded to tiles
            (`padded_rows`; the compute runs M_pad rows, the traffic moves M); 0, the
            default, for a plain GEMM (scalar or one per op).
        relax: Exact() or Smooth(p).
    """
    flops, traffic, _ = gemm_work(
        chip, m, k, n, count=count, nbytes=nbytes, weight_nbytes=weight_nbytes,
        relax=relax,
    )  # fmt: skip
    rows = padded_rows(jnp.maximum(as_float(m), 1.0), m_tile)
    kk, nn = (jnp.maximum(as_float(v), 1.0) for v in (k, n))
    x = 3.0 / (1.0 / rows + 1.0 / kk + 1.0 / nn)
    flops = flops * rows / jnp.maximum(as_float(m), 1.0)
    t_compute = flops / (peak * _efficiency(chip, x))
    return relax.max(t_compute, memory_time(chip, traffic))


def gemm_work(
    chip: Chip,
    m,
    k,
    n,
    *,
    count=1.0,
    nbytes: float,
    weight_nbytes: float | None = None,
    relax: AbstractRelax,
) -> tuple[Array, Array, Array]:
    """(F [FLOP], Q [B], x [elements]) of `count` GEMMs (m×k)·(k×n), as `gemm_time`.

    F = 2·M·K·N·count; Q the SRAM-aware HBM traffic of the module docstring; x the
    effective dimension that sets the efficiency. Used by `gemm_time` and the roofline.
    """
    m, k, n = (jnp.maximum(as_float(v), 1.0) for v in (m, k, n))
    count = as_float(count)
    flops = 2.0 * m * k * n * count
    x = 3.0 / (1.0 / m + 1.0 / k + 1.0 / n)
    wb = nbytes if weight_nbytes is None else weight_nbytes
    tile = jnp.sqrt(chip.sram_capacity / (3.0 * nbytes))
    # Each operand is re-read once per tile of the other dimension (at least once).
    a_reads = nbytes * m * k * relax.max(n / tile, 1.0)
    b_reads = wb * k * n * relax.max(m / tile, 1.0)
    return flops, (a_reads + b_reads + nbytes * m * n) * count, x


def attention_time(chip: Chip, *, relax: AbstractRelax, **shape) -> tuple[Array, Array]:
    """Forward time of attention on one chip, and its FLOP [s], [FLOP].

    T = max(F / (π·ε·ε_attn), Q / (β·η)) with F and Q from `attention_work` (same
    keyword arguments: the shape, dtypes and `fused`).
    """
    flops, traffic, t_compute = attention_work(chip, relax=relax, **shape)
    return relax.max(t_compute, memory_time(chip, traffic)), flops


def attention_work(
    chip: Chip,
    *,
    batch,
    q_tokens,
    kv_tokens,
    seq,
    heads,
    kv_heads,
    head_dim_qk,
    head_dim_v,
    kv_width=None,
    peak,
    nbytes: float,
    kv_nbytes: float | None = None,
    relax: AbstractRelax,
    fused: bool = True,
    fa2: bool = False,
) -> tuple[Array, Array, Array]:
    """(F [FLOP], Q [B], F/(π·ε) [s]) of the attention forward on one chip.

    `attention_time` is max(F/(π·ε), Q/(β·η)); the roofline plots F and Q apart.

    Fused (Flash) attention skips the masked half of a causal score matrix and keeps the
    scores on chip. Unfused attention (Megatron-LM before FlashAttention) computes the
    full S × S scores and moves them through HBM: QK^T writes them, a fused
    scale-mask-softmax reads and writes them, dropout reads them and writes them with a
    mask, and the AV GEMM reads them: about 6 passes of B·N·Sq·S elements of b bytes.

    Args:
        chip: the accelerator.
        batch: B, sequences on this chip.
        q_tokens: B·Sq, query tokens on this chip.
        kv_tokens: mean keys each query attends to (S/2 causal, window if smaller).
        seq: S, keys held by one sequence (for the L2 working set).
        heads: query heads on this chip.
        kv_heads: K/V heads on this chip.
        head_dim_qk: per-head dimension of Q and K.
        head_dim_v: per-head dimension of V.
        kv_width: elements stored per cached token per KV head (default
            head_dim_qk + head_dim_v; less when K and V share storage, as MLA's
            latent cache does in the absorbed form).
        peak: tensor peak [FLOP/s].
        nbytes: bytes per element of Q and O.
        kv_nbytes: bytes per element of K and V (the KV cache); default `nbytes`.
        relax: Exact() or Smooth(p).
        fused: Flash-style fused kernel (True) or unfused GEMM-softmax-GEMM (False).
        fa2: the fused kernel is FlashAttention-2 rather than the chip's best: its
            compute rate is further scaled by `chip.attention_fa2_efficiency` (1 before
            Hopper, where FA2 is the best kernel; ~0.5 on Hopper, Shah et al. 2024).
    """
    kvb = nbytes if kv_nbytes is None else kv_nbytes
    width = head_dim_qk + head_dim_v if kv_width is None else kv_width
    if not fused:
        scores = q_tokens * seq * heads  # full S × S per query block, no causal skip
        flops = 2.0 * scores * (head_dim_qk + head_dim_v)
        x = 3.0 / (2.0 / jnp.maximum(seq, 1.0) + 1.0 / head_dim_qk)
        t_compute = flops / (peak * _efficiency(chip, x) * chip.attention_efficiency)
        q_o = q_tokens * heads * (head_dim_qk + head_dim_v) * nbytes
        k_v = q_tokens * kv_heads * width * kvb
        traffic = 6.0 * scores * nbytes + q_o + k_v
        return flops, traffic, t_compute
    flops = 2.0 * q_tokens * kv_tokens * heads * (head_dim_qk + head_dim_v)
    x = 3.0 / (2.0 / jnp.maximum(kv_tokens, 1.0) + 1.0 / head_dim_qk)
    eff = chip.attention_efficiency * (chip.attention_fa2_efficiency if fa2 else 1.0)
    t_compute = flops / (peak * _efficiency(chip, x) * eff)
    # K/V re-reads: one pass per query block, for the share of K/V missing the L2;
    # the block size B_r = M / (4·d) of FlashAttention's tiling (Dao et al. 2022,
    # Algorithm 1, with M the on-chip SRAM in elements)
    block = chip.core_sram / (4.0 * head_dim_qk * nbytes)
    q_blocks = relax.max(q_tokens / (batch * block), 1.0)
    in_flight = relax.min(kv_heads, relax.max(chip.cores / q_blocks, 1.0))
    working_set = seq * width * kvb * in_flight
    miss = relax.min(working_set / chip.sram_capacity, 1.0)
    kv_bytes = batch * kv_tokens * kv_heads * width * kvb
    q_o_bytes = q_tokens * heads * (head_dim_qk + head_dim_v) * nbytes
    traffic = q_o_bytes + kv_bytes * (1.0 + (q_blocks - 1.0) * miss)
    return flops, traffic, t_compute


def ssm_scan_time(
    chip: Chip,
    *,
    tokens,
    seq,
    heads,
    head_dim,
    state,
    groups,
    chunk,
    peak,
    nbytes: float,
    recurrent: bool,
    relax: AbstractRelax,
) -> tuple[Array, Array]:
    """Forward time and FLOP of the Mamba-2 scan of one layer on one chip [s], [FLOP].

    Chunked (training, prefill), with Q = min(chunk, seq):
        F = T·(2·G·Q·Ns + Hs·(2·Q·Ps + 4·Ns·Ps))
        bytes = T·((2·Hs·Ps + 2·G·Ns + Hs)·b + 8·G·Q + 16·Hs·Ps·Ns/Q)
    (fp32 C·Bᵀ written and read; fp32 chunk states moved four times)
    Recurrent (one decode token per sequence, T sequences):
        F = 6·T·Hs·Ps·Ns,  bytes = T·(8·Hs·Ps·Ns + (2·Hs·Ps + 2·G·Ns + Hs)·b)
    T = max(F / (π·ε(x)·ε_attn), bytes / (β·η)), x = 3/(1/Q + 1/Ns + 1/Ps).
    Source: Dao & Gu 2024, "Transformers are SSMs" (SSD algorithm, §6); the kernels of
    mamba_ssm. Zero when the layer has no SSM heads.

    Args:
        chip: the accelerator.
        tokens: T, tokens through the layer on this chip.
        seq: S, tokens per sequence (bounds the chunk).
        heads: Hs, SSM heads on this chip.
        head_dim: Ps, channels per SSM head.
        state: Ns, state size per channel.
        groups: G, B/C groups on this chip.
        chunk: Q, the scan's chunk length.
        peak: tensor peak [FLOP/s].
        nbytes: bytes per activation element.
        recurrent: one-token state update (decode) instead of the chunked scan.
        relax: Exact() or Smooth(p).
    """
    tokens, heads, state = as_float(tokens), as_float(heads), as_float(state)
    io = (2.0 * heads * head_dim + 2.0 * groups * state + heads) * nbytes
    states = heads * head_dim * state  # elements of one sequence's state
    if recurrent:
        flops = 6.0 * tokens * states
        traffic = tokens * (8.0 * states + io)
        q = as_float(1.0)
    else:
        q = relax.min(chunk, seq)
        flops = tokens * (
            2.0 * groups * q * state
            + heads * (2.0 * q * head_dim + 4.0 * state * head_dim)
        )
        traffic = tokens * (io + 8.0 * groups * q + 16.0 * states / q)
    x = 3.0 / (
        1.0 / q + 1.0 / jnp.maximum(state, 1.0) + 1.0 / jnp.maximum(head_dim, 1.0)
    )
    t_compute = flops / (peak * _efficiency(chip, x) * chip.attention_efficiency)
    return relax.max(t_compute, memory_time(chip, traffic)), flops
