"""What one turn of the loop did, as one typed record: ``LoopRecord`` is what ``loop.json`` holds (and the
report reads). The stages hand each other what they need by return value (``model.loop.world``); each
stage's outcome is recorded here as it ends, so a loop that stops part-way still leaves its record.

``LoopRecord.to_dict`` gives loop.json's content: one key per field, in field order, nested records as
objects. Sections of stages that did not run are null, so a reader sees every key of a stopped loop.
``summarise`` turns a record into the ``flywheel demo`` step's result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gate step brings PyTorch; the report reads records without it
    from model.evaluate.steps import GateResult


@dataclass
class StageEntry:
    name: str
    title: str
    status: str = "failed"  # until its block ends without an exception, so a crash reads as failed
    seconds: float = 0.0
    summary: str = ""


@dataclass
class Event:
    """A moment marked on the report's time charts ("traffic shifts", "v2 promoted")."""

    time: str
    label: str


@dataclass
class PullRequest:
    """A pull request the loop opened on the stand-in repository, and the commit that merged it."""

    kind: str  # release, retrain, promote, rollback
    title: str
    branch: str
    commit: str
    merged: bool
    body: str


@dataclass
class OfflineScore:
    """One trained model on the full test set (every intent, held-back ones too)."""

    test_accuracy: float
    macro_f1: float
    test_set: str
    model_version: str  # the registered version, or why there is none


@dataclass
class Intents:
    known_at_start: list[str]
    held_back: list[str]


@dataclass
class DriftOutcome:
    drift: bool
    reasons: list[str]
    html: str | None  # Evidently's report
    markdown: str


@dataclass
class GateOutcome:
    """The gate's verdict on the newest model trained: the gate step's result, kept whole (loop.json carries
    it flat, as ``flywheel gate`` reports it, beside its markdown and the data)."""

    result: GateResult
    data: str  # which data the model was trained and tested on

    @property
    def passed(self) -> bool:
        return self.result.passed

    @property
    def reasons(self) -> list[str]:
        return self.result.decision.reasons

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "markdown": self.result.markdown, "data": self.data}


@dataclass
class Labelling:
    """What the simulated reviewer did with the review queue of the requested window."""

    strategy: str
    budget: int
    queue_length: int
    labelled: int
    wrong_labels: int
    error_rate: float
    new_intent_labels: int
    new_intents_waiting_for_labels: dict[str, int]
    # candidate new intents prepare proposed (model.prepare.discovery.discovery_figures) and the ones
    # the reviewer judged (annotator.name_clusters): each judged cluster is one label of the budget
    discovery: dict = field(default_factory=dict)
    clusters_judged: int = 0
    clusters_named: int = 0
    cluster_labels: int = 0
    label_check: dict = field(default_factory=dict)  # prepare's label check: flagged per source (its datasheet's)
    label_check_score: dict = field(default_factory=dict)  # annotator.recheck_score: planted mistakes caught


@dataclass
class CanaryLook:
    """One canary analysis: its decision and each arm's counts (``model.deploy.canary.ArmMetrics`` as a dict)."""

    look: int
    decision: str
    stable: dict
    canary: dict


@dataclass
class CanaryOutcome:
    decision: str
    reasons: list[str]
    markdown: str  # the last analysis
    looks: list[CanaryLook]


@dataclass
class RegisteredVersion:
    version: int
    aliases: list[str]
    run_id: str
    dataset_digest: str
    git_sha: str
    created: str
    metrics: dict[str, float]


@dataclass
class RegistryState:
    tracking_uri: str
    model_name: str
    versions: list[RegisteredVersion]


@dataclass
class LoopRecord:
    """Everything one turn of the loop did, as loop.json holds it; each stage fills its section."""

    dataset: str
    started_at: str
    stages: list[StageEntry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    pull_requests: list[PullRequest] = field(default_factory=list)
    offline: list[OfflineScore] = field(default_factory=list)
    drift: DriftOutcome | None = None
    gate: GateOutcome | None = None
    canary: CanaryOutcome | None = None
    labelling: Labelling | None = None
    intents: Intents | None = None
    traffic: str | None = None  # the simulated requests (Parquet)
    registry: RegistryState | None = None
    git_repo: str | None = None
    finished_at: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        """loop.json's content (JSON types, but for numbers numpy may have given)."""
        data = dataclasses.asdict(self)
        data["gate"] = self.gate.to_dict() if self.gate else None
        return data


def summarise(record: LoopRecord, report: Path) -> tuple[dict, str]:
    """The CLI's JSON result and markdown: the outcome of each stage and where everything is."""
    stages = {s.name: {"status": s.status, "seconds": s.seconds, "summary": s.summary} for s in record.stages}
    result = {
        "report": str(report),
        "loop_record": str(Path(report).with_name("loop.json")),
        "git_repo": record.git_repo,
        "seconds": record.seconds,
        "drift": record.drift.drift if record.drift else None,
        "gate_passed": record.gate.passed if record.gate else None,
        "canary_decision": record.canary.decision if record.canary else None,
        "offline": [dataclasses.asdict(o) for o in record.offline],
        "stages": stages,
    }
    rows = "\n".join(f"| {s.title} | {s.status} | {s.seconds} | {s.summary} |" for s in record.stages)
    md = (
        "## One turn of the loop\n\n| stage | status | seconds | outcome |\n|---|---|---:|---|\n"
        f"{rows}\n\nReport: `{report}`; stand-in repository: `{record.git_repo}` (`git log` shows the "
        "merged pull requests).\n"
    )
    return result, md
