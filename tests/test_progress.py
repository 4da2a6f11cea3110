"""Progress bars: drawn on a terminal, silent under --json and in pipes."""

import argparse
import sys

from diffperf.cli.progress import progress, wanted


def test_quiet_under_json_and_without_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not wanted(argparse.Namespace(json=True))
    assert wanted(argparse.Namespace(json=False))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not wanted(argparse.Namespace(json=False))
    with progress(argparse.Namespace(json=False), "evaluating", total=3) as update:
        update(1)
        update(completed=3, label="done")
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress(argparse.Namespace(json=False), "calibrating", total=4) as update:
        for _ in range(4):
            update(1)
    err = capsys.readouterr().err
    assert "calibrating" in err and "4/4" in err
