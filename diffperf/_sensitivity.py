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

__all__ = [
    "get_leaf",
    "set_leaf",
    "scale_leaf",
    "elasticities",
    "leaf_paths",
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


def get_leaf(tree, path: str):
    """The leaf at a dotted path: attributes of modules, keys of dicts.

    Example: get_leaf(cluster, "chip.hbm_bandwidth"); get_leaf({"hardware": c},
    "hardware.chip.hbm_bandwidth").
    """
    for part in path.split("."):
        if isinstance(tree, dict):
            tree = tree[part]
        elif isinstance(tree, tuple | list):  # e.g. "scale_up.dims.0.bandwidth"
            tree = tree[int(part)]
        else:
            tree = getattr(tree, part)
    return tree


def set_leaf(tree, path: str, value):
    """A copy of `tree` with the leaf at `path` replaced (`eqx.tree_at`)."""
    return eqx.tree_at(lambda t: get_leaf(t, path), tree, value)


def scale_leaf(tree, path: str, factor):
    """A copy of `tree` with the leaf at `path` multiplied by `factor`."""
    return set_leaf(tree, path, get_leaf(tree, path) * factor)


def leaf_paths(tree) -> list[str]:
    """Dotted paths of the float leaves of a pytree (e.g. "chip.hbm_bandwidth")."""
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(tree, eqx.is_inexact_array))
    return [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in leaves]


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
