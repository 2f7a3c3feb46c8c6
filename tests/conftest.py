"""Fixtures every test folder shares: an isolated work folder per test, a tiny random BERT and one tiny
model trained on it, small labelled data, a throwaway PostgreSQL, a GitOps repository; and the rule
for tests of real parts (system tools the tests run for real, tests/helpers/real_parts.py).

A test that needs one is marked ``@pytest.mark.real("promtool")`` (or its fixture calls
``require_real_part``). When the part is missing, the test fails under CI (``CI`` set, as GitHub
Actions and .ci/run do): a green run there means every real part ran. Elsewhere it is skipped, and
the run ends with one line naming what was not tested and how to get it.

The folders hold the tests by kind (tests/README.md): ``code``, ``data``, ``model``, ``servers``,
``loop``. What the tests share that is not a fixture is in ``tests/helpers``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from model.core.config import PROJECT_ROOT, SAMPLE_DATA, DataConfig, RegistryConfig, TrainConfig
from scripts.throwaway_postgres import ThrowawayPostgres
from tests.helpers.data import write_subset
from tests.helpers.git import IDENTITY
from tests.helpers.real_parts import HOW_TO_GET, MISSING, REAL_PARTS, require_real_part
from tests.helpers.registry import local_registry
from tests.helpers.tiny_bert import save_tiny_bert


@pytest.fixture
def registry_cfg(isolated_work_dir) -> RegistryConfig:
    return local_registry(isolated_work_dir)


@pytest.fixture(autouse=True)
def isolated_work_dir(tmp_path, monkeypatch):
    """Every test gets its own work folder and local MLflow store; nothing leaks between tests."""
    work = tmp_path / "work"
    monkeypatch.setenv("FLYWHEEL_WORK_DIR", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return work


@pytest.fixture(scope="session")
def sample_df() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DATA, dtype=str, keep_default_na=False)


@pytest.fixture
def small_csv(tmp_path, sample_df) -> Path:
    return write_subset(sample_df, tmp_path / "small.csv")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with the real MiniLM tokenizer: trains in seconds.

    Seeded, so every run (whatever ran before it in the session) trains the same models and the
    whole-loop tests reach the same decisions."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_train_cfg(tiny_bert) -> TrainConfig:
    return TrainConfig(
        base_model=str(tiny_bert),
        epochs=2,
        batch_size=16,
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        freeze_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_train_cfg, sample_df) -> dict:
    """One tiny model trained for the whole session (its own work folder); copy it before changing it."""
    from model.train.steps import train_step

    root = tmp_path_factory.mktemp("tiny-artifact")
    data = write_subset(sample_df, root / "small.csv")
    work = root / "work"
    summary, _ = train_step(data, DataConfig(), tiny_train_cfg, local_registry(work), work, root / "artifact")
    return {**dataclasses.asdict(summary), "data": str(data), "train_cfg": tiny_train_cfg}


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on a free loopback port, for the whole session (its URL, no database).

    A real part: without the server binaries it fails under CI, else skips (see the module docstring).
    """
    require_real_part("postgresql")
    cluster = ThrowawayPostgres().start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    import uuid

    import sqlalchemy as sa

    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


# ---- real parts --------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line("markers", "real(name): runs a real system tool (see tests/helpers/real_parts.py)")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one compute thread per worker, for torch here and in the processes it starts (before torch is
        # imported): the workers share the cores instead of each running a thread per core on all of them
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("real"):
        require_real_part(*mark.args)


def pytest_unconfigure(config):
    """The run's last line, after pytest's own counts: what was not tested for real, and how to get it."""
    terminalreporter = config.pluginmanager.get_plugin("terminalreporter")
    if terminalreporter is None:
        return
    missing = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if MISSING in reason:
            missing[reason.split(MISSING, 1)[1].strip()] += 1
    if missing:
        parts = ", ".join(f"{REAL_PARTS[n][0]} ({k} tests)" for n, k in sorted(missing.items()))
        terminalreporter.write_line(f"NOT TESTED for real, missing {parts}: {HOW_TO_GET}", yellow=True, bold=True)


# ---- the fast subset, and the order files run in ----------------------------------------------------

FAST_FOLDERS = ("code", "data")  # `make test-fast`: no training, no servers (tests/README.md)
# fixtures that train a model or start a server, and the folder a test that needs one belongs in
NOT_FAST = {
    "tiny_artifact": "trains a model: tests/model",
    "postgres_server": "starts PostgreSQL: tests/servers",
    "store_url": "starts PostgreSQL: tests/servers",
}
# the folders by how long a file of theirs takes, longest first: pytest-xdist hands out whole files
# (`--dist loadfile`) in this order, so the longest start first and none is left running alone at the end
FOLDER_ORDER = ("model", "loop", "servers", "data", "code")


def _folder(item) -> str:
    tests = Path(__file__).parent
    return item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""


def pytest_collection_modifyitems(config, items):
    """Keep `make test-fast` fast: a code or data test that asks for training or a server stops the run at
    collection, naming where it belongs. Then order the files: those with a ``slow`` test first, then by
    folder (``FOLDER_ORDER``); the tests of a file keep their order."""
    for item in items:
        heavy = [f"{name} ({why})" for name, why in NOT_FAST.items() if name in item.fixturenames]
        heavy += ["the slow mark (fine-tunes MiniLM): tests/model"] if item.get_closest_marker("slow") else []
        if _folder(item) in FAST_FOLDERS and heavy:
            raise pytest.UsageError(f"{item.nodeid}: tests/{_folder(item)} is in `make test-fast`, but it uses {heavy}")
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    rank = {folder: i for i, folder in enumerate(FOLDER_ORDER)}
    items.sort(key=lambda item: (item.path not in slow_files, rank.get(_folder(item), len(rank))))


# ---- a GitOps repository ---------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A Git repository holding a copy of this project's manifests, on branch main."""
    for var, value in IDENTITY.items():
        monkeypatch.setenv(var, value)
    root = tmp_path / "gitops"
    shutil.copytree(PROJECT_ROOT / "manifests", root / "manifests")
    for args, where in ((("init", "-q", "-b", "main", str(root)), root.parent), (("add", "-A"), root),
                        (("commit", "-q", "-m", "initial manifests"), root)):  # fmt: skip
        subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True)
    return root
