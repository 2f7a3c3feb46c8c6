"""The InferenceService file as Git's record of what serves users, read and edited in place.

The file holds two documents. The InferenceService says what KServe runs: the predictor container's
``STORAGE_URI`` / ``FLYWHEEL_MODEL_*`` env names the model of the newest revision, and
``canaryTrafficPercent`` is present while a canary runs (its share) or after a rollback (0: KServe's
pin, 100% on the last rolled-out revision at once). The ConfigMap ``flywheel-arms`` beside it is the
record: which version is stable, which is on the canary, which was stable before and which was
rolled back (``<role>``, ``<role>-storage-uri``, ``<role>-sha256``). The states, and the rollout
steps between them, are described in docs/rollout.md. KServe itself never names the
revision it keeps for the stable share, and the record must not live in the InferenceService's
annotations: KServe copies those into the Knative revision template, so each change would create a
revision and roll every pod for nothing (kserve ``pkg/controller/v1beta1/inferenceservice/components/
predictor.go``, filtered only by ``serviceAnnotationDisallowedList``). A ConfigMap changes without
rolling any pod, and the collector mounts this one: the kubelet refreshes mounted ConfigMap files in
place (kubernetes.io/docs/concepts/configuration/configmap/#mounted-configmaps-are-updated-automatically),
so it attributes each logged answer to the arm serving its version (keys ``stable`` and ``canary``).

``read_rollout`` refuses a file where record, env and traffic split disagree; ``write_rollout``
changes only those fields, through ruamel.yaml's round trip, so comments, key order and quoting stay.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from model.core.errors import FlywheelError
from model.deploy import storage

ENVIRONMENTS = ("staging", "production")
ISVC_FILE = "inferenceservice.yaml"
COLLECTOR_FILE = "collector.yaml"  # the collector Deployment, pinned to the same image as the predictor
ARMS_CONFIGMAP = "flywheel-arms"  # the rollout record; the collector's --arms-dir is where it is mounted
CONTAINER = "kserve-container"
ENV_URI, ENV_SHA, ENV_VERSION = "STORAGE_URI", "FLYWHEEL_MODEL_SHA256", "FLYWHEEL_MODEL_VERSION"
ROLES = ("stable", "canary", "previous-stable", "rolled-back")
REF_FIELDS = ("", "-storage-uri", "-sha256")  # ConfigMap keys <role><field>: the version, its artifact, its digest
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRef:
    """One registered model version and where its sealed artifact lives."""

    version: int
    storage_uri: str
    sha256: str

    def label(self) -> str:
        return f"v{self.version}"


@dataclass(frozen=True)
class Rollout:
    """What the manifest says serves users.

    ``canary_percent`` 0 is KServe's pin: 100% on the last rolled-out revision, the stable model's.
    With ``rolled_back`` set, the pin ended a canary or a promotion: the rolled-back model's revision
    is still the newest (the env still names it) with 0% of the traffic. With neither a canary nor
    ``rolled_back``, a second rollback restored the stable model's env under the pin: the newest
    revision serves the stable model too, with 0%, until the next release.
    """

    stable: ModelRef | None
    canary: ModelRef | None = None
    canary_percent: int | None = None
    previous: ModelRef | None = None
    rolled_back: ModelRef | None = None

    @property
    def served(self) -> ModelRef | None:
        """The model of the newest revision (the one the container env names)."""
        return self.canary or self.rolled_back or self.stable


def require_environment(env: str) -> None:
    if env not in ENVIRONMENTS:
        raise FlywheelError(f"unknown environment '{env}' (known: {', '.join(ENVIRONMENTS)})")


def namespace_of(path: Path) -> str:
    """The Kubernetes namespace of an environment, as its InferenceService file ``path`` names it (``flywheel
    init`` sets it; ``check-manifests`` holds every object of the environment, and its Argo CD Application, to it)."""
    found = (load(path).isvc.get("metadata") or {}).get("namespace")
    if not found:
        raise FlywheelError(f"{path}: the InferenceService names no metadata.namespace")
    return str(found)


def is_percent(value) -> bool:
    """A whole number from 0 to 100 (YAML's true/false is not one, though Python counts bool as int)."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= 100


def refuse_running_canary(rollout: Rollout, path: Path) -> None:
    """One canary at a time: a release while one runs must promote or roll it back first."""
    if rollout.canary:
        raise FlywheelError(
            f"{path}: canary {rollout.canary.label()} is still running "
            f"({rollout.canary_percent}%); promote or roll it back first"
        )


def isvc_path(repo: Path, env: str, manifests_dir: str = "manifests") -> Path:
    require_environment(env)
    path = Path(repo) / manifests_dir / env / ISVC_FILE
    if not path.is_file():
        raise FlywheelError(f"{path}: missing (every environment needs its InferenceService manifest)")
    return path


def _yaml() -> YAML:
    y = YAML()  # round-trip mode
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never re-wrap long lines: diffs must show only what changed
    return y


@dataclass
class IsvcFile:
    """The environment's InferenceService file: the InferenceService and the arms ConfigMap beside it."""

    isvc: CommentedMap
    arms: CommentedMap


def load(path: Path, text: str | None = None) -> IsvcFile:
    """The documents of ``path`` (or ``text``, named by ``path`` in errors), comments kept."""
    try:
        docs = list(_yaml().load_all(Path(path).read_text() if text is None else text))
    except (OSError, YAMLError) as exc:
        raise FlywheelError(f"{path}: cannot read YAML: {exc}") from exc
    kinds = [d.get("kind") if isinstance(d, CommentedMap) else type(d).__name__ for d in docs]
    if len(docs) != 2 or kinds[0] != "InferenceService" or kinds[1] != "ConfigMap":
        raise FlywheelError(
            f"{path}: expected two documents, the InferenceService then the ConfigMap {ARMS_CONFIGMAP}, got {kinds}"
        )
    if (docs[1].get("metadata") or {}).get("name") != ARMS_CONFIGMAP:
        raise FlywheelError(f"{path}: the second document must be the ConfigMap named {ARMS_CONFIGMAP}")
    return IsvcFile(*docs)


def dump(doc: IsvcFile) -> str:
    out = io.StringIO()
    _yaml().dump_all([doc.isvc, doc.arms], out)
    return out.getvalue()


def arm_versions(rollout: Rollout) -> dict[str, str]:
    """Arm -> model version, as the ConfigMap keys ``stable`` and ``canary`` say (what the collector reads)."""
    arms = {"stable": rollout.stable, "canary": rollout.canary}
    return {arm: str(ref.version) for arm, ref in arms.items() if ref is not None}


def _predictor(doc: CommentedMap, path: Path) -> CommentedMap:
    predictor = (doc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, CommentedMap):
        raise FlywheelError(f"{path}: spec.predictor is missing")
    return predictor


def _container_env(doc: CommentedMap, path: Path) -> dict:
    containers = _predictor(doc, path).get("containers") or []
    found = [c for c in containers if isinstance(c, dict) and c.get("name") == CONTAINER]
    if len(found) != 1:
        raise FlywheelError(f"{path}: spec.predictor.containers needs exactly one container named {CONTAINER}")
    env = {e.get("name"): e for e in found[0].get("env") or [] if isinstance(e, dict)}
    missing = [n for n in (ENV_URI, ENV_SHA, ENV_VERSION) if n not in env]
    if missing:
        raise FlywheelError(f"{path}: container {CONTAINER} lacks env {', '.join(missing)}")
    return env


def _record(file: IsvcFile, path: Path) -> dict:
    data = file.arms.get("data")
    if not isinstance(data, dict) or "stable" not in data:
        raise FlywheelError(f"{path}: ConfigMap {ARMS_CONFIGMAP} needs data.stable (empty before the first release)")
    return data


def _ref(data: dict, role: str, path: Path) -> ModelRef | None:
    keys = [f"{role}{field}" for field in REF_FIELDS]
    values = [data.get(k) for k in keys]
    where = f"{path}: ConfigMap {ARMS_CONFIGMAP}"
    if all(v in (None, "") for v in values):
        return None
    if any(v in (None, "") for v in values):
        raise FlywheelError(f"{where}: keys {', '.join(keys)} must be set together (found {values})")
    version, uri, sha = (str(v) for v in values)
    if not version.isdigit() or int(version) < 1:
        raise FlywheelError(f"{where}: {keys[0]} must be a model version number, got {version!r}")
    refused = storage.problem(uri)
    if refused:
        raise FlywheelError(f"{where}: {keys[1]}: {refused}")
    if not _SHA256.match(sha):
        raise FlywheelError(f"{where}: {keys[2]} must be 64 lowercase hex digits, got {sha!r}")
    return ModelRef(int(version), uri, sha)


def _check_split(rollout: Rollout, path: Path) -> None:
    canary, percent, back = rollout.canary, rollout.canary_percent, rollout.rolled_back
    if (canary or back) and rollout.stable is None:
        raise FlywheelError(f"{path}: a canary ({(canary or back).label()}) is recorded but no stable model")
    if canary and back:
        raise FlywheelError(f"{path}: a running canary and a rolled-back one are both recorded")
    if canary and percent is None:
        raise FlywheelError(
            f"{path}: canary {canary.label()} is recorded but spec.predictor.canaryTrafficPercent is not set"
        )
    if back and percent != 0:
        raise FlywheelError(
            f"{path}: rolled-back {back.label()} is recorded, so spec.predictor.canaryTrafficPercent must be 0 "
            f"(KServe's pin on the stable revision), got {percent!r}"
        )
    if percent and canary is None and back is None:  # 0 without either: the pin, the stable model restored
        raise FlywheelError(
            f"{path}: spec.predictor.canaryTrafficPercent is set ({percent}) "
            f"but ConfigMap {ARMS_CONFIGMAP} names no canary"
        )
    if canary and rollout.stable and canary.version == rollout.stable.version:
        raise FlywheelError(f"{path}: canary and stable are the same version ({canary.label()})")


def read_rollout(path: Path, file: IsvcFile | None = None) -> Rollout:
    """The rollout state, after checking that the record, the container env and the traffic split agree."""
    file = load(path) if file is None else file
    data = _record(file, path)
    stable, canary, previous, back = (_ref(data, role, path) for role in ROLES)
    predictor = _predictor(file.isvc, path)
    percent = predictor.get("canaryTrafficPercent")
    if percent is not None and not is_percent(percent):
        raise FlywheelError(
            f"{path}: spec.predictor.canaryTrafficPercent must be a whole number 0-100, got {percent!r}"
        )
    rollout = Rollout(stable, canary, percent, previous, back)
    _check_split(rollout, path)
    env = _container_env(file.isvc, path)
    served = rollout.served
    want = (
        {ENV_URI: served.storage_uri, ENV_SHA: served.sha256, ENV_VERSION: str(served.version)}
        if served
        else {ENV_URI: "", ENV_SHA: "", ENV_VERSION: ""}
    )
    for name, value in want.items():
        got = str(env[name].get("value") or "")
        if got != value:
            role = "canary" if rollout.canary else "rolled-back" if rollout.rolled_back else "stable"
            raise FlywheelError(
                f"{path}: container env {name}={got!r} disagrees with the {role} model ConfigMap "
                f"{ARMS_CONFIGMAP} records ({value!r})"
            )
    return rollout


def _write_record(file: IsvcFile, rollout: Rollout) -> None:
    data = file.arms.get("data")
    if not isinstance(data, CommentedMap):
        file.arms["data"] = data = CommentedMap()
    refs = dict(zip(ROLES, (rollout.stable, rollout.canary, rollout.previous, rollout.rolled_back)))
    for role, ref in refs.items():
        values = (str(ref.version), ref.storage_uri, ref.sha256) if ref else (None,) * len(REF_FIELDS)
        for field, value in zip(REF_FIELDS, values):
            key = f"{role}{field}"
            if value is not None:
                data[key] = DoubleQuotedScalarString(value)
            elif role == "stable" and not field:  # the key stays, empty, before the first release
                data[key] = DoubleQuotedScalarString("")
            else:
                data.pop(key, None)


def write_rollout(path: Path, file: IsvcFile, rollout: Rollout) -> str:
    """Set ``rollout`` into ``file`` in place (annotations, traffic split, env, arms); return the new text.

    The file itself is not written: the caller commits the text, so a failure leaves nothing behind.
    """
    doc = file.isvc
    _write_record(file, rollout)
    predictor = _predictor(doc, path)
    if rollout.canary_percent is None:
        predictor.pop("canaryTrafficPercent", None)
    elif "canaryTrafficPercent" in predictor:
        predictor["canaryTrafficPercent"] = rollout.canary_percent
    else:
        keys = list(predictor)
        at = keys.index("maxReplicas") + 1 if "maxReplicas" in keys else 0
        predictor.insert(
            at,
            "canaryTrafficPercent",
            rollout.canary_percent,
            comment="share of requests on the canary; removed when it is promoted or rolled back",
        )
    env = _container_env(doc, path)
    served = rollout.served
    for name, value in (
        (ENV_URI, served.storage_uri if served else ""),
        (ENV_SHA, served.sha256 if served else ""),
        (ENV_VERSION, str(served.version) if served else ""),
    ):
        env[name]["value"] = DoubleQuotedScalarString(value)
    text = dump(file)
    read_rollout(path, load(path, text))  # what we write must read back as the same, consistent state
    return text


def start_canary(rollout: Rollout, model: ModelRef, percent: int, path: Path) -> Rollout:
    """Put ``model`` on ``percent``% of traffic; the first release of an environment goes straight to stable.

    0% deploys the canary revision without user traffic (tag routing still gives it its own URL).

    While the newest revision serves a rolled-back model, only that model may be released again (its
    revision takes the share at once, as nothing in the template changes): a new model's revision needs
    a cold start, and until it is ready Knative resolves ``latestRevision`` to the latest ready
    revision, so the canary's share would go to the rolled-back model. A second ``rollback`` first
    restores the stable model's env under the pin (``roll_back``); then any model may be released.
    """
    if not is_percent(percent):
        raise FlywheelError(f"canary percentage must be a whole number from 0 to 100, got {percent!r}")
    refuse_running_canary(rollout, path)
    if rollout.stable is None:
        return Rollout(stable=model)
    if rollout.stable.version == model.version:
        raise FlywheelError(f"{path}: {model.label()} is already the stable model")
    back = rollout.rolled_back
    if back is not None and back.version != model.version and percent > 0:
        raise FlywheelError(
            f"{path}: the newest revision still serves rolled-back {back.label()}; until {model.label()}'s revision "
            f"is ready, Knative would send the {percent}% meant for it to {back.label()} (latestRevision is the latest "
            f"ready revision). Run `flywheel rollback` once more first: it restores {rollout.stable.label()}'s env "
            f"under the pin, and users stay on {rollout.stable.label()} throughout"
        )
    if percent == 100:  # KServe reads 100% as "roll out fully": that is a promote without a canary phase
        return Rollout(stable=model, previous=rollout.stable)
    return Rollout(rollout.stable, canary=model, canary_percent=percent, previous=rollout.previous)


def promote_canary(rollout: Rollout, path: Path) -> Rollout:
    """The canary takes 100%: ``canaryTrafficPercent`` goes; the env already names it, so no new revision."""
    if rollout.canary is None:
        raise FlywheelError(f"{path}: no canary is running, nothing to promote")
    return Rollout(stable=rollout.canary, previous=rollout.stable)


def roll_back(rollout: Rollout, path: Path) -> Rollout:
    """KServe's pin, ``canaryTrafficPercent: 0``, which moves users without a new revision; or, once pinned,
    restore the stable model's env under the pin.

    - A running canary: the pin sends 100% to the last rolled-out revision, the stable model's, at once.
    - After a promotion: the same pin on the promoted revision. KServe moves ``latestRolledoutRevision``
      back to ``previousRolledoutRevision`` when the rolled-out revision, still the newest, is given
      less than 100% (kserve ``pkg/apis/serving/v1beta1/inference_service_status.go``,
      ``PropagateStatus``, the else-branch; ``docs/samples/v1beta1/rollout``, "Rollback and pin"), so
      100% goes to the previous stable model's revision. ``previous`` is then unknown: KServe's
      ``previousRolledoutRevision`` names that same revision.
    - Already pinned with a rolled-back model's env: the stable model's env, pin kept. Its new revision
      starts with 0% (users stay on the rolled-out revision throughout) and, once ready, replaces the
      rolled-back revision as ``latestRevision``: from then on a release's canary share waits on the
      stable model while its own revision starts, never on the rolled-back one.

    Restoring the old model's env *instead of* the pin would create a revision, and until it is ready
    Knative sends all traffic to the latest *ready* revision: the model being rolled back (kserve
    ``ksvc_reconciler.go`` routes ``latestRevision: true``; Knative resolves it to
    ``status.latestReadyRevisionName``).
    """
    if rollout.canary is not None:
        return Rollout(rollout.stable, canary_percent=0, previous=rollout.previous, rolled_back=rollout.canary)
    if rollout.rolled_back is not None:
        return Rollout(rollout.stable, canary_percent=0, previous=rollout.previous)
    if rollout.canary_percent == 0:
        raise FlywheelError(
            f"{path}: already rolled back and restored: stable {rollout.stable.label()} serves everyone under the pin "
            f"(canaryTrafficPercent: 0) until the next release"
        )
    if rollout.previous is not None:
        return Rollout(rollout.previous, canary_percent=0, rolled_back=rollout.stable)
    raise FlywheelError(
        f"{path}: no canary is running and no previous stable model is recorded; nothing to roll back to"
    )
