"""Read the measured kernel tables of `aiconfigurator-core` into `KernelRow`s.

The optional extra `diffperf[kernels]` installs `aiconfigurator-core` (Apache-2.0,
NVIDIA), whose package holds, per system, tables measured with TensorRT-LLM, vLLM,
SGLang and NCCL:

    aiconfigurator_core/systems/<system>.yaml            datasheet (and nccl_version)
    aiconfigurator_core/systems/data/<system>/<op>/<backend>/<version>/
        collection_meta.yaml                             provenance, table status
        <table>.parquet                                  one row per measured kernel

The tables read here (latency in milliseconds in every one):

- gemm_perf: gemm_dtype, m (tokens), n (output width), k (input width);
- context_attention_perf: batch_size, isl, num_heads, num_key_value_heads,
  head_dim, window_size, beam_width, attn_dtype, kv_cache_dtype;
- generation_attention_perf: the same, with isl + step the cached length;
- moe_perf: moe_dtype, num_tokens, hidden_size, inter_size, topk, num_experts,
  moe_tp_size, moe_ep_size, distribution, kernel_source;
- nccl_perf (backend `nccl`): op_name, nccl_dtype, num_gpus, message_size (elements).

A table may also be a `<table>.csv` with the same columns (the small fixture of the
tests is one, so that they run without pyarrow). Rows the op model cannot score are
counted by reason, never silently dropped: GEMM and MoE dtypes other than bf16, fp8,
fp8 block-scaled and NVFP4; MoE routings other than `balanced` (the model assumes
uniform routing); beam widths other than 1. The package's end-to-end sample
(`silicon_sample.csv`) is never read.
"""

import csv
import importlib.util
import re
from collections import Counter
from pathlib import Path

from ..analysis.kernels import KernelRow

__all__ = [
    "SYSTEMS",
    "EXTRA_MESSAGE",
    "kernel_root",
    "kernel_systems",
    "read_kernel_tables",
]

EXTRA_MESSAGE = (
    "measured kernel tables need the optional extra: pip install 'diffperf[kernels]' "
    "(aiconfigurator-core>=0.12)"
)

SYSTEMS = {
    "a100_sxm": "a100_sxm4_80gb",
    "h100_sxm": "h100_sxm",
    "h100_pcie": "h100_pcie",
    "h200_sxm": "h200_sxm",
    "b200_sxm": "b200",
    "b300_sxm": "b300",
    "gb200": "gb200",
    "gb300": "gb300",
    "l40s": "l40s",
    "rtx_pro_6000_server": "rtx_pro_6000_blackwell",
}
"""aiconfigurator system name → the bundled diffperf hardware stem."""

_TABLES = {  # table stem -> (op directory, op kind)
    "gemm_perf": ("gemm", "gemm"),
    "context_attention_perf": ("attention", "context_attention"),
    "generation_attention_perf": ("attention", "generation_attention"),
    "moe_perf": ("moe", "moe"),
    "nccl_perf": ("comm", "nccl"),
}
_MATH = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8", "fp8_block": "fp8",
         "nvfp4": "nvfp4"}  # fmt: skip
_KV = {"bfloat16": 2.0, "float16": 2.0, "fp8": 1.0}
_COMM = {"all_reduce": "all_reduce", "all_gather": "all_gather",
         "reduce_scatter": "reduce_scatter", "alltoall": "all_to_all"}  # fmt: skip
_COMM_BYTES = {"half": 2.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0,
               "float": 4.0, "float32": 4.0}  # fmt: skip


def kernel_root(root: str | Path | None = None) -> Path:
    """The `systems` folder of the tables: `root`, else the installed package's.

    Raises:
        ValueError: `EXTRA_MESSAGE` when the extra is not installed; the path when
            `root` is not a folder with a `data` subfolder.
    """
    if root is None:
        spec = importlib.util.find_spec("aiconfigurator_core")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(EXTRA_MESSAGE)
        root = Path(next(iter(spec.submodule_search_locations))) / "systems"
    root = Path(root)
    if not (root / "data").is_dir():
        raise ValueError(f"kernel tables: {root} has no data/ folder of systems")
    return root


def kernel_systems(root: str | Path | None = None) -> list[str]:
    """The systems with measured tables under `root` (see `kernel_root`)."""
    return sorted(p.name for p in (kernel_root(root) / "data").iterdir() if p.is_dir())


def _version_key(v: str) -> tuple:
    """Sort key of a version: release numbers, then rc < final < post."""
    m = re.match(r"(\d+(?:\.\d+)*)(?:(rc|\.dev|\.post)(\d+))?", v)
    if not m:
        return ((), 0, 0)
    release = tuple(int(x) for x in m.group(1).split("."))
    tag = {"rc": 0, ".dev": -1, ".post": 2}.get(m.group(2), 1)
    return (release, tag, int(m.group(3) or 0))


def _read_table(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(EXTRA_MESSAGE) from None
    return pq.read_table(path).to_pylist()


def _meta(folder: Path) -> str:
    """`provenance` of a version folder's collection_meta.yaml ("" if none)."""
    meta = folder / "collection_meta.yaml"
    if not meta.exists():
        return ""
    m = re.search(r"^provenance:\s*(\S+)", meta.read_text(), re.M)
    return m.group(1) if m else ""


def _nccl_version(root: Path, system: str) -> str | None:
    """misc.nccl_version of the system's YAML (the NCCL its tables default to)."""
    path = root / f"{system}.yaml"
    if not path.exists():
        return None
    m = re.search(r"^\s*nccl_version:\s*['\"]?([\w.]+)", path.read_text(), re.M)
    return m.group(1) if m else None


def _table_files(root, system, backend, version):
    """[(table stem, op kind, [(file, version)] newest first, backend)] of a system."""
    base = root / "data" / system
    chosen = []
    for stem, (op_dir, kind) in _TABLES.items():
        be = "nccl" if kind == "nccl" else backend
        folder = base / op_dir / be
        if not folder.is_dir():
            continue
        have = {}
        for vdir in folder.iterdir():
            for ext in (".parquet", ".csv"):
                if (vdir / f"{stem}{ext}").exists():
                    have[vdir.name] = vdir / f"{stem}{ext}"
        if not have:
            continue
        order = sorted(have, key=_version_key, reverse=True)
        if kind == "nccl":
            want = _nccl_version(root, system)
            if want in have:
                order = [want] + [v for v in order if v != want]
        elif version is not None:
            if version not in have:
                continue
            order = [version]
        chosen.append((stem, kind, [(have[v], v) for v in order], be))
    return chosen


def _num(row: dict, key: str) -> float:
    value = row.get(key)
    if value is None or value == "":
        raise ValueError(f"kernel table: column {key!r} is missing or blank")
    return float(value)


def _convert(kind: str, row: dict, source: str) -> tuple[list[KernelRow], str]:
    """The KernelRow(s) of one table row, or ([], the reason it is not scored)."""
    s = _num(row, "latency") * 1e-3
    if kind == "gemm":
        dtype = _MATH.get(row["gemm_dtype"])
        if dtype is None:
            return [], f"gemm dtype {row['gemm_dtype']}"
        return [KernelRow("gemm", dtype, s, m=_num(row, "m"), k=_num(row, "k"),
                          n=_num(row, "n"), source=source)], ""  # fmt: skip
    if kind in ("context_attention", "generation_attention"):
        if int(_num(row, "beam_width")) != 1:
            return [], "beam width > 1"
        dtype = _MATH.get(row["attn_dtype"])
        kvb = _KV.get(row["kv_cache_dtype"])
        if dtype is None or kvb is None:
            return [], f"attention dtype {row['attn_dtype']}/{row['kv_cache_dtype']}"
        seq = _num(row, "isl")
        if kind == "generation_attention":
            seq = seq + _num(row, "step")
        return [KernelRow(
            kind, dtype, s, batch=_num(row, "batch_size"), seq=seq,
            heads=_num(row, "num_heads"), kv_heads=_num(row, "num_key_value_heads"),
            head_dim=_num(row, "head_dim"), window=_num(row, "window_size"),
            kv_nbytes=kvb, source=source,
        )], ""  # fmt: skip
    if kind == "moe":
        dtype = _MATH.get(row["moe_dtype"])
        if dtype is None:
            return [], f"moe dtype {row['moe_dtype']}"
        if row.get("distribution") != "balanced":
            return [], f"moe routing {row.get('distribution')}"
        return [KernelRow(
            "moe", dtype, s, m=_num(row, "num_tokens"), k=_num(row, "hidden_size"),
            n=_num(row, "inter_size"), experts=_num(row, "num_experts"),
            topk=_num(row, "topk"), ep=_num(row, "moe_ep_size"),
            tp=_num(row, "moe_tp_size"),
            gated="nongated" not in row.get("kernel_source", ""), source=source,
        )], ""  # fmt: skip
    op = _COMM.get(row["op_name"])
    b = _COMM_BYTES.get(row["nccl_dtype"])
    if op is None or b is None:
        return [], f"nccl {row['op_name']}/{row['nccl_dtype']}"
    return [KernelRow(op, "bf16", s, nbytes=_num(row, "message_size") * b,
                      gpus=_num(row, "num_gpus"), source=source)], ""  # fmt: skip


def read_kernel_tables(
    system: str,
    *,
    backend: str = "trtllm",
    version: str | None = None,
    root: str | Path | None = None,
) -> tuple[list[KernelRow], list[dict]]:
    """The measured kernels of one system, and the provenance of every table read.

    Args:
        system: an aiconfigurator system (`kernel_systems()`, e.g. "h100_sxm").
        backend: trtllm | vllm | sglang (NCCL tables are read whatever the backend).
        version: the backend version (default: the newest holding each table with
            rows the model scores; a newer one whose rows are all unscored, e.g. an
            MXFP4-only MoE table, is listed in `newer_without_scored_rows`); NCCL
            tables use the system YAML's `nccl_version`, else the newest.
        root: a `systems` folder in the package's layout (default: the installed
            package's).

    Returns:
        (rows, tables): tables is one dict per file read: table, op, backend,
        version, provenance, file (relative to `root`), rows, excluded
        ({reason: count}), newer_without_scored_rows ({version: excluded}).

    Raises:
        ValueError: missing extra, unknown system, no table for the backend/version.
    """
    root = kernel_root(root)
    systems = kernel_systems(root)
    if system not in systems:
        raise ValueError(f"--kernels {system!r} must be one of {', '.join(systems)}")
    files = _table_files(root, system, backend, version)
    if not any(kind != "nccl" for _, kind, *_ in files):
        raise ValueError(
            f"--kernels {system}: no gemm/attention/moe table for backend "
            f"{backend!r}" + (f" version {version!r}" if version else "")
        )
    rows, tables = [], []
    for stem, kind, candidates, be in files:
        passed = {}
        for path, v in candidates:  # newest first; an older one only if none scores
            source = f"aiconfigurator-core {system}/{be}/{v}/{stem}"
            got, excluded = [], Counter()
            for r in _read_table(path):
                new, why = _convert(kind, r, source)
                got += new
                if why:
                    excluded[why] += 1
            if got or (path, v) == candidates[-1]:
                break
            passed[v] = dict(excluded)
        rows += got
        tables.append(dict(
            table=stem, op=kind, backend=be, version=v, provenance=_meta(path.parent),
            file=str(path.relative_to(root)), rows=len(got), excluded=dict(excluded),
            newer_without_scored_rows=passed,
        ))  # fmt: skip
    return rows, tables
