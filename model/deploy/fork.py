"""``flywheel init``: personalise a fork in one commit, so that what its manifests name is its own.

- **Repository.** The Argo CD Applications' ``spec.source.repoURL`` and the AppProject's
  ``sourceRepos`` become ``https://github.com/OWNER/NAME.git``: from ``--repository`` (``OWNER/NAME``, or
  an https or ssh URL), else from ``git remote get-url origin``.
- **Image.** The predictor and the collector run ``ghcr.io/owner/name`` (lower-cased, as
  ``image.yml`` pushes ``ghcr.io/${{ github.repository }}`` through docker/metadata-action), with the
  tag or digest they name now (before the first release, ``main``). A digest of another repository
  is refused: it would name an image the fork's registry does not hold.
- **Namespaces** (``--staging-namespace``, ``--production-namespace``; unset, as the manifests say now)
  wherever the manifests name one: a ``namespace`` field (objects, Argo CD destinations, alert labels),
  a Service's DNS name (``NAME.NS.svc``: the logger's collector URL), PromQL label matchers
  (``namespace="NS"``, ``job="NS/MONITOR"``, escaped as well inside the dashboard's JSON), and prose
  (``namespace NS``, ``kubectl -n NS``, a summary starting ``NS:``). Nowhere else: a namespace named like
  a word the manifests use otherwise (``staging``) must not rename that word.
- **Prometheus release label** (``--prometheus-release``; unset, as the manifests say now): the label
  ``release`` of every PodMonitor and PrometheusRule, which kube-prometheus-stack's Prometheus selects by
  (``release: <its Helm release's name>``), and where an alert's text names it (``release: NAME``).

Files are edited with ruamel.yaml's round trip (comments, order and quoting kept). A second run with
the same inputs changes nothing and commits nothing. A working tree with changes is refused (exit 2)
before anything is written; the files are written only once every edit succeeded, and restored if
the commit fails.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from model.core.config import DeliveryConfig
from model.core.errors import FlywheelError
from model.core.git import run_git
from model.core.steps import StepResult
from model.deploy import images, manifests
from model.deploy.args import InitArgs
from model.deploy.monitoring_checks import LABEL_VALUE, MONITORED, RELEASE_LABEL

ARGOCD = "argocd"
_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?"  # a GitHub account: letters, digits, inner dashes
_NAME = r"[A-Za-z0-9._-]+?"  # a GitHub repository name (".git" is not part of it)
GITHUB = re.compile(
    rf"^(?:https://(?:[^@/\s]+@)?github\.com/|ssh://git@github\.com(?::\d+)?/|git@github\.com:)?"
    rf"(?P<owner>{_OWNER})/(?P<name>{_NAME})(?:\.git)?/?$"
)
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a DNS-1123 label, at most 63 characters


@dataclass(frozen=True)
class Fork:
    """What the fork's manifests are to name."""

    repository: str  # OWNER/NAME, as GitHub spells it
    namespaces: dict[str, str]  # environment -> namespace
    prometheus_release: str

    @property
    def repo_url(self) -> str:
        return f"https://github.com/{self.repository}.git"

    @property
    def image(self) -> str:
        return images.repository_of(self.repository)


def github_repository(remote: str) -> str:
    """``OWNER/NAME`` from ``OWNER/NAME`` or a github.com remote URL (https, with or without credentials, or ssh)."""
    match = GITHUB.match(remote.strip())
    if not match or match["name"] in (".", ".."):
        shown = re.sub(r"//[^@/\s]+@", "//***@", remote.strip())  # never echo a token in a remote URL
        raise FlywheelError(
            f"{shown!r} is not a GitHub repository: expected OWNER/NAME, https://github.com/OWNER/NAME(.git) or "
            "git@github.com:OWNER/NAME(.git)"
        )
    return f"{match['owner']}/{match['name']}"


def _git(repo: Path, *args: str) -> str:
    return run_git(repo, *args).stdout.strip()


def origin_repository(repo: Path) -> str:
    done = run_git(repo, "remote", "get-url", "origin", check=False)
    if done.returncode != 0:
        raise FlywheelError(f"{repo}: no remote 'origin' to take the repository from; pass --repository OWNER/NAME")
    return github_repository(done.stdout)


# ---------------------------------------------------------------------------------------- reading


def _load(path: Path, text: str) -> list:
    try:
        return [d for d in images.round_trip().load_all(text) if d is not None]
    except YAMLError as exc:
        raise FlywheelError(f"{path}: cannot read YAML: {exc}") from exc


def _dump(docs: list) -> str:
    out = io.StringIO()
    images.round_trip().dump_all(docs, out)
    return out.getvalue()


@dataclass(frozen=True)
class Current:
    """What the manifests name now."""

    namespaces: dict[str, str]
    image: images.ImageRef
    prometheus_release: str


def current(root: Path) -> Current:
    """The namespaces, image and Prometheus release label the manifests under ``root`` name now."""
    namespaces, image, releases = {}, None, set()
    for env in manifests.ENVIRONMENTS:
        path = root / env / manifests.ISVC_FILE
        namespaces[env] = manifests.namespace_of(path)
        predictor = (manifests.load(path).isvc.get("spec") or {}).get("predictor") or {}
        ours = [c for c in predictor.get("containers") or [] if c.get("name") == manifests.CONTAINER]
        image = image or images.parse(str(ours[0].get("image", "") if ours else ""))
        for file in sorted((root / env).glob("*.yaml")):
            for doc in _load(file, file.read_text()):
                labels = (doc.get("metadata") or {}).get("labels") or {}
                if doc.get("kind") in MONITORED:
                    releases.add(str(labels.get(RELEASE_LABEL)))
    if len(releases) != 1:
        raise FlywheelError(f"{root}: PodMonitors and PrometheusRules carry the labels {RELEASE_LABEL} {releases}")
    return Current(namespaces, image, releases.pop())


# ---------------------------------------------------------------------------------------- editing


Rules = list[tuple[re.Pattern, dict[str, str]]]  # (prefix)(an old name)(suffix) -> the new name for it


def _namespace_rules(renamed: dict[str, str]) -> Rules:
    """Where a string names a namespace: each pattern's second group is an old name, renamed in one pass (so
    two environments may even swap names)."""
    if not renamed:
        return []
    olds = "|".join(map(re.escape, sorted(renamed, key=len, reverse=True)))
    patterns = [
        rf'(namespace\s*=~?\s*\\?")({olds})(\\?")',  # PromQL matcher, raw or inside the dashboard's JSON text
        rf'(job\s*=~?\s*\\?")({olds})(/)',  # prometheus-operator's job label: NAMESPACE/MONITOR
        rf"(\.)({olds})(\.svc\b)",  # a Service's DNS name
        rf"(\s-n\s+|--namespace[=\s]+|\bnamespace\s+)({olds})()(?![\w.-])",  # kubectl -n NS, prose
        rf"(^)({olds})(:\s)",  # an alert summary naming its namespace first
    ]
    return [(re.compile(p, re.M), renamed) for p in patterns]


def _rewrite(value: str, rules: Rules) -> str:
    for pattern, renamed in rules:
        value = pattern.sub(lambda m, renamed=renamed: m[1] + renamed[m[2]] + m[3], value)
    return value


def _walk(node, rules: Rules, namespaces: dict[str, str]) -> None:
    """Rename in every string of ``node``, keeping each scalar's style (plain, quoted, block)."""
    if not isinstance(node, (CommentedMap, CommentedSeq)):
        return
    for key, value in list(node.items() if isinstance(node, CommentedMap) else enumerate(node)):
        if isinstance(value, (CommentedMap, CommentedSeq)):
            _walk(value, rules, namespaces)
        elif isinstance(value, str):
            new = namespaces.get(value, value) if key == "namespace" else _rewrite(value, rules)
            if new != value:
                node[key] = type(value)(new) if type(value) is not str else new


def _set_images(docs: list, old: images.ImageRef, new_name: str, path: Path) -> None:
    for container in (c for doc in docs for c in images.containers(doc)):
        try:
            ref = images.parse(str(container.get("image", "")))
        except FlywheelError:
            continue  # not an image this project builds
        if ref.name != old.name or ref.name == new_name:
            continue
        if ref.digest:
            raise FlywheelError(
                f"{path}: container {container.get('name')} runs {ref} by digest, an image of {ref.name}, which "
                f"{new_name} does not hold: name {new_name}:{images.PRE_RELEASE_TAG} there (a reviewed change), "
                "then release with --image"
            )
        container["image"] = f"{new_name}:{ref.tag}" if ref.tag else new_name


def _edit_environment(docs: list, fork: Fork, now: Current, path: Path) -> None:
    renamed = {old: fork.namespaces[env] for env, old in now.namespaces.items() if old != fork.namespaces[env]}
    rules = _namespace_rules(renamed)
    if now.prometheus_release != fork.prometheus_release:
        label = rf"(\b{RELEASE_LABEL}:\s*)({re.escape(now.prometheus_release)})()(?![\w.-])"
        rules.append((re.compile(label), {now.prometheus_release: fork.prometheus_release}))
    for doc in docs:
        _walk(doc, rules, renamed)
        labels = (doc.get("metadata") or {}).get("labels")
        if doc.get("kind") in MONITORED and isinstance(labels, CommentedMap):
            labels[RELEASE_LABEL] = fork.prometheus_release
    _set_images(docs, now.image, fork.image, path)


def _edit_argocd(docs: list, fork: Fork, now: Current, path: Path) -> None:
    renamed = {old: fork.namespaces[env] for env, old in now.namespaces.items()}
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc.get("kind") == "Application":
            source = spec.get("source") or {}
            source["repoURL"] = type(source.get("repoURL", ""))(fork.repo_url)
            env = Path(str(source.get("path", ""))).name
            destination = spec.get("destination") or {}
            if env in fork.namespaces and "namespace" in destination:
                destination["namespace"] = fork.namespaces[env]
        elif doc.get("kind") == "AppProject":
            repos = spec.get("sourceRepos")
            if not isinstance(repos, CommentedSeq) or len(repos) != 1:
                raise FlywheelError(f"{path}: the AppProject must name exactly one of sourceRepos, got {repos}")
            repos[0] = type(repos[0])(fork.repo_url)
            for destination in spec.get("destinations") or []:
                ns = destination.get("namespace")
                destination["namespace"] = renamed.get(ns, ns)


def personalised(repo: Path, fork: Fork, now: Current, manifests_dir: str) -> dict[str, str]:
    """Path (relative to ``repo``) -> new text, of every manifest ``fork`` changes (``now``: what they name)."""
    root = repo / manifests_dir
    folders = [*(root / env for env in manifests.ENVIRONMENTS), root / ARGOCD]
    texts = {p: p.read_text() for folder in folders for p in sorted(folder.glob("*.yaml"))}
    changed = {}
    for path, text in texts.items():
        docs = _load(path, text)
        edit = _edit_argocd if path.parent.name == ARGOCD else _edit_environment
        edit(docs, fork, now, path)
        new = _dump(docs)
        if new != text:
            changed[str(path.relative_to(repo))] = new
    return changed


# ---------------------------------------------------------------------------------------- the step


def _fork(args: InitArgs, repo: Path, now: Current) -> Fork:
    repository = github_repository(args.repository) if args.repository else origin_repository(repo)
    namespaces = {
        "staging": args.staging_namespace or now.namespaces["staging"],
        "production": args.production_namespace or now.namespaces["production"],
    }
    for env, ns in namespaces.items():
        if len(ns) > 63 or not NAMESPACE.match(ns):
            raise FlywheelError(f"--{env}-namespace {ns!r}: a namespace is a DNS label (a-z, 0-9, '-', at most 63)")
    if len(set(namespaces.values())) != len(namespaces):
        raise FlywheelError(f"staging and production need namespaces of their own, got {namespaces}")
    release = args.prometheus_release or now.prometheus_release
    if len(release) > 63 or not LABEL_VALUE.match(release):
        raise FlywheelError(f"--prometheus-release {release!r} is not a Kubernetes label value (a Helm release name)")
    images.repository_of(repository)  # a repository whose image name the registry would refuse stops here
    return Fork(repository, namespaces, release)


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    """Write ``files`` and commit exactly them; on a failure, put them back as they were."""
    before = {rel: (repo / rel).read_text() for rel in files}
    try:
        for rel, text in files.items():
            (repo / rel).write_text(text)
        _git(repo, "add", "--", *files)
        _git(repo, "commit", "--quiet", "-m", message, "--", *files)
    except (OSError, FlywheelError):
        for rel, text in before.items():
            (repo / rel).write_text(text)
        run_git(repo, "reset", "--quiet", "--", *files, check=False)
        raise
    return _git(repo, "rev-parse", "HEAD")


@dataclass(frozen=True)
class Personalised:
    """What the fork's manifests name now, and the commit that made them say it (None: nothing changed)."""

    repository: str  # OWNER/NAME
    repo_url: str
    image: str
    namespaces: dict[str, str]  # environment -> namespace
    prometheus_release: str
    changed: list[str]  # files, relative to the repository
    commit: str | None


def init_command(args: InitArgs, *, delivery: DeliveryConfig) -> StepResult[Personalised]:
    """Personalise a fork in one commit: repository, image, namespaces, Prometheus release label."""
    given = Path(args.repo)
    top = run_git(given, "rev-parse", "--show-toplevel", check=False) if given.is_dir() else None
    if top is None or top.returncode != 0:
        raise FlywheelError(f"{given}: not a Git checkout")
    repo = Path(top.stdout.strip())
    dirty = _git(repo, "status", "--porcelain").splitlines()
    if dirty:
        raise FlywheelError(
            f"{repo}: the working tree has changes ({len(dirty)}, e.g. {dirty[0].strip()!r}); commit or stash them "
            "first: flywheel init makes one commit of its own"
        )
    root = repo / delivery.manifests_dir
    now = current(root)
    fork = _fork(args, repo, now)
    files = personalised(repo, fork, now, delivery.manifests_dir)
    namespaces = ", ".join(f"{env} {ns}" for env, ns in fork.namespaces.items())
    summary = (
        f"repository {fork.repository}, image {fork.image}, namespaces: {namespaces}; "
        f"Prometheus release {fork.prometheus_release}"
    )
    commit = _commit(repo, files, f"flywheel init: personalise this fork\n\n{summary}.\n") if files else None
    data = Personalised(
        fork.repository, fork.repo_url, fork.image, fork.namespaces, fork.prometheus_release, sorted(files), commit
    )
    done = (
        f"Committed `{commit[:12]}`, changing:\n\n" + "".join(f"- `{f}`\n" for f in sorted(files))
        if commit
        else ("Nothing to change: the manifests already name all of this.\n")
    )
    md = f"## flywheel init\n\n{summary}.\n\n{done}\nNext: docs/cluster.md walks the cluster side, in order.\n"
    return StepResult(data, md)
