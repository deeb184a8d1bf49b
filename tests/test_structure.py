"""The import graph of the project's modules (issue 12): every module imports on its own,
no import cycles between modules, and nothing imports the train entry point."""
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("promethios_jax", "eval")
ENTRY_POINT = "promethios_jax.train"
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines because"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _resolve(name: str, modules) -> str | None:
    """The project module `name` refers to (a module, or the package holding a name)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (anywhere in the file), without the edges
    from a package to its own submodules or from a submodule to its enclosing packages
    (Python runs a package's __init__ first either way)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        pkg = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                dep = _resolve(t, modules)
                if dep and dep != name and not name.startswith(dep + ".") and not (is_pkg and dep.startswith(name + ".")):
                    deps.add(dep)
        graph[name] = deps
    return graph


def find_cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_module_imports_the_train_entry_point():
    users = sorted(m for m, deps in import_graph().items() if ENTRY_POINT in deps)
    assert users == [], f"{users} import {ENTRY_POINT}; import promethios_jax.state / step / aot instead"


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "promethios_jax.state" in graph and graph["promethios_jax.checkpoint"]  # the graph was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


_IMPORT_EACH = r"""
import importlib, json, sys
from absl import flags
names, failed = json.loads(sys.argv[1]), {}
absl_own = set(flags.FLAGS)
for name in names:
    for m in [m for m in sys.modules if m.split(".")[0] in ("promethios_jax", "eval")]:
        del sys.modules[m]
    for f in set(flags.FLAGS) - absl_own:  # programs define their flags at import
        delattr(flags.FLAGS, f)
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


def test_every_module_imports_on_its_own():
    """Each module imported with no project module loaded before it (third-party ones stay
    cached, which is what makes this fast enough to run in one process)."""
    names = [n for n in _modules() if not n.endswith("__main__")]
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    failed = json.loads(r.stdout.strip().splitlines()[-1])
    assert failed == {}


def test_long_files_say_why():
    long = {}
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and LONG_REASON not in text[:3000]:
            long[name] = text.count("\n")
    assert long == {}, f"over {MAX_LINES} lines without '{LONG_REASON} ...' in the module docstring: {long}"
