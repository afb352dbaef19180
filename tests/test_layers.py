"""Layers point one way: front ends → task runner → pipeline → stages → services, with no import cycles.

The import graph is read from the source (every ``import`` statement, including those inside
functions), so a cycle hidden behind a late import fails here too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bernini"
FRONT_ENDS = ("bernini.frontends",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolve(name: str, known: set[str]) -> str | None:
    """The deepest known module that ``name`` (a module or ``module.attribute``) lives in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" for alias in node.names] or [origin]
        for target in targets:
            if target.startswith("bernini"):
                module = resolve(target, known)
                if module and module != name:
                    found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_front_end(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_late_import(tmp_path):
    """The walker must see imports inside functions: a planted one closes a cycle."""
    graph = import_graph()
    assert "bernini.resolved" in graph["bernini.conditions"]
    source = "def late():\n    from .conditions import Conditions\n"
    module = ast.parse(source)
    assert isinstance(module.body[0].body[0], ast.ImportFrom)
    planted = tmp_path / "resolved_extra.py"
    planted.write_text(source)
    known = set(graph)
    graph["bernini.resolved"] = graph["bernini.resolved"] | imports_of("bernini.resolved", planted, known)
    assert find_cycle(graph) is not None


def contracts() -> list:
    """The import-linter contracts of pyproject.toml, built as ``lint-imports`` builds them."""
    import tomllib
    from importlinter.contracts.independence import IndependenceContract
    from importlinter.contracts.layers import LayersContract

    kinds = {"layers": LayersContract, "independence": IndependenceContract}
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    built = []
    for contract in config["contracts"]:
        options = {key: value for key, value in contract.items() if key not in ("name", "type")}
        built.append(kinds[contract["type"]](contract["name"], {"root_packages": ["bernini"]}, options))
    return built


def package_graph():
    import grimp

    return grimp.build_graph("bernini", cache_dir=None)  # the package these tests import


def test_every_import_linter_contract_is_kept():
    """The layers (front ends > job engine > runner > pipeline > stages > services > models) and the front ends'
    independence, on the graph grimp reads (every import statement, those inside functions included)."""
    graph = package_graph()
    broken = [contract.name for contract in contracts() if not contract.check(graph, verbose=False).kept]
    assert not broken, broken


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("bernini.models.rope", "bernini.frontends.cli"),  # anything below importing a front end
        ("bernini.sampling.sampler", "bernini.stages.denoise"),  # a service importing a stage
        ("bernini.stages.decode", "bernini.pipeline"),  # a stage importing the pipeline
        ("bernini.loaders.bundle", "bernini.planner.loading"),  # loaders sit below the planner
        ("bernini.frontends.demo.backend", "bernini.frontends.serve.worker"),  # one front end importing another
    ],
)
def test_the_contracts_catch_an_upward_import(importer, imported):
    graph = package_graph()
    graph.add_import(importer=importer, imported=imported)
    assert any(not contract.check(graph, verbose=False).kept for contract in contracts())


def test_nothing_below_the_front_ends_imports_them():
    offenders = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not is_front_end(name) and name not in ("bernini", "bernini.__main__")
        for target in targets
        if is_front_end(target)
    ]
    assert not offenders, offenders


def test_stages_do_not_import_the_renderer():
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for stage in ("bernini.conditions", "bernini.sampling.sampler", "bernini.resolve", "bernini.sampling.guidance"):
        assert "bernini.models.transformer" not in reach(stage), stage


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("bernini.conditions", "diffusers"),
        ("bernini.sampling.sampler", "diffusers"),
        ("bernini.resolve", "torch"),
        ("bernini.sampling.guidance", "torch"),
        ("bernini", "torch"),
    ],
)
def test_light_modules_import_without_heavy_libraries(module, absent):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert module in imported
    assert absent not in {name.split(".")[0] for name in imported}, f"{module} pulls in {absent}"
