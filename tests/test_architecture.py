"""The dependency and size rules of docs/architecture.md, checked on every source module.

Each rule reads the code with ``ast`` (every import, also those inside functions) and names
the offending file and line; the purity rule also imports each pure module in a fresh
interpreter and looks at ``sys.modules``, so an import through a package ``__init__`` or
another module counts too.
"""

import ast
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "controller", "edge_agent")
# Non-test code whose size rules hold too (benchmarks may use paho bare: they measure it).
SIZED = (*PACKAGES, "benchmarks", "scripts")

TRANSPORT = "shared.mqtt_transport"
RUNTIMES = "edge_agent.runtimes"
RUNTIME_LIBS = ("llama_cpp", "onnxruntime", "onnxruntime_genai")
# What a pure module may not load, directly or through anything it imports.
IMPURE = (
    "paho",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlmodel",
    "sqlalchemy",
    "httpx",
    "tuf",
    "apscheduler",
    "amqtt",
    *RUNTIME_LIBS,
)
# The pure-logic modules (docs/architecture.md lists the same): decisions without I/O,
# time taken as an argument, tested without a broker, a database or a model.
PURE = (
    "shared.attestation",
    "shared.canonical",
    "shared.recent",
    "shared.errors",
    "shared.json_guard",
    "shared.message_signing",
    "shared.messages",
    "shared.provisioning",
    "shared.shadow",
    "shared.sketches",
    "shared.supervision",
    "shared.telemetry_windows",
    "shared.topics",
    "controller.attestation.policy",
    "controller.devices.liveness",
    "controller.ingest.plausibility",
    "controller.rollouts.cohort",
    "controller.rollouts.engine",
    "controller.rollouts.gates",
    "controller.telemetry.fold",
    "controller.telemetry.scoring",
    "controller.updates.signing_health",
    "edge_agent.hardware",
    "edge_agent.routing.breaker",
    "edge_agent.routing.cascade",
    "edge_agent.routing.latency",
    "edge_agent.routing.policy",
    "edge_agent.routing.router",
    "edge_agent.routing.sensitivity",
    "edge_agent.shadow",
    "edge_agent.sync.window",
    "edge_agent.telemetry.windows",
    "edge_agent.updates.decisions",
)
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 800
MAX_CONTROLLER_ROOT_MODULES = 15


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, where it is written."""

    module: str  # the importing module
    path: Path
    line: int
    target: str  # the imported module (for ``from a import b``: ``a.b`` when that is a module)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def sources(roots: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            if "node_modules" not in path.parts:
                found[module_name(path)] = path
    return found


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = sources()[module]
    found: list[Import] = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            found.extend(Import(module, path, node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in sources() else base
                found.append(Import(module, path, node.lineno, target))
    return tuple(found)


def all_imports() -> Iterator[Import]:
    for module in sources():
        yield from imports_of(module)


def top(name: str) -> str:
    return name.split(".")[0]


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def report(bad: list[str], rule: str) -> None:
    assert not bad, f"{rule}:\n  " + "\n  ".join(sorted(set(bad)))


# --- who may import whom --------------------------------------------------------------------
def test_shared_imports_neither_side() -> None:
    """shared/ is what both sides agree on: it imports neither controller nor edge_agent."""
    bad = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if top(i.module) == "shared" and top(i.target) in ("controller", "edge_agent")
    ]
    report(bad, "shared/ imports a side")


def test_controller_and_agent_never_import_each_other() -> None:
    """The controller and the agent ship to different machines and meet only in shared/."""
    other = {"controller": "edge_agent", "edge_agent": "controller"}
    bad = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if top(i.module) in other and top(i.target) == other[top(i.module)]
    ]
    report(bad, "one side imports the other")


def test_paho_is_imported_by_the_transport_only() -> None:
    """paho is wrapped once, in shared/mqtt_transport.py (TLS and sessions live there)."""
    bad = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if top(i.target) == "paho" and i.module != TRANSPORT
    ]
    report(bad, f"paho imported outside {TRANSPORT}")


def test_runtime_libraries_are_imported_under_runtimes_only() -> None:
    """llama.cpp and ONNX Runtime (GenAI) are reached through edge_agent/runtimes/ only."""
    bad = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if top(i.target) in RUNTIME_LIBS and not under(i.module, RUNTIMES)
    ]
    report(bad, "runtime library imported outside edge_agent/runtimes/")


def unit(module: str) -> str:
    """The folder a module belongs to for the cycle rule: a sub-package of a side (with
    everything below it), or a module at a side's root on its own."""
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_folders() -> None:
    """Folders depend one way: no chain of imports leads from a folder back to itself."""
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], Import] = {}
    for i in all_imports():
        if top(i.target) not in PACKAGES or i.target not in sources():
            continue
        a, b = unit(i.module), unit(i.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
            witness.setdefault((a, b), i)
    cycle = _cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} ({witness[a, b].where()})" for a, b in itertools.pairwise(cycle)]
        pytest.fail("import cycle between folders:\n  " + "\n  ".join(steps))


# --- pure modules ------------------------------------------------------------------------------
def test_pure_modules_import_no_io_framework_directly() -> None:
    """A pure module names no I/O framework or runtime library in its own imports."""
    bad = [
        f"{i.where()} imports {i.target}"
        for module in PURE
        if module in sources()
        for i in imports_of(module)
        if top(i.target) in IMPURE
    ]
    missing = [m for m in PURE if m not in sources()]
    report(bad + [f"{m}: listed as pure but not found" for m in missing], "impure pure module")


_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_by(module: str) -> set[str]:
    """Top-level modules in sys.modules after importing ``module`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"importing {module} failed:\n{out.stderr[-2000:]}"
    return set(json.loads(out.stdout))


def chain(module: str, lib: str) -> str:
    """The first-party import path by which ``module`` reaches ``lib`` (best effort)."""
    seen: set[str] = set()
    todo: list[tuple[str, list[str]]] = [(module, [])]
    while todo:
        current, path = todo.pop(0)
        if current in seen or current not in sources():
            continue
        seen.add(current)
        names = [current]
        parts = current.split(".")
        # Importing a module runs every package __init__ above it.
        names += [".".join(parts[:n]) for n in range(1, len(parts))]
        for name in names:
            if name not in sources():
                continue
            for i in imports_of(name):
                step = [*path, i.where()]
                if top(i.target) == lib:
                    return " -> ".join(step)
                todo.append((i.target, step))
    return "(through a third-party package)"


def package_inits() -> list[str]:
    return [m for m, p in sources().items() if p.name == "__init__.py"]


@pytest.mark.parametrize("kind", ["pure modules", "package __init__ files"])
def test_pure_modules_and_package_inits_load_no_io_framework(kind: str) -> None:
    """Imported alone in a fresh interpreter, a pure module or a package (its __init__)
    loads no I/O framework or runtime library, not even through what it imports."""
    modules = [m for m in PURE if m in sources()] if kind == "pure modules" else package_inits()
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = dict(zip(modules, pool.map(loaded_by, modules), strict=True))
    bad = [
        f"{module} loads {lib}: {chain(module, lib)}"
        for module, libs in loaded.items()
        for lib in sorted(libs & set(IMPURE))
    ]
    report(bad, f"{kind} load an I/O framework")


# --- sizes ---------------------------------------------------------------------------------------
def test_no_function_over_100_lines() -> None:
    """No non-test function (or method) is longer than 100 lines, decorators excluded."""
    bad = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {length} lines"
        for path in sources(SIZED).values()
        for node in ast.walk(tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    report(bad, f"functions over {MAX_FUNCTION_LINES} lines")


def test_no_module_over_800_lines() -> None:
    """No source module is longer than 800 lines."""
    bad = [
        f"{path.relative_to(ROOT)} is {n} lines"
        for path in sources(SIZED).values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    report(bad, f"modules over {MAX_MODULE_LINES} lines")


def test_controller_root_holds_at_most_15_modules() -> None:
    """The controller's root folder stays small: capabilities live in their own packages."""
    modules = sorted(p.name for p in (ROOT / "controller").glob("*.py"))
    assert len(modules) <= MAX_CONTROLLER_ROOT_MODULES, (
        f"controller/ holds {len(modules)} modules (at most {MAX_CONTROLLER_ROOT_MODULES}): "
        + ", ".join(modules)
    )
