"""Layer 0: relaxations (Exact / Smooth), units, input checks, pytree paths."""
