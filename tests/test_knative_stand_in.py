# ruff: noqa: F811 - the fixtures registry_dir and store come from tests/test_delivery.py
"""The delivery steps against a stand-in that routes like KServe + Knative (model/loop/knative.py).

Each test merges real `flywheel release/promote/rollback` pull requests into a temporary GitOps
repository and syncs the InferenceService to the stand-in, as Argo CD would, then counts which model
answers: what users would get on a real cluster, second by second.
"""

from __future__ import annotations

import copy
import json
import random

import yaml

from model.deploy import manifests
from model.deploy.delivery import promote_env_step, release_step, rollback_step
from model.loop.knative import KnativeService, revision_template
from scripts.cli import main
from tests.test_delivery import DCFG, ISVC, REG, git, merge, registry_dir, store  # noqa: F401 - fixtures

COLD_START_S = 90.0


def isvc_on_main(repo, env: str = "production") -> dict:
    return next(yaml.safe_load_all((repo / ISVC.format(env=env)).read_text()))


def answered_by(svc: KnativeService, now: float, n: int = 2000) -> dict[str, int]:
    """How many of ``n`` requests at ``now`` each model version answers."""
    rng, counts = random.Random(7), {}
    for _ in range(n):
        version = svc.route(rng.random(), now).model_version
        counts[version] = counts.get(version, 0) + 1
    return counts


def released(repo, svc: KnativeService) -> float:
    """v1 rolled out, then v2 on a 10% canary, both ready; returns the time reached."""
    merge(repo, release_step("production", 1, 10, repo, REG, DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=0)
    merge(repo, release_step("production", 2, 10, repo, REG, DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=200)
    assert answered_by(svc, 200 + COLD_START_S / 2) == {"1": 2000}  # the canary is still starting
    split = answered_by(svc, 200 + COLD_START_S)
    assert set(split) == {"1", "2"} and 120 < split["2"] < 290, split  # about 10%
    return 300.0


def test_after_the_rollback_merges_no_request_reaches_the_rolled_back_model(repo, store):
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    before = copy.deepcopy(svc)
    result, body = rollback_step("production", repo, REG, DCFG)
    merge(repo, result["pull_request"]["branch"])
    assert svc.apply(isvc_on_main(repo), now) is None  # the pin makes no revision: nothing to start
    for t in (now, now + 1, now + COLD_START_S, now + 10 * COLD_START_S):
        assert answered_by(svc, t) == {"1": 2000}, t
    state = manifests.read_rollout(repo / ISVC.format(env="production"))
    assert (state.stable.version, state.canary, state.rolled_back.version, state.canary_percent) == (1, None, 2, 0)
    assert "canaryTrafficPercent: 0" in body
    # what the pin avoids: restoring v1's env makes a new revision, and until it is ready Knative sends
    # everyone to the latest ready one, the canary being rolled back
    restored = isvc_on_main(repo)
    restored["spec"]["predictor"].pop("canaryTrafficPercent")
    env = {e["name"]: e for e in restored["spec"]["predictor"]["containers"][0]["env"]}
    env["FLYWHEEL_MODEL_VERSION"]["value"] = "1"
    env["STORAGE_URI"]["value"] = state.stable.storage_uri
    env["FLYWHEEL_MODEL_SHA256"]["value"] = state.stable.sha256
    assert before.apply(restored, now) is not None
    assert answered_by(before, now + 1) == {"2": 2000}  # every user on the bad model for the cold start
    assert answered_by(before, now + COLD_START_S) == {"1": 2000}


def test_a_promote_changes_no_revision_and_bookkeeping_never_rolls_pods(repo, store):
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    assert len(svc.revisions) == 2  # one per model: v1, v2
    result, _ = promote_env_step("production", 2, repo, REG, DCFG)
    merge(repo, result["pull_request"]["branch"])
    assert svc.apply(isvc_on_main(repo), now) is None  # the canary's revision simply takes 100%
    assert answered_by(svc, now) == {"2": 2000}
    assert svc.latest_rolled_out == svc.revisions[1].name and svc.previous_rolled_out == svc.revisions[0].name
    # the stand-in itself is faithful: an annotation on the InferenceService would have rolled the pods
    annotated = isvc_on_main(repo)
    annotated["metadata"]["annotations"]["flywheel.dev/stable-version"] = "2"
    assert revision_template(annotated) != revision_template(isvc_on_main(repo))
    assert svc.apply(annotated, now) is not None and len(svc.revisions) == 3


def test_an_inferenceservice_recreated_mid_canary_gives_the_canary_everything(repo, store):
    """KServe keeps the stable share only in its status: a recreated object has none. check-manifests
    therefore requires Argo CD never to delete or prune the InferenceService (tests/test_manifests.py)."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    recreated = KnativeService("intent", cold_start_s=COLD_START_S)
    recreated.apply(isvc_on_main(repo), now)
    assert answered_by(recreated, now + COLD_START_S) == {"2": 2000}  # the 10% canary serves everyone
    assert (
        isvc_on_main(repo)["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Delete=false,Prune=false"
    )


def test_the_emergency_stop_merges_the_pin_at_once(repo, store, tmp_path):
    """`flywheel rollback --env E --merge`: the pin is on main (what Argo CD syncs and self-heal keeps) before
    anyone reviews it, and users are off the canary as soon as it syncs."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    reports = tmp_path / "reports"
    assert main(["rollback", "--env", "production", "--repo", str(repo), "--merge", "--report-dir", str(reports)]) == 0
    result = json.loads((reports / "rollback.json").read_text())
    assert result["pull_request"]["merge"]["merged"] is True
    assert result["pull_request"]["merge"]["commit"] == git(repo, "rev-parse", "main")
    svc.apply(isvc_on_main(repo), now)
    assert answered_by(svc, now) == {"1": 2000}


def test_no_promote_or_release_on_a_stale_view_of_the_cluster(repo, store, tmp_path, capsys):
    """`--cluster-status` (kubectl's JSON of the InferenceService) stops a promote of a canary that is not ready,
    gets no share, or lost its stable share to a recreation; and a release while a revision rolls out."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    merge(repo, release_step("production", 1, 10, repo, REG, DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=0)
    merge(repo, release_step("production", 2, 10, repo, REG, DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=200)
    status = tmp_path / "isvc.json"
    common = ["--env", "production", "--repo", str(repo), "--report-dir", str(tmp_path / "r")]

    def promote_at(now: float, service: KnativeService = svc) -> int:
        status.write_text(json.dumps(service.status(now)))
        return main(["promote", *common, "--cluster-status", str(status)])

    assert promote_at(200 + COLD_START_S / 2) == 2
    assert "refusing to promote: condition Ready is False" in capsys.readouterr().err
    recreated = KnativeService("intent", cold_start_s=0)
    recreated.apply(isvc_on_main(repo), now=0)
    assert promote_at(1, recreated) == 2
    assert "gets 100% of the traffic, not the 10% Git says" in capsys.readouterr().err
    assert promote_at(200 + COLD_START_S) == 0  # ready, on its 10%: the promote pull request opens
    assert "flywheel/promote-production-v2" in git(repo, "branch", "--list", "flywheel/promote-*")
    status.write_text(json.dumps(svc.status(200 + COLD_START_S / 2)))
    released = ["release", *common, "--model-version", "2", "--cluster-status", str(status)]
    assert main(released) == 2 and "refusing to release" in capsys.readouterr().err
