"""``flywheel``: one subcommand per step of the loop, declared once in the table below.

Each row names the step, says what it does, points at its function (imported only when the step
runs, so the delivery steps start without PyTorch) and states its wiring: the flags dataclass
(``args``), the config sections it reads (``sections``: each a help section of its own, and a
keyword of that name) and what the CLI hands down (``injected``: ``work``, ``report_dir``,
``config_file``). ``model/core/steps.py`` checks a row against its function's signature when the
step loads, and a test loads every row. Every step prints its result as JSON on stdout and a
markdown summary on stderr, writes ``<step>.json`` and ``<step>.md`` to the report folder, and exits
0 on success, 1 when a decision says no (gate rejected, a check failed), 2 on bad input (nothing
written).
"""

from __future__ import annotations

import sys

from data_checks.args import CheckDataArgs, DriftArgs
from model.collect.args import ExportEventsArgs
from model.core.command_line import run
from model.core.steps import Step
from model.deploy.args import (
    CanaryAnalysisArgs,
    CheckManifestsArgs,
    InitArgs,
    PromoteArgs,
    ReconcileArgs,
    ReleaseArgs,
    RequestRetrainArgs,
    ResolveImageArgs,
    RollbackArgs,
    TrainJobArgs,
)
from model.evaluate.args import EvaluateArgs, GateArgs
from model.loop.args import DemoArgs, ReportArgs, TrafficArgs
from model.prepare.args import PrepareArgs
from model.registry.args import RegisterArgs, SetChampionArgs
from model.serve.args import ServeArgs
from model.train.args import TrainArgs

STEPS = (
    # set up a fork
    Step(
        "init",
        "personalise a fork in one commit: repository, image, namespaces, Prometheus release label",
        "model.deploy.fork:init_command",
        args=InitArgs,
        sections=("delivery",),
    ),
    # retrain, validate, register
    Step(
        "train",
        "fine-tune an intent model and write a verified artifact",
        "model.train.steps:train_command",
        args=TrainArgs,
        sections=("data", "train", "registry"),
        injected=("work",),
    ),
    Step(
        "train-job",
        "train on the cluster as a Kubeflow Trainer TrainJob, then download the artifact its MLflow run holds",
        "model.deploy.train_job:train_job_command",
        args=TrainJobArgs,
        sections=("registry",),
        injected=("work",),
    ),
    Step(
        "evaluate",
        "measure a model on a labelled test set",
        "model.evaluate.steps:evaluate_command",
        args=EvaluateArgs,
        sections=("data", "registry"),
    ),
    Step(
        "gate",
        "decide whether a challenger may replace the champion",
        "model.evaluate.steps:gate_command",
        args=GateArgs,
        sections=("data", "gate", "registry"),
    ),
    Step(
        "register",
        "register a gated artifact in MLflow as 'challenger'",
        "model.registry.steps:register_command",
        args=RegisterArgs,
        sections=("registry",),
    ),
    Step(
        "set-champion",
        "move the registry's 'champion' alias to a gated version (nothing is deployed)",
        "model.registry.steps:set_champion_command",
        args=SetChampionArgs,
        sections=("registry",),
    ),
    # deploy by pull request
    Step(
        "release",
        "pull request: put a gated model version on a canary",
        "model.deploy.steps:release_command",
        args=ReleaseArgs,
        sections=("registry", "delivery"),
    ),
    Step(
        "promote",
        "pull request: an environment's canary takes 100% and becomes stable",
        "model.deploy.steps:promote_command",
        args=PromoteArgs,
        sections=("registry", "delivery"),
    ),
    Step(
        "rollback",
        "pull request: pin users on the previous stable model (ends a canary or undoes a promotion); once pinned, "
        "restore its env under the pin",
        "model.deploy.steps:rollback_command",
        args=RollbackArgs,
        sections=("registry", "delivery"),
    ),
    Step(
        "reconcile-registry",
        "after a merge to main: move 'champion' to the stable model the manifest names",
        "model.deploy.reconcile:reconcile_registry_command",
        args=ReconcileArgs,
        sections=("registry", "delivery"),
    ),
    Step(
        "canary-analysis",
        "decide promote, hold or rollback from per-arm metrics",
        "model.deploy.steps:canary_analysis_command",
        args=CanaryAnalysisArgs,
        sections=("canary", "delivery"),
    ),
    Step(
        "request-retrain",
        "on drift, a pull request asking to retrain on the drifted window",
        "model.deploy.steps:request_retrain_command",
        args=RequestRetrainArgs,
        sections=("delivery",),
    ),
    Step(
        "check-manifests",
        "validate the manifests Argo CD syncs (KServe, Kubernetes, promtool, Argo CD)",
        "model.deploy.steps:check_manifests_command",
        args=CheckManifestsArgs,
        sections=("delivery",),
    ),
    Step(
        "resolve-image",
        "the digest of an image tag, for release --image",
        "model.deploy.image_steps:resolve_image_command",
        args=ResolveImageArgs,
    ),
    # prepare and check data
    Step(
        "prepare",
        "turn logged conversations into the next training set (redact, clean, label, balance, split)",
        "model.prepare.steps:prepare_command",
        args=PrepareArgs,
        sections=("data", "prepare", "pii", "registry"),
        injected=("work",),
    ),
    Step(
        "check-data",
        "validate logged events and/or a training snapshot with Great Expectations",
        "data_checks.validate:check_data_command",
        args=CheckDataArgs,
        sections=("data", "prepare", "checks"),
        injected=("report_dir",),
    ),
    Step(
        "drift",
        "compare recent logs with the training data (Evidently): one verdict",
        "data_checks.drift:drift_command",
        args=DriftArgs,
        sections=("data", "drift", "registry"),
        injected=("work", "report_dir"),
    ),
    # log and serve
    Step(
        "serve",
        "serve stable/canary/shadow models with KServe's ModelServer",
        "model.deploy.serve_step:serve_command",
        args=ServeArgs,
        sections=("serve", "registry"),
    ),
    Step(
        "collect",
        "store KServe logger events and user feedback, personal data redacted",
        "model.collect.collector:collect_command",
        sections=("collect", "pii"),
    ),
    Step(
        "export-events",
        "export a window of logged conversations as a snapshot with a content digest",
        "model.collect.export:export_command",
        args=ExportEventsArgs,
        sections=("collect",),
        injected=("work",),
    ),
    # the loop on one machine
    Step(
        "traffic",
        "simulated users: labelled messages through the predictor, reactions to the collector",
        "model.loop.traffic_step:traffic_command",
        args=TrafficArgs,
        sections=("data", "traffic"),
        injected=("work",),
    ),
    Step(
        "demo",
        "turn the whole loop once on this machine; ends in an HTML report",
        "model.loop.orchestrator:demo_command",
        args=DemoArgs,
        sections=("loop",),
        injected=("config_file", "work"),
    ),
    Step(
        "report",
        "render a loop's HTML report from its record (loop.json)",
        "model.loop.report:report_command",
        args=ReportArgs,
    ),
)


def main(argv: list[str] | None = None) -> int:
    return run(STEPS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
