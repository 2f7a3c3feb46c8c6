"""Propose a one-file change as a pull request: on GitHub through its REST API, or in a local Git repository.

- ``GitHubForge`` (``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` set; ``GITHUB_API_URL`` as Actions sets
  it): reads the file on the base branch, creates the branch, commits the file with the contents API
  and opens the pull request. If a step fails after the branch exists, the branch is deleted again.
- ``LocalForge`` (no token): builds the commit with Git plumbing on a temporary index, so neither the
  working tree nor the checked-out branch is touched, and creates the branch only once the commit
  exists. The pull-request title and body are the commit message, so ``git log`` shows them.

``forge_from_env`` picks one: the only place that reads those variables. Either way the change is
proposed against what the base branch holds, not the working tree.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

from model.core.errors import FlywheelError
from model.core.git import run_git

USER_AGENT = "flywheel-release"
GITHUB_API = "https://api.github.com"


@dataclass
class Proposal:
    """One pull request: a branch whose one change writes ``files`` (path -> new text)."""

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

    def propose(self, p: Proposal) -> dict:
        for path in p.files if p.new_file else ():
            if self._git("cat-file", "-e", f"{self.base}:{path}", check=False).returncode == 0:
                raise FlywheelError(f"{self.repo / path}: already exists in {self.base}")
        if self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{p.branch}", check=False).returncode == 0:
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


class GitHubForge:
    def __init__(
        self,
        token: str,
        repository: str,
        base: str = "main",
        api_url: str = GITHUB_API,
        session: requests.Session | None = None,
    ):
        if repository.count("/") != 1:
            raise FlywheelError(f"GITHUB_REPOSITORY must be owner/name, got {repository!r}")
        self.repository = repository
        self.base = base
        self.api = api_url.rstrip("/")
        self._blob_shas: dict[str, str] = {}  # path -> its blob on the base branch, as read
        self.http = session or requests.Session()
        self.http.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": USER_AGENT,
            }
        )

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> dict:
        url = f"{self.api}/repos/{self.repository}{path}"
        try:
            resp = self.http.request(method, url, timeout=30, **kwargs)
        except requests.RequestException as exc:
            raise FlywheelError(f"GitHub API {method} {url}: {exc}") from exc
        if resp.status_code not in ok:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise FlywheelError(f"GitHub API {method} {url}: HTTP {resp.status_code}: {message}")
        return resp.json() if resp.content else {}

    def read(self, path: str) -> str:
        got = self._call("GET", f"/contents/{path}", params={"ref": self.base})
        self._blob_shas[path] = got["sha"]
        return base64.b64decode(got["content"]).decode()

    def propose(self, p: Proposal) -> dict:
        for path in p.files if not p.new_file else ():
            if path not in self._blob_shas:
                self.read(path)
        base_sha = self._call("GET", f"/git/ref/heads/{self.base}")["object"]["sha"]
        if self._call("GET", f"/git/ref/heads/{p.branch}", ok=(200, 404)).get("object"):
            return self._already_proposed(p)
        self._call("POST", "/git/refs", ok=(201,), json={"ref": f"refs/heads/{p.branch}", "sha": base_sha})
        try:
            for path, text in p.files.items():  # the contents API writes one file per commit
                change = {
                    "message": f"{p.title}\n\n{p.body}",
                    "content": base64.b64encode(text.encode()).decode(),
                    "branch": p.branch,
                }
                if not p.new_file:
                    change["sha"] = self._blob_shas[path]  # GitHub refuses to overwrite a file without its blob sha
                put = self._call("PUT", f"/contents/{path}", ok=(200, 201), json=change)
            pr = self._call(
                "POST",
                "/pulls",
                ok=(201,),
                json={
                    "title": p.title,
                    "head": p.branch,
                    "base": self.base,
                    "body": p.body,
                    "maintainer_can_modify": True,
                },
            )
        except FlywheelError:
            try:
                self._call("DELETE", f"/git/refs/heads/{p.branch}", ok=(204,))
            except FlywheelError:
                pass  # the original error is the one to report
            raise
        return {
            "mode": "github",
            "repository": self.repository,
            "branch": p.branch,
            "base": self.base,
            "base_sha": base_sha,
            "commit": put["commit"]["sha"],
            "number": pr["number"],
            "url": pr["html_url"],
        }

    def _already_proposed(self, p: Proposal) -> dict:
        """The branch exists: fine if it holds this very change with an open pull request (a re-run)."""
        owner = self.repository.split("/")[0]
        pulls = self._call("GET", "/pulls", params={"head": f"{owner}:{p.branch}", "state": "open"})
        same = True
        for path, text in p.files.items():
            got = self._call("GET", f"/contents/{path}", ok=(200, 404), params={"ref": p.branch})
            same = same and "content" in got and base64.b64decode(got["content"]).decode() == text
        if not (pulls and same):
            raise FlywheelError(
                f"GitHub {self.repository}: branch {p.branch} already exists "
                f"{'with a different change' if pulls else 'without an open pull request'}; "
                "merge, close or delete it first"
            )
        return {
            "mode": "github",
            "repository": self.repository,
            "branch": p.branch,
            "base": self.base,
            "existing": True,
            "number": pulls[0]["number"],
            "url": pulls[0]["html_url"],
        }


def forge_from_env(repo: Path, base_branch: str) -> GitHubForge | LocalForge:
    """GitHub, against ``base_branch``, when ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` are both set;
    else the local repository at ``repo``, against its checked-out ``HEAD`` (a local run works on the
    branch it has checked out, whatever its name)."""
    token, repository = os.environ.get("GITHUB_TOKEN"), os.environ.get("GITHUB_REPOSITORY")
    if token and repository:
        return GitHubForge(token, repository, base_branch, os.environ.get("GITHUB_API_URL") or GITHUB_API)
    return LocalForge(repo)
