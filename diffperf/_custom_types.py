"""jaxtyping aliases shared by the package (unbatched shapes)."""

from jaxtyping import Array, ArrayLike, Bool, Float

Scalar = Float[Array, ""]
"""A float JAX scalar (seconds, bytes, FLOP, ... see the field's docstring)."""

ScalarLike = Float[ArrayLike, ""] | float | int
"""Anything that converts to a float scalar."""

BoolScalar = Bool[Array, ""]
OpVec = Float[Array, " op"]
"""One value per operator of a layer's op table."""
