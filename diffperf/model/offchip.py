"""The system around the chip in a training step: offload and input pipeline.

(NIC demand, the bytes a chip sends over its NICs, is read off the step's
`Collective` records: `model.comm.nic_bytes`, used by `train_step` and the serving
phases.)

Offload (ZeRO-Offload, Ren et al. 2021; Megatron-LM activation offloading) over the
cluster's `MemoryTier` with bandwidth W_h per chip per direction and latency α_h:
    optimizer: the offloaded fraction f_o of the 12 B/param Adam state moves in before
        the update and out after it: T_o = 2·(α_h + f_o·M_opt / W_h), prefetched during
        the last microbatch's backward (t_b = 2/3·t_mb) and written back during the
        next step's first forward (t_f = 1/3·t_mb);
    activations: f_a of a microbatch's stored activations M_act moves out during its
        forward and back during its backward: T_a = α_h + f_a·M_act / W_h each way,
        hidden behind t_f and t_b respectively, m times per step.
(t_f : t_b = 1 : 2, the GEMMs' forward : backward pass factors, `layer.PASS_FACTORS`.)
    exposed = Σ max(T, window) − window                                      [s]
The tier's link is assumed free of other traffic (NIC traffic shares a chip's PCIe
link; `Host.nic_bandwidth` does not subtract offload traffic).

Input pipeline: the node's CPUs prepare the next batches while the GPUs run the step
(`Host.input_time`); the part that compute does not cover stalls the step:
    exposed = max(T_in, T_rest) − T_rest                                     [s]
"""

import jax.numpy as jnp

from ..core.checks import concrete
from ..core.relax import AbstractRelax
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism
from ..specs.workload import Transformer
from .layer import PASS_FACTORS
from .memory import microbatches_in_flight, train_memory_parts

__all__ = ["offload_exposed", "input_exposed"]

_FRACTION_EPS = 1e-6


def offload_exposed(
    cluster: Cluster,
    model: Transformer,
    mapping: Parallelism,
    t_mb,
    *,
    relax: AbstractRelax,
):
    """(exposed s, hidden s, offloaded B per chip) of optimizer/activation offload."""
    f_o, f_a = mapping.offload_optimizer, mapping.offload_activations
    if concrete(f_o) == 0.0 and concrete(f_a) == 0.0:  # nothing offloaded: all zero
        zero = jnp.zeros(())
        return zero, zero, zero
    tier = cluster.offload_tier(relax)
    parts = train_memory_parts(model, mapping, cluster.chip, relax=relax)
    m = mapping.microbatches()
    opt = f_o * parts["optimizer"]
    t_opt = tier.latency + opt / tier.bandwidth  # each way
    # activations of one microbatch on the busiest stage (parts hold min(p, m) of them)
    act = f_a * parts["activations"] / microbatches_in_flight(mapping, relax=relax)
    # the per-transfer latency vanishes with the fraction: f/(f + ε) is exactly 0 at
    # f = 0 and within 0.1% of 1 from f = 0.1% (a numerical switch, not a physical
    # constant)
    t_act = tier.latency * f_a / (f_a + _FRACTION_EPS) + act / tier.bandwidth
    t_opt = t_opt * f_o / (f_o + _FRACTION_EPS)
    # forward and backward shares of a microbatch, by the GEMMs' pass factors (1/3, 2/3)
    fwd, bwd = PASS_FACTORS["matmul"]
    t_f, t_b = t_mb * fwd / (fwd + bwd), t_mb * bwd / (fwd + bwd)
    exposed = (
        relax.exceed(t_opt, t_b)
        + relax.exceed(t_opt, t_f)
        + m * (relax.exceed(t_act, t_f) + relax.exceed(t_act, t_b))
    )
    hidden = 2.0 * t_opt + 2.0 * m * t_act - exposed
    return exposed, hidden, opt + f_a * parts["activations"]


def input_exposed(cluster: Cluster, tokens_per_chip, t_rest, *, relax: AbstractRelax):
    """Input-pipeline seconds a step waits for: max(T_in, T_rest) − T_rest [s]."""
    if concrete(cluster.host.cpu_time_per_token) == 0.0:  # no input cost modelled
        return jnp.zeros(())
    return relax.exceed(cluster.host.input_time(tokens_per_chip), t_rest)
