"""The import graph keeps the layering ARCHITECTURE.md promises.

Layers, bottom to top: the core ``edgediff`` < ``exporters`` (Triton repository writer) < ``services`` (long-running
processes) < ``loadtest`` (a client of the services) < ``cli`` (the command line). A module may import its own layer
or a lower one, never a higher one; no module takes part in an import cycle (imports for annotations only, under
``if TYPE_CHECKING:``, count: a type that needs its user is a circle all the same); and an import of the project's own
modules inside a function is allowed only where the imported module needs an optional backend (onnxruntime,
OpenVINO, grpc, ...), i.e. where a lazy import keeps a lighter install (a phone's) working. The dispatcher's
table of subcommand modules (``cli.main.COMMANDS``) counts as imports of ``cli.main``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"edgediff": 0, "exporters": 1, "services": 2, "loadtest": 3, "cli": 4}
# what `pip install edgediff` always brings (pyproject's dependencies) plus the standard library; anything else
# imported at a module's top makes that module "heavy": it may be imported lazily
REQUIRED = {"torch", "diffusers", "safetensors", "numpy", "PIL", "psutil", "rich"}


@dataclass
class Module:
    name: str
    path: Path
    top: set[str] = field(default_factory=set)  # project modules imported at module level
    lazy: set[str] = field(default_factory=set)  # project modules imported inside a function
    typing: set[str] = field(default_factory=set)  # project modules imported under `if TYPE_CHECKING:`
    optional_top: set[str] = field(default_factory=set)  # optional third-party packages imported at module level


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _scan() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            if "_pb2" not in path.name:
                modules[_module_name(path)] = Module(_module_name(path), path)

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
        return None

    for module in modules.values():
        is_package = module.path.name == "__init__.py"

        def record(node: ast.Import | ast.ImportFrom, in_function: bool, for_typing: bool, module: Module = module,
                   is_package: bool = is_package) -> None:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = module.name.split(".") if is_package else module.name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                # `from pkg import submodule` imports the submodule (and pkg's __init__, as any import of a
                # submodule does, which is not an edge of the design); `from module import name` imports module
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                names = submodules if len(submodules) == len(node.names) else [base, *submodules]
            for name in names:
                target = resolve(name)
                if target is not None and target != module.name:
                    (module.typing if for_typing else module.lazy if in_function else module.top).add(target)
                elif target is None and not (in_function or for_typing) and (
                        node.level == 0 if isinstance(node, ast.ImportFrom) else True):
                    root = name.split(".")[0]
                    if root and root not in LAYERS and root not in REQUIRED and root not in sys.stdlib_module_names:
                        module.optional_top.add(root)

        def visit(node: ast.AST, in_function: bool, for_typing: bool, module: Module = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    record(child, in_function, for_typing)
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                      for_typing or (isinstance(child, ast.If) and _is_type_checking(child)))

        visit(ast.parse(module.path.read_text()), False, False)

    from cli.main import COMMANDS

    modules["cli.main"].top |= {module_name for module_name, _help in COMMANDS.values()}
    return modules


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return _scan()


def _layer(name: str) -> int:
    return LAYERS[name.split(".")[0]]


def test_the_scan_sees_the_project(modules):
    assert {"edgediff.pipeline", "cli.main", "services.gateway.server", "exporters.repository"} <= set(modules)
    assert "edgediff.variants" in modules["cli.generate"].top | modules["cli.generate"].lazy
    assert "cli.serve" in modules["cli.main"].top  # the dispatcher's table counts


def test_no_import_points_up(modules):
    upward = sorted(f"{m.name} -> {target}" for m in modules.values() for target in m.top | m.lazy | m.typing
                    if _layer(target) > _layer(m.name))
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle(modules):
    graph = {name: m.top | m.lazy | m.typing for name, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in graph:
            if node not in index:
                connect(node)
    finally:
        sys.setrecursionlimit(limit)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_lazy_imports_only_of_heavy_modules(modules):
    heavy_memo: dict[str, bool] = {}

    def heavy(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name not in heavy_memo:
            module = modules[name]
            heavy_memo[name] = bool(module.optional_top) or any(
                heavy(t, seen | {name}) for t in module.top if t not in seen and t != name)
        return heavy_memo[name]

    light = defaultdict(list)
    for module in modules.values():
        for target in sorted(module.lazy):
            if not heavy(target):
                light[module.name].append(target)
    listing = "\n".join(f"{name}: {', '.join(targets)}" for name, targets in sorted(light.items()))
    assert not light, ("imports inside functions of modules that need no optional backend (import them at the "
                       "module's top):\n" + listing)


def test_heavy_detection_knows_the_optional_backends(modules):
    assert {"grpc", "grpc_health", "grpc_reflection"} <= modules["services.gateway.server"].optional_top
    assert not modules["edgediff.pipeline"].optional_top  # torch + diffusers only
    assert not modules["edgediff.artifacts.openvino_ir"].optional_top  # it imports openvino where it uses it
