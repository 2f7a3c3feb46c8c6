"""The image a release pins: the files it changes, and, when none is given, the digest the environment
before it ran.

Staging is where a new image meets users first (``retrain.yml`` releases each new model there on the
image built from the same commit, pinned by digest). A release to the next environment (production)
without ``--image`` therefore carries forward the digest staging's manifest on the base branch pins,
so production runs by digest the serving code staging ran, never whatever the tag names by then. A
promotion changes no image: the canary's revision already runs the one its release pinned.

Carried only from a settled staging: while a canary runs there, or after one was rolled back, the
image its manifest names is the canary's, not what its stable revision runs; the release is refused
then (pass ``--image``). A staging that names its image by tag (before its first pinned release) has no
digest to carry: the images stay as they are, and the pull request says so.
"""

from __future__ import annotations

from pathlib import Path

from model.core.config import DeliveryConfig
from model.core.errors import FlywheelError
from model.deploy import images, manifests


def running_image(isvc: manifests.IsvcFile) -> str:
    """The image ``kserve-container`` names in an InferenceService file ("" when none)."""
    predictor = (isvc.isvc.get("spec") or {}).get("predictor") or {}
    ours = [c for c in predictor.get("containers") or [] if c.get("name") == manifests.CONTAINER]
    return str(ours[0].get("image", "")) if ours else ""


def pinned_files(forge, isvc_path: str, isvc_text: str, image: str) -> dict[str, str]:
    """The InferenceService (``isvc_text``, at ``isvc_path`` in the repository) and the collector beside it, with
    their containers pinned to ``image`` (by digest): the files of one release commit."""
    collector = str(Path(isvc_path).with_name(manifests.COLLECTOR_FILE))
    return {
        isvc_path: images.pin(isvc_text, image, isvc_path),
        collector: images.pin(forge.read(collector), image, collector),
    }


def carried_image(forge, env: str, dcfg: DeliveryConfig) -> tuple[str, str]:
    """(the image to pin, or "" to leave the images alone; the pull request's line about it)."""
    at = manifests.ENVIRONMENTS.index(env)
    if at == 0:
        return "", "Image: unchanged (pass `--image REPO@sha256:...` to pin another)."
    before = manifests.ENVIRONMENTS[at - 1]
    rel = f"{dcfg.manifests_dir}/{before}/{manifests.ISVC_FILE}"
    label = Path(rel)
    isvc = manifests.load(label, forge.read(rel))
    reference = running_image(isvc)
    ref = images.parse(reference)
    if not ref.digest:
        return "", (
            f"Image: unchanged: {before} names `{reference}`, no digest to carry forward (release {before} with "
            "`--image` first, or pass `--image REPO@sha256:...`)."
        )
    rollout = manifests.read_rollout(label, isvc)
    if rollout.canary or rollout.rolled_back:
        state = f"canary {rollout.canary.label()} runs" if rollout.canary else "a canary was rolled back"
        raise FlywheelError(
            f"{rel} on {dcfg.base_branch}: {state} in {before}, so the image it names ({ref.pinned}) is not what its "
            f"stable model runs; finish {before}'s canary first, or pass --image REPO@sha256:..."
        )
    served = f", where it serves {rollout.stable.label()}" if rollout.stable else ""
    return ref.pinned, f"Image: `{ref.pinned}`, carried forward from {before} (`{rel}` on {dcfg.base_branch}{served})."
