"""The image the manifests run, named by digest: read a reference, pin the manifests' containers to
one, and resolve a tag to its digest through the registry.

A tag can be pushed again; a digest names one image manifest (or index) for good, so a release that
pins the predictor and the collector by digest makes Git name exactly what runs.

- **References** follow the distribution grammar (github.com/distribution/reference,
  ``reference.go``): ``registry/path[:tag][@sha256:<64 hex>]``. The registry must be named (a bare
  ``flywheel:1`` would mean Docker Hub), the path is lower case; only sha256 digests are taken.
  ``repository_of`` derives a GitHub repository's image, ``ghcr.io/<owner>/<name>`` lower-cased, as
  ``image.yml`` pushes it.
- **Pinning** (``pin``) sets the ``image`` of every container that runs the same repository, in every
  document of a manifest file, with ruamel.yaml's round trip (comments, order and quoting kept, so
  the diff is the image lines). A reference without a digest, or one naming another repository than
  the file's, is refused: moving to another registry is a reviewed hand edit, not a release.
- **Resolving** (``resolve``) is the OCI distribution API (github.com/opencontainers/distribution-spec,
  ``spec.md``, "Pulling manifests" / "Checking if content exists"): ``HEAD /v2/<name>/manifests/<tag>``
  accepting an OCI index or manifest and Docker's manifest list or manifest, the digest in the
  ``Docker-Content-Digest`` header (else the sha256 of the body a GET returns), 404 for an unknown tag.
  A 401 carries ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` (Docker's token
  authentication, which ghcr.io follows: ``https://ghcr.io/token?scope=repository:<name>:pull``); the
  token comes anonymously for a public image, with basic auth for a private one. Registries on
  loopback are spoken to over plain HTTP, as Docker does; every other over HTTPS.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import requests
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from model.core.errors import FlywheelError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # a path component
_HOST = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"  # a domain component
# a registry: a dotted name, localhost or an IPv6 address, each with an optional port; or a name and a port
_DOMAIN = rf"(?:(?:{_HOST}(?:\.{_HOST})+|localhost|\[[0-9a-fA-F:]+\])(?::[0-9]+)?|{_HOST}:[0-9]+)"
REFERENCE = re.compile(
    rf"^(?P<registry>{_DOMAIN})/(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
GHCR = "ghcr.io"
# The tag .github/workflows/image.yml pushes for the newest build of main (docker/metadata-action's
# type=ref,event=branch): what the manifests run until the first release pins a digest (image_checks.py)
PRE_RELEASE_TAG = "main"


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> str:
        """``registry/repository@sha256:...``: what the manifests run (the tag, if any, is left out)."""
        if not self.digest:
            raise FlywheelError(f"{self}: no digest to pin")
        return f"{self.name}@{self.digest}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(reference: str) -> ImageRef:
    """An image reference, checked: ``registry/path[:tag][@sha256:...]``."""
    match = REFERENCE.match(reference.strip())
    if not match:
        raise FlywheelError(
            f"{reference!r} is not an image reference: expected REGISTRY/PATH[:TAG][@sha256:<64 hex>] with the "
            "registry named and the path in lower case, e.g. ghcr.io/flywheel-mlops/flywheel@sha256:..."
        )
    return ImageRef(**match.groupdict())


def lower_name(reference: str) -> str:
    """The name part lower-cased, tag and digest as they are: how docker/metadata-action names what it
    pushes for ``ghcr.io/${{ github.repository }}`` (an owner may spell itself with capitals)."""
    name, at, digest = reference.strip().partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = name[colon:] if colon > slash else ""
    return name[: len(name) - len(tag)].lower() + tag + at + digest


def repository_of(github_repository: str) -> str:
    """The image repository ``image.yml`` pushes for the GitHub repository ``OWNER/NAME``: ``ghcr.io/owner/name``
    (docker/metadata-action lower-cases ``ghcr.io/${{ github.repository }}``)."""
    name = lower_name(f"{GHCR}/{github_repository}")
    match = REFERENCE.match(name)
    if not match or match["tag"] or match["digest"]:
        raise FlywheelError(
            f"GitHub repository {github_repository!r} gives the image name {name!r}, which the distribution "
            "grammar refuses (each path component alphanumeric, separated by '.', '_', '__' or dashes)"
        )
    return name


def pinned(reference: str) -> ImageRef:
    """``reference``, which must name a digest: a tag alone can be pushed again."""
    ref = parse(reference)
    if not ref.digest:
        raise FlywheelError(
            f"{reference}: names a tag, which can be pushed again; pin the image by digest "
            f"(flywheel resolve-image --image {reference} prints it)"
        )
    return ref


# ---------------------------------------------------------------------------------------- manifests


def round_trip() -> YAML:
    """The round trip ``model.deploy.manifests`` uses, so a file both write stays byte-for-byte alike."""
    y = YAML()
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096
    return y


def containers(node):
    """Every container mapping (``containers``, ``initContainers``) anywhere in a loaded document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, CommentedMap))
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers(value)


def pin(text: str, reference: str, path: Path | str) -> str:
    """``text`` (the manifest file ``path``) with every container running ``reference``'s repository set
    to ``reference``, which must carry a digest. Every other byte stays as it was."""
    ref = pinned(reference)
    try:
        docs = list(round_trip().load_all(text))
    except YAMLError as exc:
        raise FlywheelError(f"{path}: cannot read YAML: {exc}") from exc
    found = []
    for container in (c for doc in docs for c in containers(doc)):
        current = str(container.get("image", ""))
        try:
            runs = parse(current).name
        except FlywheelError:
            continue  # not an image this project builds (or no registry named): not ours to pin
        if runs == ref.name:
            container["image"] = ref.pinned
            found.append(container.get("name"))
    if not found:
        names = sorted({str(c.get("image")) for doc in docs for c in containers(doc)})
        raise FlywheelError(
            f"{path}: no container runs {ref.name} (images: {names}); a fork names its own image repository "
            "after `flywheel init` (one commit); any other move to another repository is a hand edit in a pull "
            "request of its own, not part of a release"
        )
    out = io.StringIO()
    round_trip().dump_all(docs, out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------- registry


def _base_url(registry: str) -> str:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return f"{'http' if loopback else 'https'}://{registry}"


def registry_credentials(registry: str, environ: dict) -> tuple[str, str] | None:
    """Basic-auth credentials for the token endpoint: ``GITHUB_TOKEN`` for ghcr.io only (a GitHub token
    is never sent to another registry); none otherwise, which is enough for a public image."""
    token = environ.get("GITHUB_TOKEN", "")
    if registry != GHCR or not token:
        return None
    return environ.get("GITHUB_ACTOR") or "flywheel", token


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _bearer_token(session, challenge: str, ref: ImageRef, credentials, timeout: float) -> str:
    """A pull token from the realm the registry's 401 names (Docker's token authentication)."""
    scheme, params = _challenge(challenge)
    if scheme != "bearer" or "realm" not in params:
        raise FlywheelError(f"{ref.name}: the registry asks for {challenge!r}, not a bearer token")
    query = {"scope": params.get("scope") or f"repository:{ref.repository}:pull"}
    if "service" in params:
        query["service"] = params["service"]
    answer = session.get(params["realm"], params=query, auth=credentials, timeout=timeout)
    if answer.status_code != 200:
        private = "" if credentials else " (a private image needs GITHUB_TOKEN with packages: read)"
        raise FlywheelError(f"{ref.name}: the token endpoint {params['realm']} answered {answer.status_code}{private}")
    body = answer.json()
    token = body.get("token") or body.get("access_token")
    if not token:
        raise FlywheelError(f"{ref.name}: the token endpoint {params['realm']} gave no token")
    return token


def _ask(session, method: str, url: str, ref: ImageRef, credentials, timeout: float):
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    answer = session.request(method, url, headers=headers, timeout=timeout)
    if answer.status_code == 401:
        token = _bearer_token(session, answer.headers.get("WWW-Authenticate", ""), ref, credentials, timeout)
        headers["Authorization"] = f"Bearer {token}"
        answer = session.request(method, url, headers=headers, timeout=timeout)
    return answer


def resolve(
    ref: ImageRef, credentials: tuple[str, str] | None = None, *, wait_s: float = 0, poll_s: float = 15, timeout=30.0
) -> ImageRef:
    """``ref`` with the digest the registry holds for its tag (or its digest, checked). While the tag is
    not there yet (the image workflow may still be pushing it), asks again every ``poll_s`` seconds
    for up to ``wait_s``."""
    url = f"{_base_url(ref.registry)}/v2/{ref.repository}/manifests/{ref.digest or ref.tag or 'latest'}"
    deadline = time.monotonic() + wait_s
    with requests.Session() as session:
        try:
            answer = _ask(session, "HEAD", url, ref, credentials, timeout)
            while answer.status_code == 404 and time.monotonic() + poll_s <= deadline:
                time.sleep(poll_s)
                answer = _ask(session, "HEAD", url, ref, credentials, timeout)
            if answer.status_code == 200 and not answer.headers.get("Docker-Content-Digest"):
                answer = _ask(session, "GET", url, ref, credentials, timeout)  # the digest is the body's sha256
        except requests.RequestException as exc:
            raise FlywheelError(f"{ref}: cannot reach the registry: {exc}") from exc
    if answer.status_code == 404:
        waited = f" after waiting {wait_s:g} s" if wait_s else ""
        raise FlywheelError(
            f"{ref}: the registry has no such image{waited} (not pushed yet? .github/workflows/image.yml pushes "
            "one per commit on main, tagged with the commit SHA)"
        )
    if answer.status_code in (401, 403):
        raise FlywheelError(f"{ref}: the registry refused access ({answer.status_code}): a private image needs a token")
    if answer.status_code != 200:
        raise FlywheelError(f"{ref}: the registry answered {answer.status_code} to {url}")
    digest = answer.headers.get("Docker-Content-Digest") or f"sha256:{hashlib.sha256(answer.content).hexdigest()}"
    if not DIGEST.match(digest):
        raise FlywheelError(f"{ref}: the registry gave {digest!r}, not a sha256 digest")
    if ref.digest and digest != ref.digest:
        raise FlywheelError(f"{ref}: the registry holds {digest} under that digest")
    return replace(ref, digest=digest)
