"""Names as people write them resolve to the right spec (`diffperf.io.names`).

Every spelling is as printed by a public table or tool; the comment says which. Pure
text resolution: no JAX work, so the table runs in well under a second.
"""

import pytest

from diffperf import io

# (name as printed, spec, where it is printed)
HARDWARE = [
    # nvidia-smi / NVML product names
    ("NVIDIA A100-SXM4-80GB", "a100_sxm4_80gb", "nvidia-smi"),
    ("NVIDIA A100-SXM4-40GB", "a100_sxm4_40gb", "nvidia-smi"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm", "nvidia-smi (H100 SXM5)"),
    ("NVIDIA H100 PCIe", "h100_pcie", "nvidia-smi"),
    ("Tesla V100-SXM2-32GB", "v100_sxm2", "nvidia-smi"),
    ("NVIDIA L40S", "l40s", "nvidia-smi"),
    ("NVIDIA B200", "b200", "nvidia-smi"),
    # MLPerf result tables (accelerator column) and vendor datasheets
    ("NVIDIA H100-SXM5-80GB", "h100_sxm", "MLPerf Training/Inference results"),
    ("NVIDIA H200-SXM-141GB", "h200_sxm", "MLPerf Inference v4.x results"),
    ("H100-SXM5-80GB", "h100_sxm", "data/hardware_specs.csv"),
    ("8x H100 SXM5 80GB", "h100_sxm", "MLPerf system descriptions (8 per node)"),
    ("NVIDIA GB200", "gb200", "MLPerf Inference v5.0 results"),
    ("NVIDIA GB200 NVL72", "gb200_nvl72", "NVIDIA GB200 NVL72 datasheet"),
    ("GB200 NVL72", "gb200_nvl72", "NVIDIA GB200 NVL72 datasheet"),
    ("AMD Instinct MI300X", "mi300x", "MLPerf Inference v4.1 results (AMD)"),
    ("AMD Instinct MI300X OAM", "mi300x", "AMD MI300X datasheet (OAM module)"),
    ("MI300X-NPS1-SPX-192GB-750W", "mi300x", "MLPerf Inference v4.1 results (AMD)"),
    ("AMD Instinct MI325X", "mi325x", "AMD MI325X datasheet"),
    ("MI250X (OAM, 2 GCDs)", "mi250x", "data/hardware_specs.csv"),
    ("Intel Gaudi 3", "gaudi3", "Intel Gaudi 3 white paper"),
    ("HL-225H", "gaudi2", "Intel Gaudi 2 (HL-225H mezzanine card)"),
    ("TPU v5e", "tpu_v5e", "MLPerf Inference v4.0 results (Google)"),
    ("TPU v6e (Trillium)", "tpu_v6e", "data/hardware_specs.csv"),
    ("Trillium", "tpu_v6e", "Google Cloud TPU docs"),
    ("Google Cloud TPU v5e", "tpu_v5e", "Google Cloud TPU docs"),
    # papers, blogs and this repository's data
    ("A100-SXM4-80GB (Selene)", "a100_sxm4_80gb", "issue #16 (paper table)"),
    ("A100 (DGX-A100)", "dgx_a100_40gb", "data/training_calibration.csv"),
    ("A100-80GB (DGX-A100)", "dgx_a100", "data/inference_calibration.csv"),
    ("V100 (DGX-2)", "dgx2_v100", "data/training_calibration.csv"),
    ("H100-SXM-80GB", "h100_sxm", "data/training_calibration.csv"),
    ("NVIDIA DGX A100 (8x A100 80GB)", "dgx_a100", "NVIDIA DGX A100 datasheet"),
    ("DGX H100", "dgx_h100", "NVIDIA DGX H100 datasheet"),
    ("DGX H200", "h200_sxm", "NVIDIA DGX H200 datasheet (same HGX board)"),
    ("HGX B200", "b200", "NVIDIA HGX B200 datasheet"),
    ("B200 (HGX, 1000 W)", "b200", "data/hardware_specs.csv"),
    ("H100 SXM5 700W", "h100_sxm", "NVIDIA H100 datasheet (TDP)"),
    # AIConfigurator system names (issue #12)
    ("h100_sxm", "h100_sxm", "AIConfigurator systems/"),
    ("h200_sxm", "h200_sxm", "AIConfigurator systems/"),
    ("b200_sxm", "b200", "AIConfigurator systems/"),
    ("gb200", "gb200", "AIConfigurator systems/"),
    ("b300_sxm", "b300", "AIConfigurator systems/"),
    ("gb300", "gb300", "AIConfigurator systems/"),
    # cloud instances (AWS EC2, Google Cloud, Azure instance-type docs)
    ("p4d.24xlarge", "a100_sxm4_40gb", "AWS EC2 P4 instances"),
    ("p4de.24xlarge", "a100_sxm4_80gb", "AWS EC2 P4 instances"),
    ("p5.48xlarge", "h100_sxm", "AWS EC2 P5 instances"),
    ("p5en.48xlarge", "h200_sxm", "AWS EC2 P5 instances"),
    ("p6-b200.48xlarge", "b200", "AWS EC2 P6 instances"),
    ("trn1.32xlarge", "trn1", "AWS Neuron docs, Trn1 architecture"),
    ("trn1n.32xlarge", "trn1", "AWS Neuron docs, Trn1 architecture"),
    ("trn2.48xlarge", "trn2", "AWS Neuron docs, Trn2 architecture"),
    ("Trainium", "trn1", "AWS Neuron docs"),
    ("a2-ultragpu-8g", "a100_sxm4_80gb", "Google Cloud A2 machine types"),
    ("a3-highgpu-8g", "h100_sxm", "Google Cloud A3 machine types"),
    ("a3-megagpu-8g", "h100_sxm", "Google Cloud A3 Mega machine types"),
    ("GCP A3 Mega", "h100_sxm", "Google Cloud blog (A3 Mega)"),
    ("a3-ultragpu-8g", "h200_sxm", "Google Cloud A3 Ultra machine types"),
    ("a4-highgpu-8g", "b200", "Google Cloud A4 machine types"),
    ("Standard_ND96isr_H100_v5", "h100_sxm", "Azure ND H100 v5 series"),
    ("Standard_ND96asr_v4", "a100_sxm4_40gb", "Azure NDv4 series"),
    # TPU slices (Google Cloud TPU docs accelerator types; MaxText configs)
    ("v4-128", "tpu_v4_pod", "MaxText configs/v4 (1x v4-128)"),
    ("TPU v5p-512", "tpu_v5p_pod", "Google Cloud TPU v5p accelerator types"),
    ("v5litepod-256", "tpu_v5e_pod", "Google Cloud TPU v5e accelerator types"),
    ("v6e-256", "tpu_v6e_pod", "Google Cloud TPU v6e accelerator types"),
    # published rows on hardware added for issue #16 (names as their sources print them)
    ("NVIDIA A100-PCIE-40GB", "a100_pcie_40gb", "nvidia-smi"),
    ("NVIDIA A100 80GB PCIe", "a100_pcie_80gb", "nvidia-smi"),
    ("A100 PCIe 80GB", "a100_pcie_80gb", "NVIDIA A100 datasheet (form factor column)"),
    ("A100 PCIe 40GB", "a100_pcie_40gb", "NVIDIA A100 datasheet (form factor column)"),
    ("A100-PCIe-80GB", "a100_pcie_80gb", "papers and benchmark logs"),
    ("8x A100 80GB PCIe", "a100_pcie_80gb", "cloud instance descriptions"),
    ("H100 NVL", "h100_nvl", "NVIDIA H100 datasheet (NVL column)"),
    ("NVIDIA H100 NVL", "h100_nvl", "nvidia-smi"),
    ("H100-NVL-94GB", "h100_nvl", "MLPerf Inference results"),
    ("H100 94GB NVL", "h100_nvl", "vendor tables"),
    ("GH200", "gh200", "NVIDIA GH200 datasheet"),
    ("GH200 480GB", "gh200", "vendor and cloud tables (96 GB HBM3 + 480 GB LPDDR5X)"),
    ("NVIDIA GH200 480GB", "gh200", "nvidia-smi"),
    ("NVIDIA GH200 Grace Hopper Superchip", "gh200", "NVIDIA GH200 product page"),
    ("GH200-GraceHopper-Superchip", "gh200", "MLPerf Inference system names"),
    ("NVIDIA GH200 144G HBM3e", "gh200_144gb", "nvidia-smi (HBM3e part)"),
    ("GH200 Grace Hopper Superchip 144GB", "gh200_144gb", "vendor tables"),
    ("GH200 NVL32", "gh200_nvl32", "NVIDIA GH200 NVL32 blog"),
    ("NVIDIA GH200 NVL2", "gh200_nvl2", "NVIDIA GH200 NVL2 Enterprise RA blog"),
    ("GH200 NVL2 288GB", "gh200_nvl2", "NVIDIA GH200 product page"),
    ("JUPITER Booster", "gh200_quad", "JSC JUPITER configuration page"),
    ("MI355X", "mi355x", "AMD MI350 series launch"),
    ("AMD Instinct MI355X", "mi355x", "AMD product page"),
    ("AMD Instinct MI355X 288GB HBM3e", "mi355x", "MLPerf Inference v6.0 (AMD)"),
    ("MI350X", "mi350x", "AMD MI350 series launch"),
    ("AMD Instinct MI350X 288GB HBM3e", "mi350x", "MLPerf Inference v6.1 (AMD)"),
    ("AMD Instinct MI350X OAM", "mi350x", "AMD MI350X datasheet (OAM module)"),
    ("TPU v7", "tpu_v7", "Google Cloud blog"),
    ("Ironwood", "tpu_v7", "Google Cloud blog"),
    ("tpu7x", "tpu_v7", "GKE accelerator name"),
    ("TPU7x (Ironwood)", "tpu_v7", "Google Cloud TPU7x docs"),
    ("tpu7x-8", "tpu_v7", "xpk device types (one 2x2x1 host)"),
    ("tpu7x-256", "tpu_v7_pod", "xpk / MaxText device types"),
    ("v7-256", "tpu_v7_pod", "papers (slice names)"),
]

MODELS = [
    # (name as printed, spec, precision hint, where it is printed)
    ("meta-llama/Llama-2-70b-hf", "llama2_70b", None, "Hugging Face"),
    ("meta-llama/Llama-2-70b-chat-hf", "llama2_70b", None, "Hugging Face"),
    ("meta-llama/Llama-2-7b-hf", "llama2_7b", None, "Hugging Face"),
    ("meta-llama/Meta-Llama-3-8B", "llama3_8b", None, "Hugging Face"),
    ("meta-llama/Meta-Llama-3-70B-Instruct", "llama3_70b", None, "Hugging Face"),
    ("meta-llama/Llama-3.1-70B", "llama3_1_70b", None, "Hugging Face"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama3_1_8b", None, "Hugging Face"),
    ("meta-llama/Meta-Llama-3.1-405B-Instruct", "llama3_1_405b", None, "HF"),
    ("meta-llama/Llama-3.3-70B-Instruct", "llama3_1_70b", None, "Hugging Face"),
    ("Llama 3.3 70B", "llama3_1_70b", None, "issue #16 (vendor tables)"),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4_scout", None, "HF"),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", "llama4_maverick", None, "HF"),
    ("deepseek-ai/DeepSeek-V3", "deepseek_v3", None, "Hugging Face"),
    ("deepseek-ai/DeepSeek-R1", "deepseek_v3", None, "Hugging Face"),
    ("deepseek-ai/DeepSeek-R1-0528", "deepseek_v3", None, "Hugging Face"),
    ("DeepSeek-V3 671B MoE", "deepseek_v3", None, "issue #16 (papers)"),
    ("nvidia/DeepSeek-R1-FP4", "deepseek_v3", "fp4", "Hugging Face (NVIDIA)"),
    ("Qwen/Qwen3-235B-A22B", "qwen3_235b_a22b", None, "Hugging Face"),
    ("Qwen/Qwen3-235B-A22B-Instruct-2507", "qwen3_235b_a22b", None, "Hugging Face"),
    ("Qwen/Qwen3-30B-A3B", "qwen3_30b_a3b", None, "Hugging Face"),
    ("openai/gpt-oss-120b", "gpt_oss_120b", None, "Hugging Face"),
    ("openai/gpt-oss-20b", "gpt_oss_20b", None, "Hugging Face"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral_8x7b", None, "Hugging Face"),
    ("mistralai/Mixtral-8x22B-v0.1", "mixtral_8x22b", None, "Hugging Face"),
    ("mistralai/Mistral-7B-v0.1", "mistral_7b", None, "Hugging Face"),
    ("moonshotai/Kimi-K2-Instruct", "kimi_k2", None, "Hugging Face"),
    ("tiiuae/falcon-180B", "falcon_180b", None, "Hugging Face"),
    ("bigscience/bloom", "bloom_176b", None, "Hugging Face"),
    ("EleutherAI/gpt-j-6b", "gpt_j_6b", None, "Hugging Face"),
    ("mosaicml/mpt-7b", "mpt_7b", None, "Hugging Face"),
    ("mosaicml/mpt-30b", "mpt_30b", None, "Hugging Face"),
    ("nvidia/Nemotron-4-340B-Base", "nemotron4_340b", None, "Hugging Face"),
    ("nvidia/Llama-3.1-70B-Instruct-FP8", "llama3_1_70b", "fp8", "HF (NVIDIA)"),
    ("nvidia/Llama-3.3-70B-Instruct-FP4", "llama3_1_70b", "fp4", "HF (NVIDIA)"),
    ("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", "llama3_1_70b", "fp8", "HF"),
    (
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "llama3_1_70b",
        "int4",
        "Hugging Face",
    ),  # fmt: skip
    ("TheBloke/Llama-2-70B-Chat-GPTQ", "llama2_70b", "int4", "Hugging Face"),
    ("GPT-3 175B (Megatron)", "gpt3_175b", None, "issue #16 (papers)"),
    ("llama2-70b-99", "llama2_70b", None, "MLPerf Inference benchmark names"),
    ("llama2-70b-99.9", "llama2_70b", None, "MLPerf Inference benchmark names"),
    ("gptj-99", "gpt_j_6b", None, "MLPerf Inference benchmark names"),
    ("mixtral-8x7b", "mixtral_8x7b", None, "MLPerf Inference benchmark names"),
    ("llama3.1-405b", "llama3_1_405b", None, "MLPerf Inference benchmark names"),
    ("deepseek-r1", "deepseek_v3", None, "MLPerf Inference v5.1 benchmark names"),
    ("Llama 405B", "llama3_1_405b", None, "press tables"),
    ("LLAMA3.1_405B", "llama3_1_405b", None, "data/training_calibration.csv"),
    ("DeepSeekV3 (tokendrop)", "deepseek_v3", None, "data/training_calibration.csv"),
]


@pytest.mark.parametrize("text,stem,source", HARDWARE)
def test_hardware_spellings_resolve(text, stem, source):
    assert io.resolve_hardware(text).spec == stem, source


@pytest.mark.parametrize("text,stem,hint,source", MODELS)
def test_model_spellings_resolve(text, stem, hint, source):
    found = io.resolve_workload(text)
    assert (found.spec, found.precision) == (stem, hint), source


def test_the_table_is_at_least_sixty_spellings():
    assert len(HARDWARE) >= 60 and len(MODELS) >= 40


@pytest.mark.parametrize(
    "text,candidates",
    [
        ("A100-SXM4", ["a100_sxm4_40gb", "a100_sxm4_80gb"]),
        ("A100 SXM", ["a100_sxm4_40gb", "a100_sxm4_80gb"]),
        ("A100 PCIe", ["a100_pcie_40gb", "a100_pcie_80gb"]),
        ("NVIDIA A100 PCIe", ["a100_pcie_40gb", "a100_pcie_80gb"]),
        ("GH200 Superchip", ["gh200", "gh200_144gb"]),
    ],
)
def test_ambiguous_hardware_lists_candidates(text, candidates):
    with pytest.raises(ValueError, match="ambiguous hardware") as e:
        io.resolve_hardware(text)
    assert all(c in str(e.value) for c in candidates)


@pytest.mark.parametrize(
    "text,candidates",
    [
        ("Llama 70B", ["llama2_70b", "llama3_1_70b", "llama3_70b"]),
        ("Mixtral", ["mixtral_8x22b", "mixtral_8x7b"]),
        ("Qwen3", ["qwen3_235b_a22b", "qwen3_30b_a3b"]),
    ],
)
def test_ambiguous_models_list_candidates(text, candidates):
    with pytest.raises(ValueError, match="ambiguous workloads") as e:
        io.resolve_workload(text)
    assert all(c in str(e.value) for c in candidates)


def test_missing_variants_and_misspellings_are_errors_not_guesses():
    with pytest.raises(ValueError, match="no bundled v100 spec with form factor pcie"):
        io.resolve_hardware("V100 PCIe 32GB")
    with pytest.raises(ValueError, match="no bundled h100 spec with form factor pcie"):
        io.resolve_hardware("H100 PCIe 94GB")  # 94 GB is the NVL card
    with pytest.raises(ValueError, match="unrecognized word.*sxn"):
        io.resolve_hardware("h100_sxn")
    with pytest.raises(ValueError, match="unknown workloads"):
        io.resolve_workload("Llama 2 70B foo")


def test_counting_conventions_and_slices():
    v5p = io.resolve_hardware("TPU v5p-512")
    assert v5p.slice_chips == 256 and v5p.cores_per_chip == 2.0  # TensorCores
    assert io.resolve_hardware("v6e-256").slice_chips == 256  # chips
    assert io.resolve_hardware("v4-128").slice_chips == 64
    trn1, trn2 = io.resolve_hardware("trn1.32xlarge"), io.resolve_hardware("Trn2")
    assert (trn1.cores_per_chip, trn1.devices_per_chip) == (2.0, 2.0)
    assert (trn2.cores_per_chip, trn2.devices_per_chip) == (8.0, 4.0)  # LNC = 2
    v7 = io.resolve_hardware("tpu7x-256")  # names count TensorCores; 2 devices a chip
    assert (v7.slice_chips, v7.cores_per_chip, v7.devices_per_chip) == (128, 2.0, 2.0)
    assert io.resolve_hardware("v7-512").slice_chips == 256


def test_power_caps_and_slices_apply_to_the_loaded_spec():
    capped = io.load_hardware("H100 SXM5 power-capped 500W")
    assert float(capped.chip.power) == 500.0
    assert io.resolve_hardware("H100 SXM5 power-capped 500W").power_capped
    at_tdp = io.load_hardware("H100 SXM5 700W")
    assert float(at_tdp.chip.power) == 700.0
    with pytest.raises(ValueError, match="exceeds b200's TDP"):
        io.load_hardware("B200 1200W")
    pod = io.load_hardware("v5p-512")
    assert float(pod.scale_up.size) == 256.0
    assert [float(d.size) for d in pod.scale_up.dims] == [4.0, 8.0, 8.0]
    assert float(io.load_hardware("v4-384").scale_up.size) == 192.0
    ironwood = io.load_hardware("tpu7x-256")
    assert float(ironwood.scale_up.size) == 128.0
    assert [float(d.size) for d in ironwood.scale_up.dims] == [4.0, 4.0, 8.0]


def test_cli_json_says_what_names_resolved_to(capsys):
    import json

    from diffperf.cli.main import main

    argv = ["train", "--hardware", "p5.48xlarge", "--model", "meta-llama/Llama-2-7b-hf",
            "--gpus", "8", "--layers", "2", "--seq-len", "512", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resolved_hardware"]["spec"] == "h100_sxm"
    assert out["resolved_hardware"]["notes"] == ["AWS p5.48xlarge: 8x H100 SXM 80GB"]
    assert out["resolved_model"]["spec"] == "llama2_7b"
    assert out["resolved_model"]["architecture"]["layers"] == 2
