"""Figures (matplotlib, Agg backend): the only plotting module of the package."""

from pathlib import Path

__all__ = ["tornado"]


def tornado(rows: list[tuple[str, float, float]], nominal: float, *, title: str,
            xlabel: str, path: str | Path) -> Path:  # fmt: skip
    """A tornado chart: per (name, low, high), a bar from low to high about nominal.

    Rows are drawn in the given order, first at the top. Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
