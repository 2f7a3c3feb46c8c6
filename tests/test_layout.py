"""Code tests of the layout: the import contract holds, the serving path loads no training code,
modules and functions stay small enough to hold in one's head, and the README's and docs' links lead
somewhere."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
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


def _loaded_by(module: str) -> list[str]:
    """The modules importing ``module`` loads in a fresh interpreter."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_serving_imports_no_training_gate_registry_or_mlflow():
    """What the serving image loads: the predictor in a fresh interpreter, and nothing from training,
    the gate or the registry; no MLflow (a models:/ URI is resolved before the server starts)."""
    loaded = _loaded_by("model.serve.serving")
    assert "model.serve.serving" in loaded and "model.artifact.predictor" in loaded
    forbidden = ("model.train", "model.evaluate", "model.registry", "model.prepare", "model.deploy", "model.loop")
    assert not [m for m in loaded if m.startswith((*forbidden, "data_checks"))], loaded
    assert "mlflow" not in loaded


def test_the_serve_step_imports_mlflow_only_for_a_registry_uri():
    """`flywheel serve` with a folder (as in the pod, /mnt/models) loads the server and no MLflow."""
    loaded = _loaded_by("model.deploy.serve_step")
    assert "model.serve.serving" in loaded
    assert "mlflow" not in loaded and not [m for m in loaded if m.startswith("model.registry")]


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


DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """Markdown without its code: fenced blocks and inline code spans hold no links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))


def _anchors(text: str) -> Iterator[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings_that_exist(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in set(_anchors(path.read_text())):
            broken.append(f"{link}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {(PROJECT_ROOT / link.partition("#")[0]).resolve() for link in _links(PROJECT_ROOT / "README.md")}
    assert {p.resolve() for p in DOCS[1:]} <= linked


def test_anchors_are_made_as_github_makes_them():
    text = "# `make demo`: the loop (2026-12-03)\n## The gate's latency\n```\n# not a heading\n```\n## FAQ\n## FAQ\n"
    assert list(_anchors(text)) == ["make-demo-the-loop-2026-12-03", "the-gates-latency", "faq", "faq-1"]
