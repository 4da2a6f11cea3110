"""Imports point downward only (DESIGN.md layers), and layers 0-4 do no file I/O."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "diffperf"
LAYER = {
    "_custom_types": 0,
    "_units": 0,
    "_relax": 0,
    "_checks": 0,
    "_hardware": 1,
    "_workload": 2,
    "_mapping": 3,
    "_collectives": 3,
    "_fidelity": 3,
    "_ops": 4,
    "_breakdown": 4,
    "_dp": 4,
    "_host": 4,
    "_memory": 4,
    "_train": 4,
    "_layer": 4,
    "_infer": 4,
    "_cost": 4,
    "_serving": 5,
    "_trace": 5,
    "_roofline": 5,
    "_sensitivity": 6,
    "_sweep": 6,
    "_optimize": 6,
    "_calibrate": 6,
    "_validate": 7,
    "_validate_infer": 7,
    "io": 7,
    "cli": 7,
    "_cli_study": 7,
    "_cli_optimize": 7,
    "_cli_trace": 7,
    "_cli_calibrate": 7,
    "plots": 7,
    "__init__": 8,
}
FORBIDDEN_LOW = {"optax", "tomllib", "pathlib", "csv", "json", "open"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
    return out


def test_every_module_has_a_layer():
    assert {p.stem for p in PKG.glob("*.py")} == set(LAYER)


def test_imports_point_downward():
    for path in PKG.glob("*.py"):
        me = LAYER[path.stem]
        for mod in _imports(path) & set(LAYER):
            if mod == path.stem:
                continue
            assert LAYER[mod] <= me, f"{path.stem} (layer {me}) imports {mod}"


def test_model_layers_do_no_file_io():
    for path in PKG.glob("*.py"):
        if LAYER[path.stem] > 4:
            continue
        imported = _imports(path)
        assert not (imported & FORBIDDEN_LOW), (path.stem, imported & FORBIDDEN_LOW)
        assert "open(" not in path.read_text(), path.stem
