"""Code tests of the layout: the import contract holds, the serving path loads no training code,
modules and functions stay small enough to hold in one's head, each package's ``Imports:`` line is
true, and the README's and docs' links lead somewhere."""

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


def _stage_packages() -> list[str]:
    inits = sorted((PROJECT_ROOT / "model").glob("*/__init__.py")) + [PROJECT_ROOT / "data_checks" / "__init__.py"]
    names = [".".join(init.parent.relative_to(PROJECT_ROOT).parts) for init in inits]
    return [name for name in names if name not in ("model.configs", "model.sample_data")]  # data, no code


def declared_imports(docstring: str) -> set[str]:
    """The project modules a package's docstring lists after ``Imports:``, up to the first semicolon or the
    paragraph's end (``model.x``, ``data_checks``, ``model.x.y`` for one module of a package); "nothing
    else from this project" lists none."""
    _, found, rest = docstring.partition("Imports:")
    assert found, "the docstring says what the package may import, after 'Imports:'"
    said = re.split(r";|\n\s*\n", rest, maxsplit=1)[0]
    named = set(re.findall(r"``((?:model|data_checks)(?:\.\w+)*)``", said))
    assert named or "nothing else from this project" in said, f"no project module named in: {said!r}"
    return named


def actual_imports(graph, package: str) -> set[str]:
    """Every module of another stage package that a module of ``package`` imports (at any depth)."""
    inside = {package} | graph.find_descendants(package)
    return {target for module in inside for target in graph.find_modules_directly_imported_by(module)} - inside


def _owner(module: str) -> str:
    return ".".join(module.split(".")[: 1 if module.startswith("data_checks") else 2])


def mismatches(declared: set[str], imported: set[str]) -> list[str]:
    """How a package's ``Imports:`` line (``declared``) and the modules it imports differ: a stage package
    imported but not listed, one listed but never imported, and, where the line names single modules of
    a package (``model.registry.versions``), any other module of it imported."""
    said, done = {_owner(m) for m in declared}, {_owner(m) for m in imported}
    problems = [f"imports {p}, not listed" for p in sorted(done - said)]
    problems += [f"lists {p}, never imports it" for p in sorted(said - done)]
    for owner in sorted((said & done) - declared):  # listed by some of its modules only
        named = [m for m in declared if _owner(m) == owner]
        beyond = [m for m in sorted(imported) if _owner(m) == owner and not any(m.startswith(n) for n in named)]
        problems += [f"imports {m}, beyond the {sorted(named)} listed" for m in beyond]
    return problems


@pytest.fixture(scope="module")
def import_graph():
    import grimp  # import-linter's graph of the project's imports (`make lint`)

    return grimp.build_graph("model", "data_checks")


@pytest.mark.parametrize("package", _stage_packages())
def test_each_package_lists_exactly_what_it_imports(package, import_graph):
    """A stage package's ``__init__`` docstring says what it owns and, after ``Imports:``, what it imports."""
    doc = ast.get_docstring(ast.parse((PROJECT_ROOT / package.replace(".", "/") / "__init__.py").read_text()))
    assert doc, f"{package}: its docstring says what it owns and what it may import"
    assert mismatches(declared_imports(doc), actual_imports(import_graph, package)) == [], package


@pytest.mark.parametrize(
    ("docstring", "listed"),
    [
        ("Owns x.\n\nImports: ``model.core`` only.", {"model.core"}),
        ("Imports: ``model.core``, ``model.registry.versions`` (URIs)", {"model.core", "model.registry.versions"}),
        (
            "Imports: ``data_checks`` (redaction), ``model.data``; ``model.loop`` imports it",
            {"data_checks", "model.data"},
        ),
        ("Imports: ``model.core``.\n\nUsed by ``model.train``.", {"model.core"}),
        ("Imports: nothing else from this project (the bottom layer).", set()),
    ],
)
def test_the_imports_line_is_read_as_written(docstring, listed):
    assert declared_imports(docstring) == listed


@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        ({"model.core"}, "imports model.artifact, not listed"),
        ({"model.core", "model.artifact", "model.registry", "model.train"}, "lists model.train, never imports it"),
        ({"model.core", "model.artifact", "model.registry.store"}, "imports model.registry.versions, beyond"),
    ],
)
def test_a_wrong_imports_line_is_caught(declared, problem):
    imported = {"model.core.config", "model.artifact.predictor", "model.registry.versions"}
    assert mismatches({"model.core", "model.artifact", "model.registry.versions"}, imported) == []
    assert any(p.startswith(problem) for p in mismatches(declared, imported)), mismatches(declared, imported)


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


TESTS = PROJECT_ROOT / "tests"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_test_module_imports_another():
    """What tests share lives in a conftest.py (fixtures) or tests/helpers (the rest), never in a test module."""
    offenders = {
        str(path.relative_to(TESTS)): sorted(n for n in _imported_modules(path) if n.split(".")[-1].startswith("test_"))
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_tests_readme_names_every_folder_and_helper():
    readme = (TESTS / "README.md").read_text()
    folders = sorted(
        p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "helpers"
    )
    helpers = sorted(p.name for p in (TESTS / "helpers").glob("*.py") if p.name != "__init__.py")
    assert [f for f in folders if f"| `{f}/` |" not in readme] == []
    assert [h for h in helpers if f"| `helpers/{h}` |" not in readme] == []
