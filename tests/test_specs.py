"""Contract tests over every bundled hardware and workload spec, and spec loading
errors."""

import tomllib
from pathlib import Path

import numpy as np
import pytest

import diffperf as dp
from diffperf import io

ROOT = Path(__file__).resolve().parents[1]
HARDWARE = sorted((ROOT / "hardware").glob("*.toml"))
WORKLOADS = sorted((ROOT / "workloads").glob("*.toml"))


def test_there_are_specs():
    assert len(HARDWARE) >= 30 and len(WORKLOADS) >= 40


@pytest.mark.parametrize("path", HARDWARE, ids=lambda p: p.stem)
def test_every_hardware_spec_loads_with_provenance_and_sane_values(path):
    cluster = dp.load_hardware(path)
    meta = io.meta("hardware", path.stem)
    assert meta["schema"] == 1 and meta["source"] and meta["name"]
    chip = cluster.chip
    bf16 = float(chip.flops_bf16)
    assert 1e12 < bf16 < 1e17
    for dtype in ("fp8", "fp4", "int8"):
        v = float(chip.peak_flops(dtype))
        assert v == 0 or v >= bf16 * 0.99, dtype  # narrower dtypes are never slower
    assert 1e9 <= float(chip.hbm_capacity) <= 1e12
    assert 1e11 <= float(chip.hbm_bandwidth) <= 1e17
    assert 0 < float(chip.matmul_efficiency) <= 1
    assert float(cluster.scale_up.size) >= 1
    assert float(cluster.scale_out_bandwidth()) > 0
    assert float(cluster.host.chips_per_node) >= 1


def test_hardware_aliases_are_unique_and_resolve():
    seen = {}
    for path in HARDWARE:
        meta = tomllib.loads(path.read_text())["meta"]
        for alias in [path.stem, *meta.get("aliases", [])]:
            key = io.normalize(alias)
            assert seen.setdefault(key, path.stem) == path.stem, (alias, seen[key])
            assert dp.load_hardware(alias).name == path.stem


@pytest.mark.parametrize(
    "alias,stem",
    [
        ("H100-SXM-80GB", "h100_sxm"),
        ("A100-40GB", "a100_sxm4_40gb"),
        ("A100-80GB", "a100_sxm4_80gb"),
        ("A100-SXM4-80GB", "a100_sxm4_80gb"),
        ("V100 (DGX-2)", "dgx2_v100"),
        ("B200", "b200"),
        ("H100", "h100_sxm"),
        ("A100 (Selene, 80GB)", "a100_sxm4_80gb"),
        ("A100 (DGX-A100)", "dgx_a100_40gb"),
    ],
)
def test_data_gpu_names_resolve(alias, stem):
    assert dp.load_hardware(alias).name == stem


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.stem)
def test_every_workload_matches_its_published_parameter_count(path):
    model = dp.load_workload(path)
    meta = tomllib.loads(path.read_text())["meta"]
    assert meta["schema"] == 1 and meta["source"]
    published = meta["params"]
    # 3%: biases, padded vocabularies and position embeddings are not all modeled.
    np.testing.assert_allclose(float(model.params()), published, rtol=0.03)
    if "active_params" in meta:
        np.testing.assert_allclose(
            float(model.active_params()), meta["active_params"], rtol=0.05
        )


def test_workload_aliases_are_unique():
    seen = {}
    for path in WORKLOADS:
        meta = tomllib.loads(path.read_text())["meta"]
        for alias in [path.stem, *meta.get("aliases", [])]:
            key = io.normalize(alias)
            assert seen.setdefault(key, path.stem) == path.stem, (alias, seen[key])


def test_extends_inherits_and_overrides():
    base = dp.load_hardware("h100_sxm")
    dgx = dp.load_hardware("dgx_h100")
    assert float(dgx.chip.flops_bf16) == float(base.chip.flops_bf16)
    assert dgx.name == "dgx_h100"


# Datasheet figures of the specs added for published rows (issue #16), as the sources
# in each file's [meta] source print them: dense BF16 and FP8 peaks [FLOP/s], HBM
# bandwidth [B/s] and capacity [B], power [W], scale-up domain [chips].
ISSUE16_SPECS = [
    ("a100_pcie_40gb", 312e12, 0.0, 1.555e12, 42.95e9, 250.0, 8.0),
    ("a100_pcie_80gb", 312e12, 0.0, 1.935e12, 85.9e9, 300.0, 8.0),
    ("h100_nvl", 835.5e12, 1670.5e12, 3.9e12, 94e9, 400.0, 8.0),
    ("gh200", 989.4e12, 1978.9e12, 4.0e12, 96e9, 700.0, 1.0),
    ("gh200_144gb", 989.4e12, 1978.9e12, 4.9e12, 144e9, 700.0, 1.0),
    ("gh200_quad", 989.4e12, 1978.9e12, 4.0e12, 96e9, 550.0, 4.0),
    ("gh200_nvl2", 989.4e12, 1978.9e12, 4.9e12, 144e9, 700.0, 2.0),
    ("gh200_nvl32", 989.4e12, 1978.9e12, 4.9e12, 144e9, 700.0, 32.0),
    ("mi350x", 2306.9e12, 4613.7e12, 8.0e12, 309.2e9, 1000.0, 8.0),
    ("mi355x", 2516.6e12, 5033.2e12, 8.0e12, 309.2e9, 1400.0, 8.0),
    ("tpu_v7", 2307e12, 4614e12, 7.38e12, 206e9, 750.0, 4.0),
    ("tpu_v7_pod", 2307e12, 4614e12, 7.38e12, 206e9, 750.0, 9216.0),
]


@pytest.mark.parametrize("stem,bf16,fp8,hbm_bw,hbm,power,domain", ISSUE16_SPECS)
def test_issue16_specs_carry_their_datasheet_figures(
    stem, bf16, fp8, hbm_bw, hbm, power, domain
):
    c = dp.load_hardware(stem)
    got = [c.chip.flops_bf16, c.chip.flops_fp8, c.chip.hbm_bandwidth,
           c.chip.hbm_capacity, c.chip.power, c.scale_up.size]  # fmt: skip
    np.testing.assert_allclose(
        [float(v) for v in got], [bf16, fp8, hbm_bw, hbm, power, domain], rtol=1e-6
    )


@pytest.mark.parametrize(
    "stem,base",
    [("a100_pcie_40gb", "a100_sxm4_40gb"), ("a100_pcie_80gb", "a100_sxm4_80gb"),
     ("h100_nvl", "h100_pcie"), ("gh200", "h100_sxm"), ("mi355x", "mi350x")],
)  # fmt: skip
def test_variants_keep_their_base_efficiency_leaves(stem, base):
    """A variant file holds only datasheet fields; efficiency leaves come by extends."""
    assert io.meta("hardware", stem)["extends"] == base
    text = (ROOT / "hardware" / f"{stem}.toml").read_text()
    assert "# calibrated:" not in text
    v, b = dp.load_hardware(stem).chip, dp.load_hardware(base).chip
    for leaf in ("matmul_efficiency", "matmul_half_dim", "attention_efficiency"):
        assert float(getattr(v, leaf)) == float(getattr(b, leaf)), leaf


def test_bridged_pcie_cards_are_pairs_over_pcie():
    """A100 PCIe / H100 NVL: NVLink bridge pairs (600 GB/s bidirectional), pairs over
    PCIe Gen4 / Gen5 x16."""
    for stem, pcie in (("a100_pcie_80gb", 31.5e9), ("h100_nvl", 63e9)):
        dims = dp.load_hardware(stem).scale_up.dims
        assert [float(d.size) for d in dims] == [2.0, 4.0]
        assert [float(d.bandwidth) for d in dims] == [300e9, pcie]


def test_hf_config_import():
    cfgs = sorted((ROOT / "tests" / "data" / "hf_configs").glob("*.json"))
    assert cfgs
    for cfg in cfgs:
        model = dp.load_workload(cfg)
        assert float(model.params()) > 1e8


def test_hf_llama2_7b_matches_toml():
    cfg = ROOT / "tests" / "data" / "hf_configs" / "llama2_7b_config.json"
    a, b = dp.load_workload(cfg), dp.load_workload("llama2_7b")
    np.testing.assert_allclose(float(a.params()), float(b.params()), rtol=1e-9)


def _write(tmp_path, text, name="x.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _h100_text():
    return (ROOT / "hardware" / "h100_sxm.toml").read_text()


def test_negative_bandwidth_is_a_clear_error(tmp_path):
    text = _h100_text().replace("hbm_bandwidth = ", "hbm_bandwidth = -", 1)
    with pytest.raises(ValueError, match=r"hbm_bandwidth=.*must be > 0"):
        dp.load_hardware(_write(tmp_path, text))


def test_unknown_and_missing_keys_are_errors(tmp_path):
    text = _h100_text().replace("[chip]", "[chip]\nwarp_speed = 9.0", 1)
    with pytest.raises(ValueError, match="unknown key.*warp_speed"):
        dp.load_hardware(_write(tmp_path, text))
    lines = [
        ln for ln in _h100_text().splitlines() if not ln.startswith("hbm_capacity")
    ]
    with pytest.raises(ValueError, match="missing key.*hbm_capacity"):
        dp.load_hardware(_write(tmp_path, "\n".join(lines)))


def test_malformed_toml_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="malformed TOML"):
        dp.load_hardware(_write(tmp_path, "[chip\nx = "))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="did you mean.*h100_sxm"):
        dp.load_hardware("h100_sxn")
    with pytest.raises(ValueError, match="unknown workloads 'lama3_70b'.*llama3_70b"):
        dp.load_workload("lama3_70b")


def test_bad_mapping_errors():
    m = dp.load_workload("llama3_70b")
    with pytest.raises(ValueError, match="--tp=3 must divide the model's n_heads=64"):
        dp.check_mapping(m, dp.Parallelism(tp=3))
    with pytest.raises(ValueError, match="--gpus=10 must equal tp·pp·dp·cp=8"):
        dp.check_mapping(m, dp.Parallelism(tp=8), gpus=10)
    with pytest.raises(ValueError, match="recompute"):
        dp.Parallelism(recompute="some")
    with pytest.raises(ValueError, match=r"Parallelism\(tp=-1\) must be > 0"):
        dp.Parallelism(tp=-1)
    with pytest.raises(ValueError, match="--ep=2 must be 1 for a dense model"):
        dp.check_mapping(m, dp.Parallelism(ep=2, dp=2))
