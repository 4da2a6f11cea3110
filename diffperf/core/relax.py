"""Exact and smooth versions of the few non-smooth operations a cost model needs.

Cost code never calls `jnp.maximum`, `jnp.minimum` or `jnp.where` on costs: it calls
`relax.max/min/relu/step` (and `clip`, `exceed` built on them), with `relax` passed in
as a keyword argument.
`Exact()` gives the piecewise model used for reporting; `Smooth(sharpness)` gives a
differentiable relaxation used for optimization. Both have finite values and gradients
everywhere, including at zero and at ties (the double-`where` trick: every input of a
branch that is not taken is replaced by a safe value before the branch is evaluated).

Bounds (p = sharpness; inputs of `max`/`min` are non-negative, as times and bytes are):

| op | Smooth(p) | bound against Exact |
|---|---|---|
| `max(a, b)` | (a^p + b^p)^(1/p) | Exact ≤ Smooth ≤ 2^(1/p)·Exact |
| `min(a, b)` | (a^-p + b^-p)^(-1/p) | 2^(-1/p)·Exact ≤ Smooth ≤ Exact |
| `relu(x, scale)` | scale/p·softplus(p·x/scale) | 0 ≤ Smooth − Exact ≤ scale·ln2/p |
| `step(x, scale)` | sigmoid(p·x/scale) | ≤ sigmoid(−k) off where abs(x) ≥ k·scale/p |

The scale-free p-norm forms suit quantities spanning 1e-9 to 1e3 s.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

__all__ = ["AbstractRelax", "Exact", "Smooth"]


def as_float(x: ArrayLike) -> Array:
    """Converts to an array of JAX's default float dtype (tracers stay tracers)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _pnorm(a: Array, b: Array, p: Array, *, largest: bool) -> Array:
    """m·((a/m)^q + (b/m)^q)^(1/q), m = max (q = p) or min (q = −p); 0 at m = 0."""
    a, b = jnp.broadcast_arrays(as_float(a), as_float(b))
    m = jnp.maximum(a, b) if largest else jnp.minimum(a, b)
    ok = m > 0
    safe_m = jnp.where(ok, m, 1.0)
    # Ratios lie in [0, 1] for max and [1, inf) for min; both are replaced at m = 0.
    # A slightly negative input (rounding in a difference) is clamped to 0 first:
    # a negative base to a non-integer power would be NaN.
    ra = jnp.where(ok, jnp.maximum(a, 0.0) / safe_m, 1.0)
    rb = jnp.where(ok, jnp.maximum(b, 0.0) / safe_m, 1.0)
    q = p if largest else -p
    s = (ra**q + rb**q) ** (1.0 / q)
    return jnp.where(ok, m * s, 0.0)


class AbstractRelax(eqx.Module):
    """How non-smooth operations are evaluated. Subclasses: `Exact`, `Smooth`."""

    @abc.abstractmethod
    def max(self, a: ArrayLike, b: ArrayLike) -> Array:
        """Elementwise maximum of two non-negative quantities."""

    @abc.abstractmethod
    def min(self, a: ArrayLike, b: ArrayLike) -> Array:
        """Elementwise minimum of two non-negative quantities."""

    @abc.abstractmethod
    def relu(self, x: ArrayLike, scale: ArrayLike = 1.0) -> Array:
        """max(x, 0); `scale` is the size of x over which Smooth bends."""

    @abc.abstractmethod
    def step(self, x: ArrayLike, scale: ArrayLike = 1.0) -> Array:
        """1 where x > 0, else 0; `scale` as for `relu`."""

    def clip(self, x: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> Array:
        """min(max(x, lo), hi) for non-negative x, lo ≤ hi."""
        return self.min(self.max(x, lo), hi)

    def exceed(self, a: ArrayLike, b: ArrayLike) -> Array:
        """max(a, b) − b for non-negative a, b: the part of a that b does not hide.

        Scale-free (used for exposed communication: comm time not covered by compute).
        """
        return self.max(a, b) - as_float(b)


class Exact(AbstractRelax):
    """The piecewise model (hard max/min/relu/step), for reporting and re-scoring."""

    def max(self, a, b):
        return jnp.maximum(as_float(a), as_float(b))

    def min(self, a, b):
        return jnp.minimum(as_float(a), as_float(b))

    def relu(self, x, scale=1.0):
        return jnp.maximum(as_float(x), 0.0)

    def step(self, x, scale=1.0):
        return jnp.where(as_float(x) > 0, 1.0, 0.0)


class Smooth(AbstractRelax):
    """Differentiable relaxations with sharpness p (a leaf: anneal or vmap it).

    See the module docstring for each primitive's formula and bound against `Exact`.
    """

    sharpness: Array = eqx.field(converter=as_float, default=16.0)

    def max(self, a, b):
        return _pnorm(a, b, self.sharpness, largest=True)

    def min(self, a, b):
        return _pnorm(a, b, self.sharpness, largest=False)

    def relu(self, x, scale=1.0):
        scale = as_float(scale)
        return scale / self.sharpness * jnp.logaddexp(0.0, self.sharpness * x / scale)

    def step(self, x, scale=1.0):
        return jax.nn.sigmoid(self.sharpness * as_float(x) / as_float(scale))
