"""The model artifact: one folder, every file listed with its sha256 in ``MANIFEST.sha256``.

Layout: ``model.safetensors`` (all weights), ``config.json`` + tokenizer files (the encoder's
architecture), ``labels.json`` (intent names in logit order), ``meta.json`` (fallback threshold,
dataset digest, git SHA, config, metrics), ``MODEL_CARD.md``. Nothing is pickled. ``verify``
runs before anything is loaded, so a tampered or half-copied artifact is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from model.core.errors import FlywheelError

MANIFEST = "MANIFEST.sha256"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> str:
    """List every file's sha256; return the manifest's own digest, which identifies the artifact."""
    lines = [
        f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")
    return sha256_file(folder / MANIFEST)


def verify(folder: str | Path) -> str:
    """Check every file against the manifest (and that no file is missing or extra).

    Returns the artifact digest (sha256 of the manifest). Raises FlywheelError naming the file.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FlywheelError(f"{folder}: not a model artifact (no {MANIFEST})")
    expected: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64:
            raise FlywheelError(f"{manifest}: malformed line {line!r}")
        expected[name] = digest
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    for name in sorted(set(expected) - present):
        raise FlywheelError(f"{folder / name}: listed in {MANIFEST} but missing")
    for name in sorted(present - set(expected)):
        raise FlywheelError(f"{folder / name}: not listed in {MANIFEST} (unexpected file)")
    for name, digest in expected.items():
        if sha256_file(folder / name) != digest:
            raise FlywheelError(f"{folder / name}: sha256 does not match {MANIFEST}; artifact corrupted or tampered")
    return sha256_file(manifest)


def read_json(folder: Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())
