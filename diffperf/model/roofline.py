"""Roofline points: the model's operators at their intensity and modelled FLOP/s.

For each operator of the representative layer (every GEMM of `_gemm_shapes` and the
fused attention) in a phase (a training microbatch's forward, a prefill, a decode step),
on one chip:
    I = F / Q  [FLOP/B],   achieved = F / T_op  [FLOP/s]
with F, Q and T_op = max(F/(π·ε), Q/(β·η)) exactly as the cost model computes them
(`gemm_work` / `attention_work`, Williams et al. 2009). The operator is memory-bound
when Q/(β·η) sets T_op, else compute-bound. Per-kernel fixed costs are not part of
T_op (they are the `kernel_overhead` term). The ceilings are the datasheet peaks per
math dtype, the HBM bandwidth β (and the achievable β·η) and the SRAM bandwidth.
"""

from ..core.relax import Exact
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving
from ..specs.workload import Transformer
from .layer import layer_forward
from .phases import phase_shape
from .train import training_shape

__all__ = ["roofline_points", "ceilings", "PHASES"]

_EXACT = Exact()
PHASES = ("train", "prefill", "decode")
_PEAKS = ("fp32", "tf32", "bf16", "fp8", "int8", "fp4")


def _phase_shape(model: Transformer, serving: Serving, phase: str):
    """The layer shape of one phase on one chip.

    train: a microbatch of `batch` sequences of `input_len` tokens (tensor parallel over
    `tp`, sequence parallel when tp > 1); prefill; decode: one step at the mean context
    S_in + S_out/2 (as `serve`).
    """
    relax = _EXACT
    if phase == "train":
        mapping = Parallelism(
            tp=serving.tp,
            microbatch=serving.batch,
            global_batch=serving.batch,
            seq_len=serving.input_len,
            sequence_parallel=float(serving.tp) > 1,
            flash_attention=serving.flash_attention,
            attention_kernel=serving.attention_kernel,
        )
        return training_shape(model, mapping, relax)
    if phase in ("prefill", "decode"):
        return phase_shape(model, serving, relax, phase)
    raise ValueError(f"phase={phase!r} must be one of {', '.join(PHASES)}")


def roofline_points(
    cluster: Cluster, model: Transformer, serving: Serving, phases=PHASES
) -> list[dict]:
    """The operators of each phase as roofline points (module docstring).

    Returns:
        One dict per operator present in the layer: `op`, `phase`, `flops` [FLOP],
        `bytes` [B], `intensity` [FLOP/B], `time_s`, `achieved_flops_per_s`, `bound`
        ("compute" or "memory") and `share` (fraction of layers containing the op).
    """
    chip = cluster.chip
    beta = float(chip.hbm_bandwidth * chip.memory_efficiency)
    points = []
    for phase in phases:
        lay = layer_forward(cluster, model, _phase_shape(model, serving, phase), _EXACT)
        ops = lay["gemm_ops"]
        names = ops["names"]
        n = len(names)
        # an op of zero width (no shared experts, say) is absent, not a 1×1 GEMM
        present = [min(float(d[i]) for d in ops["dims"]) >= 1.0 for i in range(n)]
        rows = [
            (
                names[i],
                ops["flops"][i],
                ops["bytes"][i],
                ops["time"][i],
                ops["share"][i],
            )
            for i in range(n)
            if present[i]
        ]
        rows.append(
            ("attention", lay["attn_flops"], lay["attn_bytes"], lay["attn"], 1.0)
        )
        for name, flops, nbytes, time, share in rows:
            flops, nbytes, time, share = map(float, (flops, nbytes, time, share))
            if share <= 0.0 or flops <= 0.0 or time <= 0.0:
                continue
            memory_bound = nbytes / beta >= time * (1.0 - 1e-9)
            points.append(
                dict(
                    op=name,
                    phase=phase,
                    flops=flops,
                    bytes=nbytes,
                    intensity=flops / nbytes,
                    time_s=time,
                    achieved_flops_per_s=flops / time,
                    bound="memory" if memory_bound else "compute",
                    share=share,
                )
            )
    return points


def ceilings(cluster: Cluster, math: str) -> dict:
    """The roofline's ceilings: peaks per dtype [FLOP/s], bandwidths [B/s], ridge."""
    chip = cluster.chip
    peaks = {d: float(getattr(chip, f"flops_{d}")) for d in _PEAKS}
    peaks = {d: v for d, v in peaks.items() if v > 0}
    hbm = float(chip.hbm_bandwidth)
    peak = float(chip.peak_flops(math))
    return dict(
        peak_flops_per_s=peaks,
        math_dtype=math,
        hbm_bandwidth=hbm,
        hbm_bandwidth_achievable=hbm * float(chip.memory_efficiency),
        sram_bandwidth=float(chip.sram_bandwidth),
        ridge_intensity=peak / hbm,
    )
