"""The dependency rules, checked on the source: tools & plugin -> gateway -> protocols (the
runtime, gateway/, protocols/ and twisted/plugins, never imports the operator's commands in
tools/, each of which stays under 500 lines); ssh1 and ssh2 never import each other; the
SSH-1 core imports neither Twisted nor gateway, not even through the modules it imports
(checked by importing it in a fresh interpreter); and no project module is imported by name
at run time (importlib), where these checks cannot see it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The thin Twisted layer of protocols/ssh1; every other module there is the sans-I/O core.
SSH1_TWISTED = {"server.py", "client.py", "pump.py"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def core_modules() -> list[str]:
    """The SSH-1 sans-I/O core as importable names, the package itself included."""
    return ["protocols.ssh1"] + [
        f"protocols.ssh1.{p.stem}"
        for p in sources("protocols/ssh1")
        if p.name not in SSH1_TWISTED and p.name != "__init__.py"
    ]


def top(name: str, depth: int = 1) -> str:
    return ".".join(name.split(".")[:depth])


@pytest.mark.parametrize("path", sources("protocols"), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocols_never_import_gateway_or_the_plugin(path):
    assert not {n for n in imported(path) if top(n) == "gateway" or n.startswith("twisted.plugins")}


RUNTIME = ("gateway", "protocols", "twisted/plugins")
MAX_TOOL_LINES = 500


@pytest.mark.parametrize(
    "path",
    [p for folder in RUNTIME for p in sources(folder)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_runtime_never_imports_the_tools(path):
    assert not {n for n in imported(path) if top(n) == "tools"}


@pytest.mark.parametrize("path", sources("tools"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_tool_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_TOOL_LINES


@pytest.mark.parametrize("path", sources("protocols/ssh1"), ids=lambda p: p.name)
def test_ssh1_never_imports_ssh2(path):
    assert not {n for n in imported(path) if top(n, 2) == "protocols.ssh2"}


@pytest.mark.parametrize("path", sources("protocols/ssh2"), ids=lambda p: p.name)
def test_ssh2_never_imports_ssh1(path):
    assert not {n for n in imported(path) if top(n, 2) == "protocols.ssh1"}


@pytest.mark.parametrize(
    "path",
    [p for p in sources("protocols/ssh1") if p.name not in SSH1_TWISTED],
    ids=lambda p: p.name,
)
def test_the_ssh1_core_imports_no_twisted(path):
    assert not {n for n in imported(path) if top(n) in ("twisted", "zope")}


@pytest.mark.parametrize("path", sources("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateway_never_imports_the_plugin(path):
    assert not {n for n in imported(path) if n.startswith("twisted.plugins")}


def loaded_in_a_fresh_interpreter(modules: list[str], tops: tuple[str, ...]) -> list[str]:
    """The modules under the top-level packages ``tops`` that importing ``modules`` loads,
    transitively, in a new interpreter (this one has loaded everything already)."""
    program = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {tops!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_ssh1_core_loads_no_twisted_or_zope_even_transitively():
    """An import of a shared module that imports zope (protocols.session did) is invisible
    to the source check above; a fresh interpreter that imports the core shows it."""
    assert loaded_in_a_fresh_interpreter(core_modules(), ("twisted", "zope")) == []


def ssh2_client_modules() -> list[str]:
    return [f"protocols.ssh2.{p.stem}" for p in sources("protocols/ssh2") if p.stem.startswith("client")]


def test_the_ssh2_client_loads_no_gateway_module_even_transitively():
    """The SSH-2 client takes plain options and reports its own error: importing it (and
    what it imports) loads nothing from gateway, so it stays usable without the gateway."""
    assert "protocols.ssh2.client" in ssh2_client_modules()
    assert loaded_in_a_fresh_interpreter(ssh2_client_modules(), ("gateway",)) == []


# What the project itself ships; a run-time import of one of these hides a dependency.
PROJECT_PACKAGES = ("gateway", "protocols", "tools", "bench", "twisted.plugins")


def dynamic_project_imports(path: Path) -> list[str]:
    """Calls of importlib.import_module / __import__ that may load a project module: with a
    project module's name, or with a name computed at run time (which these checks cannot
    follow). A literal name outside the project (a stdlib or optional module) is fine."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("import_module", "__import__") or not node.args:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            target = arg.value
            if not any(target == p or target.startswith(p + ".") for p in PROJECT_PACKAGES):
                continue
        found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _dynamic_import_cases() -> list:
    cases = []
    for path in [p for folder in (*RUNTIME, "tools") for p in sources(folder)]:
        cases.append(pytest.param(path, id=str(path.relative_to(ROOT))))
    return cases


@pytest.mark.parametrize("path", _dynamic_import_cases())
def test_no_project_module_is_imported_through_importlib(path):
    assert dynamic_project_imports(path) == []


def gateway_imports(path: Path) -> set[str]:
    """The gateway modules ``path`` imports (``from gateway import passwords`` counts as
    ``gateway.passwords``), at any depth: a function-level import is an arrow too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if top(n) == "gateway" and module_path(n) is not None}


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_gateway_dependencies_point_one_way():
    # gateway.targets counts as one node: a module the targets build on (known_hosts,
    # upstream_errors, hostkeys) must not reach back up into them.
    def node(name: str) -> str:
        return "gateway.targets" if name.startswith("gateway.targets.") else name

    graph: dict[str, set[str]] = {}
    for path in sources("gateway"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph.setdefault(node(name), set()).update(
            node(n) for n in gateway_imports(path) if node(n) != node(name)
        )

    done: set[str] = set()

    def cycle_through(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        for after in sorted(graph.get(name, ())):
            found = cycle_through(after, path + [name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = cycle_through(name, [])
        assert cycle is None, " -> ".join(cycle)
