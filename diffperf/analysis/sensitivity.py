"""Sensitivity analysis: elasticities, the binding resource, uncertainty propagation.

An elasticity E_i = d log f / d log x_i = (x_i / f)·∂f/∂x_i of −0.6 for
`chip.hbm_bandwidth` means 1% more bandwidth gives 0.6% less of the metric. Elasticities
are dimensionless, so a 1e-6 s latency and a 1e15 FLOP/s peak can be ranked side by
side, and all of them come from one reverse-mode pass.

Uncertainty (first order): with independent log-normal leaves of relative spread σ_i
(the standard deviation of log x_i),
    Var[log f] ≈ Σ_i E_i² σ_i²   (J Σ Jᵀ in log space),
checked against Monte Carlo: f evaluated with `jax.vmap` on log-normal samples.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core.paths import leaf_paths
from ..core.relax import AbstractRelax, Exact, Smooth
from ..model.serving import serve
from ..model.train import train_step
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving, check_mapping, check_serving
from ..specs.workload import Transformer

__all__ = [
    "sensitivity",
    "SERVE_METRICS",
    "elasticities",
    "binding_resource",
    "uncertainty",
    "RESOURCES",
]

RESOURCES = (
    "chip.flops_bf16", "chip.flops_fp8", "chip.flops_fp4", "chip.flops_fp32",
    "chip.hbm_bandwidth", "chip.hbm_capacity", "chip.sram_capacity",
    "scale_up.bandwidth", "scale_up.latency", "scale_out.bandwidth",
    "scale_out.latency", "host.nics_per_node", "host.pcie_bandwidth",
    "host.dispatch_overhead", "chip.kernel_overhead",
)  # fmt: skip
"""Hardware leaves that are physical resources (for "which resource binds")."""

SERVE_METRICS = ("ttft", "tpot", "e2e_latency")
"""Serving metrics (seconds, `ServeResult` attributes) that `sensitivity` explains."""


def elasticities(metric: Callable, tree) -> dict[str, float]:
    """Elasticities d log metric(tree) / d log leaf of every float leaf, by path.

    E_i = (x_i / f) · ∂f/∂x_i, computed with one reverse-mode pass. Leaves equal to zero
    get elasticity 0.

    Args:
        metric: a scalar function of the tree (e.g. step time under `Smooth()`).
        tree: a pytree of float leaves (a `Cluster`, a `Transformer`, a tuple...).
    """
    params, static = eqx.partition(tree, eqx.is_inexact_array)

    def f(p):
        return metric(eqx.combine(p, static))

    value, grads = jax.value_and_grad(f)(params)
    paths = leaf_paths(params)
    xs = jax.tree_util.tree_leaves(params)
    gs = jax.tree_util.tree_leaves(grads)
    return {
        path: float(jnp.where(x != 0, x * g / value, 0.0))
        for path, x, g in zip(paths, xs, gs, strict=True)
    }


def binding_resource(el: dict[str, float], prefix: str = "") -> tuple[str, float]:
    """The physical resource with the largest |elasticity| (path, elasticity)."""
    names = {prefix + r for r in RESOURCES}
    found = [(p, e) for p, e in el.items() if p in names]
    if not found:
        raise ValueError("no resource leaf among the elasticities")
    return max(found, key=lambda pe: abs(pe[1]))


def uncertainty(
    metric: Callable,
    tree,
    spreads: dict[str, float],
    *,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """First-order and Monte Carlo spread of log metric from relative leaf spreads.

    Args:
        metric: scalar function of the tree (jit/vmap-able).
        tree: the nominal pytree.
        spreads: leaf path → σ, the standard deviation of log(leaf) (≈ relative
            ± one-sigma range; 0.05 = "±5%").
        samples: Monte Carlo samples (evaluated with one vmapped call).
        seed: random seed.

    Returns:
        value, first_order_rel_std (sqrt Σ E²σ²), monte_carlo_rel_std (std of log f),
        and the Monte Carlo 2.5% / 97.5% quantiles of the metric.
    """
    unknown = set(spreads) - set(leaf_paths(tree))
    if unknown:
        raise ValueError(
            f"unknown leaf path(s) in spreads: {', '.join(sorted(unknown))}"
        )
    el = elasticities(metric, tree)
    first = float(np.sqrt(sum((el[p] * s) ** 2 for p, s in spreads.items())))
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    paths = leaf_paths(params)
    sig = [spreads.get(p, 0.0) for p in paths]
    key = jax.random.PRNGKey(seed)
    noise = jax.random.normal(key, (samples, len(paths)))

    def one(z):
        leaves = jax.tree_util.tree_leaves(params)
        scaled = [
            x * jnp.exp(s * z[i])
            for i, (x, s) in enumerate(zip(leaves, sig, strict=True))
        ]
        p = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), scaled)
        return metric(eqx.combine(p, static))

    values = np.asarray(jax.jit(jax.vmap(one))(noise))
    value = float(metric(tree))
    return dict(
        value=value,
        first_order_rel_std=first,
        monte_carlo_rel_std=float(np.std(np.log(values))),
        p025=float(np.quantile(values, 0.025)),
        p975=float(np.quantile(values, 0.975)),
    )


def sensitivity(
    cluster: Cluster,
    model: Transformer,
    job: Parallelism | Serving,
    *,
    metric: str | None = None,
    relax: AbstractRelax | None = None,
) -> dict:
    """Elasticities of a training or serving metric w.r.t. every float leaf.

    `job` is a training `Parallelism` (metric: "step_time", the default) or a
    `Serving` (metric: a `ServeResult` attribute, default "tpot"). Hardware leaves are
    reported as "hardware.<path>", workload leaves as "workload.<path>"; all come from
    one reverse-mode pass of the `relax` model (Smooth by default, so that ties and
    integer steps have useful derivatives), the value from the Exact model.

    Returns:
        dict with `metric`, `value` (Exact), `elasticities` (path -> d log metric /
        d log leaf) and `binding_resource` (the physical hardware resource with the
        largest |elasticity|: `leaf`, `elasticity`).

    Raises:
        ValueError: a job that does not fit the model, or an unknown metric.
    """
    relax = Smooth() if relax is None else relax
    if isinstance(job, Parallelism):
        metric = metric or "step_time"
        if metric != "step_time":
            raise ValueError(f"metric={metric!r}: a training job has only step_time")
        check_mapping(model, job)

        def f(tree, relax=relax):
            return train_step(
                tree["hardware"], tree["workload"], job, relax=relax
            ).total
    elif isinstance(job, Serving):
        metric = metric or "tpot"
        if metric not in SERVE_METRICS:
            raise ValueError(
                f"metric={metric!r} must be one of {', '.join(SERVE_METRICS)}"
            )
        check_serving(model, job)

        def f(tree, relax=relax):
            return getattr(
                serve(tree["hardware"], tree["workload"], job, relax=relax), metric
            )
    else:
        raise ValueError(f"job must be a Parallelism or a Serving, not {type(job)}")
    tree = {"hardware": cluster, "workload": model}
    el = elasticities(f, tree)
    leaf, e = binding_resource(el, prefix="hardware.")
    return dict(
        metric=metric,
        value=float(f(tree, Exact())),
        elasticities=el,
        binding_resource={"leaf": leaf, "elasticity": e},
    )
