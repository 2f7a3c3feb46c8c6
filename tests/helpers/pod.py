"""A container of a manifest, started on this machine as the kubelet would start it (tests/servers/test_pod.py).

What the kubelet and the container runtime do, and what stands in for them here:

- **Process**: the container's ``command`` replaces the image's ENTRYPOINT (and drops its CMD), its
  ``args`` replace CMD; ``$(VAR)`` in ``command``/``args`` is expanded from the container's env
  (``expand``, a port of Kubernetes' ``third_party/forked/golang/expansion/expand.go``). The image's
  ENTRYPOINT/CMD/ENV/USER/WORKDIR come from the Dockerfile (``read_dockerfile``).
- **Environment**: the image's ENV, then the container's ``env`` in order, each value expanded with the
  variables defined before it (kubelet ``makeEnvironmentVariables``); ``secretKeyRef`` values are
  supplied by the caller (a Secret is created out of band), ``configMapKeyRef`` ones come from the
  ConfigMaps in the manifest folder.
- **Volumes**: an ``emptyDir`` is a fresh host folder bound writable; a ``configMap`` volume holds one
  file per key, in the kubelet's atomic-writer layout (``..data`` link, kubernetes
  ``pkg/volume/util/atomic_writer.go``), read-only; the model is bound read-only at ``/mnt/models``,
  where KServe's storage initializer downloads ``STORAGE_URI``.
- **securityContext**: ``runAsUser``/``runAsGroup`` (container over pod, else the image's USER) with
  a user namespace, ``readOnlyRootFilesystem`` as a read-only bind of ``/`` (so the project folder,
  the virtual environments and site-packages are read-only), ``capabilities.drop: [ALL]``. All of it
  with bubblewrap (``bwrap``, Debian's ``bubblewrap``), sharing the network so the test calls it on
  127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

KSERVE_MODEL_DIR = "/mnt/models"  # KServe's storage initializer downloads STORAGE_URI here
# The python base image's PATH (docker-library/python: ENV PATH /usr/local/bin:$PATH); the install
# under test puts its bin folder first, where the image has /usr/local/bin and pip's `flywheel` script.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def expand(text: str, mapping: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion, as ``expand.go`` does it: ``$(VAR)`` becomes the variable's value
    when ``mapping`` defines it and stays as written otherwise, ``$$`` is a literal ``$`` (so ``$$(VAR)``
    stays ``$(VAR)``), an unclosed ``$(`` and any other ``$x`` are copied."""
    out, checkpoint, cursor = [], 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":  # escaped operator
                read, advance = "$", 1
            elif rest[0] == "(" and ")" in rest:
                name = rest[1 : rest.index(")")]
                read, advance = mapping.get(name, f"$({name})"), len(name) + 2
            elif rest[0] == "(":  # incomplete reference: copied
                read, advance = "$(", 1
            else:  # not an expression: the operator and the next character are copied
                read, advance = "$" + rest[0], 1
            out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


@dataclass
class Image:
    """What the Dockerfile sets for a container started from the image (its last stage)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "0"
    workdir: str = "/"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined, lines = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):  # comment lines go, even inside a continuation
            continue
        lines.append(line.rstrip())
        if not line.rstrip().endswith("\\"):
            joined.append(" ".join(x.rstrip("\\").strip() for x in lines).strip())
            lines = []
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in joined if s]


def read_dockerfile(path: Path) -> Image:
    image = Image()
    for op, rest in _instructions(path.read_text()):
        if op == "FROM":
            image = Image()
        elif op == "ENV":
            image.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif op in ("ENTRYPOINT", "CMD"):
            setattr(image, op.lower(), json.loads(rest))  # exec form; the shell form would run /bin/sh -c
        elif op == "USER":
            image.user = rest.strip()
        elif op == "WORKDIR":
            image.workdir = str(PurePosixPath(image.workdir) / rest.strip())
    return image


@dataclass
class Workload:
    """One container of a manifest and the pod spec around it, with the folder's ConfigMaps."""

    container: dict
    pod: dict
    configmaps: dict[str, dict[str, str]]


def read_workload(path: Path, container_name: str) -> Workload:
    """The container named ``container_name`` of the InferenceService or Deployment in ``path``."""
    configmaps = {}
    for other in sorted(path.parent.glob("*.yaml")):
        for doc in yaml.safe_load_all(other.read_text()):
            if doc and doc.get("kind") == "ConfigMap":
                configmaps[doc["metadata"]["name"]] = dict(doc.get("data") or {})
    for doc in yaml.safe_load_all(path.read_text()):
        kind = (doc or {}).get("kind")
        pod = {
            "InferenceService": lambda d: d["spec"]["predictor"],
            "Deployment": lambda d: d["spec"]["template"]["spec"],
        }
        if kind in pod:
            spec = pod[kind](doc)
            for container in spec.get("containers") or []:
                if container.get("name") == container_name:
                    return Workload(container, spec, configmaps)
    raise AssertionError(f"{path}: no container {container_name!r}")


def container_env(
    work: Workload, image: Image, secrets: dict[tuple[str, str], str], values: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(the container's own env, the process's whole env). ``values`` replace ``value`` fields by name, as
    ``flywheel release`` writes them into the manifest; ``secrets`` maps (Secret name, key) to a value."""
    own: dict[str, str] = {}
    for entry in work.container.get("env") or []:
        name, source = entry["name"], entry.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets, f"env {name}: the test supplies no Secret {ref}"
            own[name] = secrets[(ref["name"], ref["key"])]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            own[name] = work.configmaps[ref["name"]][ref["key"]]
        else:
            assert not source, f"env {name}: valueFrom {source} has no stand-in here"
            own[name] = expand(str(values.get(name, entry.get("value", ""))), own)
    return own, {**image.env, **own}


def container_argv(work: Workload, image: Image, own_env: dict[str, str]) -> list[str]:
    """The process's argv by Kubernetes' rules; only the manifest's command/args are expanded."""
    command, args = work.container.get("command"), work.container.get("args")
    if command:
        argv = [expand(str(a), own_env) for a in [*command, *(args or [])]]
    else:
        given = [expand(str(a), own_env) for a in args] if args is not None else list(image.cmd)
        argv = [*image.entrypoint, *given]
    assert argv, "neither the manifest nor the image names a program"
    return argv


def container_port(work: Workload, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    return next(int(p["containerPort"]) for p in work.container["ports"] if p.get("name") == port)


def run_as(work: Workload, image: Image) -> tuple[int, int]:
    """(uid, gid) the process runs as: the container's securityContext over the pod's over the image's USER."""
    ctx = {**(work.pod.get("securityContext") or {}), **(work.container.get("securityContext") or {})}
    user, _, group = image.user.partition(":")
    uid, gid = int(ctx.get("runAsUser", user)), int(ctx.get("runAsGroup", group or user))
    assert not (ctx.get("runAsNonRoot") and uid == 0), "the kubelet refuses a runAsNonRoot container running as root"
    return uid, gid


@dataclass(frozen=True)
class Mount:
    host: Path
    path: str
    writable: bool


def _configmap_volume(folder: Path, data: dict[str, str], items: list[dict] | None) -> Path:
    """A configMap volume as the kubelet writes it: files in a timestamped folder, ``..data`` linking to
    it, and each key a link through ``..data``."""
    files = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
    stamp = folder / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, value in files.items():
        (stamp / name).write_text(value)
    (folder / "..data").symlink_to(stamp.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    return folder


def volume_mounts(work: Workload, root: Path, configmap_data: dict[str, dict[str, str]]) -> list[Mount]:
    """Host folders for the container's volumeMounts; ``configmap_data`` overrides ConfigMap keys (as a
    release writes them)."""
    volumes = {v["name"]: v for v in work.pod.get("volumes") or []}
    mounts = []
    for mount in work.container.get("volumeMounts") or []:
        volume, host = volumes[mount["name"]], root / mount["name"]
        if "emptyDir" in volume:
            host.mkdir(parents=True)
            mounts.append(Mount(host, mount["mountPath"], not mount.get("readOnly", False)))
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            data = {**work.configmaps[name], **configmap_data.get(name, {})}
            mounts.append(
                Mount(_configmap_volume(host, data, volume["configMap"].get("items")), mount["mountPath"], False)
            )
        else:
            raise AssertionError(f"volume {mount['name']}: {sorted(volume)} has no stand-in here")
    return mounts


def _mount_point(path: str, ready: set[str]) -> tuple[list[str], list[str]]:
    """bwrap arguments that let ``path`` become a mount point under the read-only root: where a folder on
    the way is missing, its parent becomes a tmpfs holding read-only binds of the parent's own entries
    (a container runtime creates mount points in the image's layer the same way), read-only again once
    the mounts are in (the second list)."""
    parts = PurePosixPath(path).parts
    for depth in range(2, len(parts) + 1):
        here = str(PurePosixPath(*parts[:depth]))
        if os.path.lexists(here):
            continue
        parent = str(PurePosixPath(*parts[: depth - 1]))
        if parent in ready:
            return [], []
        assert parent != "/", f"{path}: a mount point at the top of a read-only root cannot be made"
        ready.add(parent)
        ops = ["--tmpfs", parent]
        for entry in sorted(os.scandir(parent), key=lambda e: e.name):
            if entry.is_symlink():
                ops += ["--symlink", os.readlink(entry.path), entry.path]
            else:
                ops += ["--ro-bind-try", entry.path, entry.path]
        return ops, ["--remount-ro", parent]
    return [], []


def sandbox_argv(mounts: list[Mount], uid: int, gid: int, env: dict[str, str], cwd: str, argv: list[str]) -> list[str]:
    """``bwrap`` running ``argv`` as ``uid:gid`` with a read-only root and only ``mounts`` writable."""
    ops, after, ready = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"], [], set()
    for mount in mounts:
        made, remount = _mount_point(mount.path, ready)
        ops += [*made, "--bind" if mount.writable else "--ro-bind", str(mount.host), mount.path]
        after += remount
    identity = ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--cap-drop", "ALL"]
    isolation = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    environment = ["--clearenv", *(x for k, v in env.items() for x in ("--setenv", k, v))]
    return ["bwrap", *ops, *after, *identity, *isolation, *environment, "--chdir", cwd, "--", *argv]


def bwrap_works() -> bool:
    """bwrap is installed and may create a user namespace here (Ubuntu 24.04's AppArmor policy forbids it
    to unprivileged users unless told otherwise: scripts/install_test_tools.sh)."""
    if not shutil.which("bwrap"):
        return False
    probe = ["bwrap", "--unshare-user", "--uid", "10001", "--gid", "10001", "--ro-bind", "/", "/", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
