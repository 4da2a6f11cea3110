"""Transfer: a device rebuilt from its datasheet and its family, its rows withheld.

experiments/calibrate_hierarchy/results.json holds the hierarchical fit of every
training row and, per leave-one-device-out fold, the values every level took when that
device's rows were withheld. Here B200 is rebuilt from its datasheet file with the
Blackwell family's and the stacks' values of its own fold (so nothing fitted to a B200
row), its rows are predicted through the validation path, and the error is compared
with the fully fitted B200 (the committed files).
"""

import json
from pathlib import Path

import pytest

import diffperf as dp
from diffperf.core.paths import set_leaf
from diffperf.validation.training import predict_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "calibrate_hierarchy" / "results.json"
DEVICE = "b200"
GAP = 0.10
"""Allowed rise of the MAPE when the device's rows are withheld. Issue #14 asks for 3
points; measured on 2026-12-02: 18.6% withheld vs 9.9% fitted (8.7 points); after the
robust refit with the Megatron-Bridge stack 18.5% vs 9.1% (9.4 points: the fitted side
improved more), so the issue stays open and this guards the figure from getting
worse."""


def _fold(res: dict, name: str) -> dict:
    for fold in res["heldout"]["device"]["folds"]:
        if fold["name"] == name:
            return fold["values"]
    raise AssertionError(f"no leave-one-device-out fold for {name}")


@pytest.fixture(scope="module")
def b200_rows():
    res = json.loads(RESULTS.read_text())["training"]
    _, csv_rows = dp.read_measurements(ROOT / "data" / "training_calibration.csv")
    mine = [r for r in res["per_row"] if r["device"] == DEVICE]
    assert len(mine) >= 10
    return res, [(csv_rows[r["row"]], r) for r in mine if r["csv"].startswith("train")]


def _datasheet_cluster(gpu: str, stack: str, values: dict, paths: list[str]):
    """The device from its datasheet file with every fitted leaf from `values`:
    hardware leaves from its (deepest) family, software leaves from its stack."""
    cluster = dp.load_hardware(gpu, stack=stack)
    family = values["families"][dp.family_chain(DEVICE)[-1]]
    for p in paths:
        level = values["stacks"][stack] if p in dp.HIERARCHY_STACK else family
        cluster = set_leaf(cluster, p, level[p])
    return cluster


def test_withheld_device_is_predicted_from_its_family(b200_rows):
    res, rows = b200_rows
    values = _fold(res, DEVICE)
    # its residual saw none of its rows: the device level equals its family's
    family = values["families"][dp.family_chain(DEVICE)[-1]]
    for p, v in values["devices"][DEVICE].items():
        assert v == pytest.approx(family[p], rel=1e-6), p
    apes, fitted = [], []
    for csv, rec in rows:
        cluster = _datasheet_cluster(csv["gpu"], rec["stack"], values, res["paths"])
        apes.append(predict_row(csv, hardware_override=cluster)["ape"])
        fitted.append(predict_row(csv)["ape"])  # the committed, fully fitted files
    heldout, full = sum(apes) / len(apes), sum(fitted) / len(fitted)
    # the rebuilt device reproduces the experiment's own held-out figure ...
    assert heldout == pytest.approx(
        res["heldout"]["device"]["by_device"][DEVICE]["mape"], abs=0.01
    )
    # ... and stays within GAP of the fully fitted device
    assert heldout <= full + GAP, (heldout, full)


def test_leaves_on_a_bound_are_explained():
    """Issue #14: a committed fit has no leaf on a bound without a note in
    VALIDATION.md (in its hand-written section, not only in a generated table)."""
    import re

    res = json.loads(RESULTS.read_text())
    text = (ROOT / "VALIDATION.md").read_text()
    prose = re.sub(r"<!-- report:([\w-]+) -->.*?<!-- /report:\1 -->", "", text,
                   flags=re.S)  # fmt: skip
    start = prose.index("### Leaves on a bound")
    section = prose[start : prose.index("\n## ", start)]
    for kind in ("training", "serving"):
        for b in res[kind]["at_bound"]:
            leaf = b["path"].split(".")[-1]
            assert f"{b['key']}" in section and leaf in section, (kind, b)
