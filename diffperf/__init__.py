"""diffperf: a differentiable performance model of LLM training on accelerator clusters.

import diffperf as dp
cluster = dp.load_hardware("h100_sxm")
model = dp.load_workload("gpt3_175b")
mapping = dp.Parallelism(tp=8, pp=8, dp=16, microbatch=1, global_batch=1536,
                         recompute="selective", sequence_parallel=True)
b = dp.train_step(cluster, model, mapping, relax=dp.Exact())
b.total  # seconds per optimizer step
"""

from ._breakdown import TERMS as TERMS
from ._breakdown import Breakdown as Breakdown
from ._collectives import collective_time as collective_time
from ._collectives import dispatch_time as dispatch_time
from ._collectives import scale_out_bytes as scale_out_bytes
from ._cost import capex_per_chip as capex_per_chip
from ._cost import chip_cost as chip_cost
from ._cost import chip_price as chip_price
from ._cost import chip_tdp as chip_tdp
from ._cost import die_area as die_area
from ._cost import hourly_cost as hourly_cost
from ._cost import joules_per_token as joules_per_token
from ._cost import step_power as step_power
from ._hardware import Chip as Chip
from ._hardware import Cluster as Cluster
from ._hardware import Cost as Cost
from ._hardware import Dimension as Dimension
from ._hardware import Host as Host
from ._hardware import MemoryTier as MemoryTier
from ._hardware import NetworkTier as NetworkTier
from ._infer import decode_step as decode_step
from ._infer import prefill as prefill
from ._infer import serve as serve
from ._mapping import ATTENTION_KERNELS as ATTENTION_KERNELS
from ._mapping import Parallelism as Parallelism
from ._mapping import Serving as Serving
from ._mapping import check_mapping as check_mapping
from ._mapping import check_serving as check_serving
from ._relax import AbstractRelax as AbstractRelax
from ._relax import Exact as Exact
from ._relax import Smooth as Smooth
from ._roofline import roofline_points as roofline_points
from ._sensitivity import elasticities as elasticities
from ._sensitivity import get_leaf as get_leaf
from ._sensitivity import scale_leaf as scale_leaf
from ._sensitivity import set_leaf as set_leaf
from ._serving import Disaggregation as Disaggregation
from ._serving import continuous_batching as continuous_batching
from ._serving import disaggregated as disaggregated
from ._serving import speculative_tpot as speculative_tpot
from ._trace import infer_trace as infer_trace
from ._trace import train_trace as train_trace
from ._train import train_step as train_step
from ._workload import Precision as Precision
from ._workload import Transformer as Transformer
from .io import load_hardware as load_hardware
from .io import load_workload as load_workload

__version__ = "0.1.0"
