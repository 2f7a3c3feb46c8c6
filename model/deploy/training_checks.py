"""Validate the training manifests (``manifests/training/``): the TrainJob template ``flywheel train-job``
submits, and the training namespace's access objects (``access.yaml``).

- TrainJob: Kubeflow Trainer's own CRD schema (``schemas/trainjob.v1alpha1.json``, unknown fields
  refused), the CRD's CEL rule on the name, what Trainer's admission webhook refuses (kubeflow/trainer
  ``pkg/runtime/framework/plugins/torch/torch.go``: the reserved ``PET_*`` variables in
  ``spec.trainer.env``; ``plugins/jobset/jobset.go``: patches of jobs or containers the runtime lacks, env
  in the ``node`` container's patch), and this project's rules: the ``torch-distributed`` runtime running
  ``torchrun --no-python flywheel train`` with no torchrun flag that would override the ``PET_*``
  variables, a deadline, one worker per GPU, and the hardened container with a writable ``/tmp``.
- access.yaml: Kubernetes' schemas (``kubernetes-validate``, strict), every object in the TrainJob's
  namespace and nothing cluster-wide, the submitter's Role limited to creating and reading TrainJobs and
  bound to a ServiceAccount of that namespace, the pods' ServiceAccount there with no API token and no
  binding.
"""

from __future__ import annotations

import re
from pathlib import Path

from model.core.errors import FlywheelError
from model.deploy import trainjob
from model.deploy.crd_schemas import schema_errors
from model.deploy.kubernetes_checks import check_core, load_objects, security_errors

# the CRD's CEL rules on metadata.name (trainjob_types.go): an RFC 1035 label of at most 63 characters
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# torchrun takes each of these from PET_<NAME> when the flag is absent (torch/distributed/run.py, the `env`
# action): given in the command, it would override what the runtime sets for each node
TORCHRUN_FROM_ENV = re.compile(
    r"^--(nnodes|nproc[-_]per[-_]node|node[-_]rank|master[-_]addr|master[-_]port|standalone)$"
)
ACCESS_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret")
SUBMITTER_VERBS = {"create", "get"}  # what model/deploy/train_job.py calls
ALLOWED_VERBS = {"create", "get", "list", "watch"}
ALLOWED_RESOURCES = {trainjob.PLURAL, f"{trainjob.PLURAL}/status"}


def _dig(node, *keys):
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _command_errors(command: list, where: str) -> list[str]:
    """``torchrun [flags] --no-python flywheel train``: torchrun reads the runtime's PET_* variables."""
    if not command or Path(str(command[0])).name != "torchrun":
        return [f"{where}: spec.trainer.command must start with torchrun (the runtime's PET_* variables are its flags)"]
    programs = [i for i, token in enumerate(command) if Path(str(token)).name == "flywheel"]
    if not programs or command[programs[0] + 1 : programs[0] + 2] != ["train"]:
        return [f"{where}: spec.trainer.command must run `flywheel train` (torchrun --no-python flywheel train)"]
    torchrun_flags = [str(t) for t in command[1 : programs[0]]]
    errors = []
    if "--no-python" not in torchrun_flags:
        errors.append(f"{where}: torchrun needs --no-python before flywheel (it is a program, not a Python script)")
    overriding = [t for t in torchrun_flags if TORCHRUN_FROM_ENV.match(t.split("=", 1)[0])]
    if overriding:
        errors.append(
            f"{where}: torchrun flags {overriding} override what the torch-distributed runtime sets per node "
            "(PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT)"
        )
    return errors


def _trainer_errors(trainer: dict, where: str) -> list[str]:
    errors = _command_errors(trainer.get("command") or [], where)
    reserved = [e.get("name") for e in trainer.get("env") or [] if e.get("name") in RESERVED_ENV]
    if reserved:
        errors.append(f"{where}: spec.trainer.env must not set {reserved}: the torch runtime sets them")
    workers, gpus = trainer.get("numProcPerNode"), trainjob.gpus_per_node(trainer.get("resourcesPerNode"))
    if workers is None:
        errors.append(
            f"{where}: spec.trainer.numProcPerNode must be set (unset, torch-distributed starts one worker per "
            "GPU torch sees, or one per requested CPU)"
        )
    elif gpus and workers != gpus:
        errors.append(
            f"{where}: one worker per GPU (model/train/distributed.py): numProcPerNode is {workers} but each node "
            f"asks for {gpus} GPU(s)"
        )
    return errors


def node_pod_patches(job: dict) -> list[tuple[str, dict]]:
    """The pod spec patches of the runtime's replicated jobs, each as (job name, pod spec)."""
    return [
        (rjob.get("name"), _dig(rjob, "template", "spec", "template", "spec") or {})
        for patch in _dig(job, "spec", "runtimePatches") or []
        for rjob in _dig(patch, "trainingRuntimeSpec", "template", "spec", "replicatedJobs") or []
    ]


def _patch_errors(job: dict, where: str) -> list[str]:
    """What the JobSet plugin refuses in the patches, and the node container's hardening."""
    errors, node = [], None
    for name, pod in node_pod_patches(job):
        if name != trainjob.NODE:
            errors.append(f"{where}: runtimePatches: {trainjob.RUNTIME} has one replicated job, {trainjob.NODE!r}")
            continue
        if pod.get("initContainers"):
            errors.append(f"{where}: runtimePatches: {trainjob.RUNTIME}'s pods have no init containers to patch")
        for container in pod.get("containers") or []:
            if container.get("name") != trainjob.NODE:
                errors.append(f"{where}: runtimePatches: the {trainjob.NODE} job has one container, {trainjob.NODE!r}")
            elif container.get("env"):
                errors.append(f"{where}: runtimePatches: the {trainjob.NODE} container's env goes in spec.trainer.env")
            else:
                node = container
    if node is None:
        return [*errors, f"{where}: runtimePatches must give the {trainjob.NODE} container a hardened securityContext"]
    errors += security_errors(where, node)
    if "/tmp" not in {m.get("mountPath") for m in node.get("volumeMounts") or []}:
        errors.append(
            f"{where}: the {trainjob.NODE} container needs a volume on /tmp: its root filesystem is read-only and "
            "the image's HOME and work folder (FLYWHEEL_WORK_DIR) are there"
        )
    return errors


def trainjob_errors(job: dict, where: str | Path) -> list[str]:
    """Everything that would stop ``job`` at admission, or make it train differently from ``flywheel train``
    under torchrun; an empty list when Trainer would accept it and it runs the step."""
    where = str(where)
    errors = []
    if job.get("apiVersion") != trainjob.API_VERSION or job.get("kind") != trainjob.KIND:
        errors.append(f"{where}: must be a {trainjob.API_VERSION} {trainjob.KIND}")
    errors += [f"{where}: TrainJob {e}" for e in schema_errors(job, trainjob.SCHEMA_FILE)]
    name = str(_dig(job, "metadata", "name") or "")
    if not RFC1035.match(name) or len(name) > 63:
        errors.append(f"{where}: metadata.name {name!r} must be an RFC 1035 label of at most 63 characters")
    if not _dig(job, "metadata", "namespace"):
        errors.append(f"{where}: metadata.namespace must name the training namespace")
    ref = _dig(job, "spec", "runtimeRef") or {}
    if (ref.get("name"), ref.get("kind", "ClusterTrainingRuntime"), ref.get("apiGroup", trainjob.GROUP)) != (
        trainjob.RUNTIME,
        "ClusterTrainingRuntime",
        trainjob.GROUP,
    ):
        errors.append(f"{where}: spec.runtimeRef must name the ClusterTrainingRuntime {trainjob.RUNTIME}")
    if not _dig(job, "spec", "activeDeadlineSeconds"):
        errors.append(f"{where}: spec.activeDeadlineSeconds must bound the job (and how long train-job waits)")
    return errors + _trainer_errors(_dig(job, "spec", "trainer") or {}, where) + _patch_errors(job, where)


def _role_errors(role: dict, where: str) -> list[str]:
    errors = []
    for rule in role.get("rules") or []:
        groups, resources, verbs = (set(rule.get(k) or []) for k in ("apiGroups", "resources", "verbs"))
        if groups != {trainjob.GROUP} or not resources <= ALLOWED_RESOURCES or not verbs <= ALLOWED_VERBS:
            errors.append(
                f"{where}: Role {role['metadata'].get('name')}: a rule beyond {sorted(ALLOWED_VERBS)} on "
                f"{trainjob.GROUP} {sorted(ALLOWED_RESOURCES)}: {rule}"
            )
    return errors


def _binding_errors(docs: list[dict], namespace: str, where: str) -> tuple[list[str], set[str]]:
    """What is wrong with the RoleBindings, and the ServiceAccounts that may submit and read TrainJobs."""
    roles = {d["metadata"].get("name"): d for d in docs if d["kind"] == "Role"}
    errors, submitters = [], set()
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        ref, name = binding.get("roleRef") or {}, binding["metadata"].get("name")
        if ref.get("kind") != "Role" or ref.get("name") not in roles:
            errors.append(f"{where}: RoleBinding {name} must bind a Role of this file, got {ref}")
            continue
        rules = roles[ref["name"]].get("rules") or []
        granted = {v for r in rules if trainjob.PLURAL in (r.get("resources") or []) for v in r.get("verbs") or []}
        for subject in binding.get("subjects") or []:
            if subject.get("kind") != "ServiceAccount" or subject.get("namespace") != namespace:
                errors.append(f"{where}: RoleBinding {name}: only ServiceAccounts of {namespace}, got {subject}")
            elif SUBMITTER_VERBS <= granted:
                submitters.add(subject.get("name"))
    return errors, submitters


def access_errors(docs: list[dict], namespace: str, where: str | Path, pod_account: str | None) -> list[str]:
    """The training namespace's objects: valid, in ``namespace``, least privilege for the submitter, and
    ``pod_account`` (the TrainJob pods' ServiceAccount) defined here without API access."""
    where = str(where)
    errors = []
    for doc in docs:
        kind, meta = doc["kind"], doc.get("metadata") or {}
        if kind not in ACCESS_KINDS:
            errors.append(f"{where}: {kind} {meta.get('name')}: only {', '.join(ACCESS_KINDS)} belong here")
            continue
        errors += check_core(doc, Path(where))
        if (meta.get("name") if kind == "Namespace" else meta.get("namespace")) != namespace:
            errors.append(f"{where}: {kind} {meta.get('name')} must be in the TrainJob's namespace {namespace}")
        if kind == "Role":
            errors += _role_errors(doc, where)
    binding_errors, submitters = _binding_errors([d for d in docs if d["kind"] in ACCESS_KINDS], namespace, where)
    errors += binding_errors
    if not submitters:
        errors.append(f"{where}: no ServiceAccount may create and get TrainJobs in {namespace} (flywheel train-job)")
    accounts = {d["metadata"].get("name"): d for d in docs if d["kind"] == "ServiceAccount"}
    if pod_account is not None:
        if pod_account not in accounts or accounts[pod_account].get("automountServiceAccountToken") is not False:
            errors.append(
                f"{where}: the TrainJob's pods run as {pod_account}: define it here with automountServiceAccountToken: "
                "false (they never call the Kubernetes API)"
            )
        if pod_account in submitters:
            errors.append(f"{where}: the TrainJob's pods run as {pod_account}, which may submit TrainJobs")
    return errors


def check_training(folder: Path) -> list[str]:
    """``manifests/training``: the TrainJob template and the namespace's access objects."""
    template, access = folder / "trainjob.yaml", folder / "access.yaml"
    try:
        jobs, access_docs = load_objects(template), load_objects(access)
    except FlywheelError as exc:
        return [str(exc)]
    if [d["kind"] for d in jobs] != [trainjob.KIND]:
        return [f"{template}: must hold one {trainjob.KIND}, the template flywheel train-job submits"]
    job = jobs[0]
    errors = trainjob_errors(job, template)
    errors += [
        f"{template}: spec.trainer.{key} is set by flywheel train-job for each run; leave it out"
        for key in ("image", "args")
        if key in (_dig(job, "spec", "trainer") or {})
    ]
    accounts = {pod.get("serviceAccountName") for name, pod in node_pod_patches(job) if name == trainjob.NODE}
    pod_account = next(iter(accounts - {None}), None)
    if pod_account is None:
        errors.append(f"{template}: runtimePatches must run the pods as a ServiceAccount of access.yaml")
    namespace = str(_dig(job, "metadata", "namespace"))
    return errors + access_errors(access_docs, namespace, access, pod_account)
