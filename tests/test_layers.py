"""The package's parts import one way only, with no cycle, and each side keeps to its stack.

Every ``import`` counts: at module level, inside functions (lazy) and under
``TYPE_CHECKING``. A cycle that only type checkers see is still two modules that cannot be
understood apart. Read from the source with :mod:`ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import mtls_hooks

PACKAGE = Path(mtls_hooks.__file__).parent

# Which parts each part may import (besides itself); the core is under everything.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "metrics": frozenset({"core"}),
    "proxy": frozenset({"core"}),
    "queue": frozenset({"core", "metrics"}),
    "stores": frozenset({"core", "queue", "metrics"}),
    "serving": frozenset({"core", "proxy", "metrics"}),
    "sender": frozenset({"core", "metrics"}),
    "outbox": frozenset({"core", "queue", "sender", "metrics"}),
    "inbox": frozenset({"core", "queue", "stores", "metrics"}),
    "receiver": frozenset({"core", "serving", "stores", "queue", "inbox", "proxy", "metrics"}),
}
# The CLIs, ``__init__`` and ``testing`` sit on top of every other part.
ALLOWED["cli"] = frozenset(ALLOWED)
ALLOWED["top"] = frozenset(ALLOWED)
# Third-party stacks a part must never import, even lazily.
FORBIDDEN_STACKS: dict[str, frozenset[str]] = {
    "core": frozenset({"quart", "hypercorn", "httpx", "aiohttp", "werkzeug"}),
    "stores": frozenset({"quart", "hypercorn", "httpx", "aiohttp"}),
    "serving": frozenset({"quart", "httpx", "aiohttp"}),
    "sender": frozenset({"quart", "hypercorn", "werkzeug"}),
    "inbox": frozenset({"quart", "hypercorn", "httpx", "aiohttp", "werkzeug"}),
    "receiver": frozenset({"httpx", "aiohttp"}),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in ALLOWED) else "top"


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """Yield ``(imported module, line)`` for every import statement in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target, node.lineno
            # ``from mtls_hooks.cli import _send`` imports the module mtls_hooks.cli._send.
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def graph() -> dict[str, set[tuple[str, int]]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, line in imports_of(path):
            if target in modules and target != name:
                edges[name].add((target, line))
    return edges


def test_every_module_belongs_to_a_known_part() -> None:
    unknown = {m for m in graph() if part_of(m) not in ALLOWED}
    assert not unknown


def against_the_direction(edges: dict[str, set[tuple[str, int]]]) -> list[str]:
    return [
        f"{source}:{line} imports {target}"
        for source, targets in edges.items()
        for target, line in targets
        if part_of(target) != part_of(source) and part_of(target) not in ALLOWED[part_of(source)]
    ]


def test_imports_run_one_way() -> None:
    assert not against_the_direction(graph())


def test_no_import_cycle() -> None:
    edges = {m: {t for t, _ in ts} for m, ts in graph().items()}
    # A package's __init__ naming its own modules is not a cycle of design.
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert not cycles


@pytest.mark.parametrize("part", sorted(FORBIDDEN_STACKS))
def test_each_part_keeps_to_its_stack(part: str) -> None:
    leaks = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        for path in (PACKAGE / part).rglob("*.py")
        for target, line in imports_of(path)
        if target.split(".")[0] in FORBIDDEN_STACKS[part]
    ]
    assert not leaks


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative over the recursion it would otherwise need."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        pytest.param({"a": {"b"}, "b": {"a"}}, [["a", "b"]], id="two-cycle"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": set()}, [], id="chain"),
        pytest.param(
            {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]], id="ring"
        ),
    ],
)
def test_cycle_finder_finds_cycles(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert [c for c in strongly_connected(edges) if len(c) > 1] == expected


@pytest.mark.parametrize(
    ("source", "target", "reported"),
    [
        pytest.param("mtls_hooks.core._tls", "mtls_hooks.receiver._pipeline", True, id="core-up"),
        pytest.param("mtls_hooks.sender._base", "mtls_hooks.serving._config", True, id="sideways"),
        pytest.param("mtls_hooks.serving._config", "mtls_hooks.cli._main", True, id="to-cli"),
        pytest.param(
            "mtls_hooks.receiver._receiver", "mtls_hooks.stores._replay", False, id="down"
        ),
        pytest.param("mtls_hooks.cli._send", "mtls_hooks.sender._sync", False, id="cli-down"),
    ],
)
def test_direction_check_reports_upward_imports(source: str, target: str, reported: bool) -> None:
    assert bool(against_the_direction({source: {(target, 1)}})) is reported
