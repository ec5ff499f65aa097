"""The package's shape: imports point one way, functions stay short, the wheel is whole, and
the command line starts without the heavy libraries."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnncodes"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every cnncodes module that ``name`` imports, wherever the import statement sits
    (module level, inside functions, under TYPE_CHECKING)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules:
                found.add(target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_imports_the_package_init() -> None:
    offenders = sorted(name for name, targets in _graph().items()
                       if name != "cnncodes" and "cnncodes" in targets)
    assert offenders == [], f"these import the package __init__: {offenders}"


def test_imports_have_no_cycle() -> None:
    graph = _graph()
    graph.pop("cnncodes")  # the lazy public API sits above everything
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The walker above must find imports inside functions and TYPE_CHECKING blocks."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from .a import y\n")
    modules = {"cnncodes.a": a, "cnncodes.b": b}
    assert _imports("cnncodes.a", a, modules) == {"cnncodes.b"}
    assert _imports("cnncodes.b", b, modules) == {"cnncodes.a"}


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "pipelines").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == [], "split these into named steps: " + ", ".join(long)


def test_every_subpackage_is_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject's packages: {sorted(found - listed)}"


def test_help_imports_no_heavy_library() -> None:
    """``cnncodes --help`` and every ``CMD --help`` load neither torch nor scikit-learn
    (measured: under 0.5 s on an idle 2-core machine)."""
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom cnncodes.cli import main\n"
        "commands = [[]] + [[c] for c in main.commands if c != 'explain']"
        " + [['explain', c] for c in main.commands['explain'].commands]\n"
        "for command in commands:\n"
        "    result = CliRunner().invoke(main, [*command, '--help'])\n"
        "    assert result.exit_code == 0, (command, result.output)\n"
        "heavy = ('torch', 'torchvision', 'timm', 'sklearn', 'pandas', 'h5py', 'matplotlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert json.loads(done.stdout.replace("'", '"')) == []


def test_public_api_names_resolve() -> None:
    import cnncodes

    for name in cnncodes.__all__:
        assert getattr(cnncodes, name) is not None, name
    assert callable(cnncodes.extract) and callable(cnncodes.finetune)
    with pytest.raises(AttributeError):
        _ = cnncodes.no_such_name


@pytest.mark.slow
def test_wheel_installs_and_extracts_in_a_fresh_venv(tmp_path: Path) -> None:
    """Build the wheel, install it (without dependencies) in a new venv that borrows this
    environment's libraries, and run the CLI from an unrelated folder."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("cnncodes-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    borrowed = [p for p in sys.path if p.endswith("site-packages")]
    # Plain paths, not site dirs: the editable install's finder in there is not loaded.
    Path(site, "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "CNNCODES_CACHE": str(tmp_path / "cache")}
    cli = env_dir / "bin" / "cnncodes"
    where = subprocess.run([str(python), "-c", "import cnncodes, cnncodes.pipelines.logreg; "
                            "print(cnncodes.__file__)"], capture_output=True, text=True,
                           check=True, cwd=work, env=env).stdout
    assert str(env_dir) in where, where  # the wheel's copy, not the source tree
    assert subprocess.run([str(cli), "--help"], cwd=work, env=env, capture_output=True,
                          text=True, check=True).stdout.startswith("Usage: cnncodes")
    out = subprocess.run([str(cli), "extract", "sklearn:digits", "--limit", "4"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).is_file()
