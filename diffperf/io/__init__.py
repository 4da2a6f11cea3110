"""Layer 4: files.

Loading hardware and workload specs (TOML, Hugging Face config.json), resolving
names, reading measurement CSVs, keeping finished sweep chunks. The only package
of the library that reads files; the model layers below it take pytrees.
"""

from .checkpoint import SweepCheckpoint
from .specs import (
    STACK_LEAVES,
    default_stack,
    family_chain,
    family_names,
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
    stack_for_framework,
    stack_leaf_paths,
    stack_meta,
    stack_names,
    workload_names,
)

__all__ = [
    "STACK_LEAVES",
    "SweepCheckpoint",
    "default_stack",
    "family_chain",
    "family_names",
    "stack_for_framework",
    "stack_leaf_paths",
    "stack_meta",
    "stack_names",
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
