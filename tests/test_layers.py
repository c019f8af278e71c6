"""The package's layers: no module imports from a layer above its own (docs/architecture.md)."""

import ast
from pathlib import Path

import langprune

LAYERS = [
    {"errors"},
    {"storage", "languages", "settings", "tracking"},
    {"text"},
    {"data", "engine"},
    {"models"},
    {"calibration", "self_generated"},
    {"compress"},
    {"evaluation"},
    {"runs"},
    {"analysis"},
    {"experiments"},
    {"api"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def top_level(module: Path, root: Path) -> str:
    return module.relative_to(root).parts[0].removesuffix(".py")


def imported_packages(path: Path, root: Path):
    """The top-level langprune parts a module imports (relative or absolute)."""
    package = path.relative_to(root).parent.parts
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    yield parts[0]
                else:  # `from . import x` at the top level
                    yield from (alias.name for alias in node.names)
            elif node.module and node.module.startswith("langprune."):
                yield node.module.split(".")[1]


def test_no_module_imports_from_a_layer_above():
    root = Path(langprune.__file__).parent
    offences = []
    for path in sorted(root.rglob("*.py")):
        own = top_level(path, root)
        for imported in imported_packages(path, root):
            if imported in RANK and RANK[imported] > RANK[own]:
                offences.append(f"{path.relative_to(root)} imports {imported}")
    assert not offences, offences
    assert {top_level(p, root) for p in root.rglob("*.py")} <= set(RANK)
