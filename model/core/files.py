"""Writing a file or folder so that a reader never sees half of it, and a failure leaves nothing behind:
write a temporary sibling, then rename it over the target in one step."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file, or a folder the block creates); when the
    block succeeds it replaces ``path`` in one rename, when it fails it is removed. ``suffix`` keeps an
    extension some writers insist on (numpy's ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    _remove(tmp)  # left by a process killed mid-write
    try:
        yield tmp
        tmp.replace(path)
    finally:
        _remove(tmp)


def write_text(path: Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
