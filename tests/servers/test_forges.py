"""``GitHubForge`` (PyGithub) against a local stand-in that answers as GitHub's REST API documents: the
pull request as one commit through Git's data API, retries of 5xx answers and rate limits (waiting what
the answer says, seen through the injected sleep), a rejected token, a missing permission, an unseen
repository, and a branch of the same name that already exists (merged, re-run, or a different change)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import time
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import delivery, forges, manifests
from model.deploy.delivery import release_step, request_retrain_step
from model.deploy.forges import GitHubForge, LocalForge, Proposal, forge_from_env, github_retry
from model.deploy.pull_requests import Forge, PullRequest, rerun_or_replace
from tests.helpers.delivery import DCFG, ISVC, REG, drift_report, serving

REPO, TOKEN = "acme/flywheel", "ghs_test_token"
STAGING = ISVC.format(env="staging")
DOCS = "https://docs.github.com/rest"
NOT_FOUND = (404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}, {})
# https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit
SECONDARY = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
PRIMARY = "API rate limit exceeded for installation ID 4242."

# ------------------------------------------------------------------ GitHub REST stand-in


def _sha(kind: str, data: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).hexdigest()  # as Git names its objects


def seed(s: dict, branch: str, files: dict[str, str], parent: str | None = None, message: str = "seed") -> str:
    """Commit ``files`` (over ``parent``'s tree) and point ``branch`` at it; returns the commit sha."""
    tree = dict(s["trees"][s["commits"][parent]["tree"]]) if parent else {}
    for path, text in files.items():
        tree[path] = _sha("blob", text.encode())
        s["blobs"][tree[path]] = text
    return _put_commit(s, _put_tree(s, tree), [parent] if parent else [], message, branch)


def _put_tree(s: dict, entries: dict[str, str]) -> str:
    sha = _sha("tree", json.dumps(entries, sort_keys=True).encode())
    s["trees"][sha] = entries
    return sha


def _put_commit(s: dict, tree: str, parents: list[str], message: str, branch: str | None = None) -> str:
    sha = _sha("commit", json.dumps([tree, parents, message]).encode())
    s["commits"][sha] = {"tree": tree, "parents": parents, "message": message}
    if branch:
        s["refs"][f"refs/heads/{branch}"] = sha
    return sha


def files_on(s: dict, branch: str) -> dict[str, str]:
    tree = s["trees"][s["commits"][s["refs"][f"refs/heads/{branch}"]]["tree"]]
    return {path: s["blobs"][blob] for path, blob in tree.items()}


class FakeGitHub(BaseHTTPRequestHandler):
    """The endpoints ``GitHubForge`` uses, answered as GitHub's REST reference documents each (cited per
    route), over a small Git object store. ``state["faults"]`` scripts answers (5xx, rate limits) ahead of
    the real one; ``state["forbidden"]`` answers a write as a token without that permission gets it."""

    state: dict

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        url = urlparse(self.path)
        call = {
            "method": self.command,
            "path": unquote(url.path),
            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
            "auth": self.headers.get("Authorization"),
            "agent": self.headers.get("User-Agent"),
            "version": self.headers.get("X-GitHub-Api-Version"),
            "body": json.loads(self.rfile.read(length)) if length else None,
        }
        self.state["calls"].append(call)
        status, payload, headers = self._route(call)
        call["status"] = status
        data = b"" if status == 204 else json.dumps(payload).encode()
        self.send_response(status)
        # https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#checking-the-status-of-your-rate-limit
        limits = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4990", "x-ratelimit-used": "10"}
        limits |= {"x-ratelimit-reset": str(int(time.time()) + 3600), "x-ratelimit-resource": "core"}
        for name, value in {**limits, "Content-Type": "application/json; charset=utf-8", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

    def _route(self, call: dict) -> tuple[int, dict | list | None, dict]:
        s = self.state
        if call["auth"] not in (f"token {s['token']}", f"Bearer {s['token']}"):
            # https://docs.github.com/rest/authentication/authenticating-to-the-rest-api#failed-login-limit
            return 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}, {}
        for fault in s["faults"]:
            if fault["times"] and fault["method"] == call["method"] and call["path"].endswith(fault["path"]):
                fault["times"] -= 1
                if fault.get("applied"):  # GitHub did the write, the answer got lost (a 502 from its proxy)
                    self._dispatch(call)
                return fault["status"], fault["body"], fault.get("headers", {})
        prefix = f"/repos/{s['repo']}"
        if not (call["path"] == prefix or call["path"].startswith(prefix + "/")):
            # https://docs.github.com/rest/using-the-rest-api/troubleshooting-the-rest-api#404-not-found-for-an-existing-resource
            return NOT_FOUND
        for method, path, permission in s["forbidden"]:
            if call["method"] == method and call["path"].startswith(prefix + path):
                # https://docs.github.com/rest/using-the-rest-api/troubleshooting-the-rest-api#resource-not-accessible
                message = {"message": "Resource not accessible by integration", "documentation_url": DOCS}
                return 403, message | {"status": "403"}, {"x-accepted-github-permissions": permission}
        return self._dispatch(call)

    def _dispatch(self, call: dict) -> tuple[int, dict | list | None, dict]:
        rest = call["path"][len(f"/repos/{self.state['repo']}") :]
        for method, pattern, answer in (
            ("GET", r"", self._repository),  # https://docs.github.com/rest/repos/repos#get-a-repository
            ("GET", r"/contents/(?P<path>.+)", self._contents),
            ("GET", r"/git/ref/(?P<ref>.+)", self._get_ref),
            ("POST", r"/git/refs", self._create_ref),
            ("DELETE", r"/git/refs/(?P<ref>.+)", self._delete_ref),
            ("POST", r"/git/blobs", self._create_blob),
            ("POST", r"/git/trees", self._create_tree),
            ("GET", r"/git/commits/(?P<sha>[0-9a-f]{40})", self._get_commit),
            ("POST", r"/git/commits", self._create_commit),
            ("GET", r"/pulls", self._list_pulls),
            ("POST", r"/pulls", self._create_pull),
            ("GET", r"/pulls/(?P<number>\d+)", self._get_pull),
            ("PUT", r"/pulls/(?P<number>\d+)/merge", self._merge_pull),
        ):
            match = re.fullmatch(pattern, rest)
            if match and call["method"] == method:
                return answer(call, **match.groupdict())
        return NOT_FOUND

    @property
    def _base(self) -> str:  # GitHub's answers name its objects by URL, which PyGithub then calls
        return f"http://{self.headers['Host']}/repos/{self.state['repo']}"

    def _repository(self, call):
        owner, name = self.state["repo"].split("/")
        repo = {"id": 1, "name": name, "full_name": self.state["repo"], "owner": {"login": owner}, "url": self._base}
        return (
            200,
            repo | {"private": True, "default_branch": "main", "html_url": f"https://github.com/{owner}/{name}"},
            {},
        )

    def _contents(self, call, path):
        """https://docs.github.com/rest/repos/contents#get-repository-content (a file: its text in base64)."""
        branch = call["query"].get("ref", "main")
        text = files_on(self.state, branch).get(path) if f"refs/heads/{branch}" in self.state["refs"] else None
        if text is None:
            return NOT_FOUND
        data = text.encode()
        answer = {"type": "file", "encoding": "base64", "size": len(data), "name": Path(path).name, "path": path}
        answer |= {"sha": _sha("blob", data), "url": f"{self._base}/contents/{path}?ref={branch}"}
        return 200, answer | {"content": base64.encodebytes(data).decode()}, {}  # in lines, as GitHub sends it

    def _ref(self, ref: str) -> dict:
        sha = self.state["refs"][ref]
        target = {"type": "commit", "sha": sha, "url": f"{self._base}/git/commits/{sha}"}
        return {"ref": ref, "node_id": "REF_" + sha[:8], "url": f"{self._base}/git/{ref}", "object": target}

    def _get_ref(self, call, ref):
        """https://docs.github.com/rest/git/refs#get-a-reference: exactly that ref, else 404."""
        return (200, self._ref(f"refs/{ref}"), {}) if f"refs/{ref}" in self.state["refs"] else NOT_FOUND

    def _create_ref(self, call):
        """https://docs.github.com/rest/git/refs#create-a-reference: 201, or 422 if it exists."""
        ref, sha = call["body"]["ref"], call["body"]["sha"]
        if ref in self.state["refs"]:
            return 422, {"message": "Reference already exists", "documentation_url": DOCS, "status": "422"}, {}
        if sha not in self.state["commits"]:
            return 422, {"message": "Object does not exist", "documentation_url": DOCS, "status": "422"}, {}
        self.state["refs"][ref] = sha
        return 201, self._ref(ref), {"Location": f"{self._base}/git/{ref}"}

    def _delete_ref(self, call, ref):
        """https://docs.github.com/rest/git/refs#delete-a-reference: 204, or 422 if there is none."""
        if self.state["refs"].pop(f"refs/{ref}", None) is None:
            return 422, {"message": "Reference does not exist", "documentation_url": DOCS, "status": "422"}, {}
        return 204, None, {}

    def _create_blob(self, call):
        """https://docs.github.com/rest/git/blobs#create-a-blob"""
        body = call["body"]
        text = base64.b64decode(body["content"]).decode() if body["encoding"] == "base64" else body["content"]
        sha = _sha("blob", text.encode())
        self.state["blobs"][sha] = text
        return 201, {"sha": sha, "url": f"{self._base}/git/blobs/{sha}"}, {}

    def _create_tree(self, call):
        """https://docs.github.com/rest/git/trees#create-a-tree: ``base_tree``'s entries, then those given."""
        body = call["body"]
        entries = dict(self.state["trees"][body["base_tree"]]) if "base_tree" in body else {}
        for entry in body["tree"]:
            if entry["sha"] not in self.state["blobs"]:
                return 422, {"message": "Invalid tree info", "documentation_url": DOCS, "status": "422"}, {}
            entries[entry["path"]] = entry["sha"]
        sha = _put_tree(self.state, entries)
        return 201, {"sha": sha, "url": f"{self._base}/git/trees/{sha}", "tree": [], "truncated": False}, {}

    def _commit(self, sha: str) -> dict:
        c = self.state["commits"][sha]
        return {
            "sha": sha,
            "node_id": "C_" + sha[:8],
            "url": f"{self._base}/git/commits/{sha}",
            "message": c["message"],
            "tree": {"sha": c["tree"], "url": f"{self._base}/git/trees/{c['tree']}"},
            "parents": [{"sha": p, "url": f"{self._base}/git/commits/{p}"} for p in c["parents"]],
        }

    def _get_commit(self, call, sha):
        """https://docs.github.com/rest/git/commits#get-a-commit-object"""
        return (200, self._commit(sha), {}) if sha in self.state["commits"] else NOT_FOUND

    def _create_commit(self, call):
        """https://docs.github.com/rest/git/commits#create-a-commit"""
        body = call["body"]
        return 201, self._commit(_put_commit(self.state, body["tree"], body["parents"], body["message"])), {}

    def _pull(self, pr: dict) -> dict:
        n, repo = pr["number"], self.state["repo"]
        head = {"ref": pr["head"], "label": f"{repo.split('/')[0]}:{pr['head']}"}
        answer = {k: pr[k] for k in ("number", "state", "title", "body", "merged_at")}
        return (
            answer
            | {"url": f"{self._base}/pulls/{n}", "html_url": f"https://github.com/{repo}/pull/{n}"}
            | {
                "head": head,
                "base": {"ref": pr["base"], "label": f"{repo.split('/')[0]}:{pr['base']}"},
            }
        )

    def _list_pulls(self, call):
        """https://docs.github.com/rest/pulls/pulls#list-pull-requests: ``state`` (default open), ``head``
        as ``owner:branch``."""
        state, head = call["query"].get("state", "open"), call["query"].get("head")
        pulls = [
            self._pull(pr)
            for pr in self.state["pulls"]
            if state in ("all", pr["state"])
            and (head is None or head == f"{self.state['repo'].split('/')[0]}:{pr['head']}")
        ]
        return 200, pulls, {}

    def _get_pull(self, call, number):
        """https://docs.github.com/rest/pulls/pulls#get-a-pull-request"""
        found = [pr for pr in self.state["pulls"] if pr["number"] == int(number)]
        return (200, self._pull(found[0]) | {"mergeable": True}, {}) if found else NOT_FOUND

    def _merge_pull(self, call, number):
        """https://docs.github.com/rest/pulls/pulls#merge-a-pull-request: 200 with the merge commit's sha;
        405 "Pull Request is not mergeable" (e.g. branch protection wants a review)."""
        pr = next(pr for pr in self.state["pulls"] if pr["number"] == int(number))
        if self.state.get("protected"):
            return 405, {"message": "At least 1 approving review is required", "documentation_url": DOCS}, {}
        base, head = (self.state["refs"][f"refs/heads/{pr[k]}"] for k in ("base", "head"))
        tree = self.state["commits"][head]["tree"]
        sha = _put_commit(self.state, tree, [base, head], f"Merge pull request #{number}", pr["base"])
        pr.update(state="closed", merged_at="2026-12-02T07:00:00Z")
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}, {}

    def _create_pull(self, call):
        """https://docs.github.com/rest/pulls/pulls#create-a-pull-request: 201, or 422 Validation Failed."""
        body = call["body"]
        if f"refs/heads/{body['head']}" not in self.state["refs"] or self.state.get("fail_pulls"):
            errors = [{"resource": "PullRequest", "field": "head", "code": "invalid"}]
            return (
                422,
                {"message": "Validation Failed", "errors": errors, "documentation_url": DOCS, "status": "422"},
                {},
            )
        pr = {"number": len(self.state["pulls"]) + 1, "state": "open", "merged_at": None, **body}
        self.state["pulls"].append(pr)
        return 201, self._pull(pr), {}


@pytest.fixture
def gh():
    """The stand-in for ``acme/flywheel``, its main branch holding this project's two InferenceServices."""
    s = {"repo": REPO, "token": TOKEN, "blobs": {}, "trees": {}, "commits": {}, "refs": {}, "pulls": []}
    s |= {"calls": [], "faults": [], "forbidden": [], "slept": []}
    s["main"] = seed(
        s,
        "main",
        {ISVC.format(env=env): (PROJECT_ROOT / ISVC.format(env=env)).read_text() for env in manifests.ENVIRONMENTS},
    )
    with serving(type("Handler", (FakeGitHub,), {"state": s})) as url:
        s["url"] = url
        yield s


def forge(gh: dict, token: str = TOKEN, repository: str = REPO, **retry) -> GitHubForge:
    """A forge on the stand-in whose waits are recorded in ``gh["slept"]`` instead of slept."""
    policy = github_retry(sleep=gh["slept"].append, **{"backoff": 0.5, **retry})
    return GitHubForge(token, repository, "main", gh["url"], retry=policy, pace=(0, 0))


@pytest.fixture
def github(gh, monkeypatch, store):
    """``release_step`` and friends on the stand-in, reached as a workflow reaches GitHub: by
    ``GITHUB_TOKEN``, ``GITHUB_REPOSITORY`` and ``GITHUB_API_URL`` (read by the real ``forge_from_env``)."""
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    monkeypatch.setenv("GITHUB_API_URL", gh["url"])
    no_waits = partial(forges.forge_from_env, retry=github_retry(sleep=gh["slept"].append), pace=(0, 0))
    monkeypatch.setattr(delivery, "forge_from_env", no_waits)
    return gh


def calls(gh: dict, since: int = 0) -> list[tuple[str, str]]:
    return [(c["method"], c["path"].removeprefix(f"/repos/{REPO}")) for c in gh["calls"][since:]]


def writes(gh: dict, since: int = 0) -> list[tuple[str, str]]:
    return [c for c in calls(gh, since) if c[0] != "GET"]


def change(text: str = "new: 1\n", branch: str = "flywheel/release-staging-v9") -> Proposal:
    return Proposal(branch, {STAGING: text, "notes/why.md": "because\n"}, "Release v9", "The body.")


# ------------------------------------------------------------------ through the delivery steps


def test_github_pull_request_as_one_commit_through_the_rest_api(github, store, tmp_path):
    result, body = release_step("staging", 1, 10, tmp_path, reg_cfg=REG, dcfg=DCFG)  # tmp_path: no local Git needed
    pr = result["pull_request"]
    assert pr["mode"] == "github" and pr["number"] == 1 and pr["url"].endswith("/acme/flywheel/pull/1")
    branch = "flywheel/release-staging-v1"
    assert calls(github) == [
        ("GET", ""),
        ("GET", f"/contents/{STAGING}"),
        ("GET", "/git/ref/heads/main"),
        ("GET", f"/git/ref/heads/{branch}"),
        ("GET", f"/git/commits/{github['main']}"),
        ("POST", "/git/blobs"),
        ("POST", "/git/trees"),
        ("POST", "/git/commits"),
        ("POST", "/git/refs"),
        ("POST", "/pulls"),
    ]
    assert {(c["auth"], c["agent"], c["version"]) for c in github["calls"]} == {
        (f"token {TOKEN}", "flywheel-release", "2022-11-28")
    }
    # the branch holds exactly one commit on main, changing only the manifest, its message the title and body
    head = github["commits"][pr["commit"]]
    assert github["refs"][f"refs/heads/{branch}"] == pr["commit"] and head["parents"] == [github["main"]]
    assert head["message"] == f"{github['pulls'][0]['title']}\n\n{body}" and pr["base_sha"] == github["main"]
    before, after = files_on(github, "main"), files_on(github, branch)
    assert {path for path in after if after[path] != before.get(path)} == {STAGING}
    state = manifests.read_rollout(Path("staging.yaml"), manifests.load(Path("staging.yaml"), after[STAGING]))
    assert state.stable.version == 1 and state.stable.sha256 == store
    pull = github["pulls"][0]
    assert (pull["head"], pull["base"], pull["body"], pull["maintainer_can_modify"]) == (branch, "main", body, True)
    # the hourly re-run finds the open pull request and writes nothing
    since = len(github["calls"])
    again = release_step("staging", 1, 10, tmp_path, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]
    assert again["existing"] and again["number"] == 1 and again["commit"] == pr["commit"]
    assert calls(github, since) and not writes(github, since) and github["slept"] == []


def test_forge_from_env_sends_to_github_api_url(gh, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    monkeypatch.setenv("GITHUB_API_URL", gh["url"] + "/")
    made = forge_from_env(tmp_path, "main", pace=(0, 0))
    assert isinstance(made, GitHubForge) and made.read(STAGING) == files_on(gh, "main")[STAGING]
    assert calls(gh) == [("GET", ""), ("GET", f"/contents/{STAGING}")]
    monkeypatch.delenv("GITHUB_TOKEN")
    with pytest.raises(FlywheelError, match="not a Git repository"):
        forge_from_env(tmp_path, "main")  # no token: the local forge, and tmp_path holds no repository
    assert isinstance(forge_from_env(PROJECT_ROOT, "main"), LocalForge)


def test_github_failure_deletes_the_branch_it_made(github, tmp_path):
    github["fail_pulls"] = True
    with pytest.raises(FlywheelError, match="opening the pull request: HTTP 422: Validation Failed"):
        release_step("staging", 1, 10, tmp_path, reg_cfg=REG, dcfg=DCFG)
    assert list(github["refs"]) == ["refs/heads/main"]
    assert writes(github)[-2:] == [("POST", "/pulls"), ("DELETE", "/git/refs/heads/flywheel/release-staging-v1")]


def test_github_bad_input_makes_no_call_that_writes(github, tmp_path):
    with pytest.raises(FlywheelError, match="has not passed the gate"):
        release_step("staging", 3, 10, tmp_path, reg_cfg=REG, dcfg=DCFG)
    assert calls(github) and not writes(github)


def test_retrain_request_on_github_creates_a_new_file(github, tmp_path):
    result, body = request_retrain_step(drift_report(tmp_path, True), tmp_path, DCFG)
    pr, path = result["pull_request"], result["request_file"]
    assert (
        path not in files_on(github, "main") and json.loads(files_on(github, pr["branch"])[path])["reason"] == "drift"
    )
    assert github["pulls"][0]["body"] == body and pr["number"] == 1
    # a new file that already exists on main is refused before anything is written
    since = len(github["calls"])
    taken = Proposal("flywheel/taken", {STAGING: "x: 1\n"}, "t", "b", new_file=True)
    with pytest.raises(FlywheelError, match=f"{STAGING}: already exists on main"):
        forge(github).propose(taken)
    assert not writes(github, since)


# ------------------------------------------------------------------ retries and waits


def test_a_5xx_is_retried_with_backoff_and_then_succeeds(gh):
    gh["faults"].append(
        {"method": "POST", "path": "/git/trees", "times": 2, "status": 502, "body": {"message": "Server Error"}}
    )
    pr = forge(gh).propose(change())
    assert pr.number == 1 and files_on(gh, pr.branch)[STAGING] == "new: 1\n"
    assert [c["status"] for c in gh["calls"] if c["path"].endswith("/git/trees")] == [502, 502, 201]
    assert gh["slept"] == [1.0]  # urllib3's backoff: none before the first retry, then 0.5 * 2


def test_a_5xx_that_lasts_fails_after_the_bounded_retries(gh):
    gh["faults"].append(
        {"method": "GET", "path": "/git/ref/heads/main", "times": 99, "status": 503, "body": {"message": "Unavailable"}}
    )
    with pytest.raises(FlywheelError, match="reading branch main: HTTP 503: Unavailable"):
        forge(gh, retries=2).propose(change())
    assert calls(gh).count(("GET", "/git/ref/heads/main")) == 3 and not writes(gh)


def test_a_write_github_applied_before_its_answer_was_lost_is_not_made_twice(gh):
    lost = {"method": "POST", "path": "/git/refs", "times": 1, "status": 502, "body": {"message": "Server Error"}}
    gh["faults"].append(lost | {"applied": True})
    pr = forge(gh).propose(change())  # the retried create answers 422 "Reference already exists": ours
    assert [c["status"] for c in gh["calls"] if c["path"].endswith("/git/refs")] == [502, 422]
    assert pr.number == 1 and gh["refs"][f"refs/heads/{pr.branch}"] == pr.commit


@pytest.mark.parametrize(
    "status, message, headers, wait",
    [
        (429, SECONDARY, {"Retry-After": "1"}, 1),
        (403, SECONDARY, {"Retry-After": "2"}, 2),  # PyGithub: a 403 with Retry-After is a rate limit
        (403, PRIMARY, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "+2"}, 3),  # until the reset, +1 s
        (429, PRIMARY, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "+2"}, 3),
        (429, SECONDARY, {}, 7),  # no wait named: "wait for at least one minute" (here the test's 7 s)
    ],
    ids=["429-retry-after", "403-secondary-retry-after", "403-primary-reset", "429-primary-reset", "429-no-header"],
)
def test_a_rate_limit_is_waited_out_as_github_says(gh, status, message, headers, wait):
    headers = {k: str(int(time.time()) + 2) if v == "+2" else v for k, v in headers.items()}
    body = {"message": message, "documentation_url": DOCS}
    gh["faults"].append(
        {"method": "POST", "path": "/pulls", "times": 1, "status": status, "body": body, "headers": headers}
    )
    pr = forge(gh, secondary_wait=7).propose(change())
    assert pr.number == 1 and len(gh["pulls"]) == 1
    assert [c["status"] for c in gh["calls"] if c["path"].endswith("/pulls")] == [status, 201]
    assert len(gh["slept"]) == 1 and wait - 1.1 < gh["slept"][0] <= wait


def test_a_rate_limit_longer_than_a_run_waits_fails_and_cleans_up(gh):
    body = {"message": SECONDARY, "documentation_url": DOCS}
    gh["faults"].append(
        {
            "method": "POST",
            "path": "/pulls",
            "times": 1,
            "status": 429,
            "body": body,
            "headers": {"Retry-After": "3600"},
        }
    )
    with pytest.raises(FlywheelError, match="rate limited; GitHub asks to wait 3600s, more than a run waits"):
        forge(gh).propose(change())
    assert gh["slept"] == [] and list(gh["refs"]) == ["refs/heads/main"]


def test_a_rate_limit_that_outlasts_the_retries_says_so(gh):
    body = {"message": SECONDARY, "documentation_url": DOCS}
    gh["faults"].append(
        {"method": "GET", "path": "", "times": 99, "status": 429, "body": body, "headers": {"Retry-After": "1"}}
    )
    with pytest.raises(FlywheelError, match=r"opening the repository: still rate limited .*HTTP 429"):
        forge(gh, retries=2).read(STAGING)
    assert gh["slept"] == [1, 1] and len(gh["calls"]) == 3


# ------------------------------------------------------------------ token, permissions, repository


def test_a_rejected_token_fails_at_once_naming_it(gh):
    with pytest.raises(FlywheelError, match=r"GitHub token rejected \(GITHUB_TOKEN\): Bad credentials"):
        forge(gh, token="ghs_revoked").propose(change())
    assert calls(gh) == [("GET", "")] and gh["slept"] == []  # a 401 is not retried


@pytest.mark.parametrize(
    "forbidden, permission, first_write",
    [
        (("POST", "/git/", "contents=write"), "contents=write", "/git/blobs"),
        (("POST", "/pulls", "pull_requests=write"), "pull_requests=write", "/pulls"),
    ],
    ids=["no-contents-write", "no-pull-requests-write"],
)
def test_a_missing_permission_is_named_and_leaves_nothing(gh, forbidden, permission, first_write):
    gh["forbidden"].append(forbidden)
    needs = (
        r"HTTP 403: Resource not accessible by integration; the token needs `contents: write` and "
        rf"`pull-requests: write` on acme/flywheel \(a fine-grained token or the GitHub App's installation\); "
        rf"GitHub accepts {permission} here"
    )
    with pytest.raises(FlywheelError, match=needs):
        forge(gh).propose(change())
    assert [c["status"] for c in gh["calls"] if c["path"].endswith(first_write)] == [403]  # not retried
    assert list(gh["refs"]) == ["refs/heads/main"] and gh["pulls"] == [] and gh["slept"] == []


def test_a_repository_the_token_cannot_see_names_the_permission(gh):
    with pytest.raises(
        FlywheelError,
        match=r"acme/private: opening the repository: HTTP 404: Not Found; the token needs `contents: write` "
        r"and `pull-requests: write` on acme/private",
    ):
        forge(gh, repository="acme/private").read(STAGING)
    assert [(c["method"], c["path"]) for c in gh["calls"]] == [("GET", "/repos/acme/private")]


# ------------------------------------------------------------------ a branch of the same name


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "closed"])
def test_a_branch_whose_pull_request_was_merged_or_closed_is_replaced(gh, merged):
    p = change()
    old = seed(gh, p.branch, {STAGING: "old: 1\n"}, parent=gh["main"], message="the last release")
    gh["pulls"].append(
        {
            "number": 1,
            "state": "closed",
            "merged_at": "2026-11-20T10:00:00Z" if merged else None,
            "head": p.branch,
            "base": "main",
            "title": "old",
            "body": "old",
        }
    )
    gh["main"] = seed(gh, "main", {"README.md": "merged since\n"}, parent=gh["main"])  # main moved on
    pr = forge(gh).propose(p)
    assert pr.number == 2 and pr.replaced == old and gh["pulls"][0]["state"] == "closed"
    assert pr.to_dict()["replaced"] == old and not pr.existing
    assert writes(gh)[-3:] == [("DELETE", f"/git/refs/heads/{p.branch}"), ("POST", "/git/refs"), ("POST", "/pulls")]
    assert gh["commits"][gh["refs"][f"refs/heads/{p.branch}"]]["parents"] == [gh["main"]]  # from today's main
    assert files_on(gh, p.branch) == files_on(gh, "main") | p.files


def test_a_rerun_with_its_pull_request_open_writes_nothing(gh):
    first = forge(gh).propose(change())
    since = len(gh["calls"])
    again = forge(gh).propose(change())
    assert again == dataclasses.replace(first, base_sha=None, existing=True)
    assert again.to_dict() == {k: v for k, v in first.to_dict().items() if k != "base_sha"} | {"existing": True}
    assert calls(gh, since) and not writes(gh, since) and len(gh["pulls"]) == 1


def test_an_open_pull_request_with_a_different_change_is_refused(gh):
    first = forge(gh).propose(change())
    since = len(gh["calls"])
    with pytest.raises(
        FlywheelError,
        match=r"branch flywheel/release-staging-v9 already has an open pull request #1 with a different change",
    ):
        forge(gh).propose(change("new: 2\n"))
    assert not writes(gh, since) and gh["refs"][f"refs/heads/{first.branch}"] == first.commit


OPEN = PullRequest("github", REPO, "flywheel/x", "main", "c" * 40, number=7, url="https://github.com/acme/pull/7")


@pytest.mark.parametrize(
    ("open_pull_request", "on_branch", "outcome"),
    [
        (None, {}, "replace"),  # merged or closed: the same version may be proposed again
        (OPEN, {STAGING: "new: 1\n", "notes/why.md": "because\n"}, "re-run"),
        (OPEN, {STAGING: "new: 2\n", "notes/why.md": "because\n"}, "refuse"),
        (OPEN, {STAGING: "new: 1\n"}, "refuse"),  # a file of the change missing on the branch
    ],
)
def test_the_rule_for_an_existing_branch(open_pull_request, on_branch, outcome):
    """One rule for both forges: replace a merged or closed branch, find a re-run's open pull request,
    refuse to overwrite an open one holding something else."""
    if outcome == "refuse":
        with pytest.raises(
            FlywheelError, match=r"acme/flywheel: branch flywheel/release-staging-v9 already has an open "
        ):
            rerun_or_replace(change(), open_pull_request, on_branch.get, "GitHub acme/flywheel")
        return
    got = rerun_or_replace(change(), open_pull_request, on_branch.get, "GitHub acme/flywheel")
    assert got == (None if outcome == "replace" else dataclasses.replace(OPEN, existing=True))


def test_the_local_forge_replaces_a_merged_branch_and_says_so(repo):
    forge_ = LocalForge(repo)
    p = Proposal("flywheel/x", {STAGING: "new: 1\n"}, "First", "first body")
    first = forge_.propose(p)
    forge_.merge(first)
    again = forge_.propose(dataclasses.replace(p, files={STAGING: "new: 2\n"}))  # the branch is merged: replaced
    assert again.replaced == first.commit and again.base_sha == first.commit and not again.existing
    assert forge_.propose(dataclasses.replace(p, files={STAGING: "new: 2\n"})).existing  # now open: a re-run
    assert isinstance(forge_, Forge) and isinstance(GitHubForge("t", REPO, pace=(0, 0)), Forge)


def test_the_emergency_stop_merges_its_pull_request_or_says_why_not(gh):
    pr = forge(gh).propose(change())
    merged = forge(gh).merge(pr)
    assert merged.merged_commit is not None and gh["refs"]["refs/heads/main"] == merged.merged_commit
    assert merged.to_dict()["merge"] == {"merged": True, "commit": merged.merged_commit}
    assert files_on(gh, "main") == files_on(gh, pr.branch)  # the change is on main: Argo CD syncs it
    gh["protected"] = True
    second = forge(gh).propose(change("newer: 2\n", branch="flywheel/rollback-staging-v3"))
    with pytest.raises(FlywheelError, match="merging pull request #2.*At least 1 approving review"):
        forge(gh).merge(second)
