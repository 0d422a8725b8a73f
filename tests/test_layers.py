"""The package's layers, as the code has them: each sub-package imports only from the ones below it, no module
imports another module's private name, and the benchmarks use only the public and experimental names."""

from __future__ import annotations

import ast
from pathlib import Path

import diffora
import diffora.experimental

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffora"
# bottom to top; a module may import from its own layer and the ones below it
LAYERS = ["top", "tasks", "training", "method", "integrations", "app"]
TOP_LEVEL = {"config", "errors", "io"}


def layer_of(module: str) -> str | None:
    """'diffora.method.dam' -> 'method'; the shared top-level modules -> 'top'; the package faces -> None."""
    parts = module.split(".")
    if parts[0] != "diffora" or len(parts) < 2:
        return None
    if parts[1] in LAYERS:
        return parts[1]
    return "top" if parts[1] in TOP_LEVEL else None


def imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    """Every import in the file, function-level ones included."""
    return [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_import_inside_the_package_points_down_or_sideways() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        here = layer_of(module_name(path))
        if here is None:
            continue
        for node in imports(path):
            targets = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for target in filter(None, targets):
                there = layer_of(target)
                if there is not None and LAYERS.index(there) > LAYERS.index(here):
                    upward.append(f"{module_name(path)} -> {target}")
    assert not upward, upward
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS) - {
        "top"
    }


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [
        f"{module_name(path)}: {node.module}.{alias.name}"
        for path in PACKAGE.rglob("*.py")
        for node in imports(path)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffora")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not private, private


def test_benchmarks_and_examples_use_only_public_and_experimental_names() -> None:
    allowed = {"diffora": set(diffora.__all__), "diffora.experimental": set(diffora.experimental.__all__)}
    outside = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
        for folder in ("benchmarks", "examples")
        for path in (ROOT / folder).glob("*.py")  # the scripts; their tests may reach inside
        for node in imports(path)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffora"
        for alias in node.names
        if alias.name not in allowed.get(node.module, set())
    ]
    assert not outside, outside


def test_every_public_and_experimental_name_resolves() -> None:
    for name in diffora.__all__:
        assert getattr(diffora, name) is not None, name
    for name in diffora.experimental.__all__:
        assert getattr(diffora.experimental, name) is not None, name


def test_no_import_cycle_between_modules() -> None:
    """Function-level imports count: a cycle there still ties the modules into one knot."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in imports(path):
            targets = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if (
                isinstance(node, ast.ImportFrom) and node.module in modules
            ):  # `from diffora.app import pipeline`
                targets += [f"{node.module}.{alias.name}" for alias in node.names]
            edges[name] |= {t for t in filter(None, targets) if t in modules and t != name}
    faces = {name for name in modules if modules[name].name == "__init__.py"}  # lazy faces re-export only
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(edges[name] - faces):
            if state.get(target) == 1:
                return [*trail, name, target]
            if target not in state and (cycle := visit(target, [*trail, name])):
                return cycle
        state[name] = 2
        return None

    cycles = [cycle for name in sorted(modules) if name not in state and (cycle := visit(name, []))]
    assert not cycles, cycles
