"""The package's architecture as the code has it: no import cycles, imports that only point down the floors
of docs/design.md, and an import inside a function only with its reason beside it.

Read from the source (nothing is imported): every `import` / `from … import` of a distbp module, at module
level and inside functions alike, except those under `if TYPE_CHECKING:` (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "distbp"

# the floors, ground first (docs/design.md draws them): a module may import its own folder (its "room") and
# any room on a lower floor, nothing on its own floor but itself and nothing above
FLOORS = [
    ["distbp.errors", "distbp.units", "distbp.version", "distbp.host", "distbp.testing"],
    ["distbp.comm"],
    ["distbp.observe"],
    ["distbp.nn", "distbp.data"],
    ["distbp.sync"],
    ["distbp.config"],
    ["distbp.train"],
    ["distbp.api", "distbp.predict", "distbp.export", "distbp.bench"],
    ["distbp.cli", "distbp.sklearn"],
    ["distbp", "distbp.__main__", "distbp.sklearn_onnx"],
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to: distbp.nn.model -> distbp.nn."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(n.lineno for sub in node.body for n in ast.walk(sub) if hasattr(n, "lineno"))
    return lines


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import of a distbp module in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    skip = type_checking_lines(tree)
    inside = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif node.module and node.level == 0:
            # `from pkg import name` imports pkg.name when that is a module, else pkg
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                out.append((target, node.lineno, node.lineno in inside))
    return out


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = modules()
    return {name: [i for i in imports_of(path, known) if i[0] != name] for name, path in known.items()}


def test_every_module_of_the_package_stands_on_a_documented_floor():
    unplaced = sorted({room_of(m) for m in modules()} - set(FLOOR))
    assert unplaced == [], f"add these to FLOORS (and to docs/design.md): {unplaced}"


def test_the_package_has_no_import_cycles():
    edges = {m: {t for t, _, _ in imports} for m, imports in graph().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_point_down_the_floors():
    upward = []
    for module, imports in graph().items():
        here = room_of(module)
        for target, line, _ in imports:
            there = room_of(target)
            if there != here and FLOOR[there] >= FLOOR[here]:
                upward.append(f"{module}:{line} imports {target} (floor {FLOOR[there]} from floor {FLOOR[here]})")
    assert upward == []


def test_an_import_inside_a_function_says_why_beside_it_or_above_its_block():
    silent = []
    for module, path in modules().items():
        lines = path.read_text().splitlines()
        for target, line, inside in dict.fromkeys(imports_of(path, modules())):
            first = line - 1  # the first line of the block of imports this one stands in
            while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                first -= 1
            above = lines[first - 1].strip() if first > 0 else ""
            if inside and "#" not in lines[line - 1] and not above.startswith("#"):
                silent.append(f"{module}:{line} imports {target} inside a function without a reason")
    assert silent == []


@pytest.mark.parametrize("room", sorted({r for r in FLOOR if (PACKAGE.parent / r.replace(".", "/")).is_dir()}
                                        - {"distbp"}))
def test_each_folder_says_what_it_is_for_and_what_it_may_import(room):
    init = PACKAGE.parent / room.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "May import" in doc, f"{init}: say what the folder is for and what it may import"
    body = ast.parse(init.read_text()).body
    assert len(body) == 1, f"{init} holds code: a folder's __init__ only describes it"
