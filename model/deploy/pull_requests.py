"""What a forge is: ``read`` a file on the base branch, ``propose`` a change as a pull request, ``merge`` one;
the pull request both forges answer with; and the rule for a branch that already exists, in one place.

``Forge`` is the protocol ``model.deploy.forges.LocalForge`` and ``model.deploy.github_forge.GitHubForge``
implement; the delivery steps see only it. ``PullRequest.to_dict`` is the ``pull_request`` of a step's
result, with the keys it always had (``number``/``url`` only on GitHub, ``existing`` only for a re-run,
``replaced`` only where a branch was replaced, ``merge`` only once merged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

from model.core.errors import FlywheelError


@dataclass(frozen=True)
class Proposal:
    """One pull request: a branch whose one commit writes ``files`` (path -> new text)."""

    branch: str
    files: dict[str, str]  # paths relative to the repository root, with forward slashes
    title: str
    body: str
    new_file: bool = False  # the paths must not exist on the base branch yet


@dataclass(frozen=True)
class PullRequest:
    """A proposed change as a forge reports it."""

    mode: Literal["local", "github"]
    repository: str  # owner/name on GitHub; the repository's folder locally
    branch: str
    base: str
    commit: str  # the branch's one commit
    base_sha: str | None = None  # the base commit it was built on; None when a re-run found it open
    number: int | None = None  # GitHub's pull-request number and page; a local pull request is its branch
    url: str | None = None
    existing: bool = False  # a re-run: this very change was already proposed and is still open
    replaced: str | None = None  # the commit of a merged or closed branch of the same name it replaced
    merged_commit: str | None = None  # set by ``Forge.merge`` (the emergency stop): the base's new commit

    def to_dict(self) -> dict:
        out: dict = {"mode": self.mode, "repository": self.repository, "branch": self.branch, "base": self.base}
        if self.existing:
            out["existing"] = True
        if self.base_sha is not None:
            out["base_sha"] = self.base_sha
        out["commit"] = self.commit
        if self.number is not None:
            out |= {"number": self.number, "url": self.url}
        if self.replaced is not None:
            out["replaced"] = self.replaced
        if self.merged_commit is not None:
            out["merge"] = {"merged": True, "commit": self.merged_commit}
        return out


@runtime_checkable  # so a test can check that both forges have its methods
class Forge(Protocol):
    """Where a change is proposed: GitHub's REST API or a local Git repository, against a base branch."""

    def read(self, path: str) -> str:
        """The text of ``path`` on the base branch; a missing file is a FlywheelError naming it."""
        ...

    def propose(self, proposal: Proposal) -> PullRequest:
        """The change as one commit on a new branch, against what the base holds (not a working tree).
        A branch of the same name is dealt with by ``rerun_or_replace``."""
        ...

    def merge(self, pull_request: PullRequest) -> PullRequest:
        """Merge it now (the emergency stop): the same pull request with ``merged_commit`` set."""
        ...


def rerun_or_replace(
    p: Proposal, open_pull_request: PullRequest | None, on_branch: Callable[[str], str | None], where: str
) -> PullRequest | None:
    """The rule for a branch of ``p``'s name that already exists, for both forges.

    - its pull request merged or closed (``open_pull_request`` None): None, the caller replaces the branch;
      the same version proposed again (e.g. after a rollback) must not be blocked by an old branch;
    - open, every file on it (``on_branch``: a path's text there, None if absent) as ``p`` writes it:
      that pull request, marked ``existing`` (a scheduled re-run proposes nothing new);
    - open with a different change: refused, so nobody's open pull request is overwritten.
    """
    if open_pull_request is None:
        return None
    if all(on_branch(path) == text for path, text in p.files.items()):
        return replace(open_pull_request, existing=True)
    number = f" #{open_pull_request.number}" if open_pull_request.number is not None else ""
    raise FlywheelError(
        f"{where}: branch {p.branch} already has an open pull request{number} with a different change; "
        "merge or close it first"
    )
