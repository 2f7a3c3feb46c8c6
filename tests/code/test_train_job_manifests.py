"""Training on the cluster, as code: the TrainJob ``flywheel train-job`` renders (Kubeflow Trainer's own CRD
schema, what its admission webhook refuses, this project's rules), the training namespace's access objects,
where a job stands read from status shaped as Trainer writes it, and the bounded wait. The Kubernetes
client and the whole step against the cluster's stand-in: tests/servers/test_train_job.py."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from model.deploy import trainjob
from model.deploy.crd_schemas import schema_errors
from model.deploy.train_job import Unavailable, wait
from model.deploy.training_checks import access_errors, check_training, trainjob_errors
from scripts.cli import main
from tests.helpers import trainer_stand_in as stand_in
from tests.helpers.cli import problems
from tests.helpers.trainjobs import DATA_URI, IMAGE, NAMESPACE, RUN_ID, TRAINING, access, edit, rendered, template

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


PATCH = "spec.runtimePatches.0.trainingRuntimeSpec.template.spec.replicatedJobs.0"
NODE_POD = f"{PATCH}.template.spec.template.spec"
NODE_CONTAINER = f"{NODE_POD}.containers.0"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        # Trainer's CRD schema (v2.2.0)
        (edit("spec.trainer.numNodes", "two"), "spec.trainer.numNodes: 'two' is not of type 'integer'"),
        (edit("spec.trainer.gpus", 1), "'gpus' was unexpected"),
        (edit("spec.activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds: 0 is less than the minimum of 1"),
        (edit("spec.runtimePatches.0.manager", None), "'manager' is a required property"),
        (edit("spec.runtimeRef", {}), "'name' is a required property"),
        # the CRD's CEL rule on the name
        (edit("metadata.name", "Flywheel_Train"), "must be an RFC 1035 label"),
        # what Trainer's admission webhook refuses: torch.go (reserved PET_* env), jobset.go (patches)
        (edit("spec.trainer.env.0.name", "PET_NNODES"), "must not set ['PET_NNODES']"),
        (edit(f"{NODE_CONTAINER}.env", [{"name": "X", "value": "1"}]), "env goes in spec.trainer.env"),
        (edit(f"{PATCH}.name", "launcher"), "has one replicated job, 'node'"),
        (edit(f"{NODE_CONTAINER}.name", "trainer"), "has one container, 'node'"),
        # this project's rules
        (
            edit("spec.runtimeRef.name", "torchtune-llama3.2-1b"),
            "must name the ClusterTrainingRuntime torch-distributed",
        ),
        (edit("spec.activeDeadlineSeconds", None), "spec.activeDeadlineSeconds must bound the job"),
        (edit("spec.trainer.command", ["flywheel", "train"]), "must start with torchrun"),
        (edit("spec.trainer.command", ["torchrun", "--no-python", "flywheel", "serve"]), "must run `flywheel train`"),
        (edit("spec.trainer.command", ["torchrun", "flywheel", "train"]), "torchrun needs --no-python"),
        (edit("spec.trainer.command", ["torchrun", "--nnodes=2", "--no-python", "flywheel", "train"]), "override"),
        (edit("spec.trainer.command", ["torchrun", "--standalone", "--no-python", "flywheel", "train"]), "override"),
        (edit("spec.trainer.numProcPerNode", 2), "numProcPerNode is 2 but each node asks for 1 GPU(s)"),
        (edit("spec.trainer.numProcPerNode", None), "numProcPerNode must be set"),
        (edit(f"{NODE_CONTAINER}.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem must be"),
        (edit(f"{NODE_CONTAINER}.securityContext", None), "runAsNonRoot must be true"),
        (edit(f"{NODE_CONTAINER}.volumeMounts", [{"name": "dshm", "mountPath": "/dev/shm"}]), "a volume on /tmp"),
        (edit(f"{NODE_POD}.containers", []), "must give the node container a hardened securityContext"),
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
    edit(path, value)(docs[index])
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
