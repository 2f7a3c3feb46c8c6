"""The Kubeflow Trainer TrainJob that trains on the cluster: its API's names, the job rendered for one
run from the template in ``manifests/training/trainjob.yaml``, and where a job stands, read from the
status the Trainer controller writes. Pure functions; ``model.deploy.train_job`` talks to the cluster.

The status, as Kubeflow Trainer v2.2 and v2.3 write it (kubeflow/trainer ``pkg/apis/trainer/v1alpha1/
trainjob_types.go``, ``pkg/controller/trainjob_controller.go``, ``pkg/runtime/framework/plugins/jobset/
jobset.go``): ``status.conditions`` are ``metav1.Condition`` objects of the types

- ``Suspended``: True (reason ``Suspended``) while ``spec.suspend`` holds the job (Kueue does that while
  it queues one), False (reason ``Resumed``) once it runs again;
- ``Complete``: the JobSet's ``Completed`` condition copied, type renamed (reason ``AllJobsCompleted``,
  message "jobset completed successfully", kubernetes-sigs/jobset ``pkg/constants/constants.go``);
- ``Failed``: the JobSet's ``Failed`` condition copied (``FailedJobs``, ``ReachedMaxRestarts``, ...), or set
  by the controller itself: ``DeadlineExceeded`` past ``spec.activeDeadlineSeconds``,
  ``TrainingRuntimeNotSupported`` for an unknown runtime.

A job is finished once Complete or Failed is True (``pkg/util/trainjob/trainjob.go``, IsTrainJobFinished);
until then ``status.jobsStatus`` counts each replicated job's active, ready, succeeded and failed Jobs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

TRAINER = "2.2.0"  # the oldest Kubeflow Trainer release supported: the schema's; runtimePatches are new in it
GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
SCHEMA_FILE = "trainjob.v1alpha1.json"  # model/deploy/schemas/
TEMPLATE = "training/trainjob.yaml"  # under manifests/
# the ClusterTrainingRuntime (kubeflow/trainer manifests/base/runtimes/torch_distributed.yaml)
RUNTIME = "torch-distributed"
NODE = "node"  # its one replicated job, and the trainer container in it (pkg/constants: Node)
RUN_LABEL = "flywheel/mlflow-run-id"
NAME_PREFIX = "flywheel-train-"


def job_name(run_id: str) -> str:
    """The TrainJob's name for an MLflow run: an RFC 1035 label (the CRD's rule) short enough that the
    pods' host names, ``<name>-node-<i>-<j>``, stay within 63 characters."""
    return NAME_PREFIX + run_id[:16].lower()


def render(template: dict, *, run_id: str, image: str, data_uri: str) -> dict:
    """The template as the job for one run: its name and run label, the image, and ``flywheel train``'s
    arguments after the template's command (the dataset to download, and the MLflow run to train in)."""
    job = copy.deepcopy(template)
    metadata = job.setdefault("metadata", {})
    metadata["name"] = job_name(run_id)
    metadata.setdefault("labels", {})[RUN_LABEL] = run_id
    trainer = job.setdefault("spec", {}).setdefault("trainer", {})
    trainer["image"] = image
    trainer["args"] = ["--data", data_uri, "--mlflow-run-id", run_id]
    return job


@dataclass(frozen=True)
class JobState:
    """Where a TrainJob stands: ``complete`` or ``failed`` (finished), ``suspended``, ``running`` (admitted,
    not finished), ``timed_out`` (the waiter gave up, the job itself may go on)."""

    phase: str
    reason: str = ""
    message: str = ""
    jobs: str = ""  # each replicated job's counts, for the log

    @property
    def finished(self) -> bool:
        return self.phase in ("complete", "failed")

    def __str__(self) -> str:
        why = f" ({self.reason}: {self.message})" if self.reason or self.message else ""
        return f"{self.phase}{why}" + (f"; {self.jobs}" if self.jobs else "")


def _true(conditions: list[dict], kind: str) -> dict | None:
    return next((c for c in conditions if c.get("type") == kind and c.get("status") == "True"), None)


def jobs_summary(status: dict) -> str:
    parts = []
    for job in status.get("jobsStatus") or []:
        counts = ", ".join(f"{job.get(k, 0)} {k}" for k in ("active", "ready", "succeeded", "failed", "suspended"))
        parts.append(f"{job.get('name')}: {counts}")
    return "; ".join(parts)


def state_of(job: dict) -> JobState:
    """The job's phase from its status conditions (Failed before Complete: the controller keeps a deadline
    failure even when the JobSet later reports completion)."""
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    jobs = jobs_summary(status)
    for kind, phase in (("Failed", "failed"), ("Complete", "complete"), ("Suspended", "suspended")):
        found = _true(conditions, kind)
        if found:
            return JobState(phase, found.get("reason", ""), found.get("message", ""), jobs)
    return JobState("running", jobs=jobs)


def gpus_per_node(resources: dict | None) -> int:
    """GPUs each node asks for, as Trainer counts them (``pkg/runtime/runtime.go`` GetNumGPUPerNode: the
    first resource whose name contains "gpu" among the requests, else among the limits)."""

    def first_gpu(side: str) -> int:
        for name, quantity in ((resources or {}).get(side) or {}).items():
            if "gpu" in name.lower():
                return int(str(quantity)) if str(quantity).isdigit() else 0
        return 0

    return first_gpu("requests") or first_gpu("limits")
