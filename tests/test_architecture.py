"""The package's layout rules (docs/architecture.md), checked on the source.

- No import circle among eaml_ssm's modules (imports at module level and inside functions
  alike; only imports under ``TYPE_CHECKING`` do not count), nor among its top-level parts
  (``eaml_ssm.evaluate`` as one node, ``eaml_ssm.feed`` as one ...).
- `pipeline` runs the stages: only entry points (the command line, a torchrun rank, the
  package's lazy `run_stage` export) import it; no library module does.
- A module over 400 lines says why in its docstring ("Why one module: ...").
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eaml_ssm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str) -> set[str]:
    """The eaml_ssm modules `name` imports, at import time or later inside a function (only
    imports under ``TYPE_CHECKING`` do not count: they never run)."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = {id(n) for n in ast.walk(tree) if _is_type_checking(n)}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if id(node) in skipped:
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return [*stack[stack.index(v) :], v]
            if v not in state and (cycle := visit(v)) is not None:
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (cycle := visit(u)) is not None:
            return cycle
    return None


def part(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_among_modules() -> None:
    graph = {name: imports(name) for name in MODULES}
    assert find_cycle(graph) is None


def test_no_import_circle_among_top_level_parts() -> None:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        for dep in imports(name):
            if part(dep) != part(name):
                graph.setdefault(part(name), set()).add(part(dep))
    assert find_cycle(graph) is None


def test_pipeline_is_not_a_library() -> None:
    entry_points = {"eaml_ssm", "eaml_ssm.cli", "eaml_ssm.distributed.entry"}
    users = sorted(n for n in MODULES if "eaml_ssm.pipeline" in imports(n))
    assert set(users) <= entry_points, f"library modules importing the stage runner: {users}"


def test_long_modules_say_why() -> None:
    unexplained = []
    for name, path in sorted(MODULES.items()):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and "Why one module:" not in doc:
            unexplained.append(f"{name} ({lines} lines)")
    assert not unexplained, f"over {MAX_LINES} lines without a reason: {unexplained}"
