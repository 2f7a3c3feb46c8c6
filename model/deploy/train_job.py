"""``flywheel train-job``: train on the cluster as a Kubeflow Trainer TrainJob, and bring the model back.

1. An MLflow run is created with the training set uploaded as its artifact (``dataset/``), in the run's
   artifact store: object storage on a server set up as docs/cluster.md says, which the pods reach too.
2. ``manifests/training/trainjob.yaml`` is rendered for that run (``model.deploy.trainjob``): this
   commit's image by digest, ``flywheel train --data runs:/<run>/dataset/<file> --mlflow-run-id <run>``
   under torchrun, and checked as check-manifests checks the template (``model.deploy.training_checks``).
3. It is created through the Kubernetes API with the credentials of one namespace (a kubeconfig for the
   ServiceAccount of ``manifests/training/access.yaml``: ``$FLYWHEEL_KUBECONFIG`` holds the file's text,
   else the usual ``$KUBECONFIG`` / ``~/.kube/config`` / in-cluster lookup), then read every
   ``POLL_S`` seconds until its Complete or Failed condition, for at most its ``activeDeadlineSeconds``
   plus ``WAIT_MARGIN_S`` (after the deadline Trainer fails the job itself).
4. Rank 0 of the job logged the run and uploaded the sealed artifact into it (``artifact/``); on
   Complete that folder is downloaded to ``--out``, checked against its sha256 manifest and against the
   digest the run recorded, for ``flywheel gate`` and ``flywheel register`` as a runner's training leaves it.

Exit 0 when the job completed and its artifact is here; 1 when it failed or did not finish in time (the
run is then marked FAILED if the job left it running); 2 on bad input (nothing created), or when the
cluster refuses the job or reading it (the run marked FAILED).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from model.artifact.manifest import verify
from model.core.config import RegistryConfig
from model.core.errors import FlywheelError
from model.core.steps import EXIT_OK, EXIT_REJECTED, StepResult
from model.deploy import images, trainjob
from model.deploy.args import TrainJobArgs
from model.deploy.kubernetes_checks import load_objects
from model.deploy.training_checks import trainjob_errors
from model.registry import tracking

KUBECONFIG_ENV = "FLYWHEEL_KUBECONFIG"  # the kubeconfig's text (a CI secret), rather than a file
POLL_S = 30.0  # a training job takes minutes to hours: a read every 30 s costs the API server nothing
WAIT_MARGIN_S = 600.0  # for scheduling the controller's last reconcile after the deadline
BACKEND_TAG = "flywheel.training_backend"


@dataclass(frozen=True)
class TrainJobRun:
    """What ``flywheel train-job`` did: the job, its end, its MLflow run and, on Complete, the artifact here."""

    state: str  # complete, failed, suspended, running or timed_out (trainjob.JobState.phase)
    reason: str
    message: str
    jobs: str  # each replicated job's counts
    trainjob: str
    namespace: str
    image: str
    mlflow_run_id: str
    dataset_uri: str
    model_uri: str
    artifact: str | None = None
    artifact_digest: str | None = None
    artifact_store_uri: str | None = None


class Unavailable(Exception):
    """The API server did not answer, or answered 429/5xx: worth asking again."""


class TrainJobs:
    """The TrainJobs of one namespace through the Kubernetes API: ``POST`` and ``GET`` on
    ``/apis/trainer.kubeflow.org/v1alpha1/namespaces/<namespace>/trainjobs[/<name>]`` (the Kubernetes
    client's CustomObjectsApi), failures named for what usually causes them."""

    def __init__(self, api, namespace: str):
        self.api, self.namespace = api, namespace

    def create(self, job: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            args = (trainjob.GROUP, trainjob.VERSION, self.namespace, trainjob.PLURAL, job)
            # Strict: the API server refuses a field the CRD lacks rather than dropping it (what check-manifests checks)
            return self.api.create_namespaced_custom_object(*args, field_validation="Strict")
        except ApiException as exc:
            raise FlywheelError(self._explain(exc, f"creating TrainJob {job['metadata']['name']}")) from exc

    def get(self, name: str) -> dict:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self.api.get_namespaced_custom_object(
                trainjob.GROUP, trainjob.VERSION, self.namespace, trainjob.PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 429 or (exc.status or 0) >= 500:
                raise Unavailable(self._explain(exc, f"reading TrainJob {name}")) from exc
            raise FlywheelError(self._explain(exc, f"reading TrainJob {name}")) from exc
        except HTTPError as exc:  # connection refused, reset, timed out
            raise Unavailable(f"reading TrainJob {name}: {exc}") from exc

    def _explain(self, exc, doing: str) -> str:
        try:
            said = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            said = exc.reason
        why = {
            401: "the kubeconfig's credentials were refused",
            403: f"not allowed: the ServiceAccount's Role must allow create and get on trainjobs in {self.namespace} "
            "(manifests/training/access.yaml)",
            404: f"not found: is Kubeflow Trainer (>= {trainjob.TRAINER}) installed and namespace {self.namespace} "
            "created?",
            409: "a TrainJob of that name exists already",
        }.get(exc.status, "refused")
        return f"{doing} in {self.namespace}: {why} (HTTP {exc.status}: {said})"


def kubernetes_api():
    """The Kubernetes client's CustomObjectsApi, authenticated from ``$FLYWHEEL_KUBECONFIG`` (the text of a
    kubeconfig) when set, else from the kubeconfig file or the pod's ServiceAccount, as kubectl finds them."""
    from kubernetes import client, config  # seconds to import: only this step loads it
    from kubernetes.config.config_exception import ConfigException

    text = os.environ.get(KUBECONFIG_ENV)
    try:
        if text:
            api_client = config.new_client_from_config_dict(yaml.safe_load(text), persist_config=False)
            return client.CustomObjectsApi(api_client)
        try:
            config.load_kube_config()
        except (ConfigException, OSError):
            config.load_incluster_config()
        return client.CustomObjectsApi()
    except (ConfigException, yaml.YAMLError, TypeError, AttributeError, KeyError) as exc:
        source = f"${KUBECONFIG_ENV}" if text else "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod"
        raise FlywheelError(f"cannot reach the cluster: {source}: {exc}") from exc


def wait(
    read: Callable[[], dict],
    timeout_s: float,
    *,
    poll_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> tuple[trainjob.JobState, dict]:
    """Read the job until it is finished or ``timeout_s`` has passed (then ``timed_out``); each change of
    state is logged. An unavailable API server is asked again until the time is up. ``poll_s``: unset,
    ``POLL_S``."""
    poll_s = poll_s or POLL_S
    deadline = clock() + timeout_s
    seen, job = None, {}
    while True:
        try:
            job = read()
            state = trainjob.state_of(job)
        except Unavailable as exc:
            log(f"TrainJob: {exc}; asking again")
        else:
            if state != seen:
                log(f"TrainJob: {state}")
                seen = state
            if state.finished:
                return state, job
        if clock() >= deadline:
            last = f"; last seen {seen}" if seen else "; never read"
            return trainjob.JobState("timed_out", "", f"not finished after {timeout_s:.0f} s{last}"), job
        sleep(max(0.0, min(poll_s, deadline - clock())))


def _template(path: Path) -> dict:
    docs = load_objects(path)
    if [d["kind"] for d in docs] != [trainjob.KIND]:
        raise FlywheelError(f"{path}: must hold one {trainjob.KIND}")
    return docs[0]


def collect_artifact(reg_cfg: RegistryConfig, run_id: str, out: Path) -> str:
    """The artifact rank 0 uploaded to the run, downloaded to ``out`` and checked: every file against its
    manifest, the manifest against the digest the run recorded. Returns that digest."""
    info = tracking.run_info(reg_cfg, run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".download-") as tmp:
        folder = tracking.download(reg_cfg, f"runs:/{run_id}/{tracking.ARTIFACT_DIR}", Path(tmp))
        digest = verify(folder)
        if digest != info.tags.get("artifact_digest"):
            raise FlywheelError(
                f"runs:/{run_id}/{tracking.ARTIFACT_DIR}: digest {digest[:12]} is not the one the run recorded "
                f"({str(info.tags.get('artifact_digest'))[:12]})"
            )
        shutil.move(folder, out)
    return digest


def _inputs(args: TrainJobArgs) -> tuple[dict, str, Path]:
    """The template (checked as rendered), the pinned image and the dataset; FlywheelError before anything
    is created when one is wrong."""
    template_path, data = Path(args.template), Path(args.data)
    ref = images.parse(args.image)
    if not ref.digest:
        raise FlywheelError(f"--image {args.image}: the job runs an image pinned by digest (flywheel resolve-image)")
    if not data.exists():
        raise FlywheelError(f"--data {data}: no such file or folder")
    if args.out and Path(args.out).exists():
        raise FlywheelError(f"--out {args.out}: already exists; refusing to overwrite an artifact")
    template = _template(template_path)
    sample = trainjob.render(template, run_id="0" * 32, image=ref.pinned, data_uri=f"runs:/{'0' * 32}/dataset/x")
    errors = trainjob_errors(sample, template_path)
    if errors:
        raise FlywheelError("the TrainJob would be refused or train wrongly:\n" + "\n".join(errors))
    return template, ref.pinned, data


def _end_unfinished(reg_cfg: RegistryConfig, run_id: str) -> None:
    """Mark the run FAILED if nothing ended it (the job was refused, or its pods died without ending it)."""
    if tracking.run_info(reg_cfg, run_id).status == "RUNNING":
        tracking.mark_failed(reg_cfg, run_id)


def train_job_command(args: TrainJobArgs, *, registry: RegistryConfig, work: Path) -> StepResult[TrainJobRun]:
    """Train as a Kubeflow Trainer TrainJob, wait for it, download the artifact its MLflow run holds."""
    template, image, data = _inputs(args)
    jobs = TrainJobs(kubernetes_api(), template["metadata"]["namespace"])
    run_id, data_uri = tracking.create_remote_run(registry, data, {BACKEND_TAG: "kubeflow"})
    job = trainjob.render(template, run_id=run_id, image=image, data_uri=data_uri)
    name = job["metadata"]["name"]
    try:
        jobs.create(job)
        print(f"TrainJob {jobs.namespace}/{name} created for MLflow run {run_id}", file=sys.stderr, flush=True)
        state, _ = wait(lambda: jobs.get(name), job["spec"]["activeDeadlineSeconds"] + WAIT_MARGIN_S)
    except FlywheelError:  # refused, or no longer readable: the run will not be finished by the job
        _end_unfinished(registry, run_id)
        raise
    result = {
        "state": state.phase, "reason": state.reason, "message": state.message, "jobs": state.jobs,
        "trainjob": name, "namespace": jobs.namespace, "image": image,
        "mlflow_run_id": run_id, "dataset_uri": data_uri, "model_uri": f"runs:/{run_id}/{tracking.ARTIFACT_DIR}",
    }  # fmt: skip
    if state.phase != "complete":
        _end_unfinished(registry, run_id)
        return StepResult(TrainJobRun(**result), _markdown(result), EXIT_REJECTED)
    out = Path(args.out) if args.out else work / "models" / name
    digest = collect_artifact(registry, run_id, out)
    stored = f"{tracking.run_info(registry, run_id).artifact_uri}/{tracking.ARTIFACT_DIR}"
    result.update(artifact=str(out), artifact_digest=digest, artifact_store_uri=stored)
    return StepResult(TrainJobRun(**result), _markdown(result), EXIT_OK)


def _markdown(result: dict) -> str:
    lines = [
        f"## Training on the cluster: TrainJob `{result['namespace']}/{result['trainjob']}` {result['state']}",
        "",
        "| | |",
        "|---|---|",
        f"| MLflow run | `{result['mlflow_run_id']}` |",
        f"| dataset | `{result['dataset_uri']}` |",
        f"| image | `{result['image']}` |",
        f"| model | `{result['model_uri']}` |",
    ]
    if result.get("artifact"):
        lines += [
            f"| stored at | `{result['artifact_store_uri']}` |",
            f"| downloaded to | `{result['artifact']}` (sha256 `{result['artifact_digest'][:12]}`) |",
        ]
    else:
        lines += [
            f"| why | {result['reason'] or '-'}: {result['message'] or '-'} |",
            f"| jobs | {result['jobs'] or '-'} |",
            "",
            f"The pods' logs: `kubectl -n {result['namespace']} logs -l "
            f"jobset.sigs.k8s.io/jobset-name={result['trainjob']} --prefix`",
        ]
    return "\n".join(lines) + "\n"
