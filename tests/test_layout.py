"""The package is shaped like the pipeline: shared code below the stages, stages in pipeline order,
tooling above; no module imports from a higher floor, no import loop, short files and functions."""
import ast
from pathlib import Path

import pytest

from closure import imported_modules, module_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dreamdiffusion"
# Floors, lowest first. A stage may use the shared core and the stages before it, never one after it.
FLOORS = ["core", "download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate", "tools"]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 50


def module_name(path: Path) -> str:
    """Dotted module name of a package file (a package's __init__ -> the package)."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def floor(module: str) -> int:
    """The floor of a dreamdiffusion module (its first sub-package)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in FLOORS:
        raise AssertionError(f"{module}: every module lives in one of {FLOORS}")
    return FLOORS.index(parts[1])


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file, also inside functions)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        targets = {module_file(name) for name in imported_modules(path)}
        graph[module_name(path)] = {module_name(t) for t in targets if t is not None and t != path}
    return graph


def test_every_module_sits_on_a_floor():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert top_level == [], f"modules outside a floor package: {top_level}"
    for module in package_graph():
        if module != "dreamdiffusion":
            floor(module)


def test_no_import_climbs_to_a_higher_floor():
    climbs = [f"{m} (floor {FLOORS[floor(m)]}) -> {t} (floor {FLOORS[floor(t)]})"
              for m, targets in package_graph().items() if m != "dreamdiffusion"
              for t in targets if t != "dreamdiffusion" and floor(t) > floor(m)]
    assert climbs == []


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of `graph` as a path of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def test_no_import_loop():
    assert find_loop(package_graph()) is None


def test_find_loop_finds_a_loop():
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b"}, "b": set()}) is None


def test_package_inits_re_export_nothing():
    """Importing a package runs no module of it: a stage's closure holds only what it imports."""
    for init in PACKAGE.rglob("__init__.py"):
        package = module_name(init)
        own = [n for n in imported_modules(init) if n.startswith(package + ".")]
        assert own == [], f"{init.relative_to(ROOT)} imports {own}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_are_short(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{len(lines)} lines"
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse("\n".join(lines)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
