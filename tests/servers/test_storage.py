"""Model locations KServe can download (model/deploy/storage.py): KServe's ``ValidateStorageURI`` as its
source says (kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go), on URIs shaped as MLflow
3.17 gives them; and ``flywheel release`` accepting what a real ``mlflow server`` set up as the refusal
says hands out. (A default server's mlflow-artifacts:/ location refused: tests/servers/test_registry.py, on its
server.)"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from model.core.config import PROJECT_ROOT, DeliveryConfig, RegistryConfig
from model.core.errors import FlywheelError
from model.deploy import manifests, storage
from model.deploy.delivery import release_step
from model.registry import versions
from model.registry.store import connect
from tests.helpers.git import branches
from tests.helpers.registry import mlflow_server

LOGGED = "1/models/m-4f0c3b6f8e2d4c1a9b7e5d3c1a0f2e4d/artifacts"  # MLflow 3: <experiment>/models/m-<id>/artifacts
INTENT = "artifacts/intent_model"  # the folder inside the logged model that `release` names


@pytest.mark.parametrize(
    ("uri", "kserve", "ours"),
    [
        # what MLflow 3 gives a logged model, by artifact store: the experiment's location + models/m-<id>/artifacts
        (f"s3://flywheel-models/mlflow/{LOGGED}/{INTENT}", True, True),
        (f"gs://flywheel-models/mlflow/{LOGGED}/{INTENT}", True, True),
        (f"file:///srv/mlflow/{LOGGED}/{INTENT}", True, True),  # what a local SQLite store gives (make demo)
        # the server's proxy (`mlflow server`'s default): no "://", so KServe reads a local path, then finds nothing
        (f"mlflow-artifacts:/{LOGGED}/{INTENT}", True, False),
        (f"mlflow-artifacts://mlflow.example.com:5000/{LOGGED}/{INTENT}", False, False),
        ("dbfs:/databricks/mlflow-tracking/1234567890/m-4f0c3b6f/artifacts", True, False),
        ("dbfs://databricks/mlflow-tracking/1234567890/m-4f0c3b6f/artifacts", False, False),
        (f"wasbs://models@flywheelacct.blob.core.windows.net/mlflow/{LOGGED}", False, False),
        (f"abfss://models@flywheelacct.dfs.core.windows.net/mlflow/{LOGGED}", False, False),
        (f"https://flywheelacct.blob.core.windows.net/models/mlflow/{LOGGED}", True, True),
        # KServe checks Azure first: any URI naming blob.core.windows.net must match its https form
        ("http://flywheelacct.blob.core.windows.net/models/x", False, False),
        ("s3://bucket/blob.core.windows.net/x", False, False),
        # the prefixes, case and all
        ("S3://bucket/model", False, False),
        ("hf://org/model", True, True),
        ("oci://ghcr.io/org/model:1", True, True),
        ("pvc://models-pvc/intent", True, True),
        ("runs:/0a1b2c/intent_model", True, False),  # MLflow's run-relative form: a "local path" to KServe
        ("/mnt/models", True, False),
    ],
)
def test_storage_uris_as_kserve_validates_them(uri, kserve, ours):
    assert storage.kserve_accepts(uri) is kserve
    refused = storage.problem(uri)
    assert (refused is None) is ours
    if refused:
        assert uri in refused and "--default-artifact-root" in refused and "docs/cluster.md" in refused


def test_the_refusal_says_what_the_location_is():
    assert "artifact proxy" in storage.problem(f"mlflow-artifacts:/{LOGGED}")
    assert "path inside its storage initializer's container" in storage.problem(f"mlflow-artifacts:/{LOGGED}")
    assert "Databricks" in storage.problem("dbfs:/databricks/mlflow-tracking/1/x")
    assert "https://ACCOUNT.blob.core.windows.net" in storage.problem("wasbs://c@a.blob.core.windows.net/x")


def test_the_manifests_refuse_a_location_kserve_cannot_download():
    """check-manifests reads the rollout record with the same rule."""
    path = manifests.isvc_path(PROJECT_ROOT, "staging")
    uri = f"mlflow-artifacts:/{LOGGED}/{INTENT}"
    edited = path.read_text().replace(
        '  stable: ""', f'  stable: "1"\n  stable-storage-uri: "{uri}"\n  stable-sha256: "{"a" * 64}"'
    )
    edited = edited.replace(
        '- name: STORAGE_URI\n            value: ""', f'- name: STORAGE_URI\n            value: "{uri}"'
    )
    with pytest.raises(FlywheelError, match="stable-storage-uri: storage URI 'mlflow-artifacts:/1/models/m-"):
        manifests.read_rollout(path, manifests.load(path, edited))


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


def _register_on(url: str, folder: Path) -> RegistryConfig:
    """A gated v1 logged and registered as MLflow 3.17 does it (a logged model, then a version), kept small: an
    intent folder of one file (what `release` reads is MLflow's MLmodel and the version's tags)."""
    reg = RegistryConfig(model_name="intent-storage", tracking_uri=url)
    client = connect(reg)
    (folder / "intent").mkdir(parents=True)
    (folder / "intent" / "MANIFEST.sha256").write_text("")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="intent_model",
            python_model=Echo(),
            artifacts={versions.ARTIFACT_KEY: str(folder / "intent")},
            pip_requirements=["mlflow"],  # no inference run: it would load the model in a subprocess
        )
    version = mlflow.register_model(info.model_uri, reg.model_name).version
    for key, value in {"artifact_digest": "a" * 64, versions.GATE_TAG: "passed"}.items():
        client.set_model_version_tag(reg.model_name, version, key, value)
    return reg


def test_release_takes_what_a_server_writing_to_the_store_directly_hands_out(
    tmp_path, repo, tiny_artifact, monkeypatch
):
    """The fix the refusal names: clients write to the store itself (here a folder, as file://, standing in for
    s3://), so the model's location is one KServe's storage initializer downloads."""
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    root = (tmp_path / "store").as_uri()
    with mlflow_server(tmp_path, "--no-serve-artifacts", "--default-artifact-root", root) as url:
        reg = _register_on(url, tmp_path / "model")
        result, _ = release_step("staging", 1, 10, repo, reg_cfg=reg, dcfg=DeliveryConfig())
    assert result["storage_uri"].startswith(root + "/") and "/models/m-" in result["storage_uri"]
    assert storage.problem(result["storage_uri"]) is None
    assert branches(repo) == ["flywheel/release-staging-v1", "main"]
