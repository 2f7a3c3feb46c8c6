"""Propose a change as a pull request: on GitHub through PyGithub, or in a local Git repository.

- ``GitHubForge`` (``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` set; ``GITHUB_API_URL`` as Actions sets
  it): reads the files on the base branch and builds the change as one commit with Git's data API
  (blobs, a tree on the base's tree, a commit), so the branch holds exactly one commit as locally; then
  creates the branch at that commit and opens the pull request. If a step fails after the branch exists,
  the branch is deleted again. 5xx answers and rate limits are retried, waiting as GitHub says
  (``Retry-After``, or until ``x-ratelimit-reset``); a rejected token or a missing permission fails at
  once, naming what the token needs. A branch of the same name without an open pull request (its pull
  request merged or closed) is replaced; one whose open pull request holds this very change is a re-run.
- ``LocalForge`` (no token): builds the commit with Git plumbing on a temporary index, so neither the
  working tree nor the checked-out branch is touched, and creates the branch only once the commit
  exists. The pull-request title and body are the commit message, so ``git log`` shows them.

``forge_from_env`` picks one: the only place that reads those variables. Either way the change is
proposed against what the base branch holds, not the working tree.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from github import Auth, Github, GithubException, GithubRetry, InputGitTreeElement, RateLimitExceededExceedsMaxWait

from model.core.errors import FlywheelError
from model.core.git import run_git

USER_AGENT = "flywheel-release"
GITHUB_API = "https://api.github.com"
API_VERSION = "2022-11-28"
RETRIES = 5  # retries after the first try, on a 5xx, a rate limit or a dropped connection
BACKOFF = 1.0  # urllib3's exponential backoff where GitHub names no wait: 0, 2, 4, 8, 16 s
SECONDARY_WAIT = 60.0  # a secondary rate limit naming no wait: "wait for at least one minute"
MAX_WAIT = 300.0  # GitHub asking for a longer wait fails the run (the next scheduled one tries again)
PACE = (0.25, 1.0)  # seconds between requests and between writes: PyGithub's defaults
NEEDS = "`contents: write` and `pull-requests: write`"


@dataclass
class Proposal:
    """One pull request: a branch whose one commit writes ``files`` (path -> new text)."""

    branch: str
    files: dict[str, str]  # paths relative to the repository root, with forward slashes
    title: str
    body: str
    new_file: bool = False  # the paths must not exist on the base branch yet


class LocalForge:
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

    def merge(self, pull_request: dict) -> dict:
        """Fast-forward the checked-out branch to a proposed one, as merging its pull request would."""
        done = self._git("merge", "--ff-only", "--quiet", pull_request["branch"], check=False)
        if done.returncode != 0:
            raise FlywheelError(f"{self.repo}: cannot merge {pull_request['branch']}: {done.stderr.strip()}")
        return {"merged": True, "commit": self._git("rev-parse", "HEAD").stdout.strip()}

    def propose(self, p: Proposal) -> dict:
        for path in p.files if p.new_file else ():
            if self._git("cat-file", "-e", f"{self.base}:{path}", check=False).returncode == 0:
                raise FlywheelError(f"{self.repo / path}: already exists in {self.base}")
        exists = self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{p.branch}", check=False).returncode == 0
        if (
            exists
            and self._git("merge-base", "--is-ancestor", f"refs/heads/{p.branch}", self.base, check=False).returncode
            == 0
        ):
            # merged long ago (the same version proposed again, e.g. after a rollback): replaced, not blocking
            self._git("update-ref", "-d", f"refs/heads/{p.branch}")
            exists = False
        if exists:
            proposed = [self._git("show", f"refs/heads/{p.branch}:{path}", check=False) for path in p.files]
            if all(done.returncode == 0 and done.stdout == text for done, text in zip(proposed, p.files.values())):
                # a scheduled re-run: already proposed
                return {
                    "mode": "local",
                    "repository": str(self.repo),
                    "branch": p.branch,
                    "base": self.base,
                    "existing": True,
                    "commit": self._git("rev-parse", f"refs/heads/{p.branch}").stdout.strip(),
                }
            raise FlywheelError(
                f"{self.repo}: branch {p.branch} already exists with a different change; merge or delete it first"
            )
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
        return {
            "mode": "local",
            "repository": str(self.repo),
            "branch": p.branch,
            "base": self.base,
            "base_sha": base_sha,
            "commit": commit,
        }


class _Retry(GithubRetry):
    """PyGithub's retry (5xx; a 403 rate limit: primary until its reset, secondary for ``Retry-After``)
    plus 429, waiting as https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api says,
    through ``sleep`` (a test passes its own); a wait over ``max_rate_limit_wait`` raises instead."""

    def __init__(self, sleep: Callable[[float], Any] = time.sleep, **kwargs):
        self._sleep = sleep
        super().__init__(**kwargs)

    def new(self, **kwargs):  # urllib3 makes a new Retry for each retry
        return super().new(sleep=self._sleep, **kwargs)

    def sleep(self, response=None) -> None:
        wait = self._wait(response)
        if response is not None and self.max_rate_limit_wait is not None and wait > self.max_rate_limit_wait:
            raise RateLimitExceededExceedsMaxWait(response.status, None, dict(response.headers), wait=wait)
        if wait > 0:
            self._sleep(wait)

    def _wait(self, response) -> float:
        headers = response.headers if response is not None else {}
        if self.respect_retry_after_header and headers.get("Retry-After"):
            return self.parse_retry_after(headers["Retry-After"])
        reset = headers.get("x-ratelimit-reset", "")
        if headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
            return max(int(reset) - time.time(), 0) + 1  # +1: the reset falls somewhere in that second
        if response is not None and response.status == 429:
            return max(self.secondary_rate_wait, self.get_backoff_time())
        return self.get_backoff_time()  # PyGithub's for a 403 rate limit, else the exponential backoff


def github_retry(
    sleep: Callable[[float], Any] = time.sleep,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    secondary_wait: float = SECONDARY_WAIT,
    max_wait: float = MAX_WAIT,
) -> GithubRetry:
    """Bounded retries: ``retries`` after the first try, each wait at most ``max_wait`` seconds."""
    return _Retry(
        sleep=sleep,
        total=retries,
        backoff_factor=backoff,
        backoff_max=30,
        secondary_rate_wait=secondary_wait,
        max_rate_limit_wait=max_wait,
        status_forcelist=[*range(500, 600), 429],  # GithubRetry adds 403, retried only for a rate limit
        raise_on_status=False,  # the last answer reaches PyGithub, which raises it as a GithubException
    )


class GitHubForge:
    def __init__(
        self,
        token: str,
        repository: str,
        base: str = "main",
        api_url: str = GITHUB_API,
        *,
        retry: GithubRetry | None = None,
        pace: tuple[float, float] = PACE,
    ):
        if repository.count("/") != 1:
            raise FlywheelError(f"GITHUB_REPOSITORY must be owner/name, got {repository!r}")
        self.repository = repository
        self.base = base
        self.client = Github(
            auth=Auth.Token(token),
            base_url=api_url.rstrip("/"),
            timeout=30,
            user_agent=USER_AGENT,
            retry=retry or github_retry(),
            seconds_between_requests=pace[0],
            seconds_between_writes=pace[1],
            api_version=API_VERSION,
        )
        self._repo = None  # fetched on first use: a 404 then means the token cannot see the repository

    @contextmanager
    def _api(self, doing: str) -> Iterator[None]:
        try:
            yield
        except GithubException as exc:
            raise self._explain(exc, doing) from exc
        except requests.RequestException as exc:
            raise FlywheelError(f"GitHub {self.repository}: {doing}: {exc}") from exc

    def _explain(self, exc: GithubException, doing: str) -> FlywheelError:
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        message = (exc.data.get("message") if isinstance(exc.data, dict) else None) or exc.message or "no message"
        where = f"GitHub {self.repository}: {doing}"
        if isinstance(exc, RateLimitExceededExceedsMaxWait):
            return FlywheelError(f"{where}: rate limited; GitHub asks to wait {exc.wait:.0f}s, more than a run waits")
        if exc.status == 401:
            return FlywheelError(f"GitHub token rejected (GITHUB_TOKEN): {message} ({doing})")
        limited = headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers or "rate limit" in message
        if exc.status in (403, 429) and limited:
            return FlywheelError(f"{where}: still rate limited after {RETRIES} retries: HTTP {exc.status}: {message}")
        if exc.status in (403, 404):  # GitHub answers 404 for a repository the token may not see
            accepted = headers.get("x-accepted-github-permissions")
            return FlywheelError(
                f"{where}: HTTP {exc.status}: {message}; the token needs {NEEDS} on {self.repository} "
                "(a fine-grained token or the GitHub App's installation)"
                + (f"; GitHub accepts {accepted} here" if accepted else "")
            )
        return FlywheelError(f"{where}: HTTP {exc.status}: {message}")

    def _repository(self):
        if self._repo is None:
            with self._api("opening the repository"):
                self._repo = self.client.get_repo(self.repository)
        return self._repo

    def _file(self, path: str, ref: str) -> str | None:
        """The text of ``path`` on ``ref``, None where it has no such file."""
        repo = self._repository()
        with self._api(f"reading {path} on {ref}"):
            try:
                got = repo.get_contents(path, ref=ref)
            except GithubException as exc:
                if exc.status == 404:
                    return None
                raise
        if isinstance(got, list):
            raise FlywheelError(f"GitHub {self.repository}: {path} on {ref} is a directory")
        return got.decoded_content.decode()

    def read(self, path: str) -> str:
        text = self._file(path, self.base)
        if text is None:
            raise FlywheelError(f"GitHub {self.repository}: {path}: not on {self.base}")
        return text

    def propose(self, p: Proposal) -> dict:
        repo = self._repository()
        for path in p.files if p.new_file else ():
            if self._file(path, self.base) is not None:
                raise FlywheelError(f"GitHub {self.repository}: {path}: already exists on {self.base}")
        with self._api(f"reading branch {self.base}"):
            base_sha = repo.get_git_ref(f"heads/{self.base}").object.sha
        stale = self._existing_branch(p)
        if isinstance(stale, dict):
            return stale
        with self._api("writing the commit"):  # objects no ref names yet: nothing to undo if this fails
            parent = repo.get_git_commit(base_sha)
            blobs = {path: repo.create_git_blob(text, "utf-8").sha for path, text in p.files.items()}
            entries = [InputGitTreeElement(path, "100644", "blob", sha=sha) for path, sha in blobs.items()]
            tree = repo.create_git_tree(entries, base_tree=parent.tree)
            commit = repo.create_git_commit(f"{p.title}\n\n{p.body}", tree, [parent])
        if stale is not None:
            with self._api(f"deleting branch {p.branch}, whose pull request is merged or closed"):
                stale.delete()
        ref = self._create_branch(p.branch, commit.sha)
        try:
            with self._api("opening the pull request"):
                pr = repo.create_pull(
                    base=self.base, head=p.branch, title=p.title, body=p.body, maintainer_can_modify=True
                )
        except FlywheelError:
            with suppress(GithubException, requests.RequestException):
                ref.delete()  # the original error is the one to report
            raise
        return {
            "mode": "github",
            "repository": self.repository,
            "branch": p.branch,
            "base": self.base,
            "base_sha": base_sha,
            "commit": commit.sha,
            "number": pr.number,
            "url": pr.html_url,
            **({"replaced": stale.object.sha} if stale is not None else {}),
        }

    def merge(self, pull_request: dict) -> dict:
        """Merge an opened pull request now (the emergency stop); branch protection may refuse: said plainly."""
        repo = self._repository()
        with self._api(f"merging pull request #{pull_request['number']} (needs a token branch protection lets merge)"):
            status = repo.get_pull(pull_request["number"]).merge(merge_method="merge")
        if not status.merged:
            raise FlywheelError(f"GitHub {self.repository}: pull request #{pull_request['number']}: {status.message}")
        return {"merged": True, "commit": status.sha}

    def _create_branch(self, branch: str, sha: str):
        repo = self._repository()
        with self._api(f"creating branch {branch}"):
            try:
                return repo.create_git_ref(f"refs/heads/{branch}", sha)
            except GithubException as exc:
                made = self._branch(branch) if exc.status == 422 else None
                if made is not None and made.object.sha == sha:
                    return made  # a retried create whose first try GitHub did apply
                raise

    def _branch(self, branch: str):
        """The branch's ref, None where there is none."""
        try:
            return self._repository().get_git_ref(f"heads/{branch}")
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise

    def _existing_branch(self, p: Proposal):
        """None where the branch is free; the branch to replace where no pull request of it is open (merged
        or closed); this run's result where its open pull request holds this very change (a re-run)."""
        repo = self._repository()
        with self._api(f"looking for branch {p.branch} and its pull request"):
            ref = self._branch(p.branch)
            if ref is None:
                return None
            owner = self.repository.split("/")[0]
            pulls = list(repo.get_pulls(state="open", head=f"{owner}:{p.branch}"))
        if not pulls:
            return ref
        if any(self._file(path, p.branch) != text for path, text in p.files.items()):
            raise FlywheelError(
                f"GitHub {self.repository}: branch {p.branch} already has open pull request "
                f"#{pulls[0].number} with a different change; merge or close it first"
            )
        return {
            "mode": "github",
            "repository": self.repository,
            "branch": p.branch,
            "base": self.base,
            "existing": True,
            "commit": ref.object.sha,
            "number": pulls[0].number,
            "url": pulls[0].html_url,
        }


def forge_from_env(repo: Path, base_branch: str, **client) -> GitHubForge | LocalForge:
    """GitHub, against ``base_branch``, when ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` are both set
    (``client``: ``GitHubForge``'s ``retry`` and ``pace``); else the local repository at ``repo``, against
    its checked-out ``HEAD`` (a local run works on the branch it has checked out, whatever its name)."""
    token, repository = os.environ.get("GITHUB_TOKEN"), os.environ.get("GITHUB_REPOSITORY")
    if token and repository:
        return GitHubForge(token, repository, base_branch, os.environ.get("GITHUB_API_URL") or GITHUB_API, **client)
    return LocalForge(repo)
