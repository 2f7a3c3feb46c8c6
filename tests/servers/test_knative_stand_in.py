"""The delivery steps against a stand-in that routes like KServe + Knative (model/loop/knative.py).

Each test merges real `flywheel release/promote/rollback` pull requests into a temporary GitOps
repository and syncs the InferenceService to the stand-in, as Argo CD would, then counts which model
answers: what users would get on a real cluster, second by second.
"""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import pytest
import yaml

from model.artifact.predictor import IntentPredictor
from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.argocd_health import inferenceservice_health
from model.deploy.delivery import promote_env_step, release_step, rollback_step
from model.loop.knative import DISALLOWED_ANNOTATIONS, KnativeService, revision_template
from model.registry import register
from scripts.cli import main
from tests.helpers.delivery import DCFG, ISVC, REG
from tests.helpers.git import git, merge

COLD_START_S = 90.0
REQUESTS = 2000


def pods_ready(svc: KnativeService, revision, now: float) -> bool:
    """Whether ``revision`` has pods to answer now; if not, Knative's activator holds its requests: started
    ``cold_start_s`` after it was created, or after the route last began to name it (``active_since``)."""
    if revision not in svc.active(now):
        return False
    started = max(revision.ready_at, svc.active_since.get(revision.name, revision.created_at) + svc.cold_start_s)
    return now >= started


@pytest.fixture(scope="module")
def third_model(registry_dir, tiny_artifact) -> int:
    """A third gated version (v4: v3 of this store never passed the gate), for the release after a rollback."""
    predictor = IntentPredictor.load(tiny_artifact["artifact"])
    meta = {**predictor.meta, "dataset_digest": "dataset-4", "mlflow_run_id": None}
    return register.register(REG, Path(tiny_artifact["artifact"]), meta, predictor.digest).version


def isvc_on_main(repo, env: str = "production") -> dict:
    return next(yaml.safe_load_all((repo / ISVC.format(env=env)).read_text()))


def answered_by(svc: KnativeService, now: float, n: int = REQUESTS) -> dict[str, int]:
    """How many of ``n`` requests at ``now`` each model version answers."""
    rng, counts = random.Random(7), {}
    for _ in range(n):
        version = svc.route(rng.random(), now).model_version
        counts[version] = counts.get(version, 0) + 1
    return counts


def sync(repo, svc: KnativeService, now: float):
    """Argo CD syncs main's InferenceService to the stand-in at ``now``; the new revision, if any."""
    return svc.apply(isvc_on_main(repo), now)


def released(repo, svc: KnativeService) -> float:
    """v1 rolled out, then v2 on a 10% canary, both ready; returns the time reached."""
    merge(repo, release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    sync(repo, svc, now=0)
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    sync(repo, svc, now=200)
    assert answered_by(svc, 200 + COLD_START_S / 2) == {"1": REQUESTS}  # the canary is still starting
    split = answered_by(svc, 200 + COLD_START_S)
    assert set(split) == {"1", "2"} and 120 < split["2"] < 290, split  # about 10%
    return 300.0


def promoted(repo, svc: KnativeService) -> float:
    """v2 released on a canary and promoted: it serves everyone; returns the time reached."""
    now = released(repo, svc)
    merge(repo, promote_env_step("production", 2, repo, REG, DCFG)[0]["pull_request"]["branch"])
    assert sync(repo, svc, now) is None and answered_by(svc, now) == {"2": REQUESTS}
    v1 = svc.revisions[0]
    assert v1 not in svc.active(now + 1) and not pods_ready(svc, v1, now + 1)  # no route names it: scaled to zero
    return now + 600


def restored_env(isvc: dict, ref: manifests.ModelRef) -> dict:
    """What rolling back by restoring ``ref``'s env (no pin) would sync: the approach the pin replaces."""
    restored = copy.deepcopy(isvc)
    restored["spec"]["predictor"].pop("canaryTrafficPercent", None)
    env = {e["name"]: e for e in restored["spec"]["predictor"]["containers"][0]["env"]}
    env["FLYWHEEL_MODEL_VERSION"]["value"] = str(ref.version)
    env["STORAGE_URI"]["value"] = ref.storage_uri
    env["FLYWHEEL_MODEL_SHA256"]["value"] = ref.sha256
    return restored


def test_after_the_rollback_merges_no_request_reaches_the_rolled_back_model(repo, store):
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    before = copy.deepcopy(svc)
    result, body = rollback_step("production", repo, REG, DCFG)
    merge(repo, result["pull_request"]["branch"])
    assert sync(repo, svc, now) is None  # the pin makes no revision: nothing to start
    for t in (now, now + 1, now + COLD_START_S, now + 10 * COLD_START_S):
        assert answered_by(svc, t) == {"1": REQUESTS}, t
    assert pods_ready(svc, svc.revisions[0], now)  # v1's pods served the other 90% all along
    state = manifests.read_rollout(repo / ISVC.format(env="production"))
    assert (state.stable.version, state.canary, state.rolled_back.version, state.canary_percent) == (1, None, 2, 0)
    assert "canaryTrafficPercent: 0" in body
    # what the pin avoids: restoring v1's env makes a new revision, and until it is ready Knative sends
    # everyone to the latest ready one, the canary being rolled back
    assert before.apply(restored_env(isvc_on_main(repo), state.stable), now) is not None
    assert answered_by(before, now + 1) == {"2": REQUESTS}  # every user on the bad model for the cold start
    assert answered_by(before, now + COLD_START_S) == {"1": REQUESTS}


def test_a_rollback_after_a_promotion_is_the_pin_on_the_promoted_revision(repo, store):
    """KServe moves latestRolledoutRevision back to previousRolledoutRevision when the promoted revision,
    still the newest, is given canaryTrafficPercent 0: v1's revision takes 100% with no new revision."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = promoted(repo, svc)
    v1, v2 = svc.revisions
    assert (svc.latest_rolled_out, svc.previous_rolled_out) == (v2.name, v1.name)
    before = copy.deepcopy(svc)
    result, body = rollback_step("production", repo, REG, DCFG)
    assert result["champion_on_merge"] == 1 and "Roll back production from v2 to v1" in body
    merge(repo, result["pull_request"]["branch"])
    assert sync(repo, svc, now) is None  # the same template: no revision, no cold start of the bad model
    for t in (now, now + 1, now + COLD_START_S):
        assert answered_by(svc, t) == {"1": REQUESTS}, t  # 0 of 2,000 on v2
    predictor = svc.status(now)["status"]["components"]["predictor"]
    assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == (v1.name, v1.name)
    assert predictor["latestReadyRevision"] == predictor["latestCreatedRevision"] == v2.name
    assert {(t["revisionName"], t["percent"]) for t in predictor["traffic"]} == {(v2.name, 0), (v1.name, 100)}
    # v1 had scaled to zero once no route named it: its pods start again, the activator holding requests
    assert not pods_ready(svc, v1, now + 1) and pods_ready(svc, v1, now + COLD_START_S)
    # what Git names: v1 serves (stable), v2's revision is the newest with no traffic (rolled back)
    state = manifests.read_rollout(repo / ISVC.format(env="production"))
    assert (state.stable.version, state.rolled_back.version, state.canary_percent, state.previous) == (1, 2, 0, None)
    assert isvc_on_main(repo)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # the rollback it replaces, v1's env restored: everyone stays on v2 until the new revision is ready
    assert before.apply(restored_env(isvc_on_main(repo), state.stable), now) is not None
    assert answered_by(before, now + 1) == {"2": REQUESTS}


@pytest.mark.parametrize("after", ["canary", "promotion"])
def test_the_next_release_after_a_pin_never_reaches_the_rolled_back_model(repo, store, third_model, after):
    """A new model's revision needs a cold start, during which Knative gives its share to the latest ready
    revision: released straight from the pin, that would be the rolled-back model. So `release` refuses
    until a second `rollback` restores the stable model's env under the pin."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc) if after == "canary" else promoted(repo, svc)
    merge(repo, rollback_step("production", repo, REG, DCFG)[0]["pull_request"]["branch"])
    sync(repo, svc, now)
    v2 = svc.revisions[1]
    assert v2 in svc.active(now) and pods_ready(svc, v2, now)  # its minReplicas pods stay, with 0% (docs/rollout.md)
    pinned = copy.deepcopy(svc)
    head = git(repo, "rev-parse", "main")
    with pytest.raises(FlywheelError, match="newest revision still serves rolled-back v2.*`flywheel rollback` once"):
        release_step("production", third_model, 10, repo, reg_cfg=REG, dcfg=DCFG)
    assert git(repo, "rev-parse", "main") == head and not git(repo, "branch", "--list", "flywheel/release-*-v4")
    # the second rollback restores v1's env under the pin: a new revision with no traffic
    restore, body = rollback_step("production", repo, REG, DCFG)
    assert "restore v1's env under the pin" in body and "champion_on_merge" not in restore
    merge(repo, restore["pull_request"]["branch"])
    state = manifests.read_rollout(repo / ISVC.format(env="production"))
    assert (state.stable.version, state.canary, state.rolled_back, state.canary_percent) == (1, None, None, 0)
    t = now + 600
    v1_again = sync(repo, svc, t)
    assert v1_again is not None and v1_again.model_version == "1"
    for at in (t, t + 1, t + COLD_START_S):
        assert answered_by(svc, at) == {"1": REQUESTS}, at
    assert inferenceservice_health(svc.status(t + 1)).status == "Progressing"  # the restored revision starts
    assert inferenceservice_health(svc.status(t + COLD_START_S)).status == "Healthy"
    assert v2 not in svc.active(t + COLD_START_S)  # replaced as latestRevision: its pods go
    with pytest.raises(FlywheelError, match="already rolled back and restored"):
        rollback_step("production", repo, REG, DCFG)
    # docs/rollout.md's way to end the idle pods before a release: delete the pin once the restored
    # revision is ready; Git accepts the edit, and only that revision stays active
    path = repo / ISVC.format(env="production")
    unpinned_text = re.sub(r"\n *canaryTrafficPercent: 0\b[^\n]*", "", path.read_text())
    unpinned = manifests.read_rollout(path, manifests.load(path, unpinned_text))
    assert unpinned == manifests.Rollout(stable=state.stable, previous=state.previous)
    edited = next(yaml.safe_load_all(unpinned_text))
    early, ready = copy.deepcopy(svc), copy.deepcopy(svc)
    assert ready.apply(edited, t + COLD_START_S) is None and answered_by(ready, t + COLD_START_S) == {"1": REQUESTS}
    assert ready.active(t + COLD_START_S + 1) == [v1_again]
    early.apply(edited, t + 1)  # not before: without the pin, latestRevision resolves to v2's revision
    assert answered_by(early, t + 1) == {"2": REQUESTS}
    # now the release: until v4's revision is ready its 10% waits on v1's restored revision, never on v2
    t = t + 600
    merge(repo, release_step("production", third_model, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    assert sync(repo, svc, t) is not None
    for at in (t, t + 1, t + COLD_START_S / 2):
        assert answered_by(svc, at) == {"1": REQUESTS}, at
    split = answered_by(svc, t + COLD_START_S)
    assert set(split) == {"1", str(third_model)} and 120 < split[str(third_model)] < 290, split
    assert v2 not in svc.active(t + COLD_START_S)
    # what the refusal prevented: the same InferenceService synced straight from the pin sends v4's 10% to v2
    assert pinned.apply(isvc_on_main(repo), now) is not None
    leaked = answered_by(pinned, now + 1)
    assert set(leaked) == {"1", "2"} and 120 < leaked["2"] < 290, leaked


def test_a_promote_changes_no_revision_and_bookkeeping_never_rolls_pods(repo, store):
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    assert len(svc.revisions) == 2  # one per model: v1, v2
    result, _ = promote_env_step("production", 2, repo, REG, DCFG)
    merge(repo, result["pull_request"]["branch"])
    assert sync(repo, svc, now) is None  # the canary's revision simply takes 100%
    assert answered_by(svc, now) == {"2": REQUESTS}
    assert svc.latest_rolled_out == svc.revisions[1].name and svc.previous_rolled_out == svc.revisions[0].name
    # the stand-in itself is faithful: an annotation on the InferenceService would have rolled the pods
    annotated = isvc_on_main(repo)
    annotated["metadata"]["annotations"]["flywheel.dev/stable-version"] = "2"
    assert revision_template(annotated) != revision_template(isvc_on_main(repo))
    assert svc.apply(annotated, now) is not None and len(svc.revisions) == 3


def test_kserve_keeps_its_default_disallowed_annotations_out_of_the_revision_template(repo):
    """kserve pkg/constants/constants.go, ServiceAnnotationDisallowedList: not empty by default."""
    isvc = isvc_on_main(repo)
    for key in DISALLOWED_ANNOTATIONS:
        edited = copy.deepcopy(isvc)
        edited["metadata"]["annotations"][key] = "changed"
        assert revision_template(edited) == revision_template(isvc), key
    assert "kubectl.kubernetes.io/last-applied-configuration" in DISALLOWED_ANNOTATIONS
    assert "autoscaling.knative.dev/min-scale" in DISALLOWED_ANNOTATIONS


def test_an_inferenceservice_recreated_mid_canary_gives_the_canary_everything(repo, store):
    """KServe keeps the stable share only in its status: a recreated object has none. check-manifests
    therefore requires Argo CD never to delete or prune the InferenceService (tests/code/test_manifests.py)."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    now = released(repo, svc)
    recreated = KnativeService("intent", cold_start_s=COLD_START_S)
    recreated.apply(isvc_on_main(repo), now)
    assert answered_by(recreated, now + COLD_START_S) == {"2": REQUESTS}  # the 10% canary serves everyone
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
    assert answered_by(svc, now) == {"1": REQUESTS}


def test_no_promote_or_release_on_a_stale_view_of_the_cluster(repo, store, tmp_path, capsys):
    """`--cluster-status` (kubectl's JSON of the InferenceService) stops a promote of a canary that is not ready,
    gets no share, or lost its stable share to a recreation; and a release while a revision rolls out."""
    svc = KnativeService("intent", cold_start_s=COLD_START_S)
    merge(repo, release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=0)
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    svc.apply(isvc_on_main(repo), now=200)
    status = tmp_path / "isvc.json"
    common = ["--env", "production", "--repo", str(repo), "--report-dir", str(tmp_path / "r")]

    def promote_at(now: float, service: KnativeService = svc) -> int:
        status.write_text(json.dumps(service.status(now)))
        return main(["promote", *common, "--cluster-status", str(status)])

    assert promote_at(200 + COLD_START_S / 2) == 2
    # a revision rolling out leaves KServe's Ready condition Unknown, which Argo CD shows as Progressing
    assert "refusing to promote: condition Ready is Unknown" in (err := capsys.readouterr().err)
    assert "(Argo CD shows Progressing)" in err
    recreated = KnativeService("intent", cold_start_s=0)
    recreated.apply(isvc_on_main(repo), now=0)
    assert promote_at(1, recreated) == 2
    assert "gets 100% of the traffic, not the 10% Git says" in capsys.readouterr().err
    assert promote_at(200 + COLD_START_S) == 0  # ready, on its 10%: the promote pull request opens
    assert "flywheel/promote-production-v2" in git(repo, "branch", "--list", "flywheel/promote-*")
    status.write_text(json.dumps(svc.status(200 + COLD_START_S / 2)))
    released = ["release", *common, "--model-version", "2", "--cluster-status", str(status)]
    assert main(released) == 2 and "refusing to release" in capsys.readouterr().err


def test_the_rollout_page_states_what_a_rolled_back_revision_costs():
    """docs/rollout.md's figures are the production manifest's: minReplicas pods at their requests."""
    isvc = next(yaml.safe_load_all((PROJECT_ROOT / ISVC.format(env="production")).read_text()))
    predictor = isvc["spec"]["predictor"]
    requests = predictor["containers"][0]["resources"]["requests"]
    page = " ".join((PROJECT_ROOT / "docs" / "rollout.md").read_text().split())
    assert f"`minReplicas: {predictor['minReplicas']}`" in page
    assert f"{requests['cpu']} CPU and {requests['memory']} of memory requested per pod" in page
