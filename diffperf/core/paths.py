"""Dotted paths into pytrees: read, replace, scale and list float leaves.

Generic helpers used by every analysis (sensitivity, optimize, calibrate, sweep) and by
the CLI's `--vary`: a path is attribute names of modules, keys of dicts and indices of
tuples joined by dots, e.g. "chip.hbm_bandwidth" or "scale_up.dims.0.bandwidth".
"""

import equinox as eqx
import jax

__all__ = ["get_leaf", "set_leaf", "scale_leaf", "leaf_paths"]


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
