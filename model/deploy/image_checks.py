"""Validate what the pods run and how the image is pulled, across an environment's objects:

- **One image per environment.** The predictor (``kserve-container``) and the collector run the same
  image, named the same way: ``flywheel release --image`` pins both in one commit. Named by digest, or,
  until the first release that pins one, by the tag ``main`` that ``.github/workflows/image.yml`` pushes
  for the newest build of ``main`` (``images.PRE_RELEASE_TAG``). Any other tag is refused: it can be
  pushed again, and nothing in this project ever moves it.
- **A pull secret both pods use.** The InferenceService's predictor and the collector's pod template
  name a ServiceAccount of the environment (``serviceAccountName``) that names an image pull secret. A
  GHCR package is private by default; the kubelet pulls with the ServiceAccount's ``imagePullSecrets``,
  and so does Knative when it resolves the predictor's tag to a digest before it creates a revision
  (knative/serving ``pkg/reconciler/revision/revision.go`` passes the revision's ``serviceAccountName``
  and ``imagePullSecrets`` to go-containerregistry's k8schain, ``resolve.go`` asks the registry with it;
  a pull secret that does not exist is skipped, so a public package needs none). The Secret itself is
  created by hand (docs/cluster.md): secrets never go into Git.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from model.core.errors import FlywheelError
from model.deploy import images, manifests


def _pods(docs: list[tuple[Path, dict]]) -> list[tuple[Path, str, dict, list[dict]]]:
    """(file, what, pod spec, containers running this project's image) of the predictor and the collector."""
    out = []
    for path, doc in docs:
        name = (doc.get("metadata") or {}).get("name")
        if doc["kind"] == "InferenceService":
            pod = (doc.get("spec") or {}).get("predictor") or {}
            ours = [c for c in pod.get("containers") or [] if c.get("name") == manifests.CONTAINER]
            out.append((path, f"InferenceService {name}: spec.predictor", pod, ours))
        elif doc["kind"] == "Deployment":
            pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            out.append((path, f"Deployment {name}: spec.template.spec", pod, pod.get("containers") or []))
    return out


def image_errors(docs: list[tuple[Path, dict]]) -> list[str]:
    """One image for the predictor and the collector, by digest or by the pre-release tag."""
    named = {}
    errors = []
    for path, what, _, containers in _pods(docs):
        for c in containers:
            reference = str(c.get("image", ""))
            try:
                ref = images.parse(reference)
            except FlywheelError as exc:
                errors.append(f"{path}: {what} container {c.get('name')}: {exc}")
                continue
            named[f"{path.name} ({c.get('name')})"] = reference
            if not ref.digest and ref.tag != images.PRE_RELEASE_TAG:
                errors.append(
                    f"{path}: {what} container {c.get('name')} runs {reference}: name the image by digest "
                    f"(`flywheel release --image REPO@sha256:...`), or, before the first release, by the tag "
                    f"{images.PRE_RELEASE_TAG!r} that image.yml pushes"
                )
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{where}: {ref}" for where, ref in sorted(named.items()))
        errors.append(f"the predictor and the collector must run the same image (a release pins both): {listed}")
    return errors


def service_account_errors(docs: list[tuple[Path, dict]]) -> list[str]:
    """Both pods run as a ServiceAccount of the environment that names an image pull secret."""
    accounts = {(d.get("metadata") or {}).get("name"): d for _, d in docs if d["kind"] == "ServiceAccount"}
    errors = []
    for path, what, pod, _ in _pods(docs):
        name = pod.get("serviceAccountName")
        if not name:
            errors.append(
                f"{path}: {what}.serviceAccountName is unset: the pod would run as the namespace's `default` "
                "ServiceAccount, which names no image pull secret (a private image could not be pulled)"
            )
        elif name not in accounts:
            errors.append(f"{path}: {what}.serviceAccountName names {name}, a ServiceAccount this environment lacks")
        elif not accounts[name].get("imagePullSecrets"):
            errors.append(f"{path}: ServiceAccount {name} names no imagePullSecrets (a private image cannot be pulled)")
    return errors


def image_repositories(docs: list[tuple[Path, dict]]) -> set[str]:
    """The image repositories the predictor and the collector run (``registry/path``)."""
    found = set()
    for *_, containers in _pods(docs):
        for c in containers:
            with suppress(FlywheelError):  # image_errors names it
                found.add(images.parse(str(c.get("image", ""))).name)
    return found
