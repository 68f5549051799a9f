"""The floors of docs/architecture.md, checked on the real imports.

    __main__.py  ->  mlplatform/  ->  workloads/  ->  infra/   (the ground)
                                  ->  policies/   ->  infra/ (pure modules only)
    tools/ sits on top and is imported by none of them.

Every first-party import is read from the source (ast), including those under
`if TYPE_CHECKING:`: a cycle there is still a cycle for a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from infra import pod
from workloads.runtime import contract

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("mlplatform", "infra", "workloads", "policies", "tools")

# What each floor may import (first-party only). A module's floor is its top
# package. workloads.runtime is its own floor: it ships inside the image and
# imports nothing of the program; of it, the program may read only the contract
# (pure names: ports, paths, exit codes, metric names).
CONTRACT = "workloads.runtime.contract"
ALLOWED: dict[str, set[str]] = {
    "__main__": {"mlplatform"},
    "mlplatform": {"mlplatform", "infra", "workloads", "policies", CONTRACT},
    "workloads": {"workloads", "infra", CONTRACT},
    "workloads.runtime": {"workloads.runtime", CONTRACT},
    CONTRACT: set(),
    "infra": {"infra"},
    "policies": {"policies", "infra"},
    "tools": {"tools", "mlplatform", "infra", "workloads", "policies", CONTRACT},
}
PACKAGES = (*FIRST_PARTY, "workloads.runtime")
SDKS = ("pulumi_aws", "pulumi_kubernetes", "pulumi_docker_build", "pulumi")


def floor(module: str) -> str:
    if module == CONTRACT:
        return CONTRACT
    if module == "workloads.runtime" or module.startswith("workloads.runtime."):
        return "workloads.runtime"
    return module.split(".", 1)[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [ROOT / "__main__.py"]
    for package in FIRST_PARTY:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def imports_of(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level packages) imported by a file."""
    first: set[str] = set()
    third: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from infra import pod` imports the module infra.pod.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            if name.split(".", 1)[0] in FIRST_PARTY:
                first.add(name)
            elif name and not name.startswith("."):
                third.add(name.split(".", 1)[0])
    return first, third


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """module -> first-party modules it imports (resolved to real modules), and
    module -> third-party packages it imports."""
    files = {module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {}
    sdks: dict[str, set[str]] = {}
    for module, path in files.items():
        first, third = imports_of(path, module)
        graph[module] = {name for name in first if name in files and name != module}
        sdks[module] = third
    return graph, sdks


def floor_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        allowed = ALLOWED[floor(module)]
        for target in sorted(targets):
            # Importing a package's (empty) __init__ is not an import of its code.
            if target in PACKAGES:
                continue
            if floor(target) not in allowed:
                problems.append(f"{module} imports {target} (a higher floor or a sibling)")
    return problems


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()[0]


def test_every_floor_imports_only_what_it_may(graph: dict[str, set[str]]) -> None:
    assert floor_violations(graph) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_infra_imports_no_higher_floor(graph: dict[str, set[str]]) -> None:
    infra = {m: t for m, t in graph.items() if floor(m) == "infra"}
    assert len(infra) > 10  # the walk really found the ground floor
    assert {t for targets in infra.values() for t in targets if floor(t) != "infra"} == set()


def test_policy_rules_stay_pure() -> None:
    """The rules run inside the policy pack's own virtualenv: nothing they
    import, directly or through infra's ground modules, may load a Pulumi SDK."""
    graph, third = import_graph()
    closure = reachable(graph, "policies.rules")
    assert "infra.catalog" in closure  # the walk follows into infra
    loaded = {m: third[m] & set(SDKS) for m in closure if third[m] & set(SDKS)}
    assert loaded == {}


def test_tools_are_never_imported_by_the_program(graph: dict[str, set[str]]) -> None:
    program = reachable(graph, "__main__")
    assert "mlplatform.platform" in program
    assert sorted(m for m in program if floor(m) == "tools") == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The checkers flag a ground module importing upward, a cycle, and the
    runtime importing the Pulumi program."""
    bad = {
        "infra.cluster": {"workloads.runtime.contract", "infra.meta"},
        "infra.meta": {"infra.cluster"},
        "workloads.runtime.serve": {"infra.pod"},
        "mlplatform.platform": {"tools.mocks"},
    }
    assert floor_violations(bad) == [
        "infra.cluster imports workloads.runtime.contract (a higher floor or a sibling)",
        "mlplatform.platform imports tools.mocks (a higher floor or a sibling)",
        "workloads.runtime.serve imports infra.pod (a higher floor or a sibling)",
    ]
    assert cycles(bad) == [["infra.cluster", "infra.meta"]]


def test_runtime_image_runs_as_the_pod_builders_user() -> None:
    """The image cannot import infra/, so its contract repeats the identity the
    pod builder gives restricted pods; they must agree or the pods cannot write
    their scratch dir or the shared checkpoint volume."""
    assert (contract.RUN_AS_USER, contract.RUN_AS_GROUP) == (pod.NON_ROOT_UID, pod.NON_ROOT_GID)
    assert contract.SCRATCH_DIR == pod.SCRATCH_DIR
