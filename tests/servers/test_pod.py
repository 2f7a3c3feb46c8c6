"""The pod starts as its manifests say: the predictor and the collector, each launched from its
manifest's container spec (command/args with Kubernetes' ``$(VAR)`` expansion, env, volumes,
securityContext) and the Dockerfile's ENTRYPOINT/ENV/USER, from a non-editable install of the
package, as uid 10001 with a read-only root filesystem and only the manifest's writable volumes
writable (bubblewrap; ``tests/helpers/pod.py`` says what stands in for the kubelet). Both become ready on their
readiness probe and answer: V1 and V2 calls, a KServe logger CloudEvent.

One change from the manifest, for a shared test machine: the ``--http-port`` value (the container port
8080, which the probes and the Service name) becomes a free port. The network is shared, so the
servers listen on 0.0.0.0 as written, on that port. The image's WORKDIR (/app, a copy of the sources)
is the project folder, read-only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from model.artifact.manifest import verify
from model.core.config import ENVIRONMENTS, PROJECT_ROOT
from model.serve.logger import AGENT_SOURCE_URI, cloudevents_time
from tests.helpers import pod

MANIFESTS = PROJECT_ROOT / "manifests"
PREDICTOR = ("inferenceservice.yaml", "kserve-container")
COLLECTOR = ("collector.yaml", "collector")
STORE_SECRET = ("flywheel-collector-store", "url")
STORE_URL = "sqlite:////tmp/conversations.db"  # the Secret's value here: a SQLite file on the emptyDir
VERSION = "1"
TEXT = "where is my order"


@dataclass(frozen=True)
class Install:
    root: Path
    python: Path
    bin: Path
    site_packages: Path


@pytest.fixture(scope="session")
def installed():
    """A non-editable install of the project, as the image's ``pip install .`` makes one: a fresh venv
    whose site-packages holds the package built from a copy of the sources, and finds the dependencies
    through a ``.pth`` line naming this venv's site-packages (a plain path line: the editable install's
    finder there never runs). Outside /tmp, which the pod's emptyDir covers."""
    root = Path(tempfile.mkdtemp(prefix="flywheel-pod-", dir="/var/tmp"))
    try:
        src = root / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(PROJECT_ROOT / name, src / name)
        for name in ("model", "data_checks", "scripts"):
            shutil.copytree(PROJECT_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(root / "venv")], check=True)
        python = root / "venv" / "bin" / "python"
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (Path(purelib) / "flywheel-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        subprocess.run([*pip, "--ignore-installed", str(src)], check=True, cwd=root, timeout=300)
        yield Install(root, python, python.parent, Path(purelib))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def release(tiny_artifact) -> dict:
    """What ``flywheel release`` writes into the manifests for version 1 of the tiny model."""
    artifact = tiny_artifact["artifact"]
    return {
        "artifact": Path(artifact),
        "env": {
            "STORAGE_URI": f"s3://models/flywheel-intent/{VERSION}/artifact",
            "FLYWHEEL_MODEL_SHA256": verify(artifact),
            "FLYWHEEL_MODEL_VERSION": VERSION,
        },
        "configmaps": {"flywheel-arms": {"stable": VERSION}},
    }


@dataclass
class Container:
    work: pod.Workload
    argv: list[str]
    sandbox: list[str]
    volumes: dict[str, Path]  # writable mount path -> host folder
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    pid: int = 0  # the program's pid on this machine (PID 1 in its sandbox)
    status: object = None  # bwrap's status pipe, open until it exits (it writes the exit code there)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(env: str, which: tuple[str, str], root: Path, install: Install, release: dict) -> Container:
    """The container of ``which`` in ``env``'s manifests as the kubelet would start it."""
    work = pod.read_workload(MANIFESTS / env / which[0], which[1])
    image = pod.read_dockerfile(PROJECT_ROOT / "Dockerfile")
    named = {e["name"] for e in work.container.get("env") or []}
    values = {k: v for k, v in release["env"].items() if k in named}
    assert which != PREDICTOR or set(values) == set(release["env"]), f"a release writes {sorted(release['env'])}"
    own, environ = pod.container_env(work, image, {STORE_SECRET: STORE_URL}, values)
    environ["PATH"] = f"{install.bin}:{pod.BASE_PATH}"  # the image's PATH, its bin folder that of the install
    argv = pod.container_argv(work, image, own)
    argv[0] = shutil.which(argv[0], path=environ["PATH"]) or argv[0]
    assert Path(argv[0]).parent == install.bin, f"{argv[0]}: not the non-editable install's entry point"
    port, at = free_port(), argv.index("--http-port") + 1
    probe = pod.container_port(work, work.container["readinessProbe"]["httpGet"]["port"])
    assert int(argv[at]) == probe == work.container["ports"][0]["containerPort"], "listens where probed"
    argv[at] = str(port)
    mounts = pod.volume_mounts(work, root / "volumes", release["configmaps"])
    if which == PREDICTOR:  # KServe's storage initializer downloads STORAGE_URI here, read-only for the server
        mounts.append(pod.Mount(release["artifact"], pod.KSERVE_MODEL_DIR, False))
    deps = sysconfig.get_path("purelib")  # the install's dependencies, through its .pth line
    if any(Path(deps).is_relative_to(m.path) for m in mounts if m.writable):  # a checkout under /tmp: hidden
        mounts.append(pod.Mount(Path(deps), deps, False))  # by the emptyDir, so shown again, read-only
    uid, gid = pod.run_as(work, image)
    assert uid == 10001 and gid == 10001, (uid, gid)
    # the root as working folder: the manifest names none, and the checkout may lie under /tmp, which
    # the emptyDir hides inside the sandbox; nothing may depend on it (FLYWHEEL_WORK_DIR is set)
    sandbox = pod.sandbox_argv(mounts, uid, gid, environ, "/", argv)
    volumes = {m.path: m.host for m in mounts if m.writable}
    return Container(work, argv, sandbox, volumes, port, root / f"{which[1]}.log")


def start(container: Container) -> Container:
    """Run it as PID 1 of its sandbox, as in a container; ``pid`` is the program's pid here."""
    read, write = os.pipe()
    argv = container.sandbox
    argv = [argv[0], "--as-pid-1", "--json-status-fd", str(write), *argv[1:]]
    with open(container.log, "w") as log:
        container.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write,))
    os.close(write)
    container.status = os.fdopen(read)
    line = container.status.readline()
    assert line, f"bwrap did not start the program:\n{container.output()}"
    container.pid = json.loads(line)["child-pid"]
    return container


def wait_ready(container: Container, timeout: float = 240) -> None:
    """Poll the readiness probe's path, as the kubelet does, until it answers 200."""
    path = container.work.container["readinessProbe"]["httpGet"]["path"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if container.proc.poll() is not None:
            raise AssertionError(f"exited with {container.proc.returncode}:\n{container.output()}")
        try:
            if httpx.get(container.base + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready within {timeout}s:\n{container.output()}")


def stop(container: Container) -> int | str:
    """SIGTERM to the program, as the kubelet stops a container: its exit code, or why there is none. (As
    PID 1 it ignores SIGTERM until it has a handler, as in a container: then, as the kubelet does after
    the grace period, it is killed.)"""
    if container.proc is None:
        return "never started"
    try:
        if container.proc.poll() is None:
            os.kill(container.pid, signal.SIGTERM)
        return container.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        container.proc.kill()
        container.proc.wait()
        return "killed: SIGTERM did not stop it within 60 s"
    finally:
        container.status.close()


def logger_event(kind: str, request_id: str, body: dict) -> tuple[dict, bytes]:
    """One CloudEvent as KServe's logger posts it (binary mode; the agent's fallback source, kserve
    cmd/agent/main.go; times as kserve pkg/logger/worker.go sets them)."""
    now = cloudevents_time(datetime.now(UTC))
    headers = {
        "ce-specversion": "1.0",
        "ce-id": request_id,
        "ce-type": f"org.kubeflow.serving.inference.{kind}",
        "ce-source": AGENT_SOURCE_URI,
        "ce-time": now,
        "ce-recordedtime": now,
        "ce-inferenceservicename": "intent",
        "ce-namespace": "flywheel-staging",
        "ce-component": "predictor",
        "ce-endpoint": "",
        "ce-metadata": "{}",
        "content-type": "application/json",
    }
    return headers, json.dumps(body).encode()


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if not p.is_symlink()}


def test_kubernetes_expansion_follows_expand_go():
    env = {"A": "x", "EMPTY": ""}
    assert pod.expand("$(A)-$(EMPTY)-$(B)", env) == "x--$(B)"  # unknown references stay as written
    assert pod.expand("$$(A) $$ $", env) == "$(A) $ $"  # $$ is an escaped $, a lone $ at the end stays
    assert pod.expand("a$(A)b $A $(A", env) == "axb $A $(A"  # $ without (, an unclosed reference: copied
    assert pod.expand("$(A $(A)", env) == "$(A $(A)"  # the name runs to the first ')': "A $(A", unknown


def test_env_sees_only_earlier_variables_and_args_see_all(tmp_path):
    work = pod.Workload(
        {
            "env": [
                {"name": "A", "value": "$(B)/a"},
                {"name": "B", "value": "b"},
                {"name": "C", "value": "$(B)/c"},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "args": ["run", "$(A)", "$(C)", "$(S)", "$(HOME)"],
        },
        {},
        {},
    )
    image = pod.Image(entrypoint=["tool"], cmd=["default"], env={"HOME": "/root", "B": "image"})
    own, environ = pod.container_env(work, image, {("s", "k"): "secret"}, {})
    assert own == {"A": "$(B)/a", "B": "b", "C": "b/c", "S": "secret"}
    assert environ["HOME"] == "/root" and environ["B"] == "b"  # the container's env wins over the image's
    # args replace CMD and keep ENTRYPOINT; the image's ENV is not there for $(VAR)
    assert pod.container_argv(work, image, own) == ["tool", "run", "$(B)/a", "b/c", "secret", "$(HOME)"]
    work.container["command"] = ["other"]
    assert pod.container_argv(work, image, own)[:2] == ["other", "run"]  # command replaces ENTRYPOINT
    del work.container["command"], work.container["args"]
    assert pod.container_argv(work, image, own) == ["tool", "default"]


def test_installed_package_is_not_the_checkout_and_works_in_the_current_folder(installed, tmp_path):
    code = "import model.core.config as c; print(c.__file__); print(c.work_dir())"
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_WORK_DIR"}
    done = subprocess.run([str(installed.python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    module, work = done.stdout.split()
    assert Path(module).is_relative_to(installed.site_packages), module
    assert Path(work) == tmp_path.resolve() / "work"  # not inside site-packages


@pytest.mark.real("bubblewrap")
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_predictor_and_collector_start_as_their_manifests_say(env, installed, release, tmp_path):
    before = tree(installed.root)
    predictor = prepare(env, PREDICTOR, tmp_path / "predictor", installed, release)
    collector = prepare(env, COLLECTOR, tmp_path / "collector", installed, release)
    try:
        for container in (start(predictor), start(collector)):
            wait_ready(container)
        request = {"instances": [TEXT]}
        v1 = httpx.post(f"{predictor.base}/v1/models/intent:predict", json=request, timeout=30)
        assert v1.status_code == 200, v1.text
        answer = v1.json()["predictions"][0]
        assert answer["model_version"] == VERSION and answer["intent"] and answer["reply"]
        v2_input = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}
        v2 = httpx.post(f"{predictor.base}/v2/models/intent/infer", json={"inputs": [v2_input]}, timeout=30)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
        assert outputs["intent"] == [answer["intent"]] and v2.json()["model_version"] == VERSION
        request_id = answer["request_id"] or str(uuid.uuid4())
        for kind, body in (("request", request), ("response", v1.json())):
            headers, data = logger_event(kind, request_id, body)
            stored = httpx.post(f"{collector.base}/events", headers=headers, content=data, timeout=30)
            assert stored.status_code == 200, stored.text
        metrics = httpx.get(f"{collector.base}/metrics", timeout=10).text  # read from the ConfigMap volume
        assert re.search(rf'^flywheel_arm_info{{arm="stable",model_version="{VERSION}"}} 1', metrics, re.M), metrics
    finally:
        codes = [stop(predictor), stop(collector)]
    assert codes == [0, 0], predictor.output() + collector.output()
    # what they wrote lies on their emptyDirs: the work folder (FLYWHEEL_WORK_DIR) and the store
    served, collected = predictor.volumes["/tmp"], collector.volumes["/tmp"]
    assert not (served / "flywheel" / "serving").exists()  # the manifest turns the prediction log off
    assert (served / "flywheel" / "reports" / "serve.json").is_file()
    assert (collected / "flywheel" / "reports" / "collect.json").is_file()
    engine = sa.create_engine(f"sqlite:///{collected / 'conversations.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, arm FROM inference_events WHERE event_id = :i"), {"i": request_id})
        arms = dict(map(tuple, rows))  # kind -> arm: the answer's version, attributed through the ConfigMap
    assert sorted(arms) == ["request", "response"] and arms["response"] == "stable", arms
    engine.dispose()
    assert tree(installed.root) == before, "the install changed: something wrote outside the pod's volumes"


PROBE = """
import json, os, sys
found = {"uid": [os.getuid(), os.getgid()]}
for folder in sys.argv[1:]:
    try:
        with open(os.path.join(folder, ".written-by-the-pod"), "w") as out:
            out.write("x")
        os.remove(os.path.join(folder, ".written-by-the-pod"))
        found[folder] = "written"
    except OSError as exc:
        found[folder] = type(exc).__name__ + ": " + (exc.strerror or "")
print(json.dumps(found))
"""


@pytest.mark.real("bubblewrap")
@pytest.mark.parametrize("which", [PREDICTOR, COLLECTOR], ids=lambda w: w[1])
def test_only_the_manifests_writable_volumes_can_be_written(which, installed, release, tmp_path):
    """The sandbox is real: from inside, the root, the project folder, this venv, the install's
    site-packages, the model and the ConfigMap files refuse writes; only the writable volumes take them."""
    container = prepare("staging", which, tmp_path, installed, release)
    writable = set(container.volumes)
    ours = {str(PROJECT_ROOT), str(installed.site_packages), sysconfig.get_path("purelib")}  # the test's user owns
    # a checkout under /tmp is hidden by the emptyDir mounted there: out of the pod's reach, nothing to probe
    ours = {f for f in ours if not any(Path(f).is_relative_to(w) for w in writable)}
    flags = zip(container.sandbox, container.sandbox[2:])
    mounted = {dest for flag, dest in flags if flag in ("--bind", "--ro-bind")} - {"/"}
    targets = sorted(writable | ours | mounted | {"/", "/etc"})
    probe = [str(installed.python), "-c", PROBE, *targets]
    sandbox = [*container.sandbox[: -len(container.argv)], *probe]  # the same sandbox, another program
    done = subprocess.run(sandbox, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found.pop("uid") == [10001, 10001]
    assert {f for f, outcome in found.items() if outcome == "written"} == writable, found
    # what the test's user owns is writable for it outside: only the read-only mount stops the pod
    assert all("Read-only file system" in found[f] for f in ours | mounted - writable), found
    assert not any(p.name == ".written-by-the-pod" for p in PROJECT_ROOT.iterdir())
