"""The closed loop on one machine: log → drift → retrain → canary → promote, every step the real one.

``run_loop`` turns the flywheel once on a labelled dataset, with the stand-ins of ``model.loop.stand_in``
for GitHub (a local Git repository) and for Argo CD + KServe (``flywheel serve`` and ``flywheel
collect`` on loopback), simulated users (``model.loop.traffic``) and a simulated reviewer
(``model.loop.annotator``):

1. a first model learns part of the intents; it is gated, registered, released by pull request
   (merged into the stand-in repository) and promoted to ``champion``;
2. users talk to it; part-way through, they start asking for intents it never learned;
3. ``flywheel drift`` compares the two windows and a retrain pull request is opened and merged;
4. the window is exported, checked and prepared; the reviewer labels the review queue within a
   budget; the new training set is checked; a challenger is trained, evaluated, gated, registered;
5. a release pull request puts it on a canary; traffic is split as the manifest says; canary
   analysis looks after every batch of traffic until it decides; a promote or rollback pull
   request follows and is merged;
6. ``loop.json`` records everything and ``report.html`` shows it (``model.loop.report``).

The stages are ``model.loop.stages.Loop``'s methods; this module runs them in order (``flywheel demo``),
handing each what the ones before it returned.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.core.config import LoopConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.loop.args import DemoArgs
from model.loop.configs import LoopConfigs, load_configs
from model.loop.record import LoopRecord, summarise
from model.loop.stages import Loop


@contextmanager
def without_github() -> Iterator[None]:
    """The stand-in repository is local: a GITHUB_TOKEN in the environment must not send pull requests to GitHub."""
    saved = os.environ.pop("GITHUB_TOKEN", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["GITHUB_TOKEN"] = saved


@dataclass(frozen=True)
class LoopTurn:
    """One turn of the loop: where its report and record are, and each stage's outcome."""

    report: str
    loop_record: str
    git_repo: str | None
    seconds: float | None
    drift: bool | None  # None: the loop stopped before the drift check
    gate_passed: bool | None
    canary_decision: str | None
    offline: list[dict]  # each candidate's offline score
    stages: dict[str, dict]  # per stage: status, seconds, summary


def demo_command(args: DemoArgs, *, loop: LoopConfig, config_file: Path, work: Path) -> StepResult[LoopTurn]:
    """Turn the whole loop once on one machine: serve, log, drift, retrain, canary, promote; ends in an HTML report.

    Every other section comes from ``config_file`` (the servers the loop starts read the same file)."""
    out = Path(args.out) if args.out else work / "loop" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cfgs = load_configs(config_file, loop, out)
    record, report = run_loop(
        Path(args.dataset), out, cfgs, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    result, md = summarise(record, report)
    return StepResult(LoopTurn(**result), md)


def run_loop(
    dataset: Path, work: Path, cfgs: LoopConfigs, progress: Callable[[str], None] = print
) -> tuple[LoopRecord, Path]:
    """One whole turn; the report is written even when a stage fails (then the error is raised)."""
    work = Path(work).resolve()
    if work.exists() and any(work.iterdir()):
        raise FlywheelError(f"{work}: not empty; each loop run starts in a new folder")
    work.mkdir(parents=True, exist_ok=True)
    with without_github():
        loop, world = Loop(dataset, work, cfgs, progress), None
        try:
            world = loop.setup()
            first = loop.first_model(world)
            request = loop.traffic_and_drift(world)
            if request is not None:
                challenger = loop.retrain(world, request, first)
                if challenger.passed:
                    loop.canary(world, challenger.version)
                    loop.after_release(world)
        except BaseException:
            loop.close(world)
            try:  # a failed loop still leaves its record and report; the stage's own error is the one raised
                progress(f"[{loop.clock()}] report of the failed loop: {loop.finish(world)}")
            except Exception as exc:
                progress(f"[{loop.clock()}] could not write the report: {exc}")
            raise
        loop.close(world)
        report = loop.finish(world)
        progress(f"[{loop.clock()}] report: {report}")
    return loop.record, report
