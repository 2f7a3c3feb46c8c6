"""Git in the tests: a commit identity, and the calls the tests make on their temporary GitOps repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

IDENTITY = {
    "GIT_AUTHOR_NAME": "Flywheel Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Flywheel Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def merge(repo: Path, branch: str) -> None:
    git(repo, "merge", "-q", "--ff-only", branch)


def branches(repo: Path) -> list[str]:
    return git(repo, "branch", "--format=%(refname:short)").splitlines()
