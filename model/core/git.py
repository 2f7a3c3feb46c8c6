"""The one way this project runs git: in a folder, output as text, a failure as FlywheelError with git's
own message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from model.core.errors import FlywheelError

IDENTITY = {  # for repositories Flywheel owns (the stand-in): this machine may have no user.name configured
    "GIT_AUTHOR_NAME": "flywheel",
    "GIT_AUTHOR_EMAIL": "flywheel@localhost",
    "GIT_COMMITTER_NAME": "flywheel",
    "GIT_COMMITTER_EMAIL": "flywheel@localhost",
}


def run_git(
    repo: Path, *args: str, check: bool = True, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """``git args`` in ``repo``; with ``check``, a non-zero exit raises FlywheelError naming the command."""
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        input=input,
        env={**os.environ, **(env or {})},
    )
    if check and done.returncode != 0:
        raise FlywheelError(f"git {' '.join(args[:2])} failed in {repo}: {done.stderr.strip()}")
    return done


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    """``git args`` in ``repo``, its standard output; FlywheelError if it fails."""
    return run_git(repo, *args, env=env).stdout
