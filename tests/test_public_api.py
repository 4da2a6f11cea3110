"""The public API (`dp.*`): what the docs name exists, and the helpers it adds work."""

import re
from pathlib import Path

import pytest

import diffperf as dp

ROOT = Path(__file__).resolve().parents[1]


def test_every_dp_name_in_the_docs_exists():
    """`dp.name` in README.md and ARCHITECTURE.md is an attribute of the package."""
    missing = set()
    for doc in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / doc).read_text()
        for name in re.findall(r"\bdp\.([A-Za-z_]\w*)", text):
            if not hasattr(dp, name):
                missing.add(f"{doc}: dp.{name}")
    assert not missing, sorted(missing)


def test_all_lists_only_existing_names_once():
    assert len(dp.__all__) == len(set(dp.__all__))
    assert [n for n in dp.__all__ if not hasattr(dp, n)] == []


def test_patch_toml_rewrites_values_and_adds_inherited_keys(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text(
        "[meta]\nschema = 1\n\n[chip]\n"
        "matmul_efficiency = 0.7  # prior\nflops_bf16 = 1e15  # datasheet\n"
    )
    dp.patch_toml(
        path,
        {"chip.matmul_efficiency": 0.61234, "host.step_overhead": 0.0123},
        "test fit",
    )
    lines = path.read_text().splitlines()
    assert "matmul_efficiency = 0.6123  # calibrated: test fit" in lines
    assert "flops_bf16 = 1e15  # datasheet" in lines  # untouched
    assert lines[-2:] == ["[host]", "step_overhead = 0.0123  # calibrated: test fit"]


def test_patch_toml_rejects_a_path_that_is_not_table_key(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text("[chip]\nx = 1\n")
    with pytest.raises(ValueError, match="'chip.a.b' must be 'table.key'"):
        dp.patch_toml(path, {"chip.a.b": 1.0}, "note")


def test_measured_rows_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind='serving' must be"):
        dp.measured_rows("serving", [])
