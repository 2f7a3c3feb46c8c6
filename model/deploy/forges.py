"""Propose a change as a pull request: on GitHub, or in a local Git repository.

- ``GitHubForge`` (``model.deploy.github_forge``; ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` set,
  ``GITHUB_API_URL`` as Actions sets it): through GitHub's REST API.
- ``LocalForge`` (no token): builds the commit with Git plumbing on a temporary index, so neither the
  working tree nor the checked-out branch is touched, and creates the branch only once the commit
  exists. The pull-request title and body are the commit message, so ``git log`` shows them; a branch
  not yet merged into the base is an open pull request.

Both implement ``model.deploy.pull_requests.Forge`` and answer with its ``PullRequest``; a branch of the
same name follows ``pull_requests.rerun_or_replace``. ``forge_from_env`` picks one: the only place that
reads those variables. Either way the change is proposed against what the base branch holds, not the
working tree.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from model.core.errors import FlywheelError
from model.core.git import run_git
from model.deploy.github_forge import GITHUB_API, GitHubForge, github_retry
from model.deploy.pull_requests import Forge, Proposal, PullRequest, rerun_or_replace

__all__ = ["Forge", "GitHubForge", "LocalForge", "Proposal", "PullRequest", "forge_from_env", "github_retry"]


class LocalForge:
    """A local Git repository as a forge, against ``base`` (its checked-out ``HEAD`` by default)."""

    def __init__(self, repo: Path, base: str = "HEAD"):
        self.repo = Path(repo)
        self.base = base
        top = self._git("rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0:
            raise FlywheelError(f"{self.repo}: not a Git repository ({top.stderr.strip()})")
        self.repo = Path(top.stdout.strip())

    def _git(self, *args: str, check: bool = True, env: dict | None = None, input: str | None = None):
        return run_git(self.repo, *args, check=check, env=env, input=input)

    def read(self, path: str) -> str:
        done = self._git("show", f"{self.base}:{path}", check=False)
        if done.returncode != 0:
            raise FlywheelError(f"{self.repo / path}: not in {self.base} ({done.stderr.strip()})")
        return done.stdout

    def merge(self, pull_request: PullRequest) -> PullRequest:
        """Fast-forward the checked-out branch to a proposed one, as merging its pull request would."""
        done = self._git("merge", "--ff-only", "--quiet", pull_request.branch, check=False)
        if done.returncode != 0:
            raise FlywheelError(f"{self.repo}: cannot merge {pull_request.branch}: {done.stderr.strip()}")
        return replace(pull_request, merged_commit=self._git("rev-parse", "HEAD").stdout.strip())

    def propose(self, p: Proposal) -> PullRequest:
        for path in p.files if p.new_file else ():
            if self._git("cat-file", "-e", f"{self.base}:{path}", check=False).returncode == 0:
                raise FlywheelError(f"{self.repo / path}: already exists in {self.base}")
        old = self._branch_commit(p.branch)
        if old is not None:
            rerun = rerun_or_replace(
                p, self._open(p.branch, old), lambda path: self._on(p.branch, path), str(self.repo)
            )
            if rerun is not None:
                return rerun
            self._git("update-ref", "-d", f"refs/heads/{p.branch}", old)
        base_sha = self._git("rev-parse", "--verify", f"{self.base}^{{commit}}").stdout.strip()
        with tempfile.TemporaryDirectory() as tmp:
            index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", base_sha, env=index)
            for path, text in p.files.items():
                blob = self._git("hash-object", "-w", "--stdin", input=text).stdout.strip()
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=index)
            tree = self._git("write-tree", env=index).stdout.strip()
        commit = self._git(
            "commit-tree", tree, "-p", base_sha, "-F", "-", input=f"{p.title}\n\n{p.body}"
        ).stdout.strip()
        # the ref appears last and only if it does not exist yet: nothing half-made is left behind
        self._git("update-ref", f"refs/heads/{p.branch}", commit, "0" * 40)
        return PullRequest("local", str(self.repo), p.branch, self.base, commit, base_sha=base_sha, replaced=old)

    def _branch_commit(self, branch: str) -> str | None:
        done = self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def _open(self, branch: str, commit: str) -> PullRequest | None:
        """The branch as an open pull request; None once it is merged into the base (its commit is the base's)."""
        merged = self._git("merge-base", "--is-ancestor", commit, self.base, check=False).returncode == 0
        return None if merged else PullRequest("local", str(self.repo), branch, self.base, commit)

    def _on(self, branch: str, path: str) -> str | None:
        done = self._git("show", f"refs/heads/{branch}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None


def forge_from_env(repo: Path, base_branch: str, **client) -> Forge:
    """GitHub, against ``base_branch``, when ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` are both set
    (``client``: ``GitHubForge``'s ``retry`` and ``pace``); else the local repository at ``repo``, against
    its checked-out ``HEAD`` (a local run works on the branch it has checked out, whatever its name)."""
    token, repository = os.environ.get("GITHUB_TOKEN"), os.environ.get("GITHUB_REPOSITORY")
    if token and repository:
        return GitHubForge(token, repository, base_branch, os.environ.get("GITHUB_API_URL") or GITHUB_API, **client)
    return LocalForge(repo)
