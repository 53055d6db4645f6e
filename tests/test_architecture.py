"""The shape of the code, checked from the source (ast, nothing imported): the library's
imports form no cycle, no module imports another's private names, the library imports
no UI, database or evaluation code, eval/ and the app use only the public API, and no
module of the library grows past about 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "semollama_core"
FORBIDDEN_IN_LIBRARY = ("gradio", "gradio_client", "sqlalchemy", "ui", "eval", "app")
MAX_LINES = 520


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*folders: str) -> dict[str, Path]:
    found = {}
    for folder in folders:
        base = ROOT / folder
        paths = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
        found.update({module_name(p): p for p in paths if "__pycache__" not in p.parts})
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, lazy ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


def resolve(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The known modules an import reaches: the module itself, or submodules imported by name."""
    reached = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    if module in known and len(reached) < len(names or [None]):
        reached.append(module)
    return reached


LIB = sources(LIBRARY)
APP_SIDE = sources("eval", "ui", "app.py")


def test_the_library_has_no_import_cycle():
    graph = {name: set() for name in LIB}
    for name, path in LIB.items():
        for module, names, _ in imports(name, path):
            for target in resolve(module, names, LIB):
                # a package's __init__ is run by importing anything under it: no edge needed for that
                if target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("group", ["library", "app side"])
def test_no_private_name_is_imported_across_modules(group):
    modules = LIB if group == "library" else {**LIB, **APP_SIDE}
    checked = LIB if group == "library" else APP_SIDE
    bad = []
    for name, path in checked.items():
        for module, names, line in imports(name, path):
            if module.split(".")[0] not in (LIBRARY, "eval", "ui", "app") or module == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")
                       and f"{module}.{n}" not in modules]
            bad += [f"{path.relative_to(ROOT)}:{line}: {module}.{n}" for n in private]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_library_imports_no_ui_database_or_evaluation_code():
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}"
           for name, path in LIB.items() for module, _, line in imports(name, path)
           if module.split(".")[0] in FORBIDDEN_IN_LIBRARY]
    assert not bad, "the library imports app-side code:\n" + "\n".join(bad)


def test_eval_and_the_app_use_only_the_public_api():
    import semollama_core

    bad = []
    for name, path in APP_SIDE.items():
        for module, names, line in imports(name, path):
            if module.split(".")[0] != LIBRARY:
                continue
            if module != LIBRARY:
                bad.append(f"{path.relative_to(ROOT)}:{line}: from {module} import ...")
            else:
                bad += [f"{path.relative_to(ROOT)}:{line}: {n} is not in semollama_core.__all__"
                        for n in names if n not in semollama_core.__all__]
    assert not bad, "eval/, ui/ and app.py must use `from semollama_core import <public name>`:\n" + "\n".join(bad)


def test_no_library_module_is_over_about_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in LIB.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by job (over {MAX_LINES} lines): {long}"
