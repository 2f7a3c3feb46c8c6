"""``flywheel resolve-image``: the digest the registry holds for an image tag, as the reference a
release pins (``flywheel release --image``). No torch, no registry client beyond HTTP: seconds on a
CI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass

from model.core.steps import StepResult
from model.deploy import images
from model.deploy.args import ResolveImageArgs


@dataclass(frozen=True)
class ResolvedImage:
    image: str  # registry/repository@sha256:... (the step output a release pins)
    digest: str
    repository: str
    tag: str


def resolve_image_command(args: ResolveImageArgs) -> StepResult[ResolvedImage]:
    """Resolve a tag to ``registry/repository@sha256:...`` (the step output ``image``)."""
    ref = images.parse(images.lower_name(args.image))
    found = images.resolve(ref, images.registry_credentials(ref.registry, dict(os.environ)), wait_s=args.wait_s)
    data = ResolvedImage(found.pinned, found.digest, found.name, ref.tag or "")
    md = f"## Image `{ref}`\n\nresolves to `{found.pinned}`: pin it with `flywheel release --image {found.pinned}`.\n"
    return StepResult(data, md)
