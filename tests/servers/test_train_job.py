"""Training on the cluster, against its stand-in (tests/helpers/trainer_stand_in.py): the Kubernetes client
against the API's answers, the step's refusals and failures, and the whole step: a real MLflow server
between the workflow and the pods, the pods' command run under torchrun with the PET_* variables Trainer
sets. The TrainJob itself and the wait, as code: tests/code/test_train_job_manifests.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from model.artifact.manifest import verify
from model.core.errors import FlywheelError
from model.deploy import train_job, trainjob
from model.deploy.train_job import TrainJobs, Unavailable
from scripts.cli import main
from tests.helpers import trainer_stand_in as stand_in
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry, mlflow_server
from tests.helpers.trainjobs import IMAGE, NAMESPACE, TOKEN, edit, rendered, template

# ---- the Kubernetes API -------------------------------------------------------------------------------


@pytest.fixture
def cluster(monkeypatch):
    """The API stand-in, its pods ending at once with ``cluster.exit_code``; the step's kubeconfig points at it."""
    server = stand_in.Cluster(NAMESPACE, TOKEN, run=lambda job: server.exit_code)
    server.exit_code = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(train_job.KUBECONFIG_ENV, server.kubeconfig())
    monkeypatch.setattr(train_job, "POLL_S", 0.05)
    yield server
    server.shutdown()
    for worker in server.workers:
        worker.join(timeout=60)


def test_the_client_creates_and_reads_with_the_kubeconfigs_token(cluster):
    jobs = TrainJobs(train_job.kubernetes_api(), NAMESPACE)
    jobs.create(rendered())
    assert cluster.created == [rendered()]
    assert cluster.requests[0] == (
        "POST", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs?fieldValidation=Strict"
    )  # fmt: skip
    cluster.workers[0].join(timeout=30)
    assert trainjob.state_of(jobs.get(rendered()["metadata"]["name"])).phase == "complete"


@pytest.mark.parametrize(
    ("namespace", "token", "job", "fragment"),
    [
        ("default", TOKEN, rendered(), "the ServiceAccount's Role must allow create and get on trainjobs in default"),
        (NAMESPACE, "stolen", rendered(), "the kubeconfig's credentials were refused (HTTP 401"),
        (NAMESPACE, TOKEN, edit("spec.trainer.gpus", 1)(rendered()), "refused (HTTP 422"),
    ],
)
def test_refusals_are_named(cluster, monkeypatch, namespace, token, job, fragment):
    monkeypatch.setenv(train_job.KUBECONFIG_ENV, cluster.kubeconfig(token))
    with pytest.raises(FlywheelError, match=r"creating TrainJob") as caught:
        TrainJobs(train_job.kubernetes_api(), namespace).create(job)
    assert fragment in str(caught.value)
    assert not cluster.jobs


def test_a_name_taken_and_a_job_gone_are_errors(cluster):
    jobs = TrainJobs(train_job.kubernetes_api(), NAMESPACE)
    jobs.create(rendered())
    with pytest.raises(FlywheelError, match="a TrainJob of that name exists already"):
        jobs.create(rendered())
    with pytest.raises(FlywheelError, match="not found"):
        jobs.get("flywheel-train-gone")


def test_an_unreachable_api_server_is_worth_asking_again():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from kubernetes import client

    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    with pytest.raises(Unavailable):
        TrainJobs(api, NAMESPACE).get("flywheel-train-x")


def test_a_bad_kubeconfig_is_named(monkeypatch):
    monkeypatch.setenv(train_job.KUBECONFIG_ENV, "clusters: [oops")
    with pytest.raises(FlywheelError, match=r"cannot reach the cluster: \$FLYWHEEL_KUBECONFIG"):
        train_job.kubernetes_api()


# ---- the step ----------------------------------------------------------------------------------------


def test_bad_inputs_stop_the_step_before_anything_is_created(cluster, tmp_path, small_csv):
    def run(*flags: str) -> int:
        return main(["train-job", "--data", str(small_csv), "--image", IMAGE, "--report-dir", str(tmp_path), *flags])

    assert run("--image", "ghcr.io/flywheel-mlops/flywheel:main") == 2  # a tag, not a digest
    broken = tmp_path / "trainjob.yaml"
    broken.write_text(yaml.safe_dump(edit("spec.trainer.numProcPerNode", None)(template())))
    assert run("--template", str(broken)) == 2
    assert run("--data", str(tmp_path / "missing.csv")) == 2
    assert run("--out", str(tmp_path)) == 2  # an artifact is never overwritten
    assert cluster.created == [] and not (tmp_path / "train-job.json").exists()


def test_a_failed_job_exits_1_naming_why_and_ends_its_run(cluster, tmp_path, small_csv, isolated_work_dir):
    """The pods fail without ending the MLflow run (killed, say): the step marks it FAILED."""
    cluster.exit_code = 1
    code = main(["train-job", "--data", str(small_csv), "--image", IMAGE, "--report-dir", str(tmp_path)])
    result = json.loads((tmp_path / "train-job.json").read_text())
    assert code == 1 and (result["state"], result["reason"]) == ("failed", "FailedJobs")
    assert "node: 0 active, 0 ready, 0 succeeded, 1 failed" in result["jobs"]
    assert "kubectl -n flywheel-training logs" in (tmp_path / "train-job.md").read_text()
    client = MlflowClient(local_registry(isolated_work_dir).tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags[train_job.BACKEND_TAG] == "kubeflow"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "dataset")] == ["dataset/small.csv"]
    assert not (isolated_work_dir / "models" / result["trainjob"]).exists()


def test_a_job_that_cannot_be_read_stops_the_step_and_ends_its_run(cluster, tmp_path, small_csv, isolated_work_dir):
    cluster.verbs = {"create"}  # a Role without get
    code = main(["train-job", "--data", str(small_csv), "--image", IMAGE, "--report-dir", str(tmp_path)])
    assert code == 2 and len(cluster.created) == 1
    client = MlflowClient(local_registry(isolated_work_dir).tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("flywheel").experiment_id])
    assert run.info.status == "FAILED"


# ---- the whole step: the workflow's side and the pods', sharing only MLflow ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod(job: dict, secret: dict[str, str], disk: Path) -> int:
    """The node pod of a one-node job as Kubernetes and Trainer start it: the container's command and args,
    its env from the Secret (a required key missing: the container does not start), the PET_* variables
    of the torch plugin (kubeflow/trainer pkg/runtime/framework/plugins/torch/torch.go, EnforceMLPolicy;
    the master is the pod itself), the image's FLYWHEEL_WORK_DIR on the pod's own emptyDir. The image's
    torchrun and flywheel are this environment's."""
    trainer = job["spec"]["trainer"]
    binaries = {name: str(Path(sys.executable).with_name(name)) for name in ("torchrun", "flywheel")}
    argv = [binaries.get(a, a) for a in [*trainer["command"], *trainer["args"]]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PET_", "FLYWHEEL_"))}
    for var in trainer.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            env[var["name"]] = var["value"]
        elif ref["key"] in secret:
            env[var["name"]] = secret[ref["key"]]
        elif not ref.get("optional"):
            return 1  # CreateContainerConfigError
    env.update(
        PET_NNODES=str(trainer.get("numNodes", 1)), PET_NPROC_PER_NODE=str(trainer["numProcPerNode"]),
        PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(_free_port()),
        FLYWHEEL_WORK_DIR=str(disk / "flywheel"), HOME=str(disk), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    disk.mkdir(parents=True, exist_ok=True)
    with (disk / "log").open("w") as log:
        return subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600).returncode


@pytest.mark.slow  # two torchrun workers train a tiny BERT
def test_train_job_trains_on_the_cluster_and_brings_the_model_back(
    tmp_path, monkeypatch, sample_df, tiny_bert, isolated_work_dir
):
    data = write_subset(sample_df, tmp_path / "examples.csv", n_intents=4)
    # the template as a CPU-only cluster would have it: two workers, no GPU; the tiny model and a short run
    job = template()
    job["spec"]["trainer"]["numProcPerNode"] = 2
    job["spec"]["trainer"]["resourcesPerNode"] = {"requests": {"cpu": "2", "memory": "4Gi"}}
    job["spec"]["trainer"]["command"] += [
        "--base-model", str(tiny_bert), "--epochs", "1", "--batch-size", "16", "--no-export-onnx",
    ]  # fmt: skip
    custom = tmp_path / "trainjob.yaml"
    custom.write_text(yaml.safe_dump(job))
    # the server as docs/cluster.md sets it up: artifacts not proxied, written by the clients to the store
    # itself (a folder standing in for the bucket both sides reach)
    bucket = (tmp_path / "bucket").as_uri()
    with mlflow_server(tmp_path, "--no-serve-artifacts", "--default-artifact-root", bucket) as url:
        server = stand_in.Cluster(
            NAMESPACE, TOKEN, run=lambda job: pod(job, {"MLFLOW_TRACKING_URI": url}, tmp_path / "pod")
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv(train_job.KUBECONFIG_ENV, server.kubeconfig())
        monkeypatch.setattr(train_job, "POLL_S", 0.5)
        out = tmp_path / "model"
        flags = ["--data", str(data), "--image", IMAGE, "--template", str(custom), "--out", str(out)]
        try:
            code = main(["train-job", *flags, "--tracking-uri", url, "--report-dir", str(tmp_path / "reports")])
        finally:
            server.shutdown()
        log = (tmp_path / "pod" / "log").read_text() if (tmp_path / "pod" / "log").exists() else "(no pod log)"
        assert code == 0, log[-3000:]
        result = json.loads((tmp_path / "reports" / "train-job.json").read_text())
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("flywheel").experiment_id])
        run = client.get_run(result["mlflow_run_id"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert result["state"] == "complete" and result["reason"] == "AllJobsCompleted"
    # one run: the one train-job created with the dataset, which rank 0 trained in, finished and filled
    assert [r.info.run_id for r in runs] == [run.info.run_id] and run.info.status == "FINISHED"
    assert artifacts == {"dataset", "artifact"}
    assert run.data.params["train.epochs"] == "1" and "accuracy" in run.data.metrics
    # the artifact came back whole, the one rank 0 sealed
    assert verify(out) == result["artifact_digest"] == run.data.tags["artifact_digest"]
    assert json.loads((out / "meta.json").read_text())["workers"] == 2
    assert result["model_uri"] == f"runs:/{run.info.run_id}/artifact"
    # what was submitted: this run's job, the image by digest
    (submitted,) = server.created
    assert submitted["metadata"]["name"] == trainjob.job_name(run.info.run_id)
    assert submitted["spec"]["trainer"]["image"] == IMAGE
    assert submitted["spec"]["trainer"]["args"] == ["--data", result["dataset_uri"], "--mlflow-run-id", run.info.run_id]
    assert result["dataset_uri"] == f"runs:/{run.info.run_id}/dataset/examples.csv"
    assert result["artifact_store_uri"] == f"{bucket}/1/{run.info.run_id}/artifacts/artifact"
