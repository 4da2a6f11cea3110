"""The package follows its layers (ARCHITECTURE.md): imports point downward only,
there is no import cycle (lazy imports inside functions included), and the model
layers do no file I/O."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "diffperf"
LAYER = {
    "core": 0,
    "specs": 1,
    "model": 2,
    "analysis": 3,
    "io": 4,
    "validation": 5,
    "viz": 5,
    "cli": 6,
    "explore": 6,
}
"""Rank of each subpackage; a module may import from its own or a lower rank."""
FORBIDDEN_LOW = {"optax", "tomllib", "pathlib", "csv", "json", "open"}
PUBLIC_ANALYSES = ("optimize", "calibrate", "validate", "sweep", "sensitivity")


def _modules() -> dict[str, Path]:
    """Dotted module name (relative to diffperf, "" for the package) -> path."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(mod: str, path: Path) -> str:
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def _imports(mod: str, path: Path) -> set[str]:
    """Modules of diffperf that `mod` imports anywhere in its body (lazy included)."""
    out = set()
    pkg = _package_of(mod, path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "diffperf":
                target = node.module[len("diffperf") :].lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            cands = [f"{target}.{n}" if target else n for n in names]
            hits = [c for c in cands if c in MODULES]
            out |= set(hits) if hits else ({target} if target in MODULES else set())
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "diffperf":
                    out.add(a.name[len("diffperf") :].lstrip("."))
    out.discard(mod)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(mod: str) -> int:
    return 99 if mod == "" else LAYER[mod.split(".")[0]]


def test_every_module_lives_in_a_layer():
    flat = [
        m for m in MODULES if m and "." not in m and MODULES[m].name != "__init__.py"
    ]
    assert flat == [], f"modules outside the layer subpackages: {flat}"
    assert {m.split(".")[0] for m in MODULES if m} == set(LAYER)
    assert len(LAYER) >= 4


def test_imports_point_downward():
    for mod, deps in GRAPH.items():
        for dep in deps:
            if dep == "":
                raise AssertionError(f"{mod} imports the package root")
            assert _layer(dep) <= _layer(mod), (
                f"{mod} (layer {_layer(mod)}) imports {dep}"
            )


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in GRAPH[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_subpackages_use_no_private_name_of_another_module():
    """`from .x import _name` across modules is a private cross-import."""
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("diffperf")
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (
                    f"{mod} imports private {private} from {node.module}"
                )


def test_model_layers_do_no_file_io():
    for mod, path in MODULES.items():
        if not mod or _layer(mod) > LAYER["model"]:
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
        assert not (imported & FORBIDDEN_LOW), (mod, imported & FORBIDDEN_LOW)
        assert "open(" not in path.read_text(), mod


def test_the_analyses_are_public():
    import diffperf as dp

    for name in PUBLIC_ANALYSES:
        assert callable(getattr(dp, name)), name
        assert name in dp.__all__


def test_experiments_and_benchmarks_use_only_the_public_api():
    """`import diffperf as dp` and names of `dp.__all__` only (no submodule)."""
    import diffperf as dp

    public = set(dp.__all__) | {"__version__"}
    root = PKG.parent
    paths = [*root.glob("experiments/*/*.py"), *root.glob("benchmarks/*.py")]
    assert paths
    for path in paths:
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "diffperf"
            ):
                assert node.module == "diffperf", f"{path}: from {node.module} import"
                private = [a.name for a in node.names if a.name not in public]
                assert not private, f"{path}: from diffperf import {private}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] != "diffperf" or a.name == "diffperf", (
                        f"{path}: import {a.name}"
                    )
                    if a.name == "diffperf":
                        aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                assert node.attr in public, f"{path}: {node.value.id}.{node.attr}"
