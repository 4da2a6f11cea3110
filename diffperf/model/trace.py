"""Timelines of one training step and one serving step (Chrome / Perfetto trace events).

The trace lays the model's own numbers out in time: every exposed term of `Breakdown`
(training) or `PhaseBreakdown` (serving) appears as events whose durations add up to
that term, and the events flagged `critical` tile [0, T_step] without gaps, so they add
up to `Breakdown.total`. For training, the start times come from a list schedule of the
pipeline (below) driven by the model's chunk times; the schedule reproduces the
closed-form step time of `train_step` because the last stage, which also runs the
head, is never starved (checked by the tests, and on 2,400 mappings of 5 machines and
4 models while this module was written).

Training (m microbatches, p stages, v virtual chunks per stage; Narayanan et al. SC'21):
  * per microbatch and stage, each per-layer term of the L/p layers is split into its
    forward and backward share by the model's own pass table (`train.layer_passes`,
    from `layer.PASS_FACTORS` and `layer.RECOMPUTED`: the recomputed forward runs at
    the start of the backward), and a chunk of a virtual stage is 1/v of that; every
    exposed TP / CP / EP term is drawn as one slice per `Collective` record it comes
    from (kind, bytes, group, stride, count and NIC bytes in the event's args), in
    proportion to the record's time;
  * each stage runs its chunks in the 1F1B order (warm-up p − s − 1 forwards, then one
    forward one backward, then the cool-down backwards) or, for v > 1, in Megatron-LM's
    interleaved order (warm-up 2·(p − s − 1) + (v − 1)·p virtual forwards; needs
    m divisible by p), and every chunk starts as soon as its stage is free and its input
    (the previous virtual stage's forward, the next one's backward) has arrived;
  * the last stage also runs the head (logits and loss) after its last forward chunk and
    sets the pace; the model's exposed pipeline sends are drawn where they are exposed:
    1F1B: T_p2p = 2·(m + p − 1)·hop, a hop on every stage boundary, and the last stage
    blocks one hop to receive each microbatch's activation and one to send its gradient
    (Megatron's 1F1B waits for its sends); interleaved: T_p2p = 2·(p − 1)·v·hop, half on
    the p − 1 boundaries of the warm-up of microbatch 0 and half on the cool-down of the
    last microbatch (steady-state sends overlap compute);
  * the pipeline bubble is the warm-up forwards of microbatch 0 on stages 0..p − 2 and
    the cool-down backwards of the last microbatch (the critical path runs through them,
    term `pp_bubble`); exposed DP collectives, the optimizer and the per-step overhead
    follow; overlapped TP / CP / EP / DP communication is drawn on its own rows
    concurrently with the compute that hides it, and is not on the critical path.

Serving: one prefill and one decode step of a replica, back to back: per stage its
L/p layers (each layer's GEMMs, attention, elementwise, kernels, and its TP and EP
collectives, one slice per record of `phases.phase_collectives`),
a pipeline hop to the next stage, then the head, the host stall and the per-step
serving overhead on the last stage.

Times inside are seconds; the trace uses microseconds (`ts`, `dur`), as the Chrome trace
format requires.
"""

from ..core.relax import Exact
from ..specs.hardware import Cluster
from ..specs.mapping import Parallelism, Serving, check_mapping, check_serving
from ..specs.workload import Transformer
from .breakdown import Breakdown
from .comm import comm_time, nic_bytes
from .phases import (
    PhaseBreakdown,
    decode_step,
    phase_collectives,
    phase_shape,
    prefill,
)
from .train import LAYER_TERMS, layer_passes, train_step

__all__ = ["train_trace", "infer_trace", "schedule_order", "MAX_DRAWN_STAGES"]

_EXACT = Exact()
MAX_DRAWN_STAGES = 8
"""With more stages, only stages 0, 1, p/2, p − 2 and p − 1 are drawn in full; the
others show only their critical-path (warm-up and cool-down) events."""

ROWS = {
    "compute": "compute",
    "tp_comm": "TP comm (exposed)",
    "tp_hidden": "TP comm (overlapped)",
    "cp_comm": "CP comm (exposed)",
    "cp_hidden": "CP comm (overlapped)",
    "ep_comm": "EP comm (exposed)",
    "ep_hidden": "EP comm (overlapped)",
    "pp_p2p": "PP send/recv",
    "dp_comm": "DP comm (exposed)",
    "dp_hidden": "DP comm (overlapped)",
    "optimizer": "optimizer",
    "bubble": "bubble (idle)",
    "host": "host",
}
_TID = {name: i + 1 for i, name in enumerate(ROWS)}
_ROW_OF = {"tp_comm": "tp_comm", "cp_comm": "cp_comm", "ep_comm": "ep_comm"}


class _Trace:
    """Collects complete ("X") and metadata ("M") events; times in seconds."""

    def __init__(self, keep_stage):
        self.events: list[dict] = []
        self.keep_stage = keep_stage
        self.pids: set[int] = set()

    def add(self, pid, row, name, t0, dur, *, term=None, critical=False, **args):
        if dur <= 0.0 or not (critical or self.keep_stage(pid)):
            return
        self.pids.add(pid)
        ev = dict(name=name, ph="X", pid=pid, tid=_TID[row], ts=t0 * 1e6, dur=dur * 1e6)
        ev["cat"] = term or "schedule"
        ev["args"] = dict(term=term, critical=critical, **args)
        self.events.append(ev)

    def finish(self, process_name) -> dict:
        """The trace object: metadata naming and ordering processes and rows first."""

        def meta(kind, pid, tid, **args):
            return dict(name=kind, ph="M", pid=pid, tid=tid, ts=0.0, args=args)

        meta_events = []
        for pid in sorted(self.pids):
            meta_events += [
                meta("process_name", pid, 0, name=process_name(pid)),
                meta("process_sort_index", pid, 0, sort_index=pid),
            ]
            for row, label in ROWS.items():
                tid = _TID[row]
                meta_events += [
                    meta("thread_name", pid, tid, name=label),
                    meta("thread_sort_index", pid, tid, sort_index=tid),
                ]
        return {"traceEvents": meta_events + self.events, "displayTimeUnit": "ms"}


def schedule_order(stage: int, p: int, v: int, m: int) -> list[tuple[str, int, int]]:
    """The (pass "F"/"B", microbatch, chunk) order of one pipeline stage.

    v = 1: 1F1B (PipeDream-Flush): min(p − s − 1, m) warm-up forwards, then alternate
    one forward and one backward, then the remaining backwards. v > 1: Megatron-LM's
    interleaved schedule over m·v virtual microbatches, in groups of p microbatches
    per chunk (forward chunk of virtual microbatch k: (k mod p·v) // p; backward chunks
    run in reverse), with 2·(p − s − 1) + (v − 1)·p warm-up forwards.

    Raises:
        ValueError: v > 1 and m not a multiple of p (as Megatron-LM requires).
    """
    if v == 1:
        warm = min(p - stage - 1, m)
        fwd = [("F", i, 0) for i in range(m)]
        bwd = [("B", i, 0) for i in range(m)]
    else:
        if m % p:
            raise ValueError(
                f"interleaved schedule (vpp={v}): microbatches m={m} must be a "
                f"multiple of pp={p}"
            )
        warm = min(2 * (p - stage - 1) + (v - 1) * p, m * v)

        def virtual(k, backward):
            group, r = divmod(k, p * v)
            chunk = r // p
            return (
                "B" if backward else "F",
                group * p + r % p,
                v - 1 - chunk if backward else chunk,
            )

        fwd = [virtual(k, False) for k in range(m * v)]
        bwd = [virtual(k, True) for k in range(m * v)]
    steady = len(fwd) - warm
    order = fwd[:warm]
    for k in range(steady):
        order += [fwd[warm + k], bwd[k]]
    return order + bwd[steady:]


def _slices(cluster, records, axis, phase, total, scale):
    """Exposed seconds `total` of an axis in a pass, split over its records.

    One (label, seconds, args) per record with time, in proportion to its raw time
    count·t (`comm.comm_time`); `scale` turns a record's per-unit count into the
    chunk's. The records of one axis and pass share one overlap, so the split is the
    model's own.
    """
    mine = [r for r in records if r.axis == axis and r.phase == phase]
    raw = [float(comm_time(cluster, r, relax=_EXACT)) for r in mine]
    whole = sum(raw)
    if whole <= 0.0 or total <= 0.0:
        return []
    out = []
    for r, x in zip(mine, raw, strict=True):
        if x <= 0.0:
            continue
        what = "dispatch/combine" if r.fanout is not None else r.kind
        args = dict(
            collective=r.kind,
            bytes=float(r.nbytes),
            group=float(r.group),
            stride=float(r.stride),
            count=float(r.count) * scale,
            nic_bytes=float(nic_bytes(cluster, r, relax=_EXACT)) * scale,
        )
        out.append((f"{axis.upper()} {what}", total * x / whole, args))
    return out


def _chunk_terms(cluster, model, mapping, v: int):
    """Seconds of one chunk (1/v of a stage) of one microbatch, per pass and term.

    Returns ({"F": {term: s}, "B": {term: s}}, {axis: {pass: hidden s}},
    {pass: {term: [(label, s, args)]}}): the terms and the overlapped communication
    of `train.layer_passes` (the forward/backward split of `layer.PASS_FACTORS`)
    times the last stage's layers / v, and each exposed communication term split over
    the `Collective` records it comes from.
    """
    lp = layer_passes(cluster, model, mapping, relax=_EXACT)
    k = float(model.n_layers / mapping.pp + model.n_mtp_layers) / v
    passes = {"F": lp.forward, "B": lp.backward}
    parts = {p: {t: float(x[t]) * k for t in LAYER_TERMS} for p, x in passes.items()}
    hidden = {
        a: {"F": float(h["forward"]) * k, "B": float(h["backward"]) * k}
        for a, h in lp.hidden.items()
    }
    phase = {"F": "forward", "B": "backward"}
    slices = {
        p: {
            f"{a}_comm": _slices(
                cluster, lp.collectives, a, phase[p], parts[p][f"{a}_comm"], k
            )
            for a in ("tp", "cp", "ep")
        }
        for p in passes
    }
    return parts, hidden, slices


class _Pipeline:
    """The schedule of one step: m microbatches on p stages of v chunks each.

    Chunks run in `schedule_order` as soon as their stage is free and their input has
    arrived; `hop` is the per-hop delay of 1F1B sends (every boundary, plus the last
    stage's blocking receive and send per microbatch) and `edge` the hop of the
    interleaved warm-up / cool-down boundaries (module docstring).
    """

    def __init__(self, tr: _Trace, p: int, v: int, m: int, terms: dict, chunks):
        self.tr, self.p, self.v, self.m = tr, p, v, m
        self.last = p - 1
        self.parts, self.hidden, self.slices = chunks
        self.head, self.host = terms["head"] / m, terms["host_stall"] / m
        pp = terms["pp_p2p"]
        self.hop = pp / (2.0 * (m + p - 1.0)) if v == 1 and p > 1 else 0.0
        self.edge = pp / (2.0 * (p - 1.0)) if v > 1 and p > 1 else self.hop
        self.done: dict[tuple, float] = {}  # (stage, kind, mb, chunk) -> handed off
        self.free = [0.0] * p
        self.busy: list[list[tuple[float, float]]] = [[] for _ in range(p)]

    def delay(self, stage, kind, mb, chunk) -> float:
        """Transfer time of the input of (kind, mb, chunk) from the neighbour stage."""
        if self.v == 1:
            return self.hop
        # the p − 1 boundaries of virtual stages 0..p − 1 in the warm-up / cool-down
        warm = kind == "F" and mb == 0 and chunk == 0
        cool = kind == "B" and mb == self.m - 1 and chunk == 0 and stage < self.last
        return self.edge if warm or cool else 0.0

    def upstream(self, stage, kind, chunk):
        """(stage, chunk) whose output this pass consumes, or None (first / last)."""
        vs = chunk * self.p + stage + (-1 if kind == "F" else 1)
        return None if vs < 0 or vs >= self.p * self.v else (vs % self.p, vs // self.p)

    def critical(self, stage, kind, mb, chunk) -> bool:
        """Whether an op is on the critical path.

        Every op of the last stage is, and on the other stages the warm-up forward of
        microbatch 0 and the cool-down backward of the last microbatch.
        """
        if stage == self.last:
            return True
        return chunk == 0 and (kind, mb) in (("F", 0), ("B", self.m - 1))

    def run(self, orders):
        """Place every op of every stage; returns the end of the pipeline [s]."""
        nxt = [0] * self.p
        remaining = sum(len(o) for o in orders)
        while remaining:
            progressed = False
            for s in range(self.p):
                while nxt[s] < len(orders[s]) and self.place(s, *orders[s][nxt[s]]):
                    nxt[s] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:  # cannot happen for `schedule_order` (deadlock-free)
                raise RuntimeError("pipeline schedule deadlocked")
        return max(self.free)

    def place(self, s, kind, mb, chunk) -> bool:
        """Draw (kind, mb, chunk) on stage s if its input is ready; False otherwise."""
        tr, last, blocking = self.tr, self.last, self.v == 1 and self.p > 1
        src = self.upstream(s, kind, chunk)
        if src is not None and (src[0], kind, mb, src[1]) not in self.done:
            return False
        crit = self.critical(s, kind, mb, chunk)
        args = dict(stage=s, mb=mb, chunk=chunk)
        t = self.free[s]
        if src is not None:
            sent = self.done[(src[0], kind, mb, src[1])]
            delay = self.delay(s, kind, mb, chunk)
            what = "act" if kind == "F" else "grad"
            tr.add(
                src[0],
                "pp_p2p",
                f"send {what} mb{mb} → stage {s}",
                sent,
                delay,
                term="pp_p2p",
                critical=crit and self.critical(src[0], kind, mb, src[1]),
                **args,
            )
            t = max(t, sent + delay)
            if s == last and blocking and kind == "F":
                tr.add(
                    s,
                    "pp_p2p",
                    f"recv act mb{mb} (blocking)",
                    t,
                    self.hop,
                    term="pp_p2p",
                    critical=True,
                    **args,
                )
                t += self.hop
        start = t
        t = _draw_chunk(
            tr,
            s,
            kind,
            mb,
            chunk,
            t,
            self.parts[kind],
            crit,
            crit and s != last,
            self.v,
            {a: h[kind] for a, h in self.hidden.items()},
            self.slices[kind],
        )
        if s == last and kind == "F" and chunk == self.v - 1:
            tr.add(
                s,
                "compute",
                f"head+loss mb{mb}",
                t,
                self.head,
                term="head",
                critical=True,
                **args,
            )
            t += self.head
            tr.add(
                s,
                "host",
                f"host stall mb{mb}",
                t,
                self.host,
                term="host_stall",
                critical=True,
                **args,
            )
            t += self.host
        self.busy[s].append((start, t))
        if s == last and blocking and kind == "B":
            tr.add(
                s,
                "pp_p2p",
                f"send grad mb{mb} (blocking)",
                t,
                self.hop,
                term="pp_p2p",
                critical=True,
                **args,
            )
            t += self.hop
        self.done[(s, kind, mb, chunk)] = self.free[s] = t
        return True


def train_trace(
    cluster: Cluster, model: Transformer, mapping: Parallelism
) -> tuple[dict, Breakdown]:
    """A Chrome/Perfetto trace of one optimizer step (module docstring), Exact model.

    Returns:
        (trace, breakdown): the trace object ({"traceEvents": [...], "displayTimeUnit"})
        and the `Breakdown` it renders. Every event's `args` carry its `term`, whether
        it is on the `critical` path, and its microbatch / chunk / stage.

    Raises:
        ValueError: a mapping that does not fit the model, or an interleaved schedule
            whose microbatch count is not a multiple of pp.
    """
    check_mapping(model, mapping)
    b = train_step(cluster, model, mapping, relax=_EXACT)
    p, v = int(round(float(mapping.pp))), int(round(float(mapping.vpp)))
    m = int(round(float(mapping.microbatches())))
    orders = [schedule_order(s, p, v, m) for s in range(p)]
    terms = {k: float(x) for k, x in b.terms().items()}
    chunks = _chunk_terms(cluster, model, mapping, v)
    drawn = set(range(p)) if p <= MAX_DRAWN_STAGES else {0, 1, p // 2, p - 2, p - 1}
    tr = _Trace(lambda pid: pid in drawn)
    pipe = _Pipeline(tr, p, v, m, terms, chunks)
    t_pipe = pipe.run(orders)
    _draw_idle(tr, pipe.busy, t_pipe)
    _draw_tail(tr, b, terms, pipe.free, t_pipe, int(round(float(mapping.zero))))
    chunks = f" ({v} chunks)" if v > 1 else ""
    trace = tr.finish(lambda pid: f"pipeline stage {pid} of {p}{chunks}")
    trace["otherData"] = dict(
        model=model.name,
        hardware=cluster.name,
        schedule="1F1B" if v == 1 else "interleaved",
        pp=p,
        vpp=v,
        microbatches=m,
        stages_drawn=sorted(drawn),
        step_time_s=float(b.total),
    )
    return trace, b


def _draw_chunk(tr, s, kind, mb, chunk, t0, part, crit, bubble, v, hidden, slices):
    """One forward or backward chunk: its terms in sequence; returns its end [s].

    On the pacing (last) stage a chunk's slices are the step's terms; the warm-up and
    cool-down chunks of the other stages that the critical path runs through are the
    pipeline bubble (`bubble=True`, term `pp_bubble`). Each exposed communication term
    is drawn as one slice per `Collective` record (`slices`); the overlapped TP, CP
    and EP communication (`hidden`) on their own rows from the chunk's start.
    """
    label = f"{kind} mb{mb}" + (f" chunk{chunk}" if v > 1 else "")
    args = dict(stage=s, mb=mb, chunk=chunk)
    tr.add(s, "compute", label, t0, sum(part.values()), **args)  # enclosing slice
    t = t0
    for k in LAYER_TERMS:
        pieces = slices.get(k) or [(k, part[k], {})]
        t_in = t
        for name, dur, info in pieces:
            tr.add(
                s,
                _ROW_OF.get(k, "compute"),
                f"{label} {name}",
                t_in,
                dur,
                term="pp_bubble" if bubble else k,
                critical=crit,
                layer_term=k,
                **info,
                **args,
            )
            t_in += dur
        t += part[k]
    for axis in ("tp", "cp", "ep"):
        tr.add(
            s,
            f"{axis}_hidden",
            f"{label} {axis.upper()} (overlapped)",
            t0,
            hidden[axis],
            term=f"overlapped_{axis}_comm",
            **args,
        )
    return t


def _draw_idle(tr, busy, t_pipe):
    """Gaps of each stage's compute before the end of the pipeline (bubble row)."""
    for s, spans in enumerate(busy):
        t = 0.0
        for a, z in sorted(spans):
            tr.add(s, "bubble", "idle", t, a - t, stage=s)
            t = max(t, z)
        tr.add(s, "bubble", "idle", t, t_pipe - t, stage=s)


def _draw_tail(tr, b: Breakdown, terms, ends, t_pipe, zero: int):
    """DP collectives, optimizer and step overhead after the pipeline drains.

    Every stage runs them at the same time (the step ends with a synchronizing
    optimizer step); stage 0, where the cool-down ends, carries the critical path. The
    overlapped DP collectives end with each stage's last backward.
    """
    hidden = float(b.overlapped_dp_comm)
    what = {0: "DP all-reduce", 3: "FSDP all-gather/reduce-scatter"}.get(
        zero, "DP reduce-scatter/all-gather"
    )
    for s, end in enumerate(ends):
        crit = s == 0
        tr.add(
            s,
            "dp_hidden",
            f"{what} (overlapped)",
            max(end - hidden, 0.0),
            hidden,
            term="overlapped_dp_comm",
            stage=s,
        )
        t = t_pipe
        for row, name, term in (
            ("dp_comm", f"{what} (exposed)", "dp_comm"),
            ("optimizer", "optimizer step", "optimizer"),
            ("host", "offload transfers (exposed)", "offload"),
            ("host", "input pipeline stall", "input_stall"),
            ("host", "step overhead (data, logging, sync)", "step_overhead"),
        ):
            tr.add(s, row, name, t, terms[term], term=term, critical=crit, stage=s)
            t += terms[term]


_PHASE_ROW = {
    "tp_comm": "tp_comm",
    "ep_comm": "ep_comm",
    "pp_p2p": "pp_p2p",
    "host_stall": "host",
    "kv_offload": "host",
    "step_overhead": "host",
}
_PER_LAYER = (
    "matmul",
    "attention",
    "elementwise",
    "kernel_overhead",
    "tp_comm",
    "ep_comm",
)


def _draw_phase(tr, phase: str, pb: PhaseBreakdown, t0: float, layers: int, p: int,
                slices):  # fmt: skip
    """One prefill or decode step of a replica from t0; returns its end [s].

    Stage s runs layers [s·L/p, (s + 1)·L/p) (rounded), each layer's per-layer terms
    in sequence (term / L each; the TP and EP terms one slice per `Collective` record,
    `slices`), then one pipeline hop (pp_p2p / (p − 1)) to the next stage; the last
    stage then runs the head, the host stall (the GPU waiting for the CPU to launch
    the step's kernels) and the serving engine's per-step overhead.
    """
    terms = {k: float(x) for k, x in pb.terms().items()}
    bounds = [round(s * layers / p) for s in range(p + 1)]
    t = t0
    for s in range(p):
        start = t
        for layer in range(bounds[s], bounds[s + 1]):
            lt = t
            for k in _PER_LAYER:
                dur = terms[k] / layers
                t_in = t
                for name, piece, info in slices.get(k) or [(k, dur, {})]:
                    tr.add(
                        s,
                        _PHASE_ROW.get(k, "compute"),
                        f"{phase} L{layer} {name}",
                        t_in,
                        piece,
                        term=k,
                        critical=True,
                        phase=phase,
                        layer=layer,
                        **info,
                    )
                    t_in += piece
                t += dur
            tr.add(
                s,
                "compute",
                f"{phase} layer {layer}",
                lt,
                t - lt,
                phase=phase,
                layer=layer,
            )
        tr.add(s, "compute", f"{phase} stage {s}", start, t - start, phase=phase)
        if s < p - 1:
            dur = terms["pp_p2p"] / (p - 1)
            tr.add(
                s,
                "pp_p2p",
                f"{phase} send act → stage {s + 1}",
                t,
                dur,
                term="pp_p2p",
                critical=True,
                phase=phase,
            )
            t += dur
    for k, name in (
        ("head", "logits + sampling"),
        ("host_stall", "host stall (kernel launches)"),
        ("kv_offload", "KV cache streamed from the memory tier"),
        ("step_overhead", "serving engine step overhead"),
    ):
        tr.add(
            p - 1,
            _PHASE_ROW.get(k, "compute"),
            f"{phase} {name}",
            t,
            terms[k],
            term=k,
            critical=True,
            phase=phase,
        )
        t += terms[k]
    return t


def infer_trace(
    cluster: Cluster, model: Transformer, serving: Serving
) -> tuple[dict, PhaseBreakdown, PhaseBreakdown]:
    """A trace of one prefill step followed by one decode step of a replica (Exact).

    The decode step is at the mean context S_in + S_out/2, as `serve`'s TPOT. Events
    carry `args.phase` ("prefill" / "decode"), `term` and `critical`; the critical
    events of a phase add up to its `PhaseBreakdown.total`.

    Returns:
        (trace, prefill breakdown, decode breakdown).

    Raises:
        ValueError: a serving mapping that does not fit the model.
    """
    check_serving(model, serving)
    pre = prefill(cluster, model, serving, relax=_EXACT)
    dec = decode_step(cluster, model, serving, relax=_EXACT)
    p = int(round(float(serving.pp)))
    layers = int(round(float(model.n_layers)))
    tr = _Trace(lambda pid: True)
    t = 0.0
    for phase, pb in (("prefill", pre), ("decode", dec)):
        shape = phase_shape(model, serving, _EXACT, phase)
        records = phase_collectives(model, serving, shape, relax=_EXACT)
        slices = {
            f"{a}_comm": _slices(
                cluster,
                records,
                a,
                "forward",
                float(getattr(pb, f"{a}_comm")) / layers,
                1.0 / layers,
            )  # fmt: skip
            for a in ("tp", "ep")
        }
        t = _draw_phase(tr, phase, pb, t, layers, p, slices)
    trace = tr.finish(lambda pid: f"replica stage {pid} of {p}")
    trace["otherData"] = dict(
        model=model.name,
        hardware=cluster.name,
        pp=p,
        ttft_s=float(pre.total),
        tpot_s=float(dec.total),
        step_time_s=float(pre.total + dec.total),
    )
    return trace, pre, dec
