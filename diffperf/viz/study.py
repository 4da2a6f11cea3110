"""Whole studies driven by a config: run, write results.json, draw the figure."""

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..analysis.codesign import Job, retrodict
from ..io.specs import load_hardware
from .plots import retrodict_balance

__all__ = ["retrodict_study"]


def retrodict_study(
    cfg: dict,
    jobs: dict[str, Job],
    *,
    chips: dict[str, int],
    out_dir: str | Path,
    progress: Callable[[str], None] | None = print,
    explain: str | None = "train",
) -> dict:
    """A retrodiction study (`retrodict`) as declared by an experiment's config.toml.

    `cfg` holds `start` and `reference` (hardware names), `reference_label`, optional
    `start_label`, `choices` (lists, inner lists become tuples), optional `then`,
    `vary` (leaf → [low, high]), `budgets`, `mix`, `process_leaves`,
    `efficiency_leaves`, `steps`, `starts` and `uncertainty`; `jobs` and `chips` are
    the experiment's workloads and the chips each runs on; `explain` as for
    `retrodict`. Writes
    `out_dir/results.json` (the config, `retrodict`'s result and the seconds taken)
    and `out_dir/balance.png` (`retrodict_balance`); returns the results.
    """
    out_dir = Path(out_dir)
    ref = cfg["reference_label"]
    start = cfg.get("start_label", f"{cfg['start']} (start)")
    t0 = time.perf_counter()
    tell = (lambda s: progress(s, flush=True)) if progress is print else progress
    r = retrodict(
        load_hardware(cfg["start"]), load_hardware(cfg["reference"]), jobs,
        chips=chips,
        choices={k: [tuple(x) if isinstance(x, list) else x for x in v]
                 for k, v in cfg["choices"].items()},
        then=cfg.get("then"), vary={k: tuple(v) for k, v in cfg["vary"].items()},
        budgets=cfg["budgets"], mix=cfg["mix"],
        process_leaves=cfg["process_leaves"],
        efficiency_leaves=cfg["efficiency_leaves"], labels=(ref, start),
        steps=cfg["steps"], starts=cfg["starts"], uncertainty=cfg["uncertainty"],
        explain=explain, progress=tell,
    )  # fmt: skip
    results = {"config": cfg, **r, "seconds": time.perf_counter() - t0}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    retrodict_balance(
        results, reference=ref, start=start, path=out_dir / "balance.png",
        title=f"{start} -> {ref} retrodiction: optimized balance vs {ref}",
    )  # fmt: skip
    return results
