"""Names as people write them, resolved to the bundled specs.

Hardware and models as written in papers, vendor tables, MLPerf, benchmark logs and
Hugging Face ids.

Pure text functions: the caller (`io.specs`) passes the registry (spec stem → aliases)
and, for models, the published parameter count of a stem. Resolution order:

1. the whole name equals a file stem or an `[meta] aliases` entry (compared after
   `normalize`: lower case, spaces and `-_.(),/` dropped);
2. hardware: the name is parsed into a chip family (H100, MI300X, TPU v5p, Trainium2,
   ...), a form factor (SXM/SXM5/PCIe/OAM/NVL), a memory size (`80GB`), a system
   (DGX, NVL72, a cloud instance such as `p5.48xlarge`, `a3-megagpu-8g`, `A3 Mega`,
   `trn1.32xlarge`, a TPU slice such as `v5p-512`), a power limit (`700W`,
   `power-capped`) and a count (`8x`); the specs of the family are filtered by system,
   form factor (the family's usual one when none is named) and memory;
3. models: an organisation prefix (`meta-llama/`), parentheticals (`(Megatron)`),
   chat/instruct/base/version/date suffixes (`-Instruct-2507`, `-hf`, `-v0.1`) and
   quantization suffixes (`-FP8`, `-AWQ`, `-w4a16`: kept as a precision hint) are
   dropped; a total size the alias lacks (`DeepSeek-V3 671B MoE`) is dropped when the
   spec's published parameter count agrees within 15%; finally a name whose words are
   all in one spec's aliases (`Llama 405B`) resolves to it.

More than one spec left is an error listing the candidates; none is an error with the
close matches. Nothing is guessed beyond these rules, and the result says how it
resolved (`how`) and which words it did not use (`ignored`).
"""

import difflib
import re
from dataclasses import asdict, dataclass, field

__all__ = [
    "normalize",
    "HardwareName",
    "UnknownName",
    "WorkloadName",
    "parse_hardware",
    "parse_workload",
    "HARDWARE_TRAITS",
    "COUNTING",
]


def normalize(name: str) -> str:
    """Lower-case and drop spaces and `-_.(),/` so spellings of a name compare equal."""
    return re.sub(r"[\s\-_.(),/]+", "", name.lower())


# ---- hardware ---------------------------------------------------------------------
# stem: (family, form factor, memory sizes people print [GB], system)
# System "" is the chip in its usual server (HGX board, TPU host, trn instance).
HARDWARE_TRAITS: dict[str, tuple[str, str, tuple[float, ...], str]] = {
    "a100_sxm4_40gb": ("a100", "sxm", (40,), ""),
    "a100_sxm4_80gb": ("a100", "sxm", (80,), ""),
    "a100_pcie_40gb": ("a100", "pcie", (40,), ""),
    "a100_pcie_80gb": ("a100", "pcie", (80,), ""),
    "dgx_a100": ("a100", "sxm", (80, 640), "dgx"),
    "dgx_a100_40gb": ("a100", "sxm", (40, 320), "dgx"),
    "b200": ("b200", "sxm", (180, 192, 1440), ""),
    "dgx_b200": ("b200", "sxm", (180, 192, 1440), "dgx"),
    "b300": ("b300", "sxm", (270, 288, 2300), ""),
    "gb200": ("gb200", "sxm", (186, 192), ""),
    "gb200_nvl72": ("gb200", "sxm", (186, 192), "nvl72"),
    "gb300": ("gb300", "sxm", (279, 288), ""),
    "gb300_nvl72": ("gb300", "sxm", (279, 288), "nvl72"),
    "h100_sxm": ("h100", "sxm", (80,), ""),
    "h100_pcie": ("h100", "pcie", (80,), ""),
    "h100_nvl": ("h100", "nvl", (94, 188), ""),
    "dgx_h100": ("h100", "sxm", (80, 640), "dgx"),
    "h20": ("h20", "sxm", (96,), ""),
    "gh200": ("gh200", "", (96, 480, 576), ""),
    "gh200_144gb": ("gh200", "", (144, 624), ""),
    "gh200_quad": ("gh200", "", (96,), "quad"),
    "gh200_nvl2": ("gh200", "", (144, 288, 624), "nvl2"),
    "gh200_nvl32": ("gh200", "", (144, 624), "nvl32"),
    "h200_sxm": ("h200", "sxm", (141, 1128), ""),
    "h800_sxm": ("h800", "sxm", (80,), ""),
    "l40s": ("l40s", "pcie", (48,), ""),
    "rtx_pro_6000_blackwell": ("rtxpro6000", "pcie", (96,), ""),
    "mi210": ("mi210", "pcie", (64,), ""),
    "mi250x": ("mi250x", "oam", (128,), ""),
    "mi300x": ("mi300x", "oam", (192,), ""),
    "mi325x": ("mi325x", "oam", (256,), ""),
    "mi350x": ("mi350x", "oam", (288,), ""),
    "mi355x": ("mi355x", "oam", (288,), ""),
    "gaudi2": ("gaudi2", "oam", (96,), ""),
    "gaudi3": ("gaudi3", "oam", (128,), ""),
    "maia100": ("maia100", "", (64,), ""),
    "cerebras_wse3": ("wse3", "", (44,), ""),
    "tpu_v4": ("tpu_v4", "", (32,), ""),
    "tpu_v4_pod": ("tpu_v4", "", (32,), "pod"),
    "tpu_v5e": ("tpu_v5e", "", (16,), ""),
    "tpu_v5e_pod": ("tpu_v5e", "", (16,), "pod"),
    "tpu_v5p": ("tpu_v5p", "", (95, 96), ""),
    "tpu_v5p_pod": ("tpu_v5p", "", (95, 96), "pod"),
    "tpu_v6e": ("tpu_v6e", "", (32,), ""),
    "tpu_v6e_pod": ("tpu_v6e", "", (32,), "pod"),
    "tpu_v7": ("tpu_v7", "", (192,), ""),
    "tpu_v7_pod": ("tpu_v7", "", (192,), "pod"),
    "trn1": ("trn1", "", (32, 512), ""),
    "trn2": ("trn2", "", (96, 1536), ""),
    "trn2_ultraserver": ("trn2", "", (96,), "ultraserver"),
    "v100_sxm2": ("v100", "sxm", (32,), ""),
    "dgx2_v100": ("v100", "sxm", (32, 512), "dgx"),
}

# Counting conventions per family: (physical cores per chip, framework devices per
# chip). TPU v4/v5p run one JAX device per chip over its 2 TensorCores (megacore) and
# their slice names count TensorCores; v5e/v6e have one TensorCore per chip and count
# chips (Google Cloud TPU docs, "TPU versions"). A Trainium chip has 2 NeuronCore-v2,
# each one device (Neuron docs, Trainium architecture); a Trainium2 chip has 8
# NeuronCore-v3 grouped by the logical NeuronCore config, LNC = 2 by default on Trn2
# (Neuron docs, NCC_EVRF066), so 8 / LNC devices. An MI250X module has 2 GCDs, each a
# device (AMD CDNA2 white paper). A TPU7x (Ironwood) chip is two chiplets, each a
# TensorCore that JAX sees as its own device (no megacore; Google Cloud TPU7x docs,
# "Dual-chiplet architecture"), and its slice names count TensorCores: tpu7x-8 is a
# 2x2x1 host of 4 chips (AI-Hypercomputer/xpk system characteristics).
COUNTING: dict[str, tuple[float, float]] = {
    "tpu_v4": (2.0, 1.0),
    "tpu_v5p": (2.0, 1.0),
    "tpu_v5e": (1.0, 1.0),
    "tpu_v6e": (1.0, 1.0),
    "tpu_v7": (2.0, 2.0),
    "trn1": (2.0, 2.0),
    "trn2": (8.0, 4.0),
    "mi250x": (2.0, 2.0),
}
SLICE_COUNTS_CORES = {"tpu_v2": True, "tpu_v3": True, "tpu_v4": True, "tpu_v5p": True,
                      "tpu_v5e": False, "tpu_v6e": False, "tpu_v7": True}  # fmt: skip

_A = r"(?<![a-z0-9])"  # a chip name starts a word (gb200 is not b200)
_FAMILIES = [
    ("gb300", _A + r"gb300"),
    ("gb200", _A + r"gb200"),
    ("gh200", _A + r"gh200"),
    ("b300", _A + r"b300"),
    ("b200", _A + r"b200"),
    ("h200", _A + r"h200"),
    ("h100", _A + r"h100"),
    ("h800", _A + r"h800"),
    ("h20", _A + r"h20(?![0-9])"),
    ("a100", _A + r"a100"),
    ("v100", _A + r"v100"),
    ("l40s", _A + r"l40s"),
    ("rtxpro6000", _A + r"rtx ?pro ?6000"),
    ("mi355x", _A + r"mi355x?"),
    ("mi350x", _A + r"mi350x?"),
    ("mi325x", _A + r"mi325x?"),
    ("mi300x", _A + r"mi300x"),
    ("mi250x", _A + r"mi250x"),
    ("mi210", _A + r"mi210"),
    ("gaudi3", r"gaudi ?3|hl-?325"),
    ("gaudi2", r"gaudi ?2|hl-?225"),
    ("maia100", r"maia"),
    ("wse3", r"wse-?3|cs-?3"),
    ("tpu_v5p", _A + r"(tpu[ -]?)?v5p"),
    ("tpu_v5e", _A + r"(tpu[ -]?)?(v5e|v5 ?lite)"),
    ("tpu_v6e", _A + r"(tpu[ -]?)?v6e|trillium"),
    (
        "tpu_v7",
        _A + r"(tpu[ -]?)?v7x?(?![0-9a-z])|" + _A + r"tpu ?7x?(?![0-9a-z])|ironwood",
    ),
    ("tpu_v4", _A + r"tpu[ -]?v4|" + _A + r"v4(?=-\d)"),
    ("tpu_v3", _A + r"tpu[ -]?v3|" + _A + r"v3(?=-\d)"),
    ("tpu_v2", _A + r"tpu[ -]?v2|" + _A + r"v2(?=-\d)"),
    ("trn2", _A + r"trn2|trainium ?2"),
    ("trn1", _A + r"trn1|trainium(?! ?[2-9])"),
]
_USUAL_FORM = {"h100": "sxm", "a100": "sxm", "v100": "sxm"}

# Cloud instances and named systems: pattern → (family, memory GB or 0, system, note)
_SYSTEMS = [
    (_A + r"p4de", ("a100", 80, "", "AWS p4de.24xlarge: 8x A100 80GB")),
    (_A + r"p4d", ("a100", 40, "", "AWS p4d.24xlarge: 8x A100 40GB")),
    (_A + r"p5en?(?![0-9a-z])", ("h200", 141, "", "AWS p5e/p5en.48xlarge: 8x H200")),
    (_A + r"p5(?![0-9a-z])", ("h100", 80, "", "AWS p5.48xlarge: 8x H100 SXM 80GB")),
    (
        _A + r"p6e-?gb200",
        ("gb200", 0, "nvl72", "AWS P6e-GB200 UltraServer: GB200 NVL72"),
    ),
    (_A + r"p6-?b200", ("b200", 0, "", "AWS p6-b200.48xlarge: 8x B200")),
    (r"trn2u|u-trn2", ("trn2", 0, "ultraserver", "AWS Trn2 UltraServer: 64 chips")),
    (r"trn2\.", ("trn2", 0, "", "AWS trn2.48xlarge: 16 Trainium2")),
    (r"trn1n?\.", ("trn1", 0, "", "AWS trn1/trn1n.32xlarge: 16 Trainium")),
    (r"a2-highgpu", ("a100", 40, "", "GCP A2 Standard: A100 40GB")),
    (r"a2-ultragpu", ("a100", 80, "", "GCP A2 Ultra: A100 80GB")),
    (r"a3-ultragpu|a3 ?ultra", ("h200", 141, "", "GCP A3 Ultra: 8x H200")),
    (r"a3-megagpu|a3 ?mega", ("h100", 80, "", "GCP A3 Mega: 8x H100 80GB")),
    (
        r"a3-highgpu|a3-edgegpu|(?<![a-z0-9])a3(?![0-9a-z])",
        ("h100", 80, "", "GCP A3: 8x H100 80GB"),
    ),  # fmt: skip
    (r"a4x", ("gb200", 0, "nvl72", "GCP A4X: GB200 NVL72")),
    (r"a4-highgpu|(?<![a-z0-9])a4(?![0-9a-z])", ("b200", 0, "", "GCP A4: 8x B200")),
    (r"nd96asr|ndv4|nd a100 v4", ("a100", 40, "", "Azure NDv4: A100 40GB")),
    (r"nd96amsr|ndm ?a100", ("a100", 80, "", "Azure NDm A100 v4: A100 80GB")),
    (r"nd96isr[ _-]?h100|nd h100", ("h100", 80, "", "Azure ND H100 v5: 8x H100")),
    (r"nd96isr[ _-]?h200|nd h200", ("h200", 141, "", "Azure ND H200 v5: 8x H200")),
    (r"nd96isr[ _-]?mi300x|nd mi300x", ("mi300x", 192, "", "Azure ND MI300X v5")),
    (r"nd ?gb200", ("gb200", 0, "nvl72", "Azure ND GB200 v6: GB200 NVL72")),
    (r"selene", ("a100", 80, "dgx", "Selene: NVIDIA's DGX A100 SuperPOD")),
    (r"(?<![a-z])eos(?![a-z])", ("h100", 80, "dgx", "Eos: NVIDIA's DGX H100 SuperPOD")),
]
_SLICE = re.compile(
    r"(?<![a-z0-9])(?:tpu[ -]?)?(v2|v3|v4|v5p|v5e|v5litepod|v6e|v7x?|(?<=tpu)7x)-(\d+)"
)
_SLICE_FAMILY = {"v5litepod": "tpu_v5e", "v7x": "tpu_v7", "7x": "tpu_v7"}
_NOISE = {"nvidia", "amd", "instinct", "google", "cloud", "aws", "amazon", "intel",
          "habana", "tesla", "microsoft", "azure", "gcp", "ec2", "hbm", "hbm2", "hbm2e",
          "hbm3", "hbm3e", "gpu", "gpus", "accelerator", "chip", "chips", "node",
          "nodes", "system", "server", "board", "module", "tensor", "core", "hgx",
          "superpod", "pod", "cluster", "x", "per", "with", "and", "the", "standard",
          "tpu"}  # fmt: skip


@dataclass(frozen=True)
class HardwareName:
    """What a hardware name resolved to (the JSON `resolved_hardware`).

    Attributes:
        text: the name as written.
        spec: the bundled spec's stem.
        how: "alias" (a stem or alias), "parsed" (by the rules above) or "path".
        power_w: a power limit in the name [W] (a cap below the spec's TDP, or the
            TDP itself); None when not given.
        power_capped: the name says the chip ran power-capped.
        slice_chips: chips of a named TPU slice (v5p-512 → 256), else None.
        count: a leading or trailing count (`8x H100`), else None.
        cores_per_chip, devices_per_chip: the family's counting conventions (COUNTING).
        notes: what the system or instance name stands for.
        ignored: words of the name that were not used.
    """

    text: str
    spec: str
    how: str
    power_w: float | None = None
    power_capped: bool = False
    slice_chips: int | None = None
    count: int | None = None
    cores_per_chip: float = 1.0
    devices_per_chip: float = 1.0
    notes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }


def _alias_table(registry: dict[str, tuple[str, ...]]) -> dict[str, str]:
    table = {}
    for stem, aliases in registry.items():
        for alias in (stem, *aliases):
            table.setdefault(normalize(alias), stem)
    return table


class UnknownName(ValueError):
    """A name that matches no spec (an ambiguous one is a plain ValueError)."""


def _unknown(
    kind: str, text: str, table: dict[str, str], extra: str = ""
) -> ValueError:
    close = difflib.get_close_matches(normalize(text), table, n=3, cutoff=0.6)
    names = sorted({table[c] for c in close})
    hint = f"; did you mean {', '.join(names)}?" if names else ""
    return UnknownName(
        f"unknown {kind} {text!r}{extra}{hint} (known: `diffperf list {kind}` or a "
        "TOML path)"
    )


def _ambiguous(kind: str, text: str, candidates) -> ValueError:
    return ValueError(
        f"ambiguous {kind} {text!r}: candidates {', '.join(sorted(candidates))} "
        "(name one of them)"
    )


def parse_hardware(text: str, registry: dict[str, tuple[str, ...]]) -> HardwareName:
    """Resolve a hardware name (module docstring) against {stem: aliases}.

    Raises:
        ValueError: unknown (with close matches), ambiguous (with the candidates), or
            a memory size / form factor no spec of the family has.
    """
    table = _alias_table(registry)
    low = text.lower().strip()
    power = re.search(r"(\d{3,5}(?:\.\d+)?)\s*w(?:atts?)?(?![a-z0-9])", low)
    capped = bool(re.search(r"power[\s\-_]*(?:capped|cap|limited|limit)", low))
    count_m = re.match(r"\s*(\d+)\s*x\s*(?=[a-z])", low) or re.search(
        r"(?<![a-z0-9])x\s*(\d+)\s*$", low
    )
    bare = re.sub(r"\(([^)]*)\)", " ", low)  # parentheticals removed
    power_w = float(power.group(1)) if power else None
    base = dict(power_w=power_w, power_capped=capped,
                count=int(count_m.group(1)) if count_m else None)  # fmt: skip
    sl = _SLICE.search(low)
    if sl:  # an alias that is a slice name (v5e-256) still says its size
        fam = _SLICE_FAMILY.get(sl.group(1), "tpu_" + sl.group(1))
        n = int(sl.group(2))
        chips = n // 2 if SLICE_COUNTS_CORES.get(fam, False) else n
    for key in (normalize(text), normalize(bare)):
        if key in table:
            found = HardwareName(text, table[key], "alias", **base)
            if sl:
                found = HardwareName(**(asdict(found) | dict(slice_chips=chips)))
            return _with_counting(found)
    stripped = re.sub(r"(\d{3,5}(?:\.\d+)?)\s*w(?:atts?)?(?![a-z0-9])", " ", low)
    stripped = re.sub(r"power[\s\-_]*(?:capped|cap|limited|limit)", " ", stripped)
    stripped = re.sub(
        r"^\s*\d+\s*x\s*(?=[a-z])|(?<![a-z0-9])x\s*\d+\s*$", " ", stripped
    )
    for key in (normalize(stripped), normalize(re.sub(r"\([^)]*\)", " ", stripped))):
        if key in table:
            return _with_counting(HardwareName(text, table[key], "alias", **base))
    return _with_counting(_parse_features(text, stripped, table, base))


def _parse_features(text: str, low: str, table, base) -> HardwareName:
    notes, family, memory, system = [], None, None, None
    for pattern, (fam, mem, sysname, note) in _SYSTEMS:
        found = re.search(pattern, low)
        if found:
            family, memory, system = fam, (mem or None), sysname
            notes.append(note)
            low = low[: found.start()] + " " + low[found.end() :]
            break
    slice_chips = None
    sl = _SLICE.search(low)
    if sl:
        fam = _SLICE_FAMILY.get(sl.group(1), "tpu_" + sl.group(1))
        n = int(sl.group(2))
        cores = SLICE_COUNTS_CORES.get(fam, False)
        slice_chips = n // 2 if cores else n
        family, system = fam, "pod"
        notes.append(
            f"{sl.group(0)}: a TPU slice of {slice_chips} chips"
            + (f" ({n} TensorCores, 2 per chip)" if cores else "")
        )
        low = low[: sl.start()] + " " + low[sl.end() :]
    found_families = []
    outside = re.sub(r"\([^)]*\)", " ", low)
    for scope in (outside, low):
        for fam, pattern in _FAMILIES:
            if re.search(pattern, scope) and fam not in found_families:
                found_families.append(fam)
        if found_families:
            break
    if family is None:
        if not found_families:
            raise _unknown("hardware", text, table)
        if len(found_families) > 1:
            raise _ambiguous("hardware", text, found_families)
        family = found_families[0]
    elif found_families and found_families[0] != family:
        raise ValueError(
            f"hardware {text!r} names both {found_families[0]} and {family} "
            f"({notes[0] if notes else 'slice'})"
        )
    mem = re.search(r"(\d+(?:\.\d+)?)\s*(gb|gib|g)(?![a-z0-9])", low)
    if mem and memory is None and not notes:  # an instance name's "-8g" is a count
        if mem.group(2) != "g" or float(mem.group(1)) >= 16:
            memory = float(mem.group(1))
    form = None
    forms = (
        (r"sxm\d?", "sxm"),
        (r"pcie", "pcie"),
        (r"oam", "oam"),
        (r"nvl ?(?:72|36)", "nvl72"),
        (r"nvl ?32", "nvl32"),
        (r"nvl ?2(?![0-9])", "nvl2"),
        (r"nvl(?![0-9])", "nvl"),
    )
    for pattern, name in forms:
        if re.search(pattern, low):
            if name in ("nvl72", "nvl32", "nvl2"):
                system = name
            else:
                form = name
            break
    if system is None:
        if re.search(r"dgx|superpod", low):
            system = "dgx"
        elif re.search(r"ultra ?server", low):
            system = "ultraserver"
        elif re.search(r"(?<![a-z])pod(?![a-z])", low) and family.startswith("tpu"):
            system = "pod"
    spec = _pick(text, family, form, memory, system or "", table)
    outside = re.sub(r"\([^)]*\)", " ", low)
    strange = [w for w in re.findall(r"[a-z0-9]+", outside) if not _known_word(w)]
    if strange:
        raise _unknown(
            "hardware", text, table, f": unrecognized word(s) {', '.join(strange)}"
        )
    ignored = tuple(w for p in re.findall(r"\(([^)]*)\)", low) for w in p.split())
    return HardwareName(text, spec, "parsed", slice_chips=slice_chips,
                        notes=tuple(notes), ignored=ignored, **base)  # fmt: skip


_KNOWN = {"sxm", "pcie", "oam", "nvl", "dgx", "gb", "gib", "lite", "pro", "rtx",
          "ultra", "mega", "superchip", "edition", "blackwell", "hopper", "ampere",
          "volta", "xlarge", "g", "hgx", "spx", "cpx", "instance", "vm",
          "grace"}  # fmt: skip


def _known_word(w: str) -> bool:
    """A word a hardware name may carry besides its chip (sizes, forms, vendors)."""
    return (
        w in _NOISE
        or w in _KNOWN
        or bool(re.fullmatch(r"\d+(?:[a-z]{0,6})", w))  # 80gb, 700w, 48xlarge, 8g
        or bool(re.fullmatch(r"(?:sxm|pcie|oam|nvl|hbm|gen|nps|x|v)\d*[a-z]?", w))
        or any(re.search(p, w) for _, p in _FAMILIES)
    )


def _pick(text, family, form, memory, system, table) -> str:
    """The one spec of `family` with that system, form factor and memory (or error)."""
    known = set(table.values())
    fam = [s for s, t in HARDWARE_TRAITS.items() if t[0] == family and s in known]
    what = f" ({family})"
    if not fam:
        raise _unknown("hardware", text, table, f": no bundled spec of {family}")
    cands = [s for s in fam if HARDWARE_TRAITS[s][3] == system]
    if not cands and system in ("pod", "dgx"):
        # a DGX is NVIDIA's server around the same HGX board as the chip-level spec;
        # a TPU family without a pod spec keeps its host spec
        cands = [s for s in fam if HARDWARE_TRAITS[s][3] == ""]
    if not cands:
        raise ValueError(
            f"hardware {text!r}{what}: no bundled {system} spec; the {family} specs "
            f"are {', '.join(sorted(fam))}"
        )
    if form:
        cands = [s for s in cands if HARDWARE_TRAITS[s][1] == form]
    elif len({HARDWARE_TRAITS[s][1] for s in cands}) > 1 and family in _USUAL_FORM:
        cands = [s for s in cands if HARDWARE_TRAITS[s][1] == _USUAL_FORM[family]]
    if memory is not None:
        cands = [s for s in cands if any(abs(m - memory) <= 0.02 * m
                                         for m in HARDWARE_TRAITS[s][2])]  # fmt: skip
    if not cands:
        sizes = ", ".join(
            f"{s} ({HARDWARE_TRAITS[s][1] or 'chip'}, "
            f"{'/'.join(f'{m:g}' for m in HARDWARE_TRAITS[s][2])} GB)"
            for s in sorted(fam)
        )
        raise ValueError(
            f"hardware {text!r}: no bundled {family} spec with "
            f"{'form factor ' + form if form else ''}"
            f"{' and ' if form and memory else ''}"
            f"{f'{memory:g} GB' if memory is not None else ''}; candidates {sizes}"
        )
    if len(cands) > 1:
        raise _ambiguous("hardware", text, cands)
    return cands[0]


def _with_counting(name: HardwareName) -> HardwareName:
    fam = HARDWARE_TRAITS.get(name.spec, ("",))[0]
    cores, devices = COUNTING.get(fam, (1.0, 1.0))
    return HardwareName(**(asdict(name) | dict(cores_per_chip=cores,
                                               devices_per_chip=devices)))  # fmt: skip


# ---- models -----------------------------------------------------------------------
_QUANT = [
    (r"nvfp4|mxfp4|(?<![a-z])fp4", "fp4"),
    (r"(?<![a-z])fp8|w8a8-?fp8", "fp8"),
    (r"awq|gptq|int4|w4a16|w4a8|4-?bit", "int4"),
    (r"int8|w8a8|w8a16|8-?bit", "int8"),
]
_DECOR = (r"instruct|chat|hf|base|it|pretrain(?:ed)?|preview|moe|dense|model|"
          r"bf16|fp16|dynamic|quantized|reasoning|thinking|distill|sft|lora|"
          r"tp\d+")  # fmt: skip
_SIZE = r"\d+(?:\.\d+)?[bmt]"


@dataclass(frozen=True)
class WorkloadName:
    """What a model name resolved to (the JSON `resolved_model`).

    Attributes:
        text: the name as written.
        spec: the bundled spec's stem.
        how: "alias", "parsed" or "path".
        precision: the weights' format a quantized checkpoint's name states ("fp8",
            "fp4", "int4", "int8"), else None.
        kv_cache: the KV-cache format the checkpoint sets, else None: NVIDIA's
            ModelOpt FP8 and NVFP4 checkpoints (`nvidia/...-FP8`, `-FP4`) write
            `kv_cache_quant_algo: FP8` into their `hf_quant_config.json`
            (TensorRT-Model-Optimizer's export), and the engines' default KV dtype
            ("auto" in TensorRT-LLM, vLLM and SGLang) follows it.
        finetune: "lora" or "sft" when the name says so, else None.
        variants: bracketed variants of a benchmark row ("tokendrop", "mtp", ...).
        ignored: words that were dropped (organisation, chat/instruct suffixes, ...).
    """

    text: str
    spec: str
    how: str
    precision: str | None = None
    kv_cache: str | None = None
    finetune: str | None = None
    variants: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }


def _model_tokens(text: str) -> list[str]:
    return re.findall(r"\d+x\d+[bmt]|" + _SIZE + r"|[a-z]+|\d+(?:\.\d+)?", text.lower())


def parse_workload(
    text: str, registry: dict[str, tuple[str, ...]], params=lambda stem: None
) -> WorkloadName:
    """Resolve a model name (module docstring) against {stem: aliases}.

    `params(stem)` gives a spec's published parameter count (or None), used to check
    a total size the aliases lack.

    Raises:
        ValueError: unknown (with close matches) or ambiguous (with the candidates).
    """
    table = _alias_table(registry)
    if normalize(text) in table:
        return WorkloadName(text, table[normalize(text)], "alias")
    low = text.strip().lower()
    ignored = []
    org = None
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", low):  # a Hugging Face id: org/name
        org, low = low.split("/")
        ignored.append(org)
    variants = tuple(
        v for v in ("tokendrop", "dropless", "mtp") if re.search(rf"\b{v}\b", low)
    )
    ignored += re.findall(r"\(([^)]*)\)", low)
    low = re.sub(r"\([^)]*\)", " ", low)
    precision = None
    for pattern, dtype in _QUANT:
        if re.search(pattern, low):
            precision = precision or dtype
            low = re.sub(pattern, " ", low)
    finetune = "lora" if re.search(r"\blora\b", low) else None
    finetune = finetune or ("sft" if re.search(r"\bsft\b", low) else None)
    words = re.split(r"[\s\-_/,]+", low)
    kept = []
    for w in words:
        if re.fullmatch(_DECOR, w) or re.fullmatch(
            r"v\d+(\.\d+)+|\d{4}|\d{6}|99(\.9)?", w
        ):
            ignored.append(w)
        elif w:
            kept.append(w)
    kv = "fp8" if org == "nvidia" and precision in ("fp8", "fp4") else None
    out = dict(precision=precision, kv_cache=kv, finetune=finetune, variants=variants)
    key = normalize(" ".join(kept))
    if key in table:
        return WorkloadName(text, table[key], "parsed", ignored=tuple(ignored), **out)
    sizes = [w for w in kept if re.fullmatch(_SIZE, w)]
    for size in sizes:  # a total size the aliases lack (DeepSeek-V3 671B)
        rest = normalize(" ".join(w for w in kept if w != size))
        stem = table.get(rest)
        if stem and _size_agrees(size, params(stem)):
            return WorkloadName(
                text, stem, "parsed", ignored=tuple(ignored + [size]), **out
            )
    query = set(_model_tokens(" ".join(kept)))
    found = set()
    for stem, aliases in registry.items() if query else ():
        spelled = set(_model_tokens(" ".join((stem, *aliases))))
        if any(query <= set(_model_tokens(a)) for a in (stem, *aliases)) and all(
            z in spelled or _size_agrees(z, params(stem)) for z in sizes
        ):
            found.add(stem)
    if len(found) > 1:
        raise _ambiguous("workloads", text, found)
    if found and sizes:  # a family name without a size is never enough
        return WorkloadName(text, found.pop(), "parsed", ignored=tuple(ignored), **out)
    raise _unknown("workloads", text, table)


def _size_agrees(size: str, published) -> bool:
    """A printed total size (`671b`) within 15% of a published parameter count."""
    if not published:
        return False
    scale = {"m": 1e6, "b": 1e9, "t": 1e12}[size[-1]]
    return abs(float(size[:-1]) * scale - published) <= 0.15 * published
