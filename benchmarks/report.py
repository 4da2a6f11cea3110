"""Regenerate every table of BENCHMARKS.md and VALIDATION.md from committed JSON.

    python benchmarks/report.py           # rewrite the generated blocks (make report)
    python benchmarks/report.py --check   # exit 1 if a block differs from its JSON

A generated block sits between `<!-- report:NAME -->` and `<!-- /report:NAME -->`;
everything outside the markers is hand-written prose. Each NAME has one function
below that reads only committed JSON (no model runs, no diffperf import):
benchmarks/results_cpu.json and optimizer_results_cpu.json (`make bench`),
experiments/demo_gpt3_175b_dgx_h100/results.json (`make demo`),
experiments/validation_report/report_{training,inference}.json,
experiments/calibrate_heldout/results_*.json,
experiments/calibrate_fidelity/results.json,
experiments/calibrate_hierarchy/results.json and
experiments/validation_report/peers.json.
"""

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- report:([\w-]+) -->\n)(.*?)(<!-- /report:\2 -->)", re.S)


def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def pct(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def rate(x: float) -> str:
    """Configurations per second: 4.5 M, 8.7 k."""
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x:.3g}"


def sec(x: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if x >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x / 1e-9:.3g} ns"


def spread(st: dict, fmt=lambda v: f"{v:.2f}") -> str:
    """median (min–max, IQR q1–q3, n) of a `stats` dict."""
    return (
        f"{fmt(st['median'])} (min {fmt(st['min'])}, max {fmt(st['max'])}; "
        f"IQR {fmt(st['q1'])}–{fmt(st['q3'])}; n = {st['n']})"
    )


def table(header: list[str], rows: list[list], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ---- BENCHMARKS.md ---------------------------------------------------------------


def bench_machine() -> str:
    b = load("benchmarks/results_cpu.json")
    o = load("benchmarks/optimizer_results_cpu.json")
    la = lambda d: " / ".join(f"{v:.1f}" for v in d)  # noqa: E731
    loads = [*b["load_average_start"], *b["load_average_end"]]
    loads += [*o["load_average_start"], *o["load_average_end"]]
    # a load average above the core count means other jobs shared the cores
    busy = "Other jobs shared the machine. " if max(loads) > b["cpus"] else ""
    return (
        f"Machine: {b['cpus']} CPU cores ({b['processor']}, {b['platform']}), device "
        f"`{b['device']}`, jax {b['jax']}, float{'64' if b['x64'] else '32'}; "
        f"`benchmarks/run.py` on {b['date']} (load average "
        f"{la(b['load_average_start'])} at the start, {la(b['load_average_end'])} at "
        "the end), "
        f"`benchmarks/optimizer.py` on {o['date']} (load average "
        f"{la(o['load_average_start'])} → {la(o['load_average_end'])}). "
        + busy
        + "Figures are medians of repeats with their spread."
    )


def bench_peer() -> str:
    b = load("benchmarks/results_cpu.json")
    if "batched_over_llm_analysis" not in b:
        return f"llm-analysis: {b.get('llm_analysis', 'not measured')}"
    j, n = b["job"], b["batched"]["configs"]
    la = b["llm_analysis_configs_per_s"]
    rows = [
        [
            f"configurations/s, {n:,} configurations",
            f"**{rate(b['batched']['configs_per_s'])}** (one batched call)",
            f"{rate(la['median'])} (its loop; {rate(la['min'])}–{rate(la['max'])} "
            f"over {la['n']} samples of {b['llm_analysis_sample']:,})",
            f"**{b['batched_over_llm_analysis']:,.0f}×**",
        ],
        [
            "configurations per CPU-second (all threads of each process)",
            rate(b["batched"]["configs_per_cpu_s"]),
            rate(b["llm_analysis_configs_per_cpu_s"]),
            f"{b['batched_over_llm_analysis_cpu']:,.0f}×",
        ],
        [
            f"time for all {n:,}",
            sec(b["batched"]["wall_s"]["median"]),
            f"{sec(b['llm_analysis_extrapolated_s'])} (extrapolated per "
            "configuration from the samples)",
            "",
        ],
        [
            "one call (one configuration)",
            f"{sec(b['jitted_call_s']['median'])} (jitted; IQR "
            f"{sec(b['jitted_call_s']['q1'])}–{sec(b['jitted_call_s']['q3'])})",
            f"{sec(b['llm_analysis_call_s']['median'])}",
            f"**{b['llm_analysis_call_over_jitted_call']:.1f}×**",
        ],
    ]
    return (
        table(
            [
                "same job, same run",
                "diffperf",
                f"llm-analysis {b['llm_analysis_version']}",
                "ratio",
            ],
            rows,
            "lrrr",
        )  # fmt: skip
        + f"\n\nJob: {j['model']} on {j['hardware']} (llm-analysis: "
        f"`{j['peer']['model']}` on `{j['peer']['gpu']}`, `{j['peer']['dtype']}`), "
        f"global batch {j['global_batch']} × {j['seq_len']} tokens; tp ∈ "
        f"{j['degrees']['tp']}, pp ∈ {j['degrees']['pp']}, dp ∈ {j['degrees']['dp']}, "
        f"microbatch ∈ {j['degrees']['mb']} ({j['mappings']} valid mappings, "
        f"{j['invalid_mappings']} invalid) with a hardware scale s ∈ "
        f"[{j['scale'][0]}, {j['scale'][1]}] (log-uniform) on "
        f"{', '.join(f'`{p}`' for p in j['scaled'])}; each configuration gives the "
        f"step time and the memory per GPU (feasible: "
        f"{pct(b['batched']['feasible_share'])}). llm-analysis failed on "
        f"{b['llm_analysis_failed']} of the sampled configurations; the rank "
        f"correlation of the two tools' step times over the sample is "
        f"{b['step_time_rank_correlation']:.3f}."
    )


def bench_speed() -> str:
    b = load("benchmarks/results_cpu.json")
    by = b["configs_per_s_by_batch"]
    gb, g1 = b["grad_over_eval_batch"], b["grad_over_eval_single"]
    rows = [
        ["one eager call (no jit)", sec(b["eager_s"]["median"])],
        ["jit compile of one configuration / of the batched call",
         f"{sec(b['jit_compile_s'])} / {sec(b['vmap_compile_s'])}"],
        ["configs/s at one vmapped call of " + " / ".join(f"{int(k):,}" for k in by),
         " / ".join(rate(v) for v in by.values())],
        [f"gradient cost / evaluation cost, vmapped batch of {gb['batch']:,} "
         "(wall time; median of interleaved pairs of 20 calls each)",
         "**" + spread(gb) + "**"],
        ["the same in CPU time (all threads)", spread(b["grad_over_eval_batch_cpu"])],
        ["gradient cost / evaluation cost, one configuration", spread(g1)],
        [f"gradient of the step time w.r.t. all {b['hardware_leaves']} hardware "
         "leaves (Smooth, jitted; compile)",
         f"{sec(b['grad_all_hardware_leaves_s']['median'])} "
         f"({sec(b['grad_all_hardware_leaves_compile_s'])})"],
    ]  # fmt: skip
    return table(["what (same job as above, Exact, float32)", "result"], rows, "lr")


def bench_demo() -> str:
    d = load("experiments/demo_gpt3_175b_dgx_h100/results.json")
    s = d["sensitivity"]
    return (
        f"`make demo`'s sensitivity analysis ({s['leaves']} elasticities of the step "
        f"time from one backward pass, compile included) took "
        f"{s['seconds_incl_compile']:.2f} s on `{d['device']}` "
        f"({d['machine']['cpus']} cores, jax {d['machine']['jax']}), as stored in "
        "`experiments/demo_gpt3_175b_dgx_h100/results.json`."
    )


def bench_optimizer() -> str:
    o = load("benchmarks/optimizer_results_cpu.json")
    q, su = o["optimizer_quality"], o["setup"]
    n = q["scenarios"]
    gc = q["gradient_cost"]
    rows = [
        ["scenarios where `optimize` beats random search at equal cost, same start",
         f"**{q['optimize_beats_random']} / {n}** "
         f"({pct(q['share_optimize_beats_random'], 0)})", "≥ 90%"],
        ["scenarios where `optimize` is within 1% of the reference optimum",
         f"**{q['optimize_within_1pct_of_reference']} / "
         f"{q['scenarios_with_reference']}** (largest gap "
         f"{pct(q['max_gap_optimize'], 2)})", "≥ 90%"],
        ["mean gap to the reference: `optimize` / random search / 16-point grid",
         f"{pct(q['mean_gap_optimize'], 2)} / {pct(q['mean_gap_random'], 2)} / "
         f"{pct(q['mean_gap_grid'], 2)}", ""],
        ["scenarios where a method beat the reference", str(q["reference_beaten"]),
         "0"],
        ["largest gain of the reference's second refinement round",
         pct(q["max_second_round_gain"], 3), "≈ 0"],
        ["gradient step cost in Exact evaluations (measured per scenario)",
         f"median {gc['median']:.2f} (min {gc['min']:.2f}, max {gc['max']:.2f})", ""],
        ["`optimize` cost / 16-point grid cost (evaluation equivalents, largest)",
         pct(q["optimize_evaluations_share_of_grid"], 2), ""],
        ["`optimize` time per scenario after compilation (median)",
         sec(q["median_optimize_s_after_compile"]), ""],
    ]  # fmt: skip
    setup = (
        f"{n} scenarios = {len(su['jobs'])} jobs ({', '.join(su['jobs'])}) × "
        f"{len(su['objectives'])} objectives ({', '.join(su['objectives'])}) × "
        f"{len(su['budget_sets'])} budget sets ({', '.join(su['budget_sets'])}); "
        f"design space {', '.join(f'`{k}` {v[0]:.3g}–{v[1]:.3g}' for k, v in su['vary'].items())}"  # noqa: E501
        f" (log scale) and every valid mapping of the job. `optimize`: "
        f"{su['starts']} starts per mapping, {su['steps']} steps, last "
        f"{su['tail']} iterates re-scored."
    )
    return table(["what", "result", "target"], rows, "lrr") + "\n\n" + setup


def bench_optimizer_rows() -> str:
    o = load("benchmarks/optimizer_results_cpu.json")
    rows = []
    for r in o["optimizer_quality"]["rows"]:
        g = r.get("gaps", {})
        rows.append([
            r["model"], r["objective"], r["budgets"], f"{r['reference']:.5g}",
            pct(g.get("optimize"), 2), pct(g.get("random"), 2), pct(g.get("grid"), 2),
            f"{r['gradient_cost']:.2f}", f"{r['optimize_evaluations']:,}",
        ])  # fmt: skip
    return table(
        ["job", "objective", "budgets", "reference", "gap: optimize", "random",
         "grid 16", "gradient cost", "evaluations (each)"], rows, "lllrrrrrr",
    )  # fmt: skip


def bench_530b() -> str:
    m = load("benchmarks/optimizer_results_cpu.json")["mapping_search_530b"]
    b = m["best"]
    rows = [
        ["valid mappings × recompute policies", f"{m['configurations']}"],
        ["enumerate them (Python, `check_mapping` on each)", sec(m["enumerate_s"])],
        ["evaluate all of them (one vmapped call per policy, after compile)",
         f"**{sec(m['evaluate_s'])}**"],
        ["**search total**", f"**{sec(m['search_s'])}**"],
        ["compile (3 policies)", sec(m["compile_s"])],
        ["the same evaluations one jitted configuration at a time",
         sec(m["one_at_a_time_s"])],
        ["optimum", f"tp {b['tp']} · pp {b['pp']} · dp {b['dp']} · vpp {b['vpp']} · "
         f"microbatch {b['microbatch']}, recompute {b['recompute']}, "
         f"{b['step_time_s']:.3g} s/step ("
         + ("same as" if m["same_optimum_as_loop"] else "DIFFERENT from")
         + " the one-at-a-time search)"],
    ]  # fmt: skip
    return table(["what", "result"], rows, "lr")


# ---- VALIDATION.md --------------------------------------------------------------


def _summary(rep: dict) -> str:
    return (
        f"**rows {rep['rows']}, predicted {rep['rows_predicted']} "
        f"({pct(rep['rows_predicted'] / rep['rows'])}), MAPE {pct(rep['mape'])}, "
        f"median APE {pct(rep['median_ape'])}**"
    )


def _ape_table(title, groups) -> str:
    rows = []
    for key, apes in sorted(groups.items()):
        apes = sorted(apes)
        n = len(apes)
        med = (apes[(n - 1) // 2] + apes[n // 2]) / 2
        rows.append([key, n, pct(sum(apes) / n), pct(med), pct(apes[-1])])
    return table([title, "rows", "MAPE", "median APE", "max APE"], rows)


def _in_sample(kind: str, moe: bool = False) -> str:
    rep = load(f"experiments/validation_report/report_{kind}.json")
    done = [r for r in rep["results"] if "ape" in r]
    by = defaultdict(lambda: defaultdict(list))
    for r in done:
        src = r["short_source"]
        by["source"][src].append(r["ape"])
        by["source, GPU"][f"{src} · {r['hardware']}"].append(r["ape"])
        by["GPU"][r["hardware"]].append(r["ape"])
        by["model family"][r["family"]].append(r["ape"])
        if r.get("moe"):
            by["MoE model"][r["model"]].append(r["ape"])
            by["MoE model, GPU"][f"{r['model']} · {r['hardware']}"].append(r["ape"])
    if moe:
        m = rep["moe"]
        head = (
            f"**{m['rows']} MoE rows, MAPE {pct(m['mape'])}, median APE "
            f"{pct(m['median_ape'])}**"
        )
        parts = [head] + [_ape_table(t, by[t]) for t in ("MoE model", "MoE model, GPU")]
        return "\n\n".join(parts)
    parts = [_summary(rep)]
    parts += [_ape_table(t, by[t]) for t in ("source", "source, GPU", "GPU",
                                              "model family")]  # fmt: skip
    worst = sorted(done, key=lambda r: -r["ape"])[:15]
    parts.append(table(
        ["row", "model", "GPU", "metric", "measured", "predicted", "APE"],
        [[r["row"], r["model_name"], r["hardware"], r["metric"], f"{r['measured']:.4g}",
          f"{r['predicted']:.4g}", pct(r["ape"])] for r in worst],
        "rlllrrr",
    ))  # fmt: skip
    return "\n\n".join(parts)


def excluded_rows(kind: str = "inference") -> str:
    """The rows scored but excluded from the headline MAPE, each with its reason."""
    rep = load(f"experiments/validation_report/report_{kind}.json")
    out = [r for r in rep["results"] if r.get("excluded")]
    head = (
        f"**{len(out)} of {rep['rows']} rows excluded; MAPE {pct(rep['mape'])} "
        f"without them, {pct(rep['mape_with_excluded'])} with them**"
    )
    body = table(
        ["row", "model", "metric", "measured", "predicted", "APE", "why excluded"],
        [[r["row"], r["model_name"], r["metric"], f"{r['measured']:.4g}",
          f"{r['predicted']:.4g}", pct(r["ape"]), r["excluded"]]
         for r in sorted(out, key=lambda r: r["row"])],
        "lllrrrl",
    )  # fmt: skip
    return head + "\n\n" + body


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}%".replace("-", "−")


def load_simulation() -> str:
    """The load model's means against the engine simulation (load_vs_simulation)."""
    res = load("experiments/load_vs_simulation/results.json")
    cap = res["capacity"]
    rows = [
        [
            f"Poisson {r['rate']:.1f} req/s ({100 * r['share']:.0f}% of the "
            f"modelled capacity, {cap:.1f} req/s)",
            _signed(r["ttft"]),
            _signed(r["tpot"]),
            _signed(r["e2e"]),
            "",
        ]
        for r in res["open_loop"]
    ]
    for r in res["closed_loop"]:
        what = f"{r['clients']} clients (output lengths ±50%)"
        if r["saturated"]:
            what = (
                f"{r['clients']} clients (> {res['setup']['slots']} slots: "
                f"{r['queue_max']} queue)"
            )
        rows.append(
            [
                what,
                _signed(r["ttft"]),
                _signed(r["tpot"]),
                _signed(r["e2e"]),
                _signed(r["throughput"]),
            ]
        )
    head = table(["load", "TTFT", "TPOT", "e2e", "throughput"], rows, "lrrrr")
    edge = table(
        [
            "rate (share of the modelled capacity)",
            "simulated queue, max",
            "simulated throughput",
        ],
        [
            [
                f"{r['rate']:.1f} req/s ({100 * r['share']:.0f}%)",
                r["queue_max"],
                f"{r['throughput']:.2f} req/s",
            ]
            for r in res["around_capacity"]
        ],
        "lrr",
    )
    note = (
        f"`dp.max_request_rate` {cap:.2f} req/s; the simulated replica's throughput "
        f"stops following the rate at {res['simulated_capacity']:.2f} req/s "
        f"({_signed(cap / res['simulated_capacity'] - 1.0)}); "
        f"{res['setup']['requests']} requests per open-loop point."
    )
    return "\n\n".join([head, edge, note])  # fmt: skip


def _triple(st: dict) -> str:
    return (f"{pct(st['mape'])} / {pct(st['median_ape'], 0)} / "
            f"{st['median_ratio']:.2f}")  # fmt: skip


def engines() -> str:
    """Engine profiles fitted on the AIConfigurator rows (calibrate_engines)."""
    res = load("experiments/calibrate_engines/results.json")
    names = {"trtllm": "TensorRT-LLM", "vllm": "vLLM", "sglang": "SGLang",
             "global": "global level"}  # fmt: skip
    leaves = table(
        ["engine", "serve_overhead", "kernel_overhead"],
        [[names[k], f"{1e3 * v['host.serve_overhead']:.3f} ms",
          f"{1e6 * v['chip.kernel_overhead']:.2f} µs"]
         for k, v in sorted(res["values"].items(), key=lambda kv: kv[0] == "global")],
        "lrr",
    )  # fmt: skip
    runs = [("before the fit (the stacks as they were)", res["before"]),
            ("in sample", res["in_sample"]),
            ("leave one device out", res["leave_one_device_out"]),
            ("leave one engine out", res["leave_one_engine_out"])]  # fmt: skip
    head = table(
        ["", "rows", "TTFT", "TPOT"],
        [[what, r["all"]["rows"], _triple(r["all"]["ttft"]), _triple(r["all"]["tpot"])]
         for what, r in runs],
        "lrll",
    )  # fmt: skip
    groups = []
    for by, label in (("by_engine", "engine"), ("by_system", "device"),
                      ("by_kind", "model kind"),
                      ("by_concurrency", "clients")):  # fmt: skip
        for key, r in sorted(res["leave_one_device_out"][by].items()):
            ins = res["in_sample"][by][key]
            groups.append([f"{label}: {key}", r["rows"], _triple(ins["ttft"]),
                           _triple(ins["tpot"]), _triple(r["tpot"])])  # fmt: skip
    detail = table(
        ["group", "rows", "TTFT in sample", "TPOT in sample",
         "TPOT leave one device out"],
        groups, "lrlll",
    )  # fmt: skip
    note = (f"MAPE / median APE / median predicted÷measured; {res['rows_fitted']} "
            f"aggregated rows fitted of {res['rows']}; leaves on a bound: "
            f"{len(res['at_bound'])}.")  # fmt: skip
    return "\n\n".join([leaves, head, detail, note])


def _heldout(rel: str, column: str) -> str:
    res = load(rel)
    rows = res["rows"]
    out = [
        f"{len(rows)} rows fitted and scored ({res['skipped']} rows of the CSV "
        f"not fitted: see the text), {res['steps']} Adam steps per fit."
    ]
    for title, key in (("source", "source"), ("GPU", "gpu"), ("model family",
                                                                "family")):  # fmt: skip
        groups = defaultdict(list)
        for r in rows:
            groups[r[key]].append(r)
        body = []
        for name, rs in [*sorted(groups.items()), ("**all**", rows)]:
            cols = ("uncalibrated", "heldout", "train")
            m = {c: sum(r[c] for r in rs) / len(rs) for c in cols}
            body.append([name[:60], len(rs), pct(m["uncalibrated"]),
                         pct(m["heldout"]), pct(m["train"])])  # fmt: skip
        out.append(table([title, "rows", "uncalibrated", column, "in-sample"], body))
    return "\n\n".join(out)


HIER = "experiments/calibrate_hierarchy/results.json"
SCHEME = {"device": "leave one device out", "source": "leave one source out",
          "stack": "leave one stack out"}  # fmt: skip


def _hier_groups(res: dict, by: str, schemes: list[str]) -> str:
    """One table: rows, uncalibrated, each scheme's held-out MAPE, in-sample."""
    rows = res["per_row"]
    key = {"device": lambda r: r["device"], "family": lambda r: (r["families"] or
           ["-"])[0], "kind": lambda r: r["kind"], "stack": lambda r: r["stack"],
           "source": lambda r: r["source"][:60]}[by]  # fmt: skip
    groups = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    body = []
    for name, rs in [*sorted(groups.items()), ("**all**", rows)]:
        line = [name, len(rs), pct(sum(r["uncalibrated"] for r in rs) / len(rs))]
        for s in schemes:
            vals = [r[f"heldout_{s}"] for r in rs if r.get(f"heldout_{s}") is not None]
            line.append(pct(sum(vals) / len(vals)) if vals else "–")
        line.append(pct(sum(r["train"] for r in rs) / len(rs)))
        body.append(line)
    head = [by, "rows", "uncalibrated", *(SCHEME[s] for s in schemes), "in-sample"]
    return table(head, body)


def hierarchy_headline(kind: str = "training") -> str:
    res = load(HIER)[kind]
    schemes = [s for s in ("device", "source", "stack") if s in res["heldout"]]
    parts = [
        f"**{res['rows']} rows** ({res['refused']} refused), {load(HIER)['steps']} Adam"
        " steps; "
        + "; ".join(
            f"{SCHEME[s]}: **{pct(res['heldout'][s]['mape'])}** over "
            f"{res['heldout'][s]['rows']} rows"
            for s in schemes
        )
        + f"; in-sample {pct(res['train_mape'])}; uncalibrated (priors) "
        f"{pct(res['uncalibrated_mape'])}."
    ]
    bys = ("device", "family", "kind", "stack") if kind == "training" else (
        "device", "stack", "source")  # fmt: skip
    parts += [_hier_groups(res, by, schemes) for by in bys]
    return "\n\n".join(parts)


def hierarchy_levels(kind: str = "training") -> str:
    res = load(HIER)[kind]
    paths = res["paths"]
    short = [p.split(".", 1)[1] if p.startswith(("chip.", "host.")) else p
             for p in paths]  # fmt: skip
    body = [["**global**", *(f"{res['values']['global'][p]:.4g}" for p in paths)]]
    for level in ("families", "devices", "stacks"):
        for key, leaves in sorted(res["values"][level].items()):
            body.append([f"{level[:-1] if level != 'families' else 'family'}: {key}",
                         *(f"{leaves[p]:.4g}" if p in leaves else "·"
                           for p in paths)])  # fmt: skip
    out = [table(["level", *short], body)]
    bound = res["at_bound"]
    out.append(
        "Leaves on a bound: "
        + (
            "; ".join(
                f"{b['level']} {b['key']} `{b['path']}` ({b['bound']}, "
                f"{b['value']:.4g})"
                for b in bound
            )  # fmt: skip
            if bound
            else "none."
        )
    )
    return "\n\n".join(out)


def _mape(rel: str, column: str = "heldout") -> float:
    rows = load(rel)["rows"]
    return sum(r[column] for r in rows) / len(rows)


def peers() -> str:
    p = load("experiments/validation_report/peers.json")
    h = "experiments/calibrate_heldout/"
    serve = _mape(h + "results_inference.json")
    kfold = _mape(h + "results_training_kfold.json")
    source = _mape(h + "results_training.json")
    insample = _mape(h + "results_training.json", "train")
    n_s = len(load(h + "results_inference.json")["rows"])
    n_t = len(load(h + "results_training.json")["rows"])
    rows = [[f"{r['tool']} ({r['cite']})", r["compared"], r["accuracy"]]
            for r in p["peers"]]  # fmt: skip
    rows += [
        ["**diffperf, serving**", f"{n_s} rows not seen by the fit",
         f"**{pct(serve)} MAPE** (target ≤ 15%: "
         f"{'met' if serve <= 0.15 else 'not met'})"],
        ["**diffperf, training**", f"{n_t} rows not seen by the fit",
         f"**{pct(kfold)} MAPE** 5-fold (target ≤ 10%: "
         f"{'met' if kfold <= 0.10 else 'not met'}); **{pct(source)}** "
         f"leave-one-source-out (whole software stacks unseen; "
         f"{'met' if source <= 0.10 else 'not met'}); in-sample {pct(insample)}"],
    ]  # fmt: skip
    return table(["tool", "what is compared", "accuracy"], rows, "lll")


def fidelity() -> str:
    f = load("experiments/calibrate_fidelity/results.json")
    rows = []
    for tier in ("roofline", "detailed"):
        t = f[tier]
        sp = t["speed"]
        rows.append([
            tier, f"{pct(t['training']['mape'])} ({t['training']['rows_predicted']} "
            "rows)", pct(t["training"]["median_ape"]),
            f"{pct(t['inference']['mape'])} ({t['inference']['rows_predicted']} rows)",
            f"{rate(sp['train_step']['evaluations_per_s'])} "
            f"({rate(sp['train_step']['evaluations_per_cpu_s'])})",
            f"{rate(sp['serve']['evaluations_per_s'])} "
            f"({rate(sp['serve']['evaluations_per_cpu_s'])})",
            f"{sec(sp['train_step']['compile_s'])} / {sec(sp['serve']['compile_s'])}",
        ])  # fmt: skip
    return table(
        ["tier", "training MAPE", "median APE", "serving MAPE",
         "train_step evals/s (per CPU-s)", "serve evals/s (per CPU-s)", "compile"],
        rows,
    )  # fmt: skip


H = "experiments/calibrate_heldout/"
BLOCKS = {
    "BENCHMARKS.md": {
        "bench-machine": bench_machine,
        "bench-peer": bench_peer,
        "bench-speed": bench_speed,
        "bench-demo": bench_demo,
        "bench-optimizer": bench_optimizer,
        "bench-optimizer-rows": bench_optimizer_rows,
        "bench-530b": bench_530b,
    },
    "VALIDATION.md": {
        "training-in-sample": lambda: _in_sample("training"),
        "training-moe": lambda: _in_sample("training", moe=True),
        "inference-in-sample": lambda: _in_sample("inference"),
        "inference-excluded": excluded_rows,
        "heldout-training-source": lambda: _heldout(
            H + "results_training.json", "held-out (source)"
        ),
        "heldout-training-kfold": lambda: _heldout(
            H + "results_training_kfold.json", "held-out (5-fold)"
        ),
        "heldout-training-kfold-h100": lambda: _heldout(
            H + "results_training_kfold_h100_sxm.json", "held-out (5-fold)"
        ),
        "heldout-inference": lambda: _heldout(H + "results_inference.json", "held-out"),
        "peers": peers,
        "load-simulation": load_simulation,
        "engines": engines,
        "fidelity": fidelity,
        "hierarchy-training": hierarchy_headline,
        "hierarchy-training-levels": hierarchy_levels,
        "hierarchy-serving": lambda: hierarchy_headline("serving"),
        "hierarchy-serving-levels": lambda: hierarchy_levels("serving"),
    },
}


def render(text: str, blocks: dict) -> tuple[str, list[str]]:
    """(text with every known block regenerated, names of the blocks found)."""
    found = []

    def sub(m):
        name = m.group(2)
        if name not in blocks:
            raise SystemExit(f"unknown report block {name!r}")
        found.append(name)
        return m.group(1) + blocks[name]().rstrip("\n") + "\n" + m.group(4)

    return BLOCK.sub(sub, text), found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="only compare, exit 1 if stale"
    )
    args = ap.parse_args(argv)
    stale = []
    for doc, blocks in BLOCKS.items():
        path = ROOT / doc
        text = path.read_text()
        new, found = render(text, blocks)
        missing = sorted(set(blocks) - set(found))
        if missing:
            print(f"{doc}: no marker for {missing}", file=sys.stderr)
            stale.append(doc)
        if new != text:
            stale.append(doc)
            if not args.check:
                path.write_text(new)
                print(f"rewrote the generated tables of {doc}")
    if args.check and stale:
        print(f"stale: {sorted(set(stale))} (run `make report`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
