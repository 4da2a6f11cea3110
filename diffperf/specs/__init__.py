"""Layer 1: what is modelled, as pytrees.

Hardware (`Chip`, `Cluster`, ...), workloads
(`Transformer`, `Precision`) and parallel mappings (`Parallelism`, `Serving`).
"""
