"""The tree shows the architecture, and the code keeps to it: each layer imports only the
layers below it; one module runs subprocesses; tests share code through tests/support,
never by importing one another."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.helpers import ROOT

PACKAGE = ROOT / "keyrotate"
# lowest first; a module may import its own layer and those before it
LAYERS = [
    ("keyrotate", "keyrotate.errors", "keyrotate.timeutil", "keyrotate.results",
     "keyrotate.files", "keyrotate.progress", "keyrotate.orphans", "keyrotate.cloudflare_api",
     "keyrotate.tls"),
    ("keyrotate.crypto",),
    ("keyrotate.secrets", "keyrotate.config", "keyrotate.db"),
    ("keyrotate.dataplane",),
    ("keyrotate.evidence",),
    ("keyrotate.cloudflare", "keyrotate.controlplane", "keyrotate.migrations", "keyrotate.targets"),
    ("keyrotate.rotation", "keyrotate.demo"),
    ("keyrotate.cli",),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank >= 0, f"{module} belongs to no layer"
    return rank


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _keyrotate_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in _keyrotate_modules():
        me = _module_name(path)
        for imported in _imports(path):
            if imported.startswith("keyrotate") and _is_module(imported):
                if _layer(imported) > _layer(me):
                    upward.append(f"{me} imports {imported}")
    assert upward == []


def test_the_layer_check_catches_an_upward_import():
    assert _layer("keyrotate.db.d1") < _layer("keyrotate.dataplane.reencrypt")
    assert _layer("keyrotate.cli.output") > _layer("keyrotate.rotation.rotate")
    assert _layer("keyrotate.evidence.trail") < _layer("keyrotate.controlplane.deploy")
    assert _layer("keyrotate.errors") == 0 < _layer("keyrotate.crypto.keys")


def test_one_module_runs_subprocesses():
    users = [_module_name(p) for p in _keyrotate_modules() if "subprocess" in _imports(p)]
    assert users == ["keyrotate.cloudflare.runner"]


def test_tests_share_code_through_support_only():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for imported in _imports(path):
            if imported.startswith("tests.test_") or imported.startswith("tests.conftest"):
                offenders.append(f"{path.name} imports {imported}")
    assert offenders == []


def test_comments_cite_documents_that_are_in_the_repo():
    cited = []
    for path in [*_keyrotate_modules(), *(ROOT / "tests").rglob("*.py"),
                 *(ROOT / "examples").rglob("*.js"), *(ROOT / "scripts").rglob("*.py")]:
        if "SPEC " + "\u00a7" in path.read_text():
            cited.append(str(path.relative_to(ROOT)))
    assert cited == []


def _import_graph() -> dict[str, set[str]]:
    """module -> the keyrotate modules it imports (function-local imports too: a circle
    hidden inside a function is still a circle)."""
    graph: dict[str, set[str]] = {}
    for path in _keyrotate_modules():
        me = _module_name(path)
        graph[me] = {m for m in _imports(path) if m.startswith("keyrotate") and _is_module(m)
                     and m != me}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_circle_of_imports_even_inside_one_layer():
    assert _circles(_import_graph()) == []


def test_the_circle_check_catches_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
