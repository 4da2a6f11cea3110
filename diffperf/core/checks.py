"""Value checks that run at construction time when values are concrete.

Inside `jit`/`vmap` the leaves are tracers and the checks are skipped (the values were
checked when the concrete pytree was built, and transformations only rescale them).
Errors are plain
`ValueError`s whose message names the class, the field and what is allowed.
"""

import math

import jax
import numpy as np


def concrete(x) -> float | None:
    """The value of a concrete scalar leaf, or None for tracers and batched leaves."""
    if isinstance(x, jax.core.Tracer):
        return None
    arr = np.asarray(x)
    if arr.ndim != 0:
        return None
    return float(arr)


def check_fields(obj, *, positive=(), nonneg=(), fraction=()) -> None:
    """Raises ValueError if a concrete field is not finite or out of its allowed range.

    Args:
        obj: an equinox Module.
        positive: field names that must be > 0.
        nonneg: field names that must be >= 0.
        fraction: field names that must lie in [0, 1].
    """
    cls = type(obj).__name__
    rules = (
        [(n, "> 0", lambda v: v > 0) for n in positive]
        + [(n, ">= 0", lambda v: v >= 0) for n in nonneg]
        + [(n, "in [0, 1]", lambda v: 0 <= v <= 1) for n in fraction]
    )
    for name, allowed, ok in rules:
        v = concrete(getattr(obj, name))
        if v is None:
            continue
        if not math.isfinite(v) or not ok(v):
            raise ValueError(f"{cls}({name}={v:g}) must be {allowed}")
