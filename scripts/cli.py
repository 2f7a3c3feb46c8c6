"""``flywheel``: one subcommand per step of the loop, declared once in the table below.

Each row names the step, says what it does and points at its function; the function's signature
declares the step's flags and the config sections it reads (``model/core/steps.py``). Every step
prints its result as JSON on stdout and a markdown summary on stderr, writes ``<step>.json`` and
``<step>.md`` to the report folder, and exits 0 on success, 1 when a decision says no (gate
rejected, a check failed), 2 on bad input (nothing written).
"""

from __future__ import annotations

import sys

from model.core.command_line import run
from model.core.steps import Step

STEPS = (
    # set up a fork
    Step(
        "init",
        "personalise a fork in one commit: repository, image, namespaces, Prometheus release label",
        "model.deploy.fork:init_command",
    ),
    # retrain, validate, register
    Step("train", "fine-tune an intent model and write a verified artifact", "model.train.steps:train_command"),
    Step(
        "train-job",
        "train on the cluster as a Kubeflow Trainer TrainJob, then download the artifact its MLflow run holds",
        "model.deploy.train_job:train_job_command",
    ),
    Step("evaluate", "measure a model on a labelled test set", "model.evaluate.steps:evaluate_command"),
    Step("gate", "decide whether a challenger may replace the champion", "model.evaluate.steps:gate_command"),
    Step("register", "register a gated artifact in MLflow as 'challenger'", "model.registry.steps:register_command"),
    Step(
        "set-champion",
        "move the registry's 'champion' alias to a gated version (nothing is deployed)",
        "model.registry.steps:set_champion_command",
    ),
    # deploy by pull request
    Step("release", "pull request: put a gated model version on a canary", "model.deploy.steps:release_command"),
    Step(
        "promote",
        "pull request: an environment's canary takes 100% and becomes stable",
        "model.deploy.steps:promote_command",
    ),
    Step(
        "rollback",
        "pull request: pin users on the previous stable model (ends a canary or undoes a promotion); once pinned, "
        "restore its env under the pin",
        "model.deploy.steps:rollback_command",
    ),
    Step(
        "reconcile-registry",
        "after a merge to main: move 'champion' to the stable model the manifest names",
        "model.deploy.reconcile:reconcile_registry_command",
    ),
    Step(
        "canary-analysis",
        "decide promote, hold or rollback from per-arm metrics",
        "model.deploy.steps:canary_analysis_command",
    ),
    Step(
        "request-retrain",
        "on drift, a pull request asking to retrain on the drifted window",
        "model.deploy.steps:request_retrain_command",
    ),
    Step(
        "check-manifests",
        "validate the manifests Argo CD syncs (KServe, Kubernetes, promtool, Argo CD)",
        "model.deploy.steps:check_manifests_command",
    ),
    Step(
        "resolve-image",
        "the digest of an image tag, for release --image",
        "model.deploy.image_steps:resolve_image_command",
    ),
    # prepare and check data
    Step(
        "prepare",
        "turn logged conversations into the next training set (redact, clean, label, balance, split)",
        "model.prepare.steps:prepare_command",
    ),
    Step(
        "check-data",
        "validate logged events and/or a training snapshot with Great Expectations",
        "data_checks.validate:check_data_command",
    ),
    Step(
        "drift",
        "compare recent logs with the training data (Evidently): one verdict",
        "data_checks.drift:drift_command",
    ),
    # log and serve
    Step("serve", "serve stable/canary/shadow models with KServe's ModelServer", "model.serve.serving:serve_command"),
    Step(
        "collect",
        "store KServe logger events and user feedback, personal data redacted",
        "model.collect.collector:collect_command",
    ),
    Step(
        "export-events",
        "export a window of logged conversations as a snapshot with a content digest",
        "model.collect.export:export_command",
    ),
    # the loop on one machine
    Step(
        "traffic",
        "simulated users: labelled messages through the predictor, reactions to the collector",
        "model.loop.traffic_step:traffic_command",
    ),
    Step(
        "demo",
        "turn the whole loop once on this machine; ends in an HTML report",
        "model.loop.orchestrator:demo_command",
    ),
    Step("report", "render a loop's HTML report from its record (loop.json)", "model.loop.report:report_command"),
)


def main(argv: list[str] | None = None) -> int:
    return run(STEPS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
