"""`Breakdown`: the named seconds of one training step, plus memory and feasibility."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["Breakdown", "TERMS"]

TERMS = (
    "matmul",
    "attention",
    "elementwise",
    "kernel_overhead",
    "recompute",
    "head",
    "tp_comm",
    "cp_comm",
    "ep_comm",
    "pp_bubble",
    "pp_p2p",
    "dp_comm",
    "optimizer",
    "host_stall",
    "input_stall",
    "offload",
    "step_overhead",
)
"""Exposed-time terms of a step, in the order they are reported; they sum to `total`."""


class Breakdown(eqx.Module):
    """Seconds per optimizer step by cause (exposed time only), memory and feasibility.

    Terms (all [s] per step, on the critical path):
      matmul: GEMMs of all layers' forward and backward passes (incl. MoE experts)
      attention: token mixing forward and backward: fused attention and Mamba-2 scans
      elementwise: norms, residuals, activations, rotary, casts (HBM-bound)
      kernel_overhead: fixed per-kernel cost × kernels launched
      recompute: activation recomputation in the backward pass
      head: embedding, logits and loss on the last pipeline stage
      tp_comm, cp_comm, ep_comm: exposed tensor / context / expert-parallel collectives
      pp_bubble: pipeline fill and drain; pp_p2p: stage-to-stage sends
      dp_comm: exposed data-parallel gradient / parameter collectives
      optimizer: the optimizer update (HBM-bound)
      host_stall: time the GPUs wait for the CPU (kernel dispatch, host syncs)
      input_stall: time the GPUs wait for the input pipeline (tokenization, loading)
      offload: exposed transfers of offloaded optimizer state / activations
      step_overhead: fixed per-step host cost (data loading, logging, sync)
    `overlapped_*` are communication seconds hidden behind compute (not in `total`).
    `nic_bytes` is what one chip of the last pipeline stage sends over its NICs per
    step (`nic_demand` per second), read off the step's `Collective` records
    (`model.train.step_collectives`); `offload_memory` what it keeps in the memory tier.
    """

    matmul: Array
    attention: Array
    elementwise: Array
    kernel_overhead: Array
    recompute: Array
    head: Array
    tp_comm: Array
    cp_comm: Array
    ep_comm: Array
    pp_bubble: Array
    pp_p2p: Array
    dp_comm: Array
    optimizer: Array
    host_stall: Array
    input_stall: Array
    offload: Array
    step_overhead: Array
    overlapped_tp_comm: Array
    overlapped_cp_comm: Array
    overlapped_dp_comm: Array
    overlapped_ep_comm: Array
    overlapped_offload: Array
    memory_per_gpu: Array  # B, peak HBM use of the busiest chip
    memory_capacity: Array  # B, HBM capacity of one chip
    model_flops: Array  # FLOP per step, 6·P_active·tokens + attention (no recompute)
    hardware_flops: Array  # FLOP per step actually executed (with recompute)
    tokens: Array  # tokens per step
    chips: Array  # chips in the job
    nic_bytes: Array  # B one chip sends over its NICs per step
    offload_memory: Array  # B per chip kept in the memory tier (offload)
    offload_capacity: Array  # B per chip of the memory tier

    @property
    def total(self) -> Array:
        """Seconds per optimizer step: the sum of the exposed terms."""
        return sum(self.terms().values(), start=jnp.zeros(()))

    @property
    def memory_excess(self) -> Array:
        """Bytes by which the busiest chip exceeds its HBM (0 when it fits)."""
        return jnp.maximum(self.memory_per_gpu - self.memory_capacity, 0.0)

    @property
    def feasible(self) -> Array:
        """True when the step fits in HBM and its offloaded bytes in the memory tier."""
        return (self.memory_per_gpu <= self.memory_capacity) & (
            self.offload_memory <= self.offload_capacity
        )

    @property
    def nic_demand(self) -> Array:
        """Bytes per second one chip moves over its NICs, averaged over the step."""
        return self.nic_bytes / self.total

    def terms(self) -> dict[str, Array]:
        """The exposed-time terms by name [s]."""
        return {name: getattr(self, name) for name in TERMS}

    def overlapped(self) -> dict[str, Array]:
        """Communication hidden behind compute, by name [s] (not part of `total`)."""
        return {
            "tp_comm": self.overlapped_tp_comm,
            "cp_comm": self.overlapped_cp_comm,
            "dp_comm": self.overlapped_dp_comm,
            "ep_comm": self.overlapped_ep_comm,
            "offload": self.overlapped_offload,
        }

    @property
    def tokens_per_s_per_gpu(self) -> Array:
        """Training throughput [tokens/s per chip]."""
        return self.tokens / (self.total * self.chips)

    @property
    def model_flops_per_s_per_gpu(self) -> Array:
        """Model FLOP/s per chip (the MFU numerator)."""
        return self.model_flops / (self.total * self.chips)
