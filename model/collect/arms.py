"""Which traffic arm answered a call: from the model version in the answer and what the manifest says.

KServe's logger does not say which arm (stable or canary) served a call: ``ce-endpoint`` is the pod's
``endpoint`` label, which the v1beta1 controller never sets (kserve ``pkg/webhook/admission/pod/
agent_injector.go``; see ``shared/notes/kserve-logger.md``), a Knative revision cannot know its
traffic share, and ``ce-source`` is ``http://localhost:9081/`` from every revision (the webhook sees
a ReplicaSet's pod before it has a name, so the agent's ``--source-uri`` is empty and falls back to
that, kserve ``cmd/agent/main.go``). What the events do carry is the answer's ``model_version`` (the
predictor puts it in every V1 and V2 response), which the environment's ConfigMap ``flywheel-arms``
maps to an arm (``manifests/<env>/inferenceservice.yaml``, written by ``flywheel release/promote/
rollback``; the collector mounts it as a folder, one file per key, ``stable`` and ``canary``).

A request whose call never got an answer (KServe logs a response only for HTTP 200) names no version,
so its arm is ``unknown``: it is counted as such, never charged by guess to whichever version answered
last. Only something that knows the revision can charge a failure to an arm (Knative's queue-proxy
counts every request per revision with its status code, ``pkg/queue/request_metric.go``).

The mounted files change in place when the ConfigMap changes (the kubelet swaps a ``..data`` link,
kubernetes ``pkg/volume/util/atomic_writer.go``), so the map is re-read whenever a file's status
changes, without restarting the collector.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ARM_KEYS = ("stable", "canary")
UNKNOWN = "unknown"  # no answer, a version no arm names, or no map: counted, never guessed


class ArmMap:
    """Model version -> arm, as the mounted ConfigMap says now (no folder: every version is ``unknown``)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self._lock = threading.Lock()
        self._seen: tuple = ()
        self._arms: dict[str, str] = {}  # arm -> version

    def _status(self) -> tuple:
        out = []
        for key in ARM_KEYS:
            try:
                st = os.stat(self.folder / key)  # follows the kubelet's links to the current file
                out.append((key, st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((key, None))
        return tuple(out)

    def arms(self) -> dict[str, str]:
        """Arm -> model version for the arms the ConfigMap names (an empty value names none)."""
        if self.folder is None:
            return {}
        with self._lock:
            status = self._status()
            if status != self._seen:
                arms = {}
                for key in ARM_KEYS:
                    try:
                        value = (self.folder / key).read_text().strip()
                    except FileNotFoundError:
                        continue
                    if value:
                        arms[key] = value
                self._arms, self._seen = arms, status
            return dict(self._arms)

    def arm_of(self, version: str | None) -> str:
        if not version:
            return UNKNOWN
        return next((arm for arm, v in self.arms().items() if v == str(version)), UNKNOWN)
