"""Sensitivity analysis: elasticities d log(metric) / d log(leaf) in one backward pass.

An elasticity of −0.6 for `chip.hbm_bandwidth` means 1% more bandwidth gives 0.6% less
step time. Elasticities are dimensionless, so a 1e-6 s latency and a 1e15 FLOP/s peak
can be ranked side by side.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["elasticities", "leaf_paths"]


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
        tree: a pytree of float leaves (a `Cluster`, a `Transformer`, ...).
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
