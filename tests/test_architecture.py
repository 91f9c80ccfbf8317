"""The package's shape, read from its source: which module may import which, and how long
a function may grow.

:data:`LAYERS` is the one table of the layering (the design document shows it): a
module may import modules of its own layer or of the layers below it, never above, so
data flows one way, maths -> layers -> models -> (data, training, evaluation,
analysis, export) -> the study -> the CLI. Every ``import`` counts, those inside
functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layer of each module or package (its submodules share it unless listed), lowest first.
LAYERS: dict[str, int] = {
    # 0: no hnets imports but each other: errors, files, versions, default paths,
    # image decoding, and the C kernels behind the layers
    "hnets.errors": 0,
    "hnets._io": 0,
    "hnets._version": 0,
    "hnets._outputs": 0,
    "hnets._timing": 0,
    "hnets.images": 0,
    "hnets._native": 0,
    "hnets.pretrained": 0,
    # 1: the circular-harmonic bases (pure maths)
    "hnets.basis": 1,
    # 2: the layers
    "hnets.nn": 2,
    # 3: the models built from them
    "hnets.models": 3,
    # 4: what works with models: saving them, data, training, evaluation, analyses,
    # export, benchmarks
    "hnets.checkpoint": 4,
    "hnets.data": 4,
    "hnets.training": 4,
    "hnets.evaluation": 4,
    "hnets.equivariance": 4,
    "hnets.analysis": 4,
    "hnets.studies": 4,
    "hnets.export": 4,
    "hnets.hub": 4,
    "hnets.bench": 4,
    "hnets.tune": 4,
    # 5: the experiment that drives training and the analyses
    "hnets.study": 5,
    # 6: the command line
    "hnets.cli": 6,
    "hnets.__main__": 6,
}

#: Imports that go against the table, each with why it stays.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}

#: Imports left out of the cycle check, each with why it stays.
CYCLE_ALLOWED: dict[tuple[str, str], str] = {
    ("hnets.checkpoint", "hnets.data.model_data"): "hnets.checkpoint.load_checkpoint_data "
    "still resolves (a deferred import in the module's __getattr__) for code written "
    "against it; hnets.data.model_data is where it lives",
}

#: Functions longer than :data:`MAX_FUNCTION_LINES` (docstrings not counted), with why.
LONG_FUNCTIONS: dict[str, str] = {}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "hnets").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int | None:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The ``hnets`` modules ``module`` imports (resolved; ``from . import x`` included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name == "hnets" or name.startswith("hnets.")}


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if m != "hnets" and _layer(m) is None]
    assert not missing, f"add these to LAYERS: {missing}"


def test_no_module_imports_a_module_above_it() -> None:
    upward = []
    for module, path in MODULES.items():
        if module == "hnets":  # the package's face: re-exports, and submodules on first use
            continue
        for imported in _imports(module, path):
            if imported == "hnets" or (module, imported) in UPWARD_ALLOWED:
                continue
            if _layer(imported) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {imported} "
                              f"(layer {_layer(imported)})")  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_module_imports_the_package_face() -> None:
    """``import hnets`` from inside the package is a cycle (``hnets`` imports them)."""
    offenders = [m for m, p in MODULES.items() if m != "hnets" and "hnets" in _imports(m, p)]
    assert not offenders


def test_no_import_cycles() -> None:
    graph = {
        m: {i for i in _imports(m, p) if i in MODULES and i != m and (m, i) not in CYCLE_ALLOWED}
        for m, p in MODULES.items()
    }
    cycles = []
    for start in graph:  # a depth-first walk from each module back to itself
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "\n".join(sorted(set(cycles)))


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        stack: list[tuple[ast.AST, str]] = [(tree, module)]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lengths[name] = _code_lines(child)
                    stack.append((child, name))
    return lengths


def _code_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` (decorators included) to the end, less the docstring's."""
    start = func.decorator_list[0].lineno if func.decorator_list else func.lineno
    lines = func.end_lineno - start + 1
    first = func.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_the_limit_without_a_reason() -> None:
    lengths = _function_lengths()
    too_long = {n: k for n, k in lengths.items() if k > MAX_FUNCTION_LINES}
    unlisted = {n: k for n, k in too_long.items() if n not in LONG_FUNCTIONS}
    assert not unlisted, f"split these or list them with a reason: {unlisted}"
    stale = [n for n in LONG_FUNCTIONS if n not in too_long]
    assert not stale, f"no longer too long (or gone): drop them from LONG_FUNCTIONS: {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..data import rotate_images", {"hnets.data"}),
        ("from .registry import get_dataset", {"hnets.data.registry"}),
        ("from . import registry", {"hnets.data.registry"}),
        ("import hnets.nn.conv", {"hnets.nn.conv"}),
        ("import torch", set()),
    ],
)
def test_imports_are_resolved_as_python_does(tmp_path: Path, source: str, expected) -> None:
    path = tmp_path / "locate.py"
    path.write_text(source + "\n")
    assert _imports("hnets.data.locate", path) == expected
