"""Figures (matplotlib, Agg backend): the only plotting module of the package."""

from pathlib import Path

__all__ = ["tornado", "breakdown_bars", "roofline", "retrodict_balance"]


def tornado(rows: list[tuple[str, float, float]], nominal: float, *, title: str,
            xlabel: str, path: str | Path) -> Path:  # fmt: skip
    """A tornado chart: per (name, low, high), a bar from low to high about nominal.

    Rows are drawn in the given order, first at the top. Returns the written path.
    """
    plt = _pyplot()
    path = Path(path)
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 0.4 * n + 1.5))
    for i, (_, lo, hi) in enumerate(rows):
        y = n - 1 - i
        ax.barh(y, lo - nominal, left=nominal, color="tab:blue", alpha=0.8)
        ax.barh(y, hi - nominal, left=nominal, color="tab:orange", alpha=0.8)
    ax.axvline(nominal, color="black", lw=1)
    ax.set_yticks(range(n), [r[0] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(["nominal", "parameter − range", "parameter + range"], fontsize=8,
              loc="lower right")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def breakdown_bars(
    columns: list[tuple[str, dict[str, float]]],
    *,
    title: str,
    path: str | Path,
    unit: float = 1e-3,
    unit_name: str = "ms",
    shares: bool = False,
) -> Path:
    """Stacked bars of per-term seconds, one bar per (label, {term: seconds}) column.

    Terms keep the order of their first appearance and one colour each across bars;
    zero terms are left out. Seconds are divided by `unit` (default ms). With `shares`,
    each bar is drawn as shares of its own total (for columns of very different
    size, such as a prefill and a decode step) and the total is written above it.
    """
    plt = _pyplot()
    path = Path(path)
    names: list[str] = []
    for _, terms in columns:
        names += [k for k, v in terms.items() if v > 0 and k not in names]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(columns) + 3.5), 5.0))
    labelled: set[str] = set()
    for i, (_, terms) in enumerate(columns):
        total = sum(terms.values())
        bottom = 0.0
        for j, name in enumerate(names):
            sec = terms.get(name, 0.0)
            if sec <= 0:
                continue
            h = sec / total * 100.0 if shares else sec / unit
            label = None if name in labelled else name
            labelled.add(name)
            ax.bar(i, h, bottom=bottom, color=cmap(j % 20), width=0.6, label=label)
            bottom += h
        ax.text(
            i,
            bottom,
            f"{total / unit:.4g} {unit_name}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=8)
    ax.set_ylabel("share of the step [%]" if shares else f"time [{unit_name}]")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def roofline(
    points: list[dict], ceilings: dict, *, title: str, path: str | Path
) -> Path:
    """A log-log roofline: FLOP/s against arithmetic intensity [FLOP/B].

    Ceilings: one horizontal line per math dtype's peak (the model's math dtype bold),
    the HBM diagonal (datasheet, and achievable β·η dashed) and the SRAM diagonal.
    Points (`roofline_points` rows) are drawn at (intensity, achieved FLOP/s), one
    colour and marker per phase, filled when compute-bound and hollow when
    memory-bound, and labelled with their op names.
    """
    import numpy as np

    plt = _pyplot()
    path = Path(path)
    peaks = ceilings["peak_flops_per_s"]
    top = max(peaks.values())
    xs = [p["intensity"] for p in points] or [1.0]
    lo = min(min(xs), 0.1 * top / ceilings["sram_bandwidth"]) / 3.0
    hi = max(max(xs), 10.0 * top / ceilings["hbm_bandwidth"]) * 3.0
    x = np.geomspace(lo, hi, 256)
    fig, ax = plt.subplots(figsize=(9, 6))
    hbm = ceilings["hbm_bandwidth"]
    by_peak: dict[float, list[str]] = {}
    for dtype, peak in peaks.items():
        by_peak.setdefault(peak, []).append(dtype)
    for peak, dtypes in sorted(by_peak.items()):
        bold = ceilings.get("math_dtype") in dtypes
        ax.plot(
            x,
            np.minimum(peak, x * hbm),
            color="black" if bold else "grey",
            lw=2.0 if bold else 0.8,
            alpha=1.0 if bold else 0.7,
        )
        ax.text(
            hi,
            peak,
            f" {'/'.join(dtypes)} {peak / 1e12:.4g} TFLOP/s",
            va="center",
            fontsize=7,
        )
    achievable = ceilings["hbm_bandwidth_achievable"]
    ax.plot(
        x,
        x * achievable,
        "k--",
        lw=0.8,
        label=f"HBM achievable {achievable / 1e12:.3g} TB/s",
    )
    ax.plot(
        x,
        np.minimum(top, x * ceilings["sram_bandwidth"]),
        ":",
        color="tab:green",
        lw=1.0,
        label=f"SRAM {ceilings['sram_bandwidth'] / 1e12:.3g} TB/s",
    )
    markers = {"train": "s", "prefill": "o", "decode": "^"}
    colours = {"train": "tab:purple", "prefill": "tab:red", "decode": "tab:blue"}
    offsets = {"train": (4, 6), "prefill": (4, -9), "decode": (4, 2)}
    seen = set()
    for p in points:
        phase, bound = p["phase"], p["bound"]
        colour = colours.get(phase, "tab:grey")
        filled = bound == "compute"
        key = (phase, bound)
        ax.scatter(
            p["intensity"],
            p["achieved_flops_per_s"],
            s=40,
            marker=markers.get(phase, "o"),
            zorder=3,
            linewidths=1.0,
            facecolor=colour if filled else "none",
            edgecolor=colour,
            label=None if key in seen else f"{phase} ({bound}-bound)",
        )
        seen.add(key)
        ax.annotate(
            p["op"],
            (p["intensity"], p["achieved_flops_per_s"]),
            fontsize=6,
            color=colour,
            xytext=offsets.get(phase, (4, 2)),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi * 4)
    ax.set_ylim(min([p["achieved_flops_per_s"] for p in points] + [top]) / 5, top * 2)
    ax.set_xlabel("arithmetic intensity [FLOP/B]")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


RETRODICT_KEYS = (
    "FLOP/s per B/s of HBM",
    "SRAM MB per PFLOP/s",
    "scale-up B/s per kFLOP",
    "HBM capacity [GB]",
    "peak bf16 [PFLOP/s]",
    "HBM bandwidth [TB/s]",
)


def retrodict_balance(results: dict, *, reference: str, start: str, title: str,
                      path: str | Path) -> Path:  # fmt: skip
    """Bars of a `retrodict` result: each design's balance over the reference's.

    One group per balance figure (FLOP/s per B/s of HBM, SRAM per FLOP/s, scale-up
    bandwidth per FLOP/s, HBM capacity, peak, HBM bandwidth), one bar per design (best
    for each job, the robust one, the start chip), on a log axis with the ±25% band.
    Returns the written path.
    """
    plt = _pyplot()
    path = Path(path)
    ref = results["reference"]
    word = {"train": "training", "serve": "serving"}
    rows = {f"best for {word.get(n, n)}": j["best"]
            for n, j in results["jobs"].items()}  # fmt: skip
    w = results["config"]["mix"].values()
    mix = "/".join(f"{100 * x / sum(w):.0f}" for x in w)
    rows[f"robust ({mix} mix)"] = results["robust"]["design"]
    rows[start] = results["start"]
    keys = list(RETRODICT_KEYS)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    for i, (lab, d) in enumerate(rows.items()):
        ratio = [d[k] / ref[k] for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], ratio, width, label=lab)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhspan(0.75, 1.25, color="tab:green", alpha=0.12,
               label=f"within 25% of {reference}")  # fmt: skip
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))], keys, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel(f"design / {reference}")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
