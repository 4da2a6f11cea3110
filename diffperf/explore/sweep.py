"""Small sweeps behind the explorer's Pareto panel (bounded by `MAX_SWEEP`).

Training: every mapping of the same chips, tp·pp·dp = gpus (tp, pp powers of two or
divisors of gpus, microbatch 1, 2, 4, 8 where the global batch allows), evaluated by
`analysis.sweep.evaluate` (jit + vmap, Exact model): step time [s] against $ per
million tokens. Serving: batch sizes 1, 2, 4, ... up to the replica's maximum batch
(at most 1024) of the same replica, TPOT [s] against output tokens/s per GPU.
"""

import dataclasses

import numpy as np

from ..analysis.sweep import OUTPUTS, evaluate, pareto_mask
from ..cli import jobs
from ..specs.mapping import check_mapping, check_serving

__all__ = ["train_front", "infer_front", "MAX_SWEEP"]

MAX_SWEEP = 2048  # configurations per request


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


def train_front(args) -> dict:
    """Pareto front (step time vs $/M tokens) over the mappings of args' chips.

    Raises:
        ValueError: no mapping fits, or more than `MAX_SWEEP` of them.
    """
    cluster, model, mapping = jobs.train_job(args)
    gpus, gb = args.gpus, int(float(mapping.batch()))
    rows = []
    for tp in _divisors(gpus, 64):
        for pp in _divisors(gpus // tp, 64):
            dp = gpus // (tp * pp * args.cp)
            if dp < 1 or gpus % (tp * pp * args.cp):
                continue
            for mb in (1, 2, 4, 8):
                if gb % (dp * mb):
                    continue
                m = dataclasses.replace(mapping, tp=float(tp), pp=float(pp),
                                        dp=float(dp), microbatch=float(mb))  # fmt: skip
                try:
                    check_mapping(model, m, gpus=gpus)
                except ValueError:
                    continue
                rows.append((tp, pp, dp, mb))
    if not rows:
        raise ValueError("no mapping of these chips fits the model and global batch")
    if len(rows) > MAX_SWEEP:
        raise ValueError(f"{len(rows)} mappings exceed the sweep bound {MAX_SWEEP}")
    names = ["mapping.tp", "mapping.pp", "mapping.dp", "mapping.microbatch"]
    values = np.asarray(rows, dtype=float)
    out, _ = evaluate(cluster, model, mapping, names, values, chunk=len(rows))
    col = {k: out[:, OUTPUTS.index(k)] for k in OUTPUTS}
    feasible = col["feasible"] > 0.5
    front = np.zeros(len(rows), bool)
    if feasible.any():
        idx = np.flatnonzero(feasible)
        front[idx[pareto_mask(col["step_time_s"][idx],
                              col["usd_per_million_tokens"][idx])]] = True  # fmt: skip
    points = [
        dict(tp=r[0], pp=r[1], dp=r[2], microbatch=r[3],
             step_time_s=float(col["step_time_s"][i]),
             usd_per_million_tokens=float(col["usd_per_million_tokens"][i]),
             feasible=bool(feasible[i]), pareto=bool(front[i]))
        for i, r in enumerate(rows)
    ]  # fmt: skip
    return {"x": "step_time_s", "y": "usd_per_million_tokens", "points": points}


def infer_front(args) -> dict:
    """TPOT vs output tokens/s per GPU over batch sizes of the same replica."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..core.relax import Exact
    from ..model.serving import serve

    cluster, model, serving, _ = jobs.infer_job(args)
    check_serving(model, serving)
    batches = [2**k for k in range(11)]

    def one(b):
        s = eqx.tree_at(lambda s: s.batch, serving, b)
        r = serve(cluster, model, s, relax=Exact())
        fits = r.feasible.astype(r.tpot.dtype)
        return jnp.stack([r.tpot, r.output_tokens_per_s_per_gpu, r.ttft, fits])

    dtype = jnp.result_type(float)
    out = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(batches, dtype)))
    tpot, tps, ttft, fits = out.T
    feasible = fits > 0.5
    front = np.zeros(len(batches), bool)
    if feasible.any():
        idx = np.flatnonzero(feasible)
        front[idx[pareto_mask(tpot[idx], -tps[idx])]] = True
    points = [
        dict(batch=b, tpot_s=float(tpot[i]), ttft_s=float(ttft[i]),
             output_tokens_per_s_per_gpu=float(tps[i]), feasible=bool(feasible[i]),
             pareto=bool(front[i]))
        for i, b in enumerate(batches)
    ]  # fmt: skip
    return {"x": "tpot_s", "y": "output_tokens_per_s_per_gpu", "points": points}
