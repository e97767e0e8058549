"""The layering rules, kept by tests (issue 21):

- importing ``pf_envs`` (any of its modules) loads neither ``pf_agents`` nor ``pf_deploy``, and
  no module of ``pf_envs`` imports them, not even inside a function;
- ``learners`` imports nothing of the project above it (only ``learners.*``);
- ``pf_agents`` does not import ``pf_deploy`` (the stages after the search sit above the agents);
- importing ``pf_deploy`` or ``pf_deploy.benchmark`` loads no torch (the benchmark runs on boards
  with onnxruntime and numpy only);
- no library module runs anything under ``scripts/`` or ``benchmarks/`` by path.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pf_envs", "pf_agents", "pf_deploy", "learners", "baselines")
PROJECT = (*PACKAGES, "scripts", "benchmarks")
#: package -> project packages it must never import (anywhere in its modules)
FORBIDDEN = {
    "pf_envs": ("pf_agents", "pf_deploy", "baselines"),
    "learners": ("pf_envs", "pf_agents", "pf_deploy", "baselines"),
    "pf_agents": ("pf_deploy",),
    "baselines": ("pf_deploy",),
}
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "system", "run_path", "execv", "execvp"}


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module name of a file (top level and inside functions), absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_one_above_it(package):
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}"
           for path in _modules(package) for line, name in _imports(path)
           if name.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "imports that run upward:\n" + "\n".join(bad)


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_importing_every_pf_envs_module_loads_no_agent_and_no_deploy_stage():
    code = (
        "import importlib, pkgutil, sys, pf_envs\n"
        "for m in pkgutil.walk_packages(pf_envs.__path__, 'pf_envs.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('pf_agents', 'pf_deploy', 'baselines')))\n"
    )
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_pf_deploy_and_its_benchmark_load_no_torch():
    proc = _fresh("import sys, pf_deploy, pf_deploy.benchmark\n"
                  "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'pf_envs', 'pf_agents')))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_library_module_runs_scripts_or_benchmarks_by_path(package):
    bad = []
    for path in _modules(package):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        # a path component: REPO / "scripts" / "x.py"
        bad += [f"{path.relative_to(REPO)}:{line} {value!r}" for line, value in _strings(tree)
                if value in ("scripts", "benchmarks")]
        # a command that names a file there
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in SUBPROCESS_CALLS:
                    bad += [f"{path.relative_to(REPO)}:{line} runs {value!r}" for line, value in _strings(node)
                            if value.startswith(("scripts/", "benchmarks/")) or value.endswith(".py")]
    assert not bad, "library modules that run files of scripts/ or benchmarks/:\n" + "\n".join(bad)


def test_the_scripts_are_shims():
    """scripts/*.py hold no logic: each imports one ``main`` of a package and calls it."""
    for path in sorted((REPO / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defs = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        froms = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.split(".")[0] in PACKAGES]
        assert not defs and len(froms) == 1, f"{path.name}: defines {defs}, imports {froms}"
