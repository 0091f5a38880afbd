"""The package's shape: layers import only downwards, no import cycles, small files, a light CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrdx"

# Lowest first. A module may import modules of its own package, and of any package in a lower layer.
LAYERS: list[set[str]] = [
    {"errors"},
    {"labels", "files", "device", "spreadsheet", "reporter", "settings", "options"},
    {"imaging", "metrics"},
    {"data", "phantom"},
    {"model"},
    {"explain"},
    {"inference"},
    {"training", "evaluation", "interop", "integrations"},
    {"jobs"},
    {"app"},
    {"cli"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("cxrdx", *parts))] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every cxrdx module this file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cxrdx"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("cxrdx"):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    unknown = sorted({t for m in _modules() if (t := _top(m)) and t not in LAYER_OF and t != "__main__"})
    assert not unknown, f"add these to LAYERS: {unknown}"


def test_imports_point_down():
    wrong = []
    for module, imports in _graph().items():
        top = _top(module)
        if (
            top is None or top == "__main__"
        ):  # the package's lazy public API and `python -m cxrdx` see everything
            continue
        for target in imports:
            other = _top(target)
            if other is None:  # `from cxrdx import __version__`: the top package is lazy and loads nothing
                continue
            if other != top and LAYER_OF[other] >= LAYER_OF[top]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "cxrdx" or (nxt in graph[node] and node.startswith(nxt + ".")):
                continue  # a module importing its own package's docstring-only __init__
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if not state.get(nxt) and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node) and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_package_inits_hold_no_code():
    """Sub-package __init__ files are a docstring only, so importing one module never loads its siblings.

    The CLI's own __init__ is its entry point (``cxrdx.cli:main``), and the top package's is the lazy public API.
    """
    heavy = []
    for path in SRC.rglob("__init__.py"):
        if path.parent in (SRC, SRC / "cli"):
            continue
        body = [n for n in ast.parse(path.read_text()).body if not isinstance(n, ast.Expr)]
        if body:
            heavy.append(str(path.relative_to(SRC)))
    assert not heavy, heavy


def test_no_file_over_the_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


HEAVY = (
    "torch",
    "pandas",
    "gradio",
    "monai",
    "onnxruntime",
    "matplotlib",
    "numpy",
    "tqdm",
    "PIL",
    "ray",
    "pyarrow",
)


def test_cli_help_loads_no_heavy_library():
    """`cxrdx --help` and every `cxrdx CMD --help`, each in a fresh interpreter, load none of HEAVY."""
    from cxrdx.cli import COMMANDS

    code = (
        "import contextlib, io, sys; from cxrdx.cli import main\n"
        "argv = sys.argv[1:]\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = {}
    for argv in [["--help"], *([name, "--help"] for name in COMMANDS)]:
        run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        if "HEAVY []" not in run.stdout:
            loaded[" ".join(argv)] = run.stdout.strip().splitlines()[-1]
    assert len(COMMANDS) >= 17 and not loaded, loaded
