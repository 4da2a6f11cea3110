"""`make report`: BENCHMARKS.md and VALIDATION.md tables are what the committed JSON
gives (benchmarks/report.py reads JSON only: no model runs)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks/report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_committed_tables_equal_the_generated_ones():
    for doc, blocks in report.BLOCKS.items():
        text = (ROOT / doc).read_text()
        new, found = report.render(text, blocks)
        assert sorted(found) == sorted(blocks), f"{doc}: markers {found}"
        assert new == text, f"{doc} is stale: run `make report`"


def test_render_replaces_only_what_is_between_the_markers():
    text = "prose 1\n<!-- report:x -->\nold table\n<!-- /report:x -->\nprose 2\n"
    new, found = report.render(text, {"x": lambda: "| a |\n|---|\n| 1 |"})
    assert found == ["x"]
    assert new == (
        "prose 1\n<!-- report:x -->\n| a |\n|---|\n| 1 |\n<!-- /report:x -->\nprose 2\n"
    )


def test_spread_and_units():
    st = dict(median=2.0, min=1.5, max=3.0, q1=1.8, q3=2.4, n=7)
    assert report.spread(st) == "2.00 (min 1.50, max 3.00; IQR 1.80–2.40; n = 7)"
    assert report.rate(4.5e6) == "4.5 M" and report.rate(8700.0) == "8.7 k"
    assert report.sec(61e-6) == "61 µs" and report.pct(0.0704) == "7.0%"
