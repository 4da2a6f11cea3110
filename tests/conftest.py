"""Test configuration: float64, strict dtype promotion, rank promotion errors."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import os  # noqa: E402

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (no flaky discoveries in a clean clone); locally
# hypothesis explores new examples and keeps failures in .hypothesis/.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
