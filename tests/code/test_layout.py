"""Code tests of the layout: the import contract holds, the serving path loads no training code, and
modules and functions stay small enough to hold in one's head."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.core.config import PROJECT_ROOT

PACKAGES = ("model", "data_checks", "scripts")
MAX_MODULE_LINES = 420  # "about 400": a module over it holds more than one job
MAX_FUNCTION_LINES = 85  # "about 80"


def test_the_import_contract_holds():
    """pyproject.toml's [tool.importlinter] contracts (also `make lint`)."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_serving_imports_no_training_gate_or_registration_code():
    """What the serving image loads: the predictor in a fresh interpreter, and nothing from training."""
    code = (
        "import json, sys; import model.serve.serving;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('model', 'data_checks')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "model.serve.serving" in loaded and "model.artifact.predictor" in loaded
    forbidden = ("model.train", "model.evaluate", "model.registry.register", "model.registry.tracking")
    assert not [m for m in loaded if m.startswith(forbidden)], loaded
    assert not [m for m in loaded if m.startswith(("model.prepare", "model.deploy", "model.loop", "data_checks"))]


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (PROJECT_ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_modules_and_functions_are_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path}: {len(source.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: {', '.join(long)}"


def test_every_stage_package_says_what_it_owns_and_may_import():
    for init in sorted((PROJECT_ROOT / "model").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if init.parent.name in ("configs", "sample_data"):
            continue
        assert doc and "Imports:" in doc, f"{init}: its docstring says what it owns and what it may import"
