"""Layer 2: the performance model.

Ops, layers, collectives, the training step, prefill
and decode phases, serving, memory, off-chip traffic, economics, traces and rooflines.
"""
