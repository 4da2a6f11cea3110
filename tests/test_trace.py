"""Traces add up to the model's step time; schedules follow 1F1B / interleaved; plots
are written and not blank; the CLI's JSON keys and exit-2 errors."""

import collections
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import diffperf as dp
from diffperf.cli import main
from diffperf.model.trace import (
    MAX_DRAWN_STAGES,
    infer_trace,
    schedule_order,
    train_trace,
)

RTOL = 1e-6
_HW, _MODEL = dp.load_hardware("dgx_h100"), dp.load_workload("llama2_7b")
TRAIN_CASES = [
    # pp = 1, no pipeline
    ("dgx_h100", "llama2_7b", dict(tp=1, pp=1, dp=8, microbatch=2, global_batch=64)),
    # 1F1B, TP with sequence parallelism, selective recompute
    ("dgx_h100", "gpt3_175b", dict(tp=8, pp=8, dp=4, global_batch=64,
                                   recompute="selective", sequence_parallel=True)),
    # interleaved (vpp), ZeRO-3, full recompute
    ("dgx_h100", "gpt3_175b", dict(tp=8, pp=4, vpp=2, dp=4, global_batch=32,
                                   recompute="full", sequence_parallel=True, zero=3)),
    # DP overlap off, TP overlap on
    ("dgx_h100", "llama2_7b", dict(tp=2, pp=4, dp=2, global_batch=32, dp_overlap=0.0,
                                   tp_overlap=0.5)),
    # MoE with EP and CP, interleaved
    ("dgx_h100", "mixtral_8x7b", dict(tp=2, pp=4, ep=4, vpp=2, dp=4, cp=2,
                                      global_batch=64)),
    # more stages than are drawn in full
    ("dgx_h100", "llama2_70b", dict(tp=8, pp=16, dp=1, global_batch=32)),
]  # fmt: skip


def _complete(trace):
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def _critical_checks(events, terms: dict, total: float):
    """Critical events tile [0, total] without gaps and add up per term."""
    crit = sorted((e for e in events if e["args"]["critical"]), key=lambda e: e["ts"])
    t = 0.0
    for e in crit:
        assert e["ts"] == pytest.approx(t, rel=RTOL, abs=RTOL * total * 1e6), e["name"]
        t = e["ts"] + e["dur"]
    assert t * 1e-6 == pytest.approx(total, rel=RTOL)
    by_term = collections.defaultdict(float)
    for e in crit:
        by_term[e["args"]["term"]] += e["dur"] * 1e-6
    assert set(by_term) <= set(terms)
    for name, value in terms.items():
        assert by_term[name] == pytest.approx(value, rel=RTOL, abs=RTOL * total), name


def _rows_do_not_overlap(events):
    """Slices on one row either nest or are disjoint (a valid flame chart)."""
    rows = collections.defaultdict(list)
    for e in events:
        rows[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    for spans in rows.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for a, z, name in spans:
            while stack and stack[-1] <= a + 1e-6:
                stack.pop()
            assert not stack or z <= stack[-1] + 1e-6, name
            stack.append(z)


@pytest.mark.parametrize("hw,model,kw", TRAIN_CASES)
def test_train_trace_adds_up_to_the_breakdown(hw, model, kw):
    mapping = dp.Parallelism(**kw)
    trace, b = train_trace(dp.load_hardware(hw), dp.load_workload(model), mapping)
    events = _complete(trace)
    terms = {k: float(v) for k, v in b.terms().items()}
    _critical_checks(events, terms, float(b.total))
    _rows_do_not_overlap(events)
    # overlapped communication is drawn, off the critical path, in full
    hidden = collections.defaultdict(float)
    for e in events:
        if e["args"]["term"] in ("overlapped_tp_comm", "overlapped_cp_comm"):
            hidden[e["args"]["term"]] += e["dur"] * 1e-6
    p = int(kw.get("pp", 1))
    if p <= MAX_DRAWN_STAGES:  # every stage drawn: per stage = the Breakdown's
        for name in ("overlapped_tp_comm", "overlapped_cp_comm"):
            want = float(getattr(b, name)) * p
            assert hidden[name] == pytest.approx(want, rel=RTOL, abs=1e-12)
    dp_hidden = [e for e in events if e["args"]["term"] == "overlapped_dp_comm"]
    assert all(not e["args"]["critical"] for e in dp_hidden)
    if float(b.overlapped_dp_comm) > 0:
        assert dp_hidden[0]["dur"] * 1e-6 == pytest.approx(float(b.overlapped_dp_comm))


@given(
    p=st.sampled_from([1, 2, 3, 4, 8]),
    v=st.sampled_from([1, 2, 4]),
    groups=st.integers(1, 4),
    tp=st.sampled_from([1, 2, 8]),
    overlap=st.sampled_from([0.0, 1.0]),
    recompute=st.sampled_from(["none", "selective", "full"]),
    zero=st.sampled_from([0, 1, 3]),
)
def test_schedule_reproduces_the_step_time(p, v, groups, tp, overlap, recompute, zero):
    v = 1 if p == 1 else v
    m = groups * p if v > 1 else groups * 3 - 1  # any m for 1F1B, m < p included
    mapping = dp.Parallelism(tp=tp, pp=p, vpp=v, dp=2, global_batch=2 * m,
                             dp_overlap=overlap, tp_overlap=overlap / 2,
                             recompute=recompute, zero=zero,
                             sequence_parallel=tp > 1)  # fmt: skip
    trace, b = train_trace(_HW, _MODEL, mapping)
    _critical_checks(
        _complete(trace), {k: float(x) for k, x in b.terms().items()}, float(b.total)
    )


def test_large_pp_draws_a_representative_set_of_stages():
    mapping = dp.Parallelism(tp=8, pp=16, dp=1, global_batch=32)
    trace, _ = train_trace(
        dp.load_hardware("dgx_h100"), dp.load_workload("llama2_70b"), mapping
    )
    drawn = trace["otherData"]["stages_drawn"]
    assert drawn == [0, 1, 8, 14, 15]
    for pid in {e["pid"] for e in _complete(trace)} - set(drawn):
        # other stages appear only with their warm-up / cool-down (critical) events
        assert all(e["args"]["critical"] for e in _complete(trace) if e["pid"] == pid)


def test_dp_overlap_moves_dp_time_off_the_critical_path():
    hw, model = dp.load_hardware("dgx_h100"), dp.load_workload("llama2_7b")
    exposed = {}
    for overlap in (0.0, 1.0):
        mapping = dp.Parallelism(tp=2, pp=2, dp=8, global_batch=64, dp_overlap=overlap)
        trace, b = train_trace(hw, model, mapping)
        crit = [e for e in _complete(trace) if e["args"]["critical"]]
        exposed[overlap] = sum(e["dur"] for e in crit if e["args"]["term"] == "dp_comm")
        assert exposed[overlap] * 1e-6 == pytest.approx(float(b.dp_comm), rel=RTOL)
    assert exposed[1.0] < exposed[0.0]


@pytest.mark.parametrize(
    "p,v,m", [(1, 1, 3), (4, 1, 8), (4, 1, 2), (4, 2, 8), (2, 3, 4)]
)
def test_schedule_orders(p, v, m):
    for s in range(p):
        order = schedule_order(s, p, v, m)
        assert sorted(order) == sorted(
            (k, i, c) for k in "FB" for i in range(m) for c in range(v)
        )
        # a chunk's backward never precedes its forward on the stage
        pos = {op: n for n, op in enumerate(order)}
        assert all(pos[("F", i, c)] < pos[("B", i, c)] for _, i, c in order)
        if v == 1:  # 1F1B: warm-up forwards, then one forward one backward
            lead = min(p - s, m)  # warm-up forwards plus the first steady forward
            assert [k for k, _, _ in order[: lead + 1]] == ["F"] * lead + ["B"]
    with pytest.raises(ValueError, match="multiple of pp"):
        schedule_order(0, 4, 2, 6)


@pytest.mark.parametrize("pp", [1, 2])
def test_infer_trace_adds_up_per_phase(pp):
    serving = dp.Serving(tp=4, pp=pp, batch=8, input_len=1024, output_len=128)
    trace, pre, dec = infer_trace(
        dp.load_hardware("dgx_h100"), dp.load_workload("llama2_70b"), serving
    )
    events = _complete(trace)
    _rows_do_not_overlap(events)
    t0 = 0.0
    for phase, pb in (("prefill", pre), ("decode", dec)):
        mine = [e for e in events if e["args"].get("phase") == phase]
        shifted = [dict(e, ts=e["ts"] - t0 * 1e6) for e in mine]
        terms = {k: float(v) for k, v in pb.terms().items()}
        _critical_checks(shifted, terms, float(pb.total))
        t0 += float(pb.total)
    assert {e["pid"] for e in events} == set(range(pp))


def test_chrome_trace_schema():
    trace, _ = train_trace(
        dp.load_hardware("dgx_h100"),
        dp.load_workload("llama2_7b"),
        dp.Parallelism(tp=2, pp=2, dp=2, global_batch=8),
    )
    json.loads(json.dumps(trace))  # plain JSON
    assert set(trace) >= {"traceEvents", "displayTimeUnit"}
    assert trace["displayTimeUnit"] in ("ms", "ns")
    named = collections.defaultdict(set)
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "M":
            assert e["name"] in (
                "process_name", "thread_name", "process_sort_index",
                "thread_sort_index",
            )  # fmt: skip
            named[e["name"]].add((e["pid"], e["tid"]) if "thread" in e["name"]
                                 else e["pid"])  # fmt: skip
        else:
            assert e["dur"] > 0 and e["ts"] >= 0 and isinstance(e["name"], str)
            assert {"term", "critical"} <= set(e["args"])
    for e in _complete(trace):
        assert e["pid"] in named["process_name"]
        assert (e["pid"], e["tid"]) in named["thread_name"]
    names = {e["name"] for e in _complete(trace)}
    assert {"F mb0", "B mb1", "head+loss mb1"} <= names


def test_roofline_points_are_the_models_ops():
    model = dp.load_workload("llama2_7b")
    serving = dp.Serving(tp=2, batch=4, input_len=512, output_len=64)
    points = dp.roofline_points(_HW, model, serving, phases=("prefill", "decode"))
    by = {(p["phase"], p["op"]): p for p in points}
    assert {op for _, op in by} == {
        "qkv",
        "attn_out",
        "mlp_up",
        "mlp_down",
        "attention",
    }
    d, h, n, k = 4096.0, 128.0, 32.0, 32.0  # Llama-2-7B: D, head dim, heads, KV heads
    for phase, tokens in (("prefill", 4 * 512), ("decode", 4)):
        qkv = by[(phase, "qkv")]
        assert qkv["flops"] == pytest.approx(2 * tokens * d * (n + 2 * k) * h / 2)
        # the op's time is the cost model's own: F / achieved
        assert qkv["time_s"] == pytest.approx(
            qkv["flops"] / qkv["achieved_flops_per_s"]
        )
    # decode streams the weights: about one FLOP per weight byte per token pair
    assert by[("decode", "qkv")]["intensity"] < 10 < by[("prefill", "qkv")]["intensity"]
    assert by[("decode", "qkv")]["bound"] == "memory"
    with pytest.raises(ValueError, match="phase"):
        dp.roofline_points(_HW, model, serving, phases=("warmup",))


def _nonblank(path):
    import matplotlib.image

    assert path.stat().st_size > 5000
    img = np.asarray(matplotlib.image.imread(path))[..., :3]
    # more than background: a good share of pixels differ from the corner colour
    differ = np.any(np.abs(img - img[0, 0]) > 0.1, axis=-1)
    assert differ.mean() > 0.01


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


TRAIN = ("--hardware", "dgx_h100", "--model", "llama2_7b", "--gpus", "16", "--tp", "2",
         "--pp", "4", "--vpp", "2", "--global-batch", "32")  # fmt: skip
INFER = ("--hardware", "dgx_h100", "--model", "llama2_7b", "--gpus", "2", "--tp", "2",
         "--batch", "4", "--input-len", "512", "--output-len", "64")  # fmt: skip


def test_cli_trace_train(capsys, tmp_path):
    out, png = tmp_path / "step.json", tmp_path / "bars.png"
    rc, so, err = run(capsys, "trace", "train", *TRAIN, "--out", out, "--png", png,
                      "--json")  # fmt: skip
    assert rc == 0, err
    data = json.loads(so)
    assert {"out", "n_events", "step_time_s", "critical_path_s", "schedule"} <= set(
        data
    )
    assert data["schedule"] == "interleaved" and data["n_events"] > 0
    trace = json.loads(out.read_text())
    assert len(_complete(trace)) == data["n_events"]
    # float32 on the command line: sums agree to single precision
    assert data["critical_path_s"] == pytest.approx(data["step_time_s"], rel=1e-5)
    rc2, so2, _ = run(capsys, "train", *TRAIN, "--json")
    assert json.loads(so2)["step_time_s"] == pytest.approx(data["step_time_s"])
    _nonblank(png)


def test_cli_trace_infer(capsys, tmp_path):
    out, png = tmp_path / "step.json", tmp_path / "bars.png"
    rc, so, err = run(capsys, "trace", "infer", *INFER, "--out", out, "--png", png,
                      "--json")  # fmt: skip
    assert rc == 0, err
    data = json.loads(so)
    assert {"out", "n_events", "step_time_s", "ttft_s", "tpot_s"} <= set(data)
    assert data["step_time_s"] == pytest.approx(data["ttft_s"] + data["tpot_s"])
    rc2, so2, _ = run(capsys, "infer", *INFER, "--json")
    ref = json.loads(so2)
    assert data["ttft_s"] == pytest.approx(ref["ttft_s"])
    assert data["tpot_s"] == pytest.approx(ref["tpot_s"])
    _nonblank(png)


def test_cli_trace_png_compares_mappings(capsys, tmp_path):
    png = tmp_path / "cmp.png"
    rc, so, err = run(capsys, "trace", "train", *TRAIN, "--out", tmp_path / "s.json",
                      "--png", png, "--vs", "vpp=1", "--vs", "tp=4,pp=2",
                      "--vs", "hardware=dgx_a100", "--json")  # fmt: skip
    assert rc == 0, err
    data = json.loads(so)
    assert data["png_bars"] == ["as given", "vpp=1", "tp=4,pp=2", "hardware=dgx_a100"]
    _nonblank(png)
    rc, so, err = run(capsys, "train", *TRAIN, "--vpp", "1", "--json")
    rc, so2, err = run(capsys, "train", *TRAIN, "--json")
    # interleaving shrinks the bubble: the bars compare real alternatives
    bubble = json.loads(so)["breakdown"]["pp_bubble"]
    assert json.loads(so2)["breakdown"]["pp_bubble"] < bubble


def test_cli_roofline(capsys, tmp_path):
    png = tmp_path / "roof.png"
    rc, so, err = run(capsys, "roofline", *INFER, "--out", png, "--json")
    assert rc == 0, err
    data = json.loads(so)
    assert {"out", "points", "ceilings"} <= set(data)
    keys = {"op", "flops", "bytes", "intensity", "achieved_flops_per_s", "bound"}
    phases = collections.Counter(p["phase"] for p in data["points"])
    assert set(phases) == {"train", "prefill", "decode"}
    peak = data["ceilings"]["peak_flops_per_s"]["bf16"]
    beta = data["ceilings"]["hbm_bandwidth"]
    for p in data["points"]:
        assert keys <= set(p) and p["bound"] in ("compute", "memory")
        assert p["intensity"] == pytest.approx(p["flops"] / p["bytes"], rel=1e-6)
        # under the roofline of the datasheet peak and bandwidth
        assert p["achieved_flops_per_s"] <= min(peak, p["intensity"] * beta) * 1.0001
    decode = [p for p in data["points"] if p["phase"] == "decode"]
    assert any(p["bound"] == "memory" for p in decode)  # batch-4 decode streams weights
    _nonblank(png)


@pytest.mark.parametrize(
    "argv,field",
    [
        (("trace", "train", *TRAIN, "--out", "/nonexistent/dir/x.json"), "--out"),
        (("trace", "train", *TRAIN, "--global-batch", "6", "--out", "{tmp}/x.json"),
         "microbatches"),
        (("trace", "infer", *INFER, "--tp", "3", "--out", "{tmp}/x.json"), "tp"),
        (("trace", "train", *TRAIN), "--out"),
        (("roofline", *INFER, "--phases", "train,bogus", "--out", "{tmp}/r.png"),
         "--phases"),
        (("roofline", *INFER), "--out"),
        (("trace", "train", *TRAIN, "--out", "{tmp}/x.json", "--vs", "tpp=4"),
         "--vs='tpp=4'"),
        (("trace", "train", *TRAIN, "--out", "{tmp}/x.json", "--vs", "tp=3"),
         "--vs='tp=3'"),
    ],
)  # fmt: skip
def test_cli_errors_exit_2(capsys, tmp_path, argv, field):
    argv = [str(a).replace("{tmp}", str(tmp_path)) for a in argv]
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and field in err
