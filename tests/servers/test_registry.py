"""Registry round trip against a real ``mlflow server`` on loopback, and the local SQLite default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from model.core.config import DataConfig, DeliveryConfig, GateConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.core.reports import write_reports
from model.deploy.delivery import release_step
from model.evaluate.steps import gate_step
from model.registry import store
from model.registry.steps import register_step, set_champion_step
from model.registry.versions import CHAMPION, alias_version, resolve_version
from model.train.steps import train_step
from scripts.cli import main
from tests.helpers.registry import mlflow_server

# the tiny random model is weak by design: floors at zero let it through the first-model gate
OPEN_GATE = GateConfig(min_accuracy=0.0, min_macro_f1=0.0, latency_budget_ms=1000)


@pytest.fixture
def mlflow_server_url(tmp_path, monkeypatch):
    # the server serves artifacts itself (its default), stored under --artifacts-destination
    with mlflow_server(tmp_path, "--artifacts-destination", str(tmp_path / "server-artifacts")) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url


def _load_champion_in_fresh_process(name: str, env_uri: str | None) -> list[dict]:
    code = (
        "import json, mlflow, pandas as pd;"
        f"m = mlflow.pyfunc.load_model('models:/{name}@champion');"
        "out = m.predict(pd.DataFrame({'text': ['where is my order', 'what is the weather on mars']}));"
        "print(json.dumps(out.to_dict(orient='records')))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train_gate_register(tmp_path, small_csv, cfg, reg):
    trained, _ = train_step(small_csv, DataConfig(), cfg, reg, tmp_path / "work", tmp_path / "artifact")
    gated = gate_step(trained.artifact, "auto", small_csv, data_cfg=DataConfig(), gate_cfg=OPEN_GATE, reg_cfg=reg)
    assert gated.passed, gated.decision.reasons
    gate_file = write_reports(tmp_path / "reports", "gate", gated, gated.markdown)
    return trained, gate_file


def test_round_trip_on_a_real_mlflow_server(tmp_path, small_csv, tiny_train_cfg, mlflow_server_url, repo, monkeypatch):
    reg = RegistryConfig(model_name="intent-server-test", tracking_uri=mlflow_server_url)
    trained, gate_file = _train_gate_register(tmp_path, small_csv, tiny_train_cfg, reg)

    first, _ = register_step(Path(trained.artifact), gate_file, reg)
    again, md = register_step(Path(trained.artifact), gate_file, reg)
    assert first.created and first.version == 1
    assert not again.created and again.version == 1, "same git SHA + dataset digest must not add a version"
    assert "already registered" in md

    set_champion_step(None, reg)
    assert alias_version(reg, CHAMPION) == 1

    run = mlflow.get_run(trained.mlflow_run_id)
    assert run.data.tags["dataset_digest"] == trained.dataset_digest and run.data.tags["git_sha"]
    assert run.data.params["train.seed"] == str(tiny_train_cfg.seed)
    assert run.inputs.dataset_inputs, "the dataset must be logged as the run's input"

    rows = _load_champion_in_fresh_process(reg.model_name, mlflow_server_url)
    # the sample data has entity spans, so the model has an entity head and the pyfunc answers its entities
    assert len(rows) == 2 and set(rows[0]) == {"intent", "confidence", "fallback", "entities"}
    assert all(0.0 < r["confidence"] <= 1.0 and isinstance(r["entities"], list) for r in rows)

    # this server proxies artifacts (`mlflow server`'s default): MLflow 3.17 names the model mlflow-artifacts:/...,
    # which KServe's storage initializer cannot download, so `release` refuses it before any pull request
    # (the server that works instead: tests/servers/test_storage.py)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert resolve_version(reg, 1)["storage_uri"].startswith("mlflow-artifacts:/1/models/m-")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    with pytest.raises(FlywheelError, match="v1: storage URI 'mlflow-artifacts:/1/models/m-.*--default-artifact-root"):
        release_step("staging", 1, 10, repo, reg_cfg=reg, dcfg=DeliveryConfig())
    done = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/heads"], cwd=repo, capture_output=True)
    assert done.stdout.decode().split() == ["refs/heads/main"]  # no branch: no pull request
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout == head


def test_sqlite_default_and_refusals(tmp_path, small_csv, tiny_train_cfg, isolated_work_dir, registry_cfg):
    reg = registry_cfg
    trained, gate_file = _train_gate_register(tmp_path, small_csv, tiny_train_cfg, reg)
    assert (isolated_work_dir / "mlflow.db").exists()

    rejected = json.loads(gate_file.read_text()) | {"passed": False, "reasons": ["accuracy floor: too low"]}
    bad = write_reports(tmp_path / "rejected", "gate", rejected, "")
    with pytest.raises(FlywheelError, match="gate rejected"):
        register_step(Path(trained.artifact), bad, reg)
    other = write_reports(tmp_path / "other", "gate", rejected | {"passed": True, "challenger_digest": "0" * 64}, "")
    with pytest.raises(FlywheelError, match="not .*artifact"):
        register_step(Path(trained.artifact), other, reg)
    with pytest.raises(FlywheelError, match="no 'challenger'"):
        set_champion_step(None, reg)

    registered, _ = register_step(Path(trained.artifact), gate_file, reg)
    set_champion_step(registered.version, reg)
    rows = _load_champion_in_fresh_process(reg.model_name, f"sqlite:///{isolated_work_dir / 'mlflow.db'}")
    assert len(rows) == 2


def test_set_champion_refuses_a_version_that_never_passed_the_gate(
    tmp_path, small_csv, tiny_train_cfg, capsys, registry_cfg
):
    """A version registered by hand (MLflow UI, another script) carries no gate tag: never champion."""
    reg = registry_cfg
    trained, gate_file = _train_gate_register(tmp_path, small_csv, tiny_train_cfg, reg)
    gated, _ = register_step(Path(trained.artifact), gate_file, reg)
    set_champion_step(gated.version, reg)
    client = MlflowClient(store.tracking_uri(reg))
    source = client.get_model_version(reg.model_name, str(gated.version))
    by_hand = client.create_model_version(reg.model_name, source.source, run_id=source.run_id)

    capsys.readouterr()
    assert main(["set-champion", "--version", str(by_hand.version)]) == 2
    err = capsys.readouterr().err
    assert f"{reg.model_name} v{by_hand.version} has not passed the gate" in err
    assert "only gated versions may be promoted to champion" in err
    assert alias_version(reg, CHAMPION) == gated.version  # nothing moved
    assert main(["set-champion", "--version", "99"]) == 2
    assert f"model '{reg.model_name}' has no version 99" in capsys.readouterr().err
    # `promote` is a pull request for an environment: without --env it is refused, the alias stays
    assert main(["promote", "--version", str(gated.version)]) == 2
    assert "the following arguments are required: --env" in capsys.readouterr().err
    assert alias_version(reg, CHAMPION) == gated.version
