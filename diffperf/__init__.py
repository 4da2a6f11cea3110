"""diffperf: a differentiable performance model of LLM training and serving.

On accelerator clusters:

import diffperf as dp
cluster = dp.load_hardware("h100_sxm")
model = dp.load_workload("gpt3_175b")
mapping = dp.Parallelism(tp=8, pp=8, dp=16, microbatch=1, global_batch=1536,
                         recompute="selective", sequence_parallel=True)
b = dp.train_step(cluster, model, mapping, relax=dp.Exact())
b.total  # seconds per optimizer step

The package follows its layers (ARCHITECTURE.md): `core` (relaxations, units, pytree
paths) < `specs` (hardware, workloads, mappings) < `model` (the cost model) <
`analysis` (sensitivity, sweep, optimize, calibrate) < `io` (files) < `validation`,
`viz` < `cli`. This module is the curated public API: experiments and benchmarks use
only the names in `__all__`.
"""

from .analysis.calibrate import Prior, Row, calibrate
from .analysis.codesign import (
    RETRODICT_METRICS,
    Job,
    codesign,
    design_cluster,
    enumerate_designs,
    narrowest_precision,
    retrodict,
    robust_design,
    score_jobs,
)
from .analysis.hierarchy import SHRINK, RowLevels, calibrate_hierarchy
from .analysis.kernels import (
    KernelRow,
    Stage,
    fit_kernels,
    kernel_mape,
    predict_kernels,
)
from .analysis.optimize import DesignScorer, enumerate_mappings, optimize
from .analysis.sensitivity import (
    RESOURCES,
    binding_resource,
    elasticities,
    sensitivity,
    uncertainty,
)
from .analysis.sweep import SweepResult, pareto_mask, sweep
from .core.paths import get_leaf, leaf_paths, scale_leaf, set_leaf
from .core.relax import AbstractRelax, Exact, Smooth
from .io import (
    SweepCheckpoint,
    default_stack,
    family_chain,
    family_names,
    from_hf_config,
    hardware_names,
    load_hardware,
    load_workload,
    stack_for_framework,
    stack_leaf_paths,
    stack_meta,
    stack_names,
    workload_names,
)
from .io.kernels import SYSTEMS as KERNEL_SYSTEMS
from .io.kernels import kernel_systems, read_kernel_tables
from .io.patch import patch_toml
from .model.breakdown import TERMS, Breakdown
from .model.collectives import collective_time, scale_out_bytes
from .model.design import (
    DESIGN_CHOICES,
    HBM_GENERATIONS,
    HbmGeneration,
    apply_design,
    check_design,
)
from .model.economics import (
    DOMAIN_PARTS,
    DomainParts,
    capex_per_chip,
    chip_cost,
    chip_price,
    chip_tdp,
    die_area,
    domain_cost,
    hbm_stacks,
    hourly_cost,
    joules_per_token,
    step_power,
    usd_per_million_tokens,
)
from .model.load import LoadResult, max_request_rate, mlperf_server, serve_load
from .model.memory import train_memory
from .model.phases import PhaseBreakdown, decode_step, mixed_step, prefill
from .model.roofline import roofline_points
from .model.serving import (
    Disaggregation,
    ServeResult,
    continuous_batching,
    disaggregated,
    draft_model,
    serve,
    speculative_tpot,
)
from .model.trace import infer_trace, train_trace
from .model.train import train_step
from .specs.hardware import (
    Chip,
    Cluster,
    Cost,
    Dimension,
    Host,
    MemoryTier,
    NetworkTier,
)
from .specs.mapping import (
    ATTENTION_KERNELS,
    Parallelism,
    Serving,
    check_mapping,
    check_serving,
)
from .specs.scheduler import Scheduler
from .specs.workload import Precision, Transformer
from .validation.aiconfigurator import ROUNDS as AIC_ROUNDS
from .validation.aiconfigurator import aic_linearized, resolve_aic_row
from .validation.calibration import (
    HIERARCHY_HARDWARE,
    HIERARCHY_SERVE_STACK,
    HIERARCHY_STACK,
    default_leaves,
    hierarchy_levels,
    hierarchy_priors,
    leaf_priors,
    measured_rows,
    rows_by_device,
)
from .validation.common import model_family, short_source
from .validation.engine_sim import simulate as simulate_engine
from .validation.engine_sim import step_table as engine_step_table
from .validation.run import read_measurements
from .validation.run import validate_file as validate
from .viz.plots import breakdown_bars, retrodict_balance, tornado
from .viz.plots import roofline as roofline_plot
from .viz.study import retrodict_study

__version__ = "0.1.0"

__all__ = [
    # relaxations
    "AbstractRelax", "Exact", "Smooth",
    # specs
    "Chip", "Cluster", "Cost", "Dimension", "Host", "MemoryTier", "NetworkTier",
    "Transformer", "Precision", "Parallelism", "Serving", "Scheduler",
    "ATTENTION_KERNELS",
    "check_mapping", "check_serving",
    "load_hardware", "load_workload", "from_hf_config", "hardware_names",
    "workload_names", "patch_toml",
    # families and software stacks
    "family_names", "family_chain", "stack_names", "default_stack",
    "stack_for_framework", "stack_leaf_paths", "stack_meta",
    # model
    "train_step", "Breakdown", "TERMS", "train_memory", "prefill", "decode_step",
    "PhaseBreakdown", "serve", "ServeResult", "continuous_batching", "disaggregated",
    "Disaggregation", "speculative_tpot", "mixed_step", "serve_load", "LoadResult",
    "max_request_rate", "mlperf_server", "draft_model", "collective_time",
    "simulate_engine", "engine_step_table",
    "scale_out_bytes", "train_trace", "infer_trace", "roofline_points",
    # economics
    "die_area", "chip_cost", "chip_price", "chip_tdp", "capex_per_chip",
    "hourly_cost", "step_power", "joules_per_token", "usd_per_million_tokens",
    "hbm_stacks", "domain_cost", "DomainParts", "DOMAIN_PARTS",
    # design choices (dies, HBM generation and stacks, formats, scale-up, NICs)
    "apply_design", "check_design", "DESIGN_CHOICES", "HBM_GENERATIONS",
    "HbmGeneration",
    # analyses
    "optimize", "enumerate_mappings", "DesignScorer", "calibrate", "Prior", "Row",
    "codesign", "enumerate_designs", "design_cluster", "Job", "score_jobs",
    "robust_design", "retrodict", "RETRODICT_METRICS", "narrowest_precision",
    "KernelRow", "Stage", "fit_kernels", "kernel_mape", "predict_kernels",
    "read_kernel_tables", "kernel_systems", "KERNEL_SYSTEMS",
    "validate", "sweep", "SweepResult", "pareto_mask", "resolve_aic_row",
    "aic_linearized", "AIC_ROUNDS",
    "SweepCheckpoint", "sensitivity", "elasticities", "uncertainty",
    "binding_resource", "RESOURCES",
    # measured rows: reading, resolving for calibration, labels
    "read_measurements", "measured_rows", "rows_by_device", "default_leaves",
    "leaf_priors", "model_family", "short_source",
    # hierarchical calibration: global, family, device and software-stack levels
    "calibrate_hierarchy", "RowLevels", "SHRINK", "hierarchy_levels",
    "hierarchy_priors", "HIERARCHY_HARDWARE", "HIERARCHY_STACK",
    "HIERARCHY_SERVE_STACK",
    # figures (matplotlib is imported when one is drawn)
    "tornado", "breakdown_bars", "roofline_plot", "retrodict_balance",
    "retrodict_study",
    # pytree paths
    "get_leaf", "set_leaf", "scale_leaf", "leaf_paths",
]  # fmt: skip
