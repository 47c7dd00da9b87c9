"""The repository files a stage script imports, directly or through other repository modules.

Every `import` / `from ... import` anywhere in a file counts (also those inside functions), so
the closure is what the stage can run, not only what it runs first."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dreamdiffusion"
STAGE_HELPERS = {"_bootstrap"}  # modules beside the stage scripts that they import


def module_file(name: str) -> Path | None:
    """The repository file of a dotted module name (package -> its __init__.py), or None."""
    if name in STAGE_HELPERS:
        return ROOT / "stages" / f"{name}.py"
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules (and `from` targets, which may be modules) a file imports."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".") if package else []
            base = ".".join(parts[: len(parts) - node.level + 1] if node.level else []) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""])) if node.level else node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def closure(script: Path) -> set[Path]:
    """`script` and every repository file reachable from it through imports (parents' __init__ too)."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def write_dvc_deps(dvc_file: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code deps in dvc.yaml as its import closure (data/ and models/ deps kept)."""
    import re

    import yaml

    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    lines, out, current = dvc_file.read_text().splitlines(), [], None
    i = 0
    while i < len(lines):
        match = re.match(r"^  (\w+):$", lines[i])
        current = match.group(1) if match and match.group(1) in stages else current
        out.append(lines[i])
        if lines[i] == "    deps:" and current:
            data = [d for d in stages[current]["deps"] if d.startswith(("data/", "models/"))]
            code = sorted(str(p.relative_to(ROOT)) for p in closure(ROOT / "stages" / f"{current}.py"))
            code.remove(f"stages/{current}.py")
            out += [f"      - {d}" for d in [f"stages/{current}.py", *code, *data]]
            i += 1
            while i < len(lines) and lines[i].startswith("      - "):
                i += 1
            continue
        i += 1
    dvc_file.write_text("\n".join(out) + "\n")


if __name__ == "__main__":  # python tests/closure.py: bring dvc.yaml's code deps up to date
    write_dvc_deps()
