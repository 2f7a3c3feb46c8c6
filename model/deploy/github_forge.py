"""Pull requests on GitHub through PyGithub: ``GitHubForge``, a ``model.deploy.pull_requests.Forge``.

It reads the files on the base branch and builds the change as one commit with Git's data API (blobs,
a tree on the base's tree, a commit), so the branch holds exactly one commit as locally; then creates
the branch at that commit and opens the pull request. If a step fails after the branch exists, the
branch is deleted again. 5xx answers and rate limits are retried, waiting as GitHub says
(``Retry-After``, or until ``x-ratelimit-reset``); a rejected token or a missing permission fails at
once, naming what the token needs. A branch of the same name: ``pull_requests.rerun_or_replace``, its
pull request being the branch's open one on GitHub (none when merged or closed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import requests
from github import Auth, Github, GithubException, GithubRetry, InputGitTreeElement, RateLimitExceededExceedsMaxWait

from model.core.errors import FlywheelError
from model.deploy.pull_requests import Proposal, PullRequest, rerun_or_replace

USER_AGENT = "flywheel-release"
GITHUB_API = "https://api.github.com"
API_VERSION = "2022-11-28"
RETRIES = 5  # retries after the first try, on a 5xx, a rate limit or a dropped connection
BACKOFF = 1.0  # urllib3's exponential backoff where GitHub names no wait: 0, 2, 4, 8, 16 s
SECONDARY_WAIT = 60.0  # a secondary rate limit naming no wait: "wait for at least one minute"
MAX_WAIT = 300.0  # GitHub asking for a longer wait fails the run (the next scheduled one tries again)
PACE = (0.25, 1.0)  # seconds between requests and between writes: PyGithub's defaults
NEEDS = "`contents: write` and `pull-requests: write`"


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

    def propose(self, p: Proposal) -> PullRequest:
        repo = self._repository()
        for path in p.files if p.new_file else ():
            if self._file(path, self.base) is not None:
                raise FlywheelError(f"GitHub {self.repository}: {path}: already exists on {self.base}")
        with self._api(f"reading branch {self.base}"):
            base_sha = repo.get_git_ref(f"heads/{self.base}").object.sha
        stale = self._branch_ref(p.branch)
        if stale is not None:
            rerun = rerun_or_replace(
                p, self._open(p.branch, stale.object.sha), lambda path: self._file(path, p.branch), self._where
            )
            if rerun is not None:
                return rerun
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
        return PullRequest(
            "github",
            self.repository,
            p.branch,
            self.base,
            commit.sha,
            base_sha=base_sha,
            number=pr.number,
            url=pr.html_url,
            replaced=stale.object.sha if stale is not None else None,
        )

    def merge(self, pull_request: PullRequest) -> PullRequest:
        """Merge an opened pull request now (the emergency stop); branch protection may refuse: said plainly."""
        repo = self._repository()
        number = pull_request.number
        with self._api(f"merging pull request #{number} (needs a token branch protection lets merge)"):
            status = repo.get_pull(number).merge(merge_method="merge")
        if not status.merged:
            raise FlywheelError(f"{self._where}: pull request #{number}: {status.message}")
        return replace(pull_request, merged_commit=status.sha)

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

    @property
    def _where(self) -> str:
        return f"GitHub {self.repository}"

    def _branch_ref(self, branch: str):
        """The branch's ref where a branch of that name exists, else None."""
        with self._api(f"looking for branch {branch}"):
            return self._branch(branch)

    def _open(self, branch: str, commit: str) -> PullRequest | None:
        """The branch's open pull request; None where it has none (merged or closed)."""
        owner = self.repository.split("/")[0]
        with self._api(f"looking for the open pull request of branch {branch}"):
            pulls = list(self._repository().get_pulls(state="open", head=f"{owner}:{branch}"))
        if not pulls:
            return None
        return PullRequest(
            "github", self.repository, branch, self.base, commit, number=pulls[0].number, url=pulls[0].html_url
        )
