"""The package's layers point one way, and every module imports on its own.

Layers, lowest first (a module may import its own layer and those its layer lists in MAY_IMPORT):

    base      errors, _version
    data      data, distance, artifact
    codecs    codecs.*
    evaluate  evaluate.*                      (data only: nothing but base and data below it)
    engine    model, training, generation, DP, priors, corpora (any other top-level module too)
    backends  backends.*
    api       synthesizer, pretrain, the package root
    apps      cli, server.*

The graph is read with ``ast`` from every import statement, those inside functions included, so a
deferred import cannot hide an upward arrow or a cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tsynth"

LAYERS = {
    "base": ["tsynth.errors", "tsynth._version"],
    "data": ["tsynth.data", "tsynth.distance", "tsynth.artifact"],
    "codecs": ["tsynth.codecs"],
    "evaluate": ["tsynth.evaluate"],
    "engine": ["tsynth.tokenmodel", "tsynth.train", "tsynth.sample", "tsynth.privacy", "tsynth.prior", "tsynth.corpus"],
    "backends": ["tsynth.backends"],
    "api": ["tsynth", "tsynth.synthesizer", "tsynth.pretrain", "tsynth.partitions", "tsynth.evalscale"],
    "apps": ["tsynth.cli", "tsynth.server"],
}
BELOW = {"base": set(), "data": {"base"}, "codecs": {"base", "data"}, "evaluate": {"base", "data"},
         "engine": {"base", "data", "codecs"}, "backends": {"base", "data", "codecs", "engine"},
         "api": {"base", "data", "codecs", "evaluate", "engine", "backends"}}
BELOW["apps"] = set(BELOW["api"]) | {"api"}
MAY_IMPORT = {layer: below | {layer} for layer, below in BELOW.items()}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    """The layer of a module: the longest listed name that is it or a package above it (the root, "tsynth",
    names itself only); a top-level module listed nowhere belongs to the engine (new model, codec-of-the-model
    or generation modules land there)."""
    best, layer = "", "engine"
    for name, members in LAYERS.items():
        for m in members:
            hit = module == m or (m != "tsynth" and module.startswith(m + "."))
            if hit and len(m) > len(best):
                best, layer = m, name
    return layer


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The tsynth modules ``module`` imports anywhere in its source (``from X import name`` counts X.name
    when that is a module)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "tsynth")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tsynth":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_upward_import():
    bad = [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
           for m, deps in graph().items() for d in sorted(deps)
           if layer_of(d) not in MAY_IMPORT[layer_of(m)] and not d.startswith(m + ".")]
    assert not bad, "imports that point up (see the layers in this file's docstring):\n" + "\n".join(bad)


def test_no_library_module_imports_the_cli():
    users = [m for m, deps in graph().items() if "tsynth.cli" in deps]
    assert not users, f"modules importing tsynth.cli: {users}"


def test_no_import_cycle():
    g = graph()
    # a package's __init__ importing its own submodules, and those importing siblings, is not a cycle
    # of layers; every other edge counts
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_library_module_prints():
    """Nothing in the library prints; the CLI and the server's entry point talk to the terminal."""
    allowed = {"tsynth.cli", "tsynth.server.app", "tsynth.backends.local"}   # see the note below
    found = []
    for m, path in modules().items():
        if m in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{m}:{node.lineno}")
    # backends.local prints only in its training child process, whose stdout is the pipe of JSON events the
    # parent reads; server.app prints the address it listens on from `tsynth serve`
    assert not found, f"print() in library modules: {found}"


CHECK_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [k for k in sys.modules if k == "tsynth" or k.startswith("tsynth.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    """Each module imports in a clean state (tsynth's modules forgotten before each; the third-party ones stay
    loaded, which keeps this a few seconds), so none depends on another having been imported first."""
    names = sorted(modules())
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHECK_ALONE, *names], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
