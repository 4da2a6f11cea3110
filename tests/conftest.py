"""Test configuration: float64, strict dtype promotion, rank promotion errors."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import os  # noqa: E402

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (no flaky discoveries in a clean clone); locally
# hypothesis explores new examples and keeps failures in .hypothesis/.
# DIFFPERF_THOROUGH=1 explores 300 examples per property instead of 25.
settings.register_profile("default25", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
if os.environ.get("DIFFPERF_THOROUGH"):
    settings.load_profile("thorough")
elif os.environ.get("CI"):
    settings.load_profile("ci")
else:
    settings.load_profile("default25")
