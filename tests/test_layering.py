"""The codebase's layering rules, checked on the source: no ``sys.path`` edits, no module
importing another's private names, no import cycles inside the library, the model layer free
of the CUDA-graph wrapper, and no command line importing another's helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("electra_fn", "experiments", "benchmarks")
SOURCES = sorted(p for d in (*OURS, "tests") for p in (REPO / d).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[str, str, int]]:
    """(module, imported name or "", line) of every import of ours in ``path``."""
    tree, name = _tree(path), _module_name(path)
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = name.split(".")[: len(name.split(".")) - n.level + is_pkg]
                mod = ".".join(base + ([n.module] if n.module else []))
            else:
                mod = n.module or ""
            out += [(mod, a.name, n.lineno) for a in n.names if mod.startswith(OURS)]
        elif isinstance(n, ast.Import):
            out += [(a.name, "", n.lineno) for a in n.names if a.name.startswith(OURS)]
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_sys_path_edits_and_no_private_imports(path):
    tree = _tree(path)
    aliases = {}
    for mod, name, line in _imports(path):
        assert not (name.startswith("_") and not name.startswith("__")), \
            f"{path}:{line}: imports the private {mod}.{name}"
        if name:
            aliases[name] = mod
        else:
            aliases[mod.split(".")[-1]] = mod
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and \
                isinstance(n.value.value, ast.Name) and n.value.value.id == "sys":
            assert n.value.attr != "path" or n.attr not in ("insert", "append", "extend"), \
                f"{path}:{n.lineno}: edits sys.path"
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and \
                n.value.id in aliases and n.attr.startswith("_") and not n.attr.startswith("__"):
            raise AssertionError(f"{path}:{n.lineno}: uses the private {n.value.id}.{n.attr}")


def test_library_has_no_import_cycles():
    lib = {_module_name(p): p for p in (REPO / "electra_fn").rglob("*.py")}
    graph = {m: {mod if mod in lib else f"{mod}.{name}" for mod, name, _ in
                 _imports(p, top_level_only=True)} & set(lib) - {m, "electra_fn"}
             for m, p in lib.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_model_layer_and_commands_import_only_downward():
    for layer in ("model", "layers", "pretrain"):
        deps = {mod for mod, _, _ in _imports(REPO / "electra_fn" / f"{layer}.py")}
        names = {f"{mod}.{n}" for mod, n, _ in _imports(REPO / "electra_fn" / f"{layer}.py")}
        assert "electra_fn.cuda_graph" not in deps | names, f"{layer}.py imports cuda_graph"
    for path in (REPO / "experiments").glob("*.py"):
        for mod, name, line in _imports(path):
            target = f"{mod}.{name}" if name else mod
            assert not (target.startswith("experiments.") and target.count(".") == 1
                        and target != "experiments.configs"), \
                f"{path}:{line}: a command line imports another ({target})"
