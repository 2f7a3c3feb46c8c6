"""Code tests of the logs a reader gets: progress bars draw on a terminal only, ours and the libraries'."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from model.core.config import PROJECT_ROOT
from model.core.progress import OFF_TERMINAL, bar, quiet_bars_off_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_on_a_terminal_and_not_in_a_file():
    terminal, file = Terminal(), io.StringIO()
    for out in (terminal, file):
        for _ in bar(range(50), file=out, mininterval=0, desc="work"):
            pass
    assert "\r" in terminal.getvalue() and "work" in terminal.getvalue()
    assert file.getvalue() == ""
    hidden = Terminal()
    list(bar(range(5), file=hidden, hidden=True))  # a worker that is not rank 0: not even on a terminal
    assert hidden.getvalue() == ""


def test_off_a_terminal_the_libraries_switches_are_set_and_a_users_own_kept(monkeypatch):
    for name in OFF_TERMINAL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user asked for it
    quiet_bars_off_terminal(Terminal())
    assert "TQDM_DISABLE" not in os.environ
    quiet_bars_off_terminal(io.StringIO())
    environ = os.environ
    assert environ["TQDM_DISABLE"] == "1" and environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_the_libraries_bars_stay_out_of_a_log_file(tmp_path):
    """What a step's libraries draw once the CLI has called quiet_bars_off_terminal, with stderr a file:
    a plain tqdm bar, transformers' (its "Loading weights"), MLflow's artifact transfers."""
    code = (
        "from model.core.progress import quiet_bars_off_terminal\n"
        "quiet_bars_off_terminal()\n"
        "import tqdm, transformers.utils.logging as hf\n"
        "from mlflow.utils.file_utils import ArtifactProgressBar\n"
        "for make in (tqdm.tqdm, hf.tqdm):\n"
        "    for _ in make(range(50), desc='frames', mininterval=0): pass\n"
        "with ArtifactProgressBar.files('Downloading artifacts', 50) as files:\n"
        "    for _ in range(50): files.update()\n"
        "print('done')\n"
    )
    log = tmp_path / "step.log"
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=err)
    text = log.read_text()
    assert done.returncode == 0 and done.stdout.decode().strip() == "done", text[-2000:]
    assert "\r" not in text and "frames" not in text and "Downloading" not in text, text[-2000:]
