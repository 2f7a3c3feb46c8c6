"""Training on the cluster: the TrainJob ``flywheel train-job`` renders (Kubeflow Trainer's own CRD schema,
what its admission webhook refuses, this project's rules), the training namespace's access objects,
where a job stands read from status shaped as Trainer writes it, the bounded wait, the Kubernetes client
against the API's answers, and the whole step: a real MLflow server between the workflow and the pods,
the pods' command run under torchrun with the PET_* variables Trainer sets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from model.artifact.manifest import verify
from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import train_job, trainjob
from model.deploy.crd_schemas import schema_errors
from model.deploy.train_job import TrainJobs, Unavailable, wait
from model.deploy.training_checks import access_errors, check_training, trainjob_errors
from scripts.cli import main
from tests import trainer_stand_in as stand_in
from tests.conftest import local_registry, mlflow_server, write_subset
from tests.test_wiring import problems

TRAINING = PROJECT_ROOT / "manifests" / "training"
RUN_ID = "3f2a9c1d8e7b4a6f9d0c1b2a3e4f5a6b"  # an MLflow run id: 32 hex digits
IMAGE = "ghcr.io/flywheel-mlops/flywheel@sha256:" + "ab" * 32
DATA_URI = f"runs:/{RUN_ID}/dataset/examples.parquet"
NAMESPACE, TOKEN = "flywheel-training", "token-of-the-submitter"


def template() -> dict:
    return yaml.safe_load((TRAINING / "trainjob.yaml").read_text())


def rendered() -> dict:
    return trainjob.render(template(), run_id=RUN_ID, image=IMAGE, data_uri=DATA_URI)


def access() -> list[dict]:
    return [d for d in yaml.safe_load_all((TRAINING / "access.yaml").read_text()) if d]


# ---- the manifests -------------------------------------------------------------------------------------


def test_the_shipped_training_manifests_pass():
    assert check_training(TRAINING) == []


def test_the_rendered_job_is_what_trainer_accepts_and_runs_flywheel_train():
    job = rendered()
    assert trainjob_errors(job, "rendered") == [] and schema_errors(job, trainjob.SCHEMA_FILE) == []
    name = job["metadata"]["name"]
    assert name == "flywheel-train-3f2a9c1d8e7b4a6f"
    assert len(f"{name}-node-0-0") <= 63  # the pods' host names (torch.go: PET_MASTER_ADDR <name>-node-0-0.<name>)
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == IMAGE and job["metadata"]["labels"][trainjob.RUN_LABEL] == RUN_ID
    # torchrun [its flags] --no-python flywheel train <args>: what the container runs, parsed by the real CLI
    argv = [*trainer["command"], *trainer["args"]]
    program = argv.index("flywheel")
    assert problems(argv[program + 1 :]) == []
    assert argv[program + 1 :] == ["train", "--data", DATA_URI, "--mlflow-run-id", RUN_ID]
    assert template()["metadata"]["name"] == "flywheel-train"  # the template itself is left as it was


def _edit(path: str, value):
    """A mutation of the rendered job: ``path`` is dotted, list indices as numbers; None deletes."""

    def apply(job: dict) -> dict:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = job
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
        return job

    return apply


PATCH = "spec.runtimePatches.0.trainingRuntimeSpec.template.spec.replicatedJobs.0"
NODE_POD = f"{PATCH}.template.spec.template.spec"
NODE_CONTAINER = f"{NODE_POD}.containers.0"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        # Trainer's CRD schema (v2.2.0)
        (_edit("spec.trainer.numNodes", "two"), "spec.trainer.numNodes: 'two' is not of type 'integer'"),
        (_edit("spec.trainer.gpus", 1), "'gpus' was unexpected"),
        (_edit("spec.activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds: 0 is less than the minimum of 1"),
        (_edit("spec.runtimePatches.0.manager", None), "'manager' is a required property"),
        (_edit("spec.runtimeRef", {}), "'name' is a required property"),
        # the CRD's CEL rule on the name
        (_edit("metadata.name", "Flywheel_Train"), "must be an RFC 1035 label"),
        # what Trainer's admission webhook refuses: torch.go (reserved PET_* env), jobset.go (patches)
        (_edit("spec.trainer.env.0.name", "PET_NNODES"), "must not set ['PET_NNODES']"),
        (_edit(f"{NODE_CONTAINER}.env", [{"name": "X", "value": "1"}]), "env goes in spec.trainer.env"),
        (_edit(f"{PATCH}.name", "launcher"), "has one replicated job, 'node'"),
        (_edit(f"{NODE_CONTAINER}.name", "trainer"), "has one container, 'node'"),
        # this project's rules
        (
            _edit("spec.runtimeRef.name", "torchtune-llama3.2-1b"),
            "must name the ClusterTrainingRuntime torch-distributed",
        ),
        (_edit("spec.activeDeadlineSeconds", None), "spec.activeDeadlineSeconds must bound the job"),
        (_edit("spec.trainer.command", ["flywheel", "train"]), "must start with torchrun"),
        (_edit("spec.trainer.command", ["torchrun", "--no-python", "flywheel", "serve"]), "must run `flywheel train`"),
        (_edit("spec.trainer.command", ["torchrun", "flywheel", "train"]), "torchrun needs --no-python"),
        (_edit("spec.trainer.command", ["torchrun", "--nnodes=2", "--no-python", "flywheel", "train"]), "override"),
        (_edit("spec.trainer.command", ["torchrun", "--standalone", "--no-python", "flywheel", "train"]), "override"),
        (_edit("spec.trainer.numProcPerNode", 2), "numProcPerNode is 2 but each node asks for 1 GPU(s)"),
        (_edit("spec.trainer.numProcPerNode", None), "numProcPerNode must be set"),
        (_edit(f"{NODE_CONTAINER}.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem must be"),
        (_edit(f"{NODE_CONTAINER}.securityContext", None), "runAsNonRoot must be true"),
        (_edit(f"{NODE_CONTAINER}.volumeMounts", [{"name": "dshm", "mountPath": "/dev/shm"}]), "a volume on /tmp"),
        (_edit(f"{NODE_POD}.containers", []), "must give the node container a hardened securityContext"),
    ],
)
def test_what_trainer_or_this_project_would_refuse_is_found(mutate, fragment):
    errors = trainjob_errors(mutate(rendered()), "job.yaml")
    assert any(fragment in e for e in errors), errors


def test_numprocpernode_follows_the_gpus_trainer_counts():
    job = rendered()
    job["spec"]["trainer"]["resourcesPerNode"] = {"limits": {"nvidia.com/gpu": "4"}}
    assert any("numProcPerNode is 1 but each node asks for 4 GPU(s)" in e for e in trainjob_errors(job, "j"))
    job["spec"]["trainer"]["numProcPerNode"] = 4
    assert trainjob_errors(job, "j") == []
    # requests before limits, as GetNumGPUPerNode; a CPU-only job may run several workers
    assert trainjob.gpus_per_node({"requests": {"amd.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "4"}}) == 2
    job["spec"]["trainer"]["resourcesPerNode"] = {"requests": {"cpu": "8"}}
    assert trainjob_errors(job, "j") == []


def test_the_template_leaves_image_and_args_to_train_job(tmp_path):
    (tmp_path / "access.yaml").write_text((TRAINING / "access.yaml").read_text())
    (tmp_path / "trainjob.yaml").write_text(yaml.safe_dump(rendered()))
    errors = check_training(tmp_path)
    assert any("spec.trainer.image is set by flywheel train-job" in e for e in errors), errors
    assert any("spec.trainer.args is set by flywheel train-job" in e for e in errors), errors


def _access_with(index: int, path: str, value) -> list[dict]:
    docs = access()
    _edit(path, value)(docs[index])
    return docs


KINDS = [d["kind"] for d in access()]
ROLE, BINDING = KINDS.index("Role"), KINDS.index("RoleBinding")
POD_ACCOUNT = next(
    i for i, d in enumerate(access()) if (d["kind"], d["metadata"]["name"]) == ("ServiceAccount", "flywheel-training")
)


@pytest.mark.parametrize(
    ("docs", "fragment"),
    [
        (_access_with(ROLE, "rules.0.resources", ["trainjobs", "pods"]), "a rule beyond"),
        (_access_with(ROLE, "rules.0.verbs", ["*"]), "a rule beyond"),
        (_access_with(ROLE, "rules.0.verbs", ["create", "get", "delete"]), "a rule beyond"),
        (_access_with(ROLE, "rules.0.apiGroups", ["*"]), "a rule beyond"),
        (_access_with(ROLE, "rules.0.verbs", ["get"]), "no ServiceAccount may create and get TrainJobs"),
        (_access_with(BINDING, "roleRef.kind", "ClusterRole"), "must bind a Role of this file"),
        (_access_with(BINDING, "subjects.0.namespace", "default"), "only ServiceAccounts of flywheel-training"),
        (_access_with(BINDING, "subjects.0.name", "flywheel-training"), "which may submit TrainJobs"),
        (_access_with(ROLE, "metadata.namespace", "default"), "must be in the TrainJob's namespace"),
        (_access_with(POD_ACCOUNT, "automountServiceAccountToken", True), "automountServiceAccountToken: false"),
        (_access_with(ROLE, "rules.0.verbz", ["get"]), "Role"),  # Kubernetes' own schema, strict
        ([*access(), {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}}],
         "only Namespace, ServiceAccount, Role, RoleBinding, Secret belong here"),
    ],
)  # fmt: skip
def test_the_namespace_access_stays_least_privilege(docs, fragment):
    errors = access_errors(docs, NAMESPACE, "access.yaml", "flywheel-training")
    assert any(fragment in e for e in errors), errors


def test_check_manifests_checks_the_training_folder(tmp_path):
    """A training folder with a broken TrainJob fails `flywheel check-manifests` as a whole."""
    shutil.copytree(PROJECT_ROOT / "manifests", tmp_path / "manifests")
    job = template()
    job["spec"]["trainer"]["numNodes"] = "two"
    (tmp_path / "manifests" / "training" / "trainjob.yaml").write_text(yaml.safe_dump(job))
    code = main(["check-manifests", "--repo", str(tmp_path), "--report-dir", str(tmp_path / "reports")])
    found = json.loads((tmp_path / "reports" / "check-manifests.json").read_text())
    assert code == 1 and any("spec.trainer.numNodes" in e for e in found["errors"]), found["errors"]


# ---- where a job stands ------------------------------------------------------------------------------


def _job(status: dict | None) -> dict:
    job = rendered()
    if status is not None:
        job["status"] = status
    return job


STATES = [
    (None, "running", ""),  # just created: the controller has not written a status yet
    ({"jobsStatus": stand_in.jobs_status(active=1)}, "running", ""),
    (stand_in.status(stand_in.SUSPENDED, suspended=1), "suspended", "Suspended"),  # held, e.g. queued by Kueue
    (stand_in.status(stand_in.RESUMED, active=1, ready=1), "running", ""),
    (stand_in.status(stand_in.RESUMED, stand_in.COMPLETE, succeeded=1), "complete", "AllJobsCompleted"),
    (stand_in.status(stand_in.FAILED, failed=1), "failed", "FailedJobs"),
    (stand_in.status(stand_in.DEADLINE, stand_in.COMPLETE, succeeded=1), "failed", "DeadlineExceeded"),
    ({"conditions": [stand_in.condition("Failed", "True", "TrainingRuntimeNotSupported", "unsupported runtime: x")]},
     "failed", "TrainingRuntimeNotSupported"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "phase", "reason"), STATES)
def test_the_state_is_read_from_the_conditions_trainer_writes(status, phase, reason):
    job = _job(status)
    assert schema_errors(job, trainjob.SCHEMA_FILE) == []  # the status is shaped as the CRD says
    state = trainjob.state_of(job)
    assert (state.phase, state.reason) == (phase, reason)
    assert state.finished == (phase in ("complete", "failed"))


def test_the_jobs_counts_are_reported():
    state = trainjob.state_of(_job(stand_in.status(stand_in.RESUMED, active=1, ready=1)))
    assert state.jobs == "node: 1 active, 1 ready, 0 succeeded, 0 failed, 0 suspended"


class Clock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_waiting_ends_at_complete_and_logs_each_change_once():
    held = stand_in.status(stand_in.SUSPENDED, suspended=1)
    statuses = [None, held, held, stand_in.status(stand_in.RESUMED, active=1),
                stand_in.status(stand_in.RESUMED, stand_in.COMPLETE, succeeded=1)]  # fmt: skip
    reads = iter([_job(s) for s in statuses])
    clock, lines = Clock(), []
    state, job = wait(lambda: next(reads), 3600, poll_s=30, clock=clock, sleep=clock.sleep, log=lines.append)
    assert state.phase == "complete" and job["status"]["conditions"][-1]["type"] == "Complete"
    assert clock.slept == [30, 30, 30, 30]
    assert [line.split(" (")[0].split(";")[0] for line in lines] == [
        "TrainJob: running", "TrainJob: suspended", "TrainJob: running", "TrainJob: complete"
    ]  # fmt: skip


def test_waiting_is_bounded_and_asks_again_when_the_api_is_down():
    def read():
        if clock.now < 100:
            raise Unavailable("reading TrainJob x: HTTP 503")
        return _job(stand_in.status(stand_in.RESUMED, active=1))

    clock, lines = Clock(), []
    state, _ = wait(read, 1000, poll_s=30, clock=clock, sleep=clock.sleep, log=lines.append)
    assert state.phase == "timed_out" and "not finished after 1000 s; last seen running" in state.message
    assert clock.now == 1000 and max(clock.slept) <= 30  # never sleeps past the deadline
    assert sum("asking again" in line for line in lines) == 4


def test_a_failed_job_ends_the_wait_at_once():
    clock = Clock()
    state, _ = wait(lambda: _job(stand_in.status(stand_in.FAILED, failed=1)), 3600, clock=clock, sleep=clock.sleep,
                    log=lambda _: None)  # fmt: skip
    assert (state.phase, state.message, clock.slept) == ("failed", "jobset failed due to one or more job failures", [])


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
        (NAMESPACE, TOKEN, _edit("spec.trainer.gpus", 1)(rendered()), "refused (HTTP 422"),
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
    broken.write_text(yaml.safe_dump(_edit("spec.trainer.numProcPerNode", None)(template())))
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
