"""The wheel pip builds from this project: every module and every data file the packages read at run time
(the loop report's template, the configs, the sample data, the CRD schemas, Argo CD's health.lua with its
licence) is inside it, and the code runs from it alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from model.core.config import PROJECT_ROOT

PACKAGES = ("model", "data_checks", "scripts")  # pyproject.toml's [tool.setuptools.packages.find]
NOT_PACKAGE_DATA = {"scripts/actionlint.cjs", "scripts/install_test_tools.sh"}  # development tools beside the CLI


def _source_files() -> set[str]:
    """Every file of the packages as they are in this checkout (no caches): what the wheel must carry."""
    found = {
        path.relative_to(PROJECT_ROOT).as_posix()
        for package in PACKAGES
        for path in (PROJECT_ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    return found - NOT_PACKAGE_DATA


FROM_THE_WHEEL = """
import json
from pathlib import Path

import model
from model.core.config import DEFAULT_CONFIG, RESPONSE_CATALOG, SAMPLE_DATA
from model.deploy.argocd_health import script
from model.loop.record import LoopRecord, StageEntry
from model.loop.report import render_report

record = LoopRecord(dataset="sample", started_at="2026-11-27T10:00:00Z", stages=[StageEntry("setup", "Setup")])
html = render_report(record.to_dict(), Path("r.html")).read_text()
found = {
    "model": model.__file__,
    "report": "failed at Setup" in html,
    "configs": DEFAULT_CONFIG.is_file() and RESPONSE_CATALOG.is_file(),
    "sample": SAMPLE_DATA.stat().st_size,
    "lua": "health_status.status" in script(),
}
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` on a copy of the project (so the build's own folders never land in the checkout),
    offline: no index, no build isolation (setuptools from the venv), no dependencies."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    done = subprocess.run([*command, "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("flywheel-*.whl")
    return built


def test_the_wheel_carries_every_module_and_data_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        inside = {name for name in archive.namelist() if not name.startswith("flywheel-")}  # less .dist-info
    expected = _source_files()
    assert {"model/loop/templates/report.html.j2", "model/configs/default.yaml", "model/deploy/argocd/health.lua"} <= (
        expected
    )
    assert sorted(expected - inside) == []
    assert sorted(inside - expected) == []


def test_the_code_runs_from_the_wheel_alone(wheel, tmp_path):
    """The wheel unpacked and put first on the path, in a fresh interpreter away from the checkout: the
    loop report renders from the template the wheel carries, Argo CD's health.lua reads, the configs and
    the sample data are where the code looks for them."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", FROM_THE_WHEEL], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["model"]).is_relative_to(unpacked)  # not the checkout the venv has installed
    assert found["report"] and found["lua"] and found["configs"] and found["sample"] > 0
