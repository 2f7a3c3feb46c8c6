"""A TrainJob as ``flywheel train-job`` renders it from manifests/training, the access objects beside it,
and edits of either, for the tests of what Kubeflow Trainer and this project would refuse
(tests/code/test_train_job_manifests.py) and of the step against the cluster's stand-in
(tests/servers/test_train_job.py)."""

from __future__ import annotations

import yaml

from model.core.config import PROJECT_ROOT
from model.deploy import trainjob

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


def edit(path: str, value):
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
