"""Layer 4: files.

Loading hardware and workload specs (TOML, Hugging Face config.json), resolving
names, reading measurement CSVs, keeping finished sweep chunks. The only package
of the library that reads files; the model layers below it take pytrees.
"""

from .checkpoint import SweepCheckpoint
from .specs import (
    from_hf_config,
    hardware_names,
    load_hardware,
    load_workload,
    meta,
    normalize,
    published_params,
    read_csv,
    resolve_hardware,
    resolve_path,
    resolve_workload,
    spec_dir,
    workload_names,
)

__all__ = [
    "SweepCheckpoint",
    "from_hf_config",
    "hardware_names",
    "load_hardware",
    "load_workload",
    "meta",
    "normalize",
    "published_params",
    "read_csv",
    "resolve_hardware",
    "resolve_path",
    "resolve_workload",
    "spec_dir",
    "workload_names",
]
