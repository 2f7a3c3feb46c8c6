"""``flywheel resolve-image``: the digest the registry holds for an image tag, as the reference a
release pins (``flywheel release --image``). No torch, no registry client beyond HTTP: seconds on a
CI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass

from model.core.config import required, setting
from model.core.steps import StepResult
from model.deploy import images


@dataclass
class ResolveImageArgs:
    image: str = required(
        "image by tag, e.g. ghcr.io/OWNER/flywheel:<commit sha> (the name is lower-cased, as the image workflow "
        "pushes it); on ghcr.io, $GITHUB_TOKEN is used for a private image"
    )
    wait_s: float = setting(
        0.0, "how long to keep asking while the tag is not there yet (the image workflow may still be pushing it)"
    )


def resolve_image_command(args: ResolveImageArgs) -> StepResult:
    """Resolve a tag to ``registry/repository@sha256:...`` (the step output ``image``)."""
    ref = images.parse(images.lower_name(args.image))
    found = images.resolve(ref, images.registry_credentials(ref.registry, dict(os.environ)), wait_s=args.wait_s)
    data = {"image": found.pinned, "digest": found.digest, "repository": found.name, "tag": ref.tag or ""}
    md = f"## Image `{ref}`\n\nresolves to `{found.pinned}`: pin it with `flywheel release --image {found.pinned}`.\n"
    return StepResult(data, md)
