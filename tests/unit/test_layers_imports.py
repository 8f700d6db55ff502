"""The package's floors (docs/architecture.md, "Floor plan"), enforced on the source: every `import` of a seglab module
(at module level or inside a function) is parsed with `ast` and must go to a lower floor, or stay inside its own
package on the same floor; the import graph has no cycle; and no module imports another module's private
(`_name`) attribute.

Rules, exactly:
1. A module's floor is the floor of the longest prefix listed in `FLOORS`.
2. `from a.b import c` imports module `a.b.c` when that is a module of the package, else `a.b`.
3. An import from floor i to floor j is allowed when j < i, or j == i and both modules are in the same package
   (the first two name parts, e.g. `seglab.data`), or j == i on a floor of single modules (ground, factory).
4. The directed graph of imports between seglab modules (package `__init__` re-exports included) has no cycle.
5. `from m import _x` is refused unless `m` is the importing module's own package `__init__`.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

FLOORS: dict[str, int] = {
    # 0 ground: files, palettes, configs, small utilities; imports nothing of seglab but its own floor
    "seglab.version": 0, "seglab.palette": 0, "seglab.checkpoint": 0, "seglab.config": 0,
    "seglab.pretrained_files": 0,
    "seglab.layers": 1,  # blocks two families share
    "seglab.backbones": 2, "seglab.heads": 2,  # never each other
    "seglab.losses": 3,  # may read a head's output format
    "seglab.models": 4,  # where backbones meet heads; the `MODELS` tables
    "seglab.registry": 5, "seglab.catalog": 5,  # the factory: reads the tables, builds, lists
    # library around the models
    "seglab.data": 6, "seglab.inference": 6, "seglab.metrics": 6, "seglab.metrics_instance": 6,
    "seglab.convert": 6, "seglab.export": 6, "seglab.tools": 6,
    # task pipelines and published weights
    "seglab.instance": 7, "seglab.hub": 7,
    "seglab.engine": 8,  # the run loop and its tasks
    "seglab.analyze": 9,  # the papers' analyses (ERF, resolution, corruptions, errors) over models and runs
    "seglab.serve": 9,  # the web page and HTTP API
    "seglab.cli": 10, "seglab": 10,  # the command line and the package's public face
}
SINGLE_MODULE_FLOORS = {0, 5}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "seglab").rglob("*.py"))}


def floor(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and to docs/architecture.md")


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported seglab module, imported name or None, line) for every import statement of `module`."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("seglab")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("seglab"):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target, None, node.lineno) if target in MODULES else (base, alias.name, node.lineno))
    return found


def test_every_module_is_on_a_floor():
    for module in MODULES:
        floor(module)


def test_imports_go_only_downward():
    problems = []
    for module in MODULES:
        for target, _, line in imports(module):
            if target not in MODULES or target == module:
                continue
            mine, theirs = floor(module), floor(target)
            same_package = package(module) == package(target)
            if theirs < mine or (theirs == mine and (same_package or mine in SINGLE_MODULE_FLOORS)):
                continue
            problems.append(f"{module}:{line} imports {target} (floor {mine} -> {theirs})")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ importing its own submodules is how re-exports work; a submodule importing its package
    # __init__ back is the cycle that counts, so both directions stay in the graph
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles[:20])


def test_no_private_names_cross_modules():
    problems = []
    for module in MODULES:
        own_package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        for target, name, line in imports(module):
            if name and name.startswith("_") and not name.startswith("__") and target not in (module, own_package):
                problems.append(f"{module}:{line} imports {target}.{name}")
    assert not problems, "\n".join(problems)


def test_the_cli_knows_the_instance_datasets():
    """`seglab.cli.common` keeps the instance dataset names so that a semantic run imports no instance code."""
    from seglab.cli.common import INSTANCE_DATASETS
    from seglab.engine.instance import INSTANCE_DATASETS as ENGINE_INSTANCE_DATASETS

    assert tuple(INSTANCE_DATASETS) == tuple(ENGINE_INSTANCE_DATASETS)
