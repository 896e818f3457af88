"""The package's shape: public names exist, imports stay cheap, layers import only downwards.

These tests hold the architecture in place: the attack never sees training data, reporting never
imports evaluation, no import cycles, and no function grows past ~80 lines of code.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kktrecon

PACKAGE = Path(kktrecon.__file__).resolve().parent
MAX_FUNCTION_LINES = 80


def _modules() -> list[str]:
    """Every module of the package, found on disk: importing nothing, a broken import cannot hide one."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if not all((PACKAGE.parent.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue  # not inside a package (data files)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "kktrecon.__main__":
            names.append(name)
    return sorted(names)


def _source(module: str) -> Path:
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str, *, type_only: bool = False) -> set[str]:
    """kktrecon modules that ``module`` imports anywhere (functions included).

    ``TYPE_CHECKING`` blocks are excluded unless ``type_only``: a type-only import still ties two
    modules together (the type checker follows it), so the strictest tests count it.
    """
    tree = ast.parse(_source(module).read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if not type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("kktrecon")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kktrecon"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = set(_modules())
    return {name for name in found if name in known and name != module}


def _layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("module", _modules())
def test_every_name_in_all_exists(module: str) -> None:
    mod = importlib.import_module(module)
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which does not exist"


@pytest.mark.parametrize("module", [m for m in _modules() if _source(m).name == "__init__.py"])
def test_every_package_says_what_lives_there(module: str) -> None:
    doc = importlib.import_module(module).__doc__ or ""
    assert len(doc.splitlines()) >= 3, f"{module} needs a docstring saying what lives there"
    assert "__all__" in vars(importlib.import_module(module))


def test_public_api_imports_in_under_a_second_without_torch() -> None:
    code = (
        "import json, sys, time; t = time.perf_counter(); import kktrecon; "
        "print(json.dumps([time.perf_counter() - t, 'torch' in sys.modules]))"
    )
    seconds, torch_loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert not torch_loaded, "import kktrecon must stay lazy"
    assert seconds < 1.0


def test_the_attack_never_imports_training_data() -> None:
    code = (
        "import json, sys; import kktrecon.attack; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kktrecon.'))))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    forbidden = [m for m in loaded if _layer(m) in ("kktrecon.data", "kktrecon.evaluation", "kktrecon.victims")]
    assert forbidden == [], f"importing the attack loads {forbidden}"
    statically = {
        name
        for module in _modules()
        if _layer(module) == "kktrecon.attack"
        for name in _imports(module)
        if _layer(name) in ("kktrecon.data", "kktrecon.evaluation", "kktrecon.victims", "kktrecon.training")
    }
    assert statically == set()


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("kktrecon.reporting", "kktrecon.evaluation"),
        ("kktrecon.data", "kktrecon.models"),
        ("kktrecon.data", "kktrecon.attack"),
        ("kktrecon.models", "kktrecon.data"),
        ("kktrecon.models", "kktrecon.attack"),
        ("kktrecon.runs", "kktrecon.models"),
        ("kktrecon.files", "kktrecon.models"),
        ("kktrecon.configs", "kktrecon.models"),
        ("kktrecon.devices", "kktrecon.models"),
        ("kktrecon.candidates", "kktrecon.evaluation"),
        ("kktrecon.candidates", "kktrecon.attack"),
    ],
)
def test_layers_do_not_import_upwards(lower: str, upper: str) -> None:
    offending = {
        (module, name)
        for module in _modules()
        if _layer(module) == lower
        for name in _imports(module)
        if _layer(name) == upper
    }
    assert offending == set()


def test_no_import_cycles_between_stages() -> None:
    graph: dict[str, set[str]] = {}
    for module in _modules():
        if module == "kktrecon":
            continue
        graph.setdefault(_layer(module), set()).update(
            _layer(n) for n in _imports(module) if _layer(n) not in (_layer(module), "kktrecon")
        )
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return 0 if not body else node.end_lineno - body[0].lineno + 1  # type: ignore[operator]


def test_no_function_is_longer_than_eighty_lines_of_code() -> None:
    long = []
    for module in _modules():
        tree = ast.parse(_source(module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {_code_lines(node)} lines")
    assert long == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each holds an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycles_finds_every_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    """No two modules import each other, even through others, lazily, or only for types."""
    graph = {module: _imports(module, type_only=True) for module in _modules()}
    assert _cycles(graph) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("kktrecon.evaluation", "kktrecon.reporting"),  # evaluation computes results, reporting draws them
        ("kktrecon.reporting", "kktrecon.evaluation"),
        ("kktrecon.sweeps", "kktrecon.evaluation"),  # the sweep stays oracle-free by construction
    ],
)
def test_stages_kept_apart_never_import_each_other(importer: str, imported: str) -> None:
    offending = {
        (module, name)
        for module in _modules()
        if _layer(module) == importer
        for name in _imports(module, type_only=True)
        if _layer(name) == imported
    }
    assert offending == set()
