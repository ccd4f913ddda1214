"""The layout of docs/design.md §5 held by tests: what kalib/method may import, no import circle, no hidden
import (module-level __getattr__ outside kalib/__init__.py), no private name imported from another module,
no function over 80 lines, no configuration dataclass over 15 fields, a public API whose names resolve."""

import ast
import sys
from pathlib import Path

import pytest

import kalib

ROOT = Path(kalib.__file__).resolve().parent
# what kalib/method may import besides the standard library, numpy and torch (docs/design.md §5)
METHOD_MAY_IMPORT = ("kalib.method", "kalib.models", "kalib.train", "kalib.metrics", "kalib.augment",
                     "kalib.device", "kalib.distributed", "kalib.progress", "kalib.errors", "kalib.labels")


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = modules()


def is_package(name: str) -> bool:
    return (ROOT.parent / name.replace(".", "/") / "__init__.py").is_file()


def imports(name: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module imported from, name imported or None, line) for every import of a module, at any depth."""
    base = name.split(".") if is_package(name) else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parent = base[:len(base) - node.level + 1]
                module = ".".join(parent + ([module] if module else []))
            out += [(module, a.name, node.lineno) for a in node.names]
    return out


def kalib_target(module: str, imported: str | None) -> str:
    """The kalib module an import depends on: a submodule where the imported name is one."""
    if imported and f"{module}.{imported}" in MODULES:
        return f"{module}.{imported}"
    return module


def test_the_method_imports_only_the_primitives_torch_and_numpy():
    stdlib = sys.stdlib_module_names
    bad = []
    for name, tree in MODULES.items():
        if not name.startswith("kalib.method"):
            continue
        for module, imported, line in imports(name, tree):
            top = module.split(".")[0]
            if top == "kalib":
                target = kalib_target(module, imported)
                ok = any(target == a or target.startswith(a + ".") for a in METHOD_MAY_IMPORT)
            else:
                ok = top in stdlib or top in ("numpy", "torch") or top == "__future__"
            if not ok:
                bad.append(f"{name}:{line} imports {module}{'.' + imported if imported else ''}")
    assert not bad, "kalib/method may not import these (docs/design.md §5):\n" + "\n".join(bad)


def test_no_import_circle():
    graph = {name: set() for name in MODULES}
    for name, tree in MODULES.items():
        for module, imported, _ in imports(name, tree):
            target = kalib_target(module, imported)
            if target in graph and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"
    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_hidden_import_and_no_private_name_from_another_module():
    hidden = [name for name, tree in MODULES.items() if name != "kalib" and any(
        isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)]
    assert not hidden, f"module-level __getattr__ outside kalib/__init__.py: {hidden}"
    private = [f"{name}:{line} imports {module}.{imported}" for name, tree in MODULES.items()
               for module, imported, line in imports(name, tree)
               if module.startswith("kalib") and imported and imported.startswith("_") and not imported.startswith("__")]
    assert not private, "\n".join(private)


def test_no_function_over_80_lines():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)" for name, tree in MODULES.items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 80]
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_no_dataclass_over_15_fields():
    big = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                fields = sum(isinstance(s, ast.AnnAssign) for s in node.body)
                if fields > 15:
                    big.append(f"{name}.{node.name} ({fields} fields)")
    assert not big, "dataclasses over 15 fields: " + ", ".join(big)


@pytest.mark.parametrize("name", [n for n in kalib.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(kalib, name) is not None
    assert name in dir(kalib)


def test_the_public_api_is_documented_and_large_enough():
    assert len(kalib.__all__) >= 8
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        kalib.nonsense  # noqa: B018
