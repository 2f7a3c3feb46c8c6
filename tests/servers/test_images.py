"""Image references and digest pinning (model/deploy/images.py), and ``flywheel resolve-image`` against a
local stand-in registry that answers as the OCI distribution spec and Docker's token authentication say
(github.com/opencontainers/distribution-spec spec.md): a 401 naming a bearer realm, a token endpoint, a
manifest HEAD with ``Docker-Content-Digest``, 404 for an unknown tag."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from model.core.config import ENVIRONMENTS, PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import images
from scripts.cli import main
from tests.helpers.delivery import images_in

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
FILES = ("inferenceservice.yaml", "collector.yaml")
INDEX = json.dumps({"schemaVersion": 2, "mediaType": images.MANIFEST_TYPES[0], "manifests": []}).encode()


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("ghcr.io/flywheel-mlops/flywheel:0.1.0", ("ghcr.io", "flywheel-mlops/flywheel", "0.1.0", None)),
        (f"ghcr.io/o/flywheel@{DIGEST}", ("ghcr.io", "o/flywheel", None, DIGEST)),
        (f"ghcr.io/o/flywheel:abc@{DIGEST}", ("ghcr.io", "o/flywheel", "abc", DIGEST)),
        ("localhost:5000/a/b_c.d-e", ("localhost:5000", "a/b_c.d-e", None, None)),
        ("127.0.0.1:5000/a:v1", ("127.0.0.1:5000", "a", "v1", None)),
        ("registry:5000/a:v1", ("registry:5000", "a", "v1", None)),
    ],
)
def test_references_parse_as_the_distribution_grammar_says(reference, parts):
    ref = images.parse(reference)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts
    assert str(ref) == reference


@pytest.mark.parametrize(
    "reference",
    [
        "flywheel:0.1.0",
        "ghcr.io/Owner/flywheel:1",
        "ghcr.io/o/f@sha256:abc",
        "ghcr.io/o/f@md5:" + "a" * 32,
        "",
        "ghcr.io",
    ],
)
def test_bad_references_are_refused(reference):
    with pytest.raises(FlywheelError, match="not an image reference"):
        images.parse(reference)


def test_names_are_lower_cased_as_the_image_workflow_pushes_them():
    assert images.lower_name("ghcr.io/Flywheel-MLOps/Flywheel:SHA") == "ghcr.io/flywheel-mlops/flywheel:SHA"
    assert images.lower_name("LOCALHOST:5000/A") == "localhost:5000/a"
    assert images.lower_name(f"ghcr.io/O/F@{DIGEST}") == f"ghcr.io/o/f@{DIGEST}"


def test_a_tag_alone_is_refused_for_pinning():
    with pytest.raises(FlywheelError, match="names a tag.*resolve-image"):
        images.pinned("ghcr.io/flywheel-mlops/flywheel:0.1.0")
    assert images.pinned(f"ghcr.io/o/f:x@{DIGEST}").pinned == f"ghcr.io/o/f@{DIGEST}"  # the tag is dropped


def _manifest_image(env: str, name: str) -> str:
    (image,) = set(images_in((PROJECT_ROOT / "manifests" / env / name).read_text()))
    return image


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("name", FILES)
def test_pin_changes_only_the_image_lines(env, name):
    path = PROJECT_ROOT / "manifests" / env / name
    text = path.read_text()
    repository = images.parse(_manifest_image(env, name)).name
    out = images.pin(text, f"{repository}@{DIGEST}", path)
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines()) if a != b]
    assert len(text.splitlines()) == len(out.splitlines()) and changed, changed
    assert all(a.split("image:")[0] == b.split("image:")[0] and "image:" in a for a, b in changed), changed
    assert set(images_in(out)) == {f"{repository}@{DIGEST}"}
    before, after = list(yaml.safe_load_all(text)), list(yaml.safe_load_all(out))
    assert json.dumps(before).replace(_manifest_image(env, name), "X") == json.dumps(after).replace(
        f"{repository}@{DIGEST}", "X"
    )
    again = images.pin(out, f"{repository}@{OTHER}", path)  # a later release moves the pin
    assert set(images_in(again)) == {f"{repository}@{OTHER}"}


def test_pin_refuses_a_tag_and_another_repository():
    path = PROJECT_ROOT / "manifests" / "staging" / "collector.yaml"
    with pytest.raises(FlywheelError, match="names a tag"):
        images.pin(path.read_text(), "ghcr.io/flywheel-mlops/flywheel:latest", path)
    with pytest.raises(FlywheelError, match="no container runs ghcr.io/someone-else/flywheel"):
        images.pin(path.read_text(), f"ghcr.io/someone-else/flywheel@{DIGEST}", path)


def test_the_manifests_run_the_image_the_workflow_pushes():
    """The image workflow pushes ghcr.io/<the repository Argo CD syncs> (lower-cased): what the manifests name."""
    app = yaml.safe_load((PROJECT_ROOT / "manifests" / "argocd" / "staging.yaml").read_text())
    owner_name = urlparse(app["spec"]["source"]["repoURL"]).path.strip("/").removesuffix(".git")
    for env in ENVIRONMENTS:
        for name in FILES:
            assert images.parse(_manifest_image(env, name)).name == f"ghcr.io/{owner_name.lower()}", (env, name)
    workflow = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "image.yml").read_text())
    meta = next(s for s in workflow["jobs"]["build"]["steps"] if s.get("id") == "meta")
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"  # metadata-action lower-cases it


def test_credentials_go_to_ghcr_only():
    env = {"GITHUB_TOKEN": "t", "GITHUB_ACTOR": "bot"}
    assert images.registry_credentials("ghcr.io", env) == ("bot", "t")
    assert images.registry_credentials("registry.example.com", env) is None
    assert images.registry_credentials("ghcr.io", {}) is None


# ---- a stand-in registry -------------------------------------------------------------------------


class Registry(ThreadingHTTPServer):
    """Tags -> manifest body; ``private``: the token endpoint wants basic auth; ``digest_header``: send
    Docker-Content-Digest (the spec says SHOULD); ``appears_after``: 404s before a tag shows up."""

    def __init__(self, private=False, digest_header=True, appears_after=0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.tags = {"abc": INDEX}
        self.private, self.digest_header, self.appears_after = private, digest_header, appears_after
        self.seen: list[tuple[str, str, dict]] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Registry

    def log_message(self, *args):
        pass

    def _send(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        url = urlparse(self.path)
        if url.path == "/token":
            query = parse_qs(url.query)
            if self.server.private and not self.headers.get("Authorization", "").startswith("Basic "):
                return self._send(401, {"Content-Type": "application/json"}, b'{"errors": [{"code": "DENIED"}]}')
            assert query["scope"] == ["repository:owner/flywheel:pull"] and query["service"] == ["stand-in"]
            return self._send(200, {"Content-Type": "application/json"}, json.dumps({"token": "good"}).encode())
        name, _, tag = url.path.removeprefix("/v2/").partition("/manifests/")
        if self.headers.get("Authorization") != "Bearer good":
            realm = f'Bearer realm="http://{self.server.host}/token",service="stand-in",scope="repository:{name}:pull"'
            return self._send(401, {"WWW-Authenticate": realm}, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        self.server.appears_after -= 1
        known = {
            **self.server.tags,
            **{"sha256:" + hashlib.sha256(b).hexdigest(): b for b in self.server.tags.values()},
        }
        body = known.get(tag) if self.server.appears_after < 0 else None
        if name != "owner/flywheel" or body is None:
            return self._send(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
        headers = {"Content-Type": images.MANIFEST_TYPES[0]}
        if self.server.digest_header:
            headers["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
        self._send(200, headers, body)

    do_HEAD = do_GET


@pytest.fixture
def registry(request):
    server = Registry(**getattr(request, "param", {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


EXPECTED = "sha256:" + hashlib.sha256(INDEX).hexdigest()


def test_resolves_a_tag_through_the_bearer_challenge(registry):
    found = images.resolve(images.parse(f"{registry.host}/owner/flywheel:abc"))
    assert found.digest == EXPECTED and found.pinned == f"{registry.host}/owner/flywheel@{EXPECTED}"
    methods = [(m, p.split("?")[0]) for m, p, _ in registry.seen]
    assert methods == [("HEAD", "/v2/owner/flywheel/manifests/abc"), ("GET", "/token")] + methods[:1]
    accept = registry.seen[-1][2]["Accept"]
    assert all(t in accept for t in images.MANIFEST_TYPES), accept  # an index (multi-platform, attestations) too


@pytest.mark.parametrize("registry", [{"digest_header": False}], indirect=True)
def test_without_the_digest_header_the_body_is_hashed(registry):
    assert images.resolve(images.parse(f"{registry.host}/owner/flywheel:abc")).digest == EXPECTED
    assert registry.seen[-1][0] == "GET"


def test_an_unknown_tag_is_a_clear_error(registry):
    with pytest.raises(FlywheelError, match="no such image.*image.yml"):
        images.resolve(images.parse(f"{registry.host}/owner/flywheel:not-pushed"))


def test_a_digest_is_checked_not_trusted(registry):
    assert images.resolve(images.parse(f"{registry.host}/owner/flywheel@{EXPECTED}")).digest == EXPECTED
    with pytest.raises(FlywheelError, match="no such image"):
        images.resolve(images.parse(f"{registry.host}/owner/flywheel@{OTHER}"))


@pytest.mark.parametrize("registry", [{"appears_after": 2}], indirect=True)
def test_waits_for_a_tag_still_being_pushed(registry):
    with pytest.raises(FlywheelError, match="no such image"):
        images.resolve(images.parse(f"{registry.host}/owner/flywheel:abc"))
    found = images.resolve(images.parse(f"{registry.host}/owner/flywheel:abc"), wait_s=5, poll_s=0.05)
    assert found.digest == EXPECTED


@pytest.mark.parametrize("registry", [{"private": True}], indirect=True)
def test_a_private_image_needs_credentials(registry):
    ref = images.parse(f"{registry.host}/owner/flywheel:abc")
    with pytest.raises(FlywheelError, match="GITHUB_TOKEN"):
        images.resolve(ref)
    assert images.resolve(ref, ("bot", "token")).digest == EXPECTED


def test_resolve_image_step(registry, tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    argv = ["resolve-image", "--image", f"{registry.host}/Owner/Flywheel:abc", "--report-dir", str(tmp_path)]
    assert main(argv) == 0
    pinned = f"{registry.host}/owner/flywheel@{EXPECTED}"
    assert json.loads(capsys.readouterr().out)["image"] == pinned
    assert f"image={pinned}\n" in outputs.read_text()  # what retrain.yml passes to flywheel release --image
    assert (
        main(["resolve-image", "--image", f"{registry.host}/owner/flywheel:gone", "--report-dir", str(tmp_path)]) == 2
    )
    assert "no such image" in capsys.readouterr().err
