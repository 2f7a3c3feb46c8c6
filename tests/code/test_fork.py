"""``flywheel init`` (model/deploy/fork.py) on a temporary clone of this project's manifests: one commit that
makes the fork's manifests name its repository, its image, its namespaces and its Prometheus release;
idempotent; refusing a dirty tree; and the image pinning that then accepts the fork's own repository."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import images, manifests
from model.deploy.checks import check_manifests
from model.deploy.fork import github_repository
from scripts.cli import main
from tests.helpers.delivery import images_in

SHIPPED = {"flywheel-staging", "flywheel-production", "release: kube-prometheus-stack", "flywheel-mlops/flywheel"}
DIGEST = "sha256:" + "f" * 64
ENV_FILES = [f"manifests/{env}/{name}" for env in manifests.ENVIRONMENTS for name in (
    "collector.yaml", "dashboard.yaml", "inferenceservice.yaml", "podmonitor.yaml", "prometheusrule.yaml",
    "serviceaccount.yaml",
)]  # fmt: skip


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def init(repo, *flags: str, report_dir) -> tuple[int, dict]:
    code = main(["init", "--repo", str(repo), "--report-dir", str(report_dir), *flags])
    report = report_dir / "init.json"
    return code, json.loads(report.read_text()) if code == 0 else {}


@pytest.mark.parametrize(
    ("remote", "repository"),
    [
        ("https://github.com/Acme-Corp/Support.Bot.git", "Acme-Corp/Support.Bot"),
        ("https://github.com/Acme-Corp/Support.Bot", "Acme-Corp/Support.Bot"),
        ("https://github.com/acme/flywheel/\n", "acme/flywheel"),  # as `git remote get-url` prints it, newline too
        ("https://x-access-token:ghs_abc123@github.com/acme/flywheel.git", "acme/flywheel"),  # actions/checkout's
        ("git@github.com:Acme-Corp/support-bot.git", "Acme-Corp/support-bot"),
        ("ssh://git@github.com/acme/flywheel.git", "acme/flywheel"),
        ("ssh://git@github.com:22/acme/flywheel", "acme/flywheel"),
        ("acme/my.repo", "acme/my.repo"),
    ],
)
def test_the_github_repository_from_its_remote(remote, repository):
    assert github_repository(remote) == repository


@pytest.mark.parametrize(
    "remote",
    [
        "https://gitlab.com/acme/flywheel.git",
        "https://github.com/acme",
        "acme/flywheel/extra",
        "-acme/flywheel",
        "https://x-access-token:ghs_secret@gitlab.com/acme/flywheel.git",
    ],
)
def test_other_remotes_are_refused_without_echoing_a_token(remote):
    with pytest.raises(FlywheelError, match="is not a GitHub repository") as err:
        github_repository(remote)
    assert "ghs_secret" not in str(err.value)


def test_the_image_is_the_repository_lower_cased():
    assert images.repository_of("Acme-Corp/Support.Bot") == "ghcr.io/acme-corp/support.bot"
    with pytest.raises(FlywheelError, match="distribution grammar refuses"):
        images.repository_of("acme/_private")


@pytest.fixture
def fork(repo):
    git(repo, "remote", "add", "origin", "git@github.com:Acme-Corp/Support.Bot.git")
    return repo


def _changed_lines(repo, commit: str) -> list[tuple[str, str]]:
    """(removed, added) line pairs of a commit, file by file in order."""
    pairs = []
    for name in git(repo, "diff", "--name-only", f"{commit}~1", commit).splitlines():
        before = git(repo, "show", f"{commit}~1:{name}").splitlines()
        after = git(repo, "show", f"{commit}:{name}").splitlines()
        assert len(before) == len(after), name  # only values change: no line added, dropped or re-wrapped
        pairs += [(a, b) for a, b in zip(before, after) if a != b]
    return pairs


@pytest.mark.real("promtool")
def test_init_personalises_a_fork_in_one_commit(fork, tmp_path):
    head = git(fork, "rev-parse", "HEAD")
    flags = ("--staging-namespace", "chat-staging", "--production-namespace", "chat", "--prometheus-release", "mon")
    code, result = init(fork, *flags, report_dir=tmp_path / "r1")
    assert code == 0 and result["commit"] == git(fork, "rev-parse", "HEAD")
    assert git(fork, "rev-list", "--count", f"{head}..HEAD") == "1" and git(fork, "status", "--porcelain") == ""
    assert result["repository"] == "Acme-Corp/Support.Bot" and result["image"] == "ghcr.io/acme-corp/support.bot"
    changed = set(git(fork, "diff", "--name-only", head, "HEAD").splitlines())
    assert changed == {*ENV_FILES, *(f"manifests/argocd/{n}.yaml" for n in ("project", "staging", "production"))}
    # Argo CD: this repository, the new namespaces; the Applications keep their names
    project = yaml.safe_load((fork / "manifests/argocd/project.yaml").read_text())["spec"]
    assert project["sourceRepos"] == ["https://github.com/Acme-Corp/Support.Bot.git"]
    assert [d["namespace"] for d in project["destinations"]] == ["chat-staging", "chat"]
    for env, ns in (("staging", "chat-staging"), ("production", "chat")):
        app = yaml.safe_load((fork / f"manifests/argocd/{env}.yaml").read_text())
        assert app["metadata"]["name"] == f"flywheel-{env}" and app["spec"]["destination"]["namespace"] == ns
        assert app["spec"]["source"]["repoURL"] == "https://github.com/Acme-Corp/Support.Bot.git"
        assert manifests.namespace_of(fork / f"manifests/{env}/inferenceservice.yaml") == ns
        for name in ("inferenceservice.yaml", "collector.yaml"):
            text = (fork / "manifests" / env / name).read_text()
            assert images_in(text) == ["ghcr.io/acme-corp/support.bot:main"]
    # nothing of the shipped names is left where Argo CD or Prometheus reads it, and only those values changed
    for rel in ENV_FILES:
        text = (fork / rel).read_text()
        assert not [old for old in SHIPPED if old in text], rel
    for before, after in _changed_lines(fork, "HEAD"):
        for old, new in (
            ("flywheel-staging", "chat-staging"),
            ("flywheel-production", "chat"),
            ("release: kube-prometheus-stack", "release: mon"),
            ("ghcr.io/flywheel-mlops/flywheel", "ghcr.io/acme-corp/support.bot"),
            ("https://github.com/flywheel-mlops/flywheel.git", "https://github.com/Acme-Corp/Support.Bot.git"),
        ):
            before = before.replace(old, new)
        assert before == after
    assert check_manifests(fork) == []
    # the same inputs again: nothing to change, no commit
    code, again = init(fork, *flags, report_dir=tmp_path / "r2")
    assert code == 0 and again["commit"] is None and again["changed"] == []
    assert git(fork, "rev-list", "--count", f"{head}..HEAD") == "1"
    # unset flags keep what the manifests say now
    code, kept = init(fork, report_dir=tmp_path / "r3")
    assert kept["namespaces"] == {"staging": "chat-staging", "production": "chat"} and kept["commit"] is None


def test_pinning_accepts_the_forks_own_repository_once_init_ran(fork, tmp_path):
    path = fork / "manifests/staging/collector.yaml"
    own = f"ghcr.io/acme-corp/support.bot@{DIGEST}"
    with pytest.raises(FlywheelError, match="a fork names its own image repository after `flywheel init`"):
        images.pin(path.read_text(), own, path)
    assert init(fork, report_dir=tmp_path)[0] == 0
    assert images_in(images.pin(path.read_text(), own, path)) == [own]


@pytest.mark.real("promtool")
def test_renaming_twice_ends_where_renaming_once_does(fork, tmp_path):
    """Namespaces named like words the manifests use otherwise (`staging`, a label value and a folder name)
    are renamed only where they are namespaces: going on from them to other names gives the same files."""
    once = tmp_path / "once"
    shutil.copytree(fork, once)
    target = ("--staging-namespace", "acme-stg", "--production-namespace", "acme-prd", "--prometheus-release", "kps")
    assert init(once, *target, report_dir=tmp_path / "r0")[0] == 0
    middle = ("--staging-namespace", "staging", "--production-namespace", "prod", "--prometheus-release", "monitoring")
    assert init(fork, *middle, report_dir=tmp_path / "r1")[0] == 0
    assert "flywheel.dev/environment: staging" in (fork / "manifests/staging/inferenceservice.yaml").read_text()
    assert init(fork, *target, report_dir=tmp_path / "r2")[0] == 0
    assert git(fork, "rev-list", "--count", "HEAD") == "3"
    for rel in [*ENV_FILES, "manifests/argocd/project.yaml", "manifests/argocd/staging.yaml"]:
        assert (fork / rel).read_text() == (once / rel).read_text(), rel
    # and back again: the shipped names, in every file as shipped (but the repository, the fork's own)
    back = ("--staging-namespace", "flywheel-staging", "--production-namespace", "flywheel-production")
    assert init(fork, *back, "--prometheus-release", "kube-prometheus-stack", report_dir=tmp_path / "r3")[0] == 0
    for rel in ENV_FILES:
        shipped = (PROJECT_ROOT / rel).read_text().replace("flywheel-mlops/flywheel", "acme-corp/support.bot")
        assert (fork / rel).read_text() == shipped, rel


@pytest.mark.parametrize(
    ("prepare", "flags", "message"),
    [
        (lambda r: (r / "manifests/README.md").write_text("edited\n"), (), "the working tree has changes"),
        (lambda r: (r / "notes.txt").write_text("new\n"), (), "the working tree has changes"),
        (lambda r: git(r, "remote", "remove", "origin"), (), "no remote 'origin'"),
        (
            lambda r: git(r, "remote", "set-url", "origin", "https://gitlab.com/acme/flywheel.git"),
            (),
            "is not a GitHub repository",
        ),
        (None, ("--staging-namespace", "Chat_Staging"), "a namespace is a DNS label"),
        (None, ("--production-namespace", "flywheel-staging"), "need namespaces of their own"),
        (None, ("--prometheus-release", "kps-"), "is not a Kubernetes label value"),
        (None, ("--repository", "acme/_private"), "distribution grammar refuses"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(fork, tmp_path, capsys, prepare, flags, message):
    if prepare:
        prepare(fork)
    head, status = git(fork, "rev-parse", "HEAD"), git(fork, "status", "--porcelain")
    assert init(fork, *flags, report_dir=tmp_path)[0] == 2
    assert message in capsys.readouterr().err
    assert git(fork, "rev-parse", "HEAD") == head and git(fork, "status", "--porcelain") == status


def test_a_digest_of_another_repository_is_refused(fork, tmp_path, capsys):
    """A fork of a deployment already pinned to its parent's image cannot keep the digest under its own name."""
    for env in manifests.ENVIRONMENTS:
        for name in ("inferenceservice.yaml", "collector.yaml"):
            path = fork / "manifests" / env / name
            path.write_text(path.read_text().replace(":main", f"@{DIGEST}"))
    git(fork, "commit", "-qam", "pinned by the parent")
    head = git(fork, "rev-parse", "HEAD")
    assert init(fork, report_dir=tmp_path)[0] == 2
    assert f"runs ghcr.io/flywheel-mlops/flywheel@{DIGEST} by digest" in capsys.readouterr().err
    assert git(fork, "rev-parse", "HEAD") == head and git(fork, "status", "--porcelain") == ""
    # with the repository the manifests already name, a digest stays as it is
    code, result = init(
        fork, "--repository", "flywheel-mlops/flywheel", "--staging-namespace", "x", report_dir=tmp_path
    )
    assert code == 0 and f"flywheel@{DIGEST}" in (fork / "manifests/staging/collector.yaml").read_text()
