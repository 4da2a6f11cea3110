"""Layer 6: the `diffperf` command line (`main`) and its commands, one module each."""

from .jobs import infer_result, train_result
from .main import main

__all__ = ["main", "train_result", "infer_result"]
