"""The package's import graph, read from the source (ast), not by importing it: no cycles between
dreambooth_job modules (imports inside functions count), no import inside a function unless it
defers a heavy optional dependency and says so (`# deferred: <why>` on its line), no re-export
shims (a module-level `__getattr__`, `noqa: F401`), and few modules at the package root."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dreambooth_job"
ROOT_MODULES = {"__init__", "cli", "cli_boundary", "cli_options", "exit_codes", "log", "job", "events",
                "redaction", "termination"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool
    deferred: bool  # carries `# deferred:` on one of its lines


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _own_module(dotted: str) -> str | None:
    """The dreambooth_job module `dotted` names (or a name inside it)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str) -> list[Import]:
    """Every import of a dreambooth_job module by `name`, at any depth but `if TYPE_CHECKING:`."""
    path = MODULES[name]
    source = path.read_text()
    lines = source.splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*parent, base] if base else parent)
                    targets = [f"{base}.{alias.name}" for alias in child.names]
                span = lines[child.lineno - 1: child.end_lineno]
                deferred = any("# deferred:" in line for line in span)
                for target in targets:
                    own = _own_module(target) if target.startswith("dreambooth_job") else None
                    if own and own != name:
                        found.append(Import(name, own, child.lineno, in_function, deferred))
                    elif in_function and not target.startswith("dreambooth_job"):
                        found.append(Import(name, target, child.lineno, in_function, deferred))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                              ast.Lambda)))

    visit(ast.parse(source), False)
    return found


ALL_IMPORTS = [imp for name in MODULES for imp in imports_of(name)]


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in ALL_IMPORTS:
        if imp.imported in MODULES:
            edges[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return components


def test_the_graph_sees_imports_at_every_depth():
    """A guard on the reader itself: the CLI imports the job only when `train` runs."""
    deferred = [imp for imp in ALL_IMPORTS
                if imp.importer == "dreambooth_job.cli" and imp.imported == "dreambooth_job.job"]
    assert deferred and all(imp.in_function and imp.deferred for imp in deferred)


def test_no_import_cycles_between_package_modules():
    assert cycles() == []


def test_an_import_inside_a_function_says_why_it_is_deferred():
    undeclared = [f"{imp.importer}:{imp.line} imports {imp.imported}" for imp in ALL_IMPORTS
                  if imp.in_function and not imp.deferred]
    assert undeclared == [], "move it to the top of the module, or add `# deferred: <why>` to its line"


def test_no_reexport_shims():
    shims = []
    for name, path in MODULES.items():
        source = path.read_text()
        if "noqa: F401" in source:
            shims.append(f"{name}: noqa: F401")
        tree = ast.parse(source)
        if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body):
            shims.append(f"{name}: module-level __getattr__")
    assert shims == []


def test_few_modules_at_the_package_root():
    """Everything else lives in a folder that says what it is part of (config/, storage/, ...)."""
    at_root = {path.stem for path in PACKAGE.glob("*.py")}
    assert at_root <= ROOT_MODULES, sorted(at_root - ROOT_MODULES)
