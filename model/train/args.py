"""The flags of ``flywheel train``, apart from the step so that the step table (``scripts/cli.py``)
names them without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import SAMPLE_DATA, setting


@dataclass
class TrainArgs:
    data: str = setting(
        str(SAMPLE_DATA),
        "dataset file or folder (CSV/Parquet/JSONL text,intent; Banking77; CLINC150), or an artifact URI MLflow "
        "downloads (runs:/<run id>/<path>, s3://...)",
    )
    out: str | None = setting(None, "artifact folder to create (unset: <work dir>/models/<time>-<data digest>)")
    mlflow_run_id: str | None = setting(
        None,
        "train in this existing MLflow run and upload the artifact into it (flywheel train-job creates the run with "
        "the dataset: a cluster job's disk is gone once it ends)",
    )
