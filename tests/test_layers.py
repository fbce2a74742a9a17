"""The code's layers: packages import downwards only (model → index → service → argus, the load
tests beside them, the benchmarks above them all, and no package importing the tests), model/ is
itself layered, and no two modules import each other, directly or round a longer circle (imports
inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "index", "service", "argus", "loadtests", "benchmarks")

# model/, lowest first: a module may import its own layer and those below it.
MODEL_LAYERS = [
    {"contract", "config", "cpus", "progress", "runtime", "console"},  # plain pieces
    {"data"},  # events, batching, simulation, converters
    {"impressions", "metrics", "future", "plots", "readout"},  # numpy: what is ranked, how scored
    {"argus", "losses", "checkpoint"},  # the model
    {"inference"},  # the model, run
    {"trainer", "objectives"},  # the training loop and what it minimises
    # the jobs
    {"train", "finetune", "calibration", "evaluate", "export", "distributed_export"}
    | {"diagnostics", "cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module's imports of the project's own modules (wherever in the module)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found |= {t for t in targets if t in modules or t.split(".")[0] == "tests"}
        graph[name] = found - {name}
    return graph


def package_rank(module: str) -> int:
    top = module.split(".")[0]
    return len(PACKAGES) if top == "tests" else PACKAGES.index(top)


def model_layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, layer in enumerate(MODEL_LAYERS) if part in layer)


def test_packages_import_downwards_and_never_the_tests() -> None:
    wrong = [
        f"{a} imports {b}"
        for a, targets in imports().items()
        for b in targets
        if package_rank(b) > package_rank(a)
    ]
    assert wrong == []


def test_model_modules_import_their_layer_or_lower() -> None:
    graph = imports()
    models = [m for m in graph if m.startswith("model.")]
    assert all(model_layer(m) >= 0 for m in models)  # every module has a layer
    wrong = [
        f"{a} (layer {model_layer(a)}) imports {b} (layer {model_layer(b)})"
        for a in models
        for b in graph[a]
        if b.startswith("model.") and model_layer(b) > model_layer(a)
    ]
    assert wrong == []


def test_no_circle() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


LONGEST_FUNCTION = 80  # lines, signature and docstring included


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > LONGEST_FUNCTION
    ]
    assert not long, "split these functions:\n" + "\n".join(long)
