"""The house's floors (docs/ARCHITECTURE.md): every import in src/resnets, function-local ones included, points to
its own floor or one below, and no modules import each other in a circle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "resnets"


def floors() -> list[list[str]]:
    """The floors of docs/ARCHITECTURE.md, bottom first: each a list of names of modules or packages under resnets
    ("__init__" is the package's own module)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```floors\n(.*?)```", text, re.DOTALL)
    assert block, "docs/ARCHITECTURE.md has no ```floors block"
    return [line.split(":", 1)[1].split() for line in reversed(block[1].strip().splitlines())]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The modules of resnets that module `name` imports anywhere in its file; `from X import y` counts X.y where
    that is a module (a submodule imported by name), else X."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def floor_of(name: str, table: list[list[str]]) -> int:
    """The floor whose entry is the longest prefix of `name` (resnets.serving.weights: "serving")."""
    inner = name.removeprefix("resnets").removeprefix(".") or "__init__"
    matches = [(len(entry), i) for i, floor in enumerate(table) for entry in floor
               if inner == entry or inner.startswith(entry + ".")]
    assert matches, f"{name} is on no floor of docs/ARCHITECTURE.md"
    return max(matches)[1]


def test_imports_point_to_the_same_floor_or_below():
    table = floors()
    upward = [f"{name} (floor {floor_of(name, table)}) imports {other} (floor {floor_of(other, table)})"
              for name in sorted(MODULES) for other in sorted(imports(name))
              if floor_of(other, table) > floor_of(name, table)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = {name: imports(name) for name in MODULES}
    state, circles = {}, []  # state: 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                circles.append(" -> ".join([*path[path.index(other):], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_the_checks_see_an_upward_import_and_a_circle():
    """The checks themselves: the floors put serving above models, and a function-local import counts."""
    table = floors()
    assert floor_of("resnets.serving.weights", table) > floor_of("resnets.models.registry", table)
    assert "resnets.rundir" in imports("resnets.cli")  # imported inside a function there
