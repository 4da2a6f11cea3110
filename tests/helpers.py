"""Shared test helpers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffperf.core.paths import (
    get_leaf,  # noqa: F401
    scale_leaf,  # noqa: F401
)


def tree_allclose(x, y, *, rtol=1e-5, atol=0.0) -> bool:
    """True when two pytrees have the same structure and all leaves are close."""
    xs, tx = jax.tree_util.tree_flatten(eqx.filter(x, eqx.is_array))
    ys, ty = jax.tree_util.tree_flatten(eqx.filter(y, eqx.is_array))
    if tx != ty:
        return False
    return all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(xs, ys, strict=True)
    )


def float_leaf_paths(tree) -> list[str]:
    from diffperf.core.paths import leaf_paths

    return leaf_paths(tree)


def f64(x):
    return jnp.asarray(x, dtype=jnp.float64)
