"""A stand-in for what ``flywheel train-job`` talks to on a cluster: the Kubernetes API server's TrainJob
endpoints, and the Kubeflow Trainer controller that turns a TrainJob into pods and reports on it.

- API (Kubernetes API conventions for custom resources): ``POST /apis/trainer.kubeflow.org/v1alpha1/
  namespaces/<ns>/trainjobs`` answers 201 with the stored object, ``GET .../trainjobs/<name>`` 200 with it;
  errors are ``Status`` objects (``kind: Status``, ``reason``, ``message``, ``code``): 401 without the
  bearer token, 403 outside the namespace the token may use (what the Role in
  manifests/training/access.yaml allows), 404 for an unknown job, 409 for a name taken, 422 when the
  CRD schema refuses the object (with ``fieldValidation=Strict``, an unknown field too).
- Controller: status as kubeflow/trainer v2.2 writes it (``pkg/runtime/framework/plugins/jobset/jobset.go``
  Status: ``jobsStatus`` per replicated job; the JobSet's Completed/Failed condition copied as
  Complete/Failed with JobSet's reasons and messages, kubernetes-sigs/jobset ``pkg/constants``).
  ``run`` decides what the pods do: given the job, it returns the exit code of the node container.

Conditions and jobsStatus are made by the helpers below, each validated against the CRD's status schema
in the tests, so what the waiter reads is shaped as upstream writes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from model.deploy import trainjob
from model.deploy.crd_schemas import schema_errors

TIME = "2026-08-01T12:00:00Z"


def condition(kind: str, status: str, reason: str, message: str) -> dict:
    """A metav1.Condition as the API serialises it (lastTransitionTime, message, reason, status, type)."""
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": TIME}


# kubeflow/trainer pkg/apis/trainer/v1alpha1/trainjob_types.go and pkg/constants/constants.go; jobset pkg/constants
SUSPENDED = condition("Suspended", "True", "Suspended", "TrainJob is suspended")
RESUMED = condition("Suspended", "False", "Resumed", "TrainJob is resumed")
COMPLETE = condition("Complete", "True", "AllJobsCompleted", "jobset completed successfully")
FAILED = condition("Failed", "True", "FailedJobs", "jobset failed due to one or more job failures")
DEADLINE = condition("Failed", "True", "DeadlineExceeded", "TrainJob exceeded its active deadline")


def jobs_status(active=0, ready=0, succeeded=0, failed=0, suspended=0) -> list[dict]:
    """``status.jobsStatus`` of the torch-distributed runtime's one replicated job, ``node``."""
    counts = {"active": active, "ready": ready, "succeeded": succeeded, "failed": failed, "suspended": suspended}
    return [{"name": trainjob.NODE, **counts}]


def status(*conditions: dict, **jobs: int) -> dict:
    return {"conditions": list(conditions), "jobsStatus": jobs_status(**jobs)}


def _status_object(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


class Cluster(ThreadingHTTPServer):
    """The API server and the Trainer controller of one namespace, on a loopback port."""

    def __init__(self, namespace: str, token: str, run: Callable[[dict], int]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.namespace, self.token, self.run = namespace, token, run
        self.verbs = {"create", "get"}  # what the token's Role allows in the namespace (access.yaml)
        self.jobs: dict[str, dict] = {}
        self.created: list[dict] = []  # what was POSTed, as sent
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.workers: list[threading.Thread] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kubeconfig(self, token: str | None = None) -> str:
        """A kubeconfig for a ServiceAccount token, as docs/cluster.md says to make one."""
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "training",
            "clusters": [{"name": "cluster", "cluster": {"server": self.url}}],
            "users": [{"name": "submitter", "user": {"token": token or self.token}}],
            "contexts": [{"name": "training", "context": {"cluster": "cluster", "user": "submitter",
                                                          "namespace": self.namespace}}],
        })  # fmt: skip

    def _control(self, name: str) -> None:
        """The controller: the JobSet's pods run, then the TrainJob reports how they ended."""
        with self.lock:
            job = self.jobs[name]
            job["status"] = {"jobsStatus": jobs_status(active=1)}
        code = self.run(json.loads(json.dumps(job)))
        with self.lock:
            ended = (COMPLETE, {"succeeded": 1}) if code == 0 else (FAILED, {"failed": 1})
            job["status"] = status(ended[0], **ended[1])

    def create(self, namespace: str, body: dict) -> tuple[int, dict]:
        name = (body.get("metadata") or {}).get("name", "")
        errors = schema_errors(body, trainjob.SCHEMA_FILE)
        if errors:
            return 422, _status_object(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: {errors}')
        with self.lock:
            if name in self.jobs:
                return 409, _status_object(
                    409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists'
                )
            stored = {
                **body,
                "metadata": {**body["metadata"], "uid": f"uid-{len(self.jobs)}", "creationTimestamp": TIME},
            }
            self.jobs[name] = stored
            self.created.append(body)
        worker = threading.Thread(target=self._control, args=(name,), daemon=True)
        self.workers.append(worker)
        worker.start()
        return 201, stored


class _Handler(BaseHTTPRequestHandler):
    server: Cluster

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str | None] | None:
        """(namespace, name or None) of a TrainJob path, after checking the token and the namespace."""
        self.server.requests.append((self.command, self.path))
        parts = urlparse(self.path).path.strip("/").split("/")
        prefix = ["apis", trainjob.GROUP, trainjob.VERSION, "namespaces"]
        if parts[:4] != prefix or len(parts) not in (6, 7) or parts[5] != trainjob.PLURAL:
            self._send(404, _status_object(404, "NotFound", "the server could not find the requested resource"))
            return None
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(401, _status_object(401, "Unauthorized", "Unauthorized"))
            return None
        namespace, verb = parts[4], "create" if self.command == "POST" else "get"
        if namespace != self.server.namespace or verb not in self.server.verbs:
            message = (
                f'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:{self.server.namespace}:'
                f'flywheel-training-submitter" cannot {verb} resource "trainjobs" in API group '
                f'"{trainjob.GROUP}" in the namespace "{namespace}"'
            )
            self._send(403, _status_object(403, "Forbidden", message))
            return None
        return namespace, parts[6] if len(parts) == 7 else None

    def do_POST(self) -> None:
        route = self._route()
        if route is None:
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self._send(*self.server.create(route[0], body))

    def do_GET(self) -> None:
        route = self._route()
        if route is None:
            return
        with self.server.lock:
            job = self.server.jobs.get(route[1])
            body = json.loads(json.dumps(job)) if job else None
        if body is None:
            message = f'trainjobs.trainer.kubeflow.org "{route[1]}" not found'
            self._send(404, _status_object(404, "NotFound", message))
        else:
            self._send(200, body)
