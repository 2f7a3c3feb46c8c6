"""``flywheel``: one subcommand per pipeline step.

Each step prints its result as JSON on stdout and a short human summary on stderr, writes
``<report-dir>/<step>.json`` and ``<step>.md`` (the markdown becomes a pull-request body), and
exits 0 on success, 1 when a check decides "no" (gate rejected), 2 on bad input or errors.
Flags are the config dataclasses' fields; ``--config`` YAML sets their defaults.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from model.config import (
    DEFAULT_CONFIG,
    SAMPLE_DATA,
    CollectorConfig,
    DataConfig,
    GateConfig,
    RegistryConfig,
    ServeConfig,
    TrainConfig,
    read_yaml_config,
    work_dir,
)
from model.errors import FlywheelError
from model.reports import write_reports

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


def _arg(default, why: str):
    return field(default=default, metadata={"help": why})


@dataclass
class CommonArgs:
    config: str = _arg(str(DEFAULT_CONFIG), "YAML file whose sections set the defaults of the flags below")
    report_dir: str = _arg("", "where <step>.json and <step>.md go (default: <work dir>/reports)")


@dataclass
class TrainArgs:
    data: str = _arg(str(SAMPLE_DATA), "dataset file or folder (CSV/Parquet/JSONL text,intent; Banking77; CLINC150)")
    out: str = _arg("", "artifact folder to create (default: <work dir>/models/<time>-<data digest>)")


@dataclass
class EvaluateArgs:
    model: str = _arg("", "artifact folder or models:/<name>@<alias> URI")
    data: str = _arg(str(SAMPLE_DATA), "dataset file or folder")
    split: str = _arg("test", "which split to evaluate on: train, val, test or all")


@dataclass
class GateArgs:
    challenger: str = _arg("", "artifact folder or models:/ URI of the candidate")
    champion: str = _arg("auto", "artifact folder or models:/ URI; 'auto' = the registry's champion if any")
    data: str = _arg(str(SAMPLE_DATA), "dataset whose frozen test split both models are compared on")
    split: str = _arg("test", "split to compare on")


@dataclass
class RegisterArgs:
    model: str = _arg("", "artifact folder to register")
    gate: str = _arg("", "gate decision JSON (from flywheel gate) that passed this artifact")


@dataclass
class PromoteArgs:
    version: int = _arg(-1, "model version to make champion (-1: the current challenger)")


@dataclass
class DemoArgs:
    data: str = _arg(str(SAMPLE_DATA), "dataset to run the demo on")


@dataclass
class ServeArgs:
    stable: str = _arg(
        "", "stable model: artifact folder (as KServe mounts it, /mnt/models) or models:/<name>@<alias> URI"
    )
    canary: str = _arg("", "optional canary model, served as <endpoint>-canary (the caller picks the arm)")
    shadow: str = _arg("", "optional shadow model: predicts on every request, logged and measured, never answers")


@dataclass
class ExportEventsArgs:
    start: str = _arg("", "window start, ISO 8601 (e.g. 2026-11-01T00:00:00Z); events before it are left out")
    end: str = _arg("", "window end, ISO 8601, exclusive (default: now)")


STEPS = {
    "train": (
        "fine-tune an intent model and write a verified artifact",
        [TrainArgs, DataConfig, TrainConfig, RegistryConfig],
    ),
    "evaluate": ("measure a model on a labelled test set", [EvaluateArgs, DataConfig, RegistryConfig]),
    "gate": (
        "decide whether a challenger may replace the champion",
        [GateArgs, DataConfig, GateConfig, RegistryConfig],
    ),
    "register": ("register a gated artifact in MLflow as 'challenger'", [RegisterArgs, RegistryConfig]),
    "promote": ("move the 'champion' alias to a model version", [PromoteArgs, RegistryConfig]),
    "serve": (
        "serve stable/canary/shadow models with the KServe ModelServer (V1 and V2 REST)",
        [ServeArgs, ServeConfig, RegistryConfig],
    ),
    "collect": ("store KServe logger CloudEvents and user feedback (idempotent, durable on 200)", [CollectorConfig]),
    "export-events": (
        "export a time window of logged events to Parquet with a content digest",
        [ExportEventsArgs, CollectorConfig],
    ),
    "demo": (
        "train, evaluate, gate, register and promote on the sample data",
        [DemoArgs, DataConfig, TrainConfig, GateConfig, RegistryConfig],
    ),
}
SECTION_OF = {
    DataConfig: "data",
    TrainConfig: "train",
    GateConfig: "gate",
    RegistryConfig: "registry",
    ServeConfig: "serve",
    CollectorConfig: "collect",
}


def build_parser() -> tuple[HfArgumentParser, dict[str, HfArgumentParser]]:
    parser = HfArgumentParser([], prog="flywheel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True, parser_class=HfArgumentParser)
    subparsers = {
        name: sub.add_parser(name, help=help_, description=help_, dataclass_types=[CommonArgs, *types])
        for name, (help_, types) in STEPS.items()
    }
    return parser, subparsers


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse argv into the step name and its dataclass instances (YAML defaults, then flags)."""
    parser, subparsers = build_parser()
    first = parser.parse_args(argv)
    yaml_values = read_yaml_config(Path(first.config))
    sp = subparsers[first.step]
    for dtype in sp.dataclass_types:
        if dtype in SECTION_OF:
            sp.set_defaults(**yaml_values.get(SECTION_OF[dtype], {}))
    ns = vars(parser.parse_args(argv))
    objs = {}
    for dtype in sp.dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype)}
        objs[dtype] = dtype(**{k: v for k, v in ns.items() if k in names})
    return first.step, objs


def run(step: str, c: dict) -> tuple[dict, str, int]:
    reg_cfg = c.get(RegistryConfig)
    if step == "serve":
        from model.serving import serve_step

        a = c[ServeArgs]
        _require(a.stable, "--stable")
        result, md = serve_step(a.stable, a.canary, a.shadow, c[ServeConfig], reg_cfg)
        return result, md, EXIT_OK
    if step == "collect":
        from model.collector import collect_step

        result, md = collect_step(c[CollectorConfig])
        return result, md, EXIT_OK
    if step == "export-events":
        from model.event_export import export_step

        a = c[ExportEventsArgs]
        result, md = export_step(a.start, a.end, c[CollectorConfig])
        return result, md, EXIT_OK
    from model import pipeline  # heavy imports (torch, mlflow) only once a step runs

    data_cfg, train_cfg, gate_cfg, reg_cfg = (c.get(t) for t in (DataConfig, TrainConfig, GateConfig, RegistryConfig))
    if step == "train":
        a = c[TrainArgs]
        result, md = pipeline.train_step(Path(a.data), data_cfg, train_cfg, reg_cfg, Path(a.out) if a.out else None)
        return result, md, EXIT_OK
    if step == "evaluate":
        a = c[EvaluateArgs]
        _require(a.model, "--model")
        result, md = pipeline.evaluate_step(a.model, Path(a.data), a.split, data_cfg, reg_cfg)
        return result, md, EXIT_OK
    if step == "gate":
        a = c[GateArgs]
        _require(a.challenger, "--challenger")
        result, md, passed = pipeline.gate_step(
            a.challenger, a.champion, Path(a.data), a.split, data_cfg, gate_cfg, reg_cfg
        )
        return result, md, EXIT_OK if passed else EXIT_REJECTED
    if step == "register":
        a = c[RegisterArgs]
        _require(a.model, "--model")
        _require(a.gate, "--gate")
        result, md = pipeline.register_step(Path(a.model), Path(a.gate), reg_cfg)
        return result, md, EXIT_OK
    if step == "promote":
        a = c[PromoteArgs]
        result, md = pipeline.promote_step(None if a.version < 0 else a.version, reg_cfg)
        return result, md, EXIT_OK
    if step == "demo":
        result, md, passed = pipeline.demo_step(
            Path(c[DemoArgs].data), data_cfg, train_cfg, gate_cfg, reg_cfg, _report_dir(c)
        )
        return result, md, EXIT_OK if passed else EXIT_REJECTED
    raise FlywheelError(f"unknown step {step}")


def _require(value: str, flag: str) -> None:
    if not value:
        raise FlywheelError(f"{flag} is required")


def _report_dir(c: dict) -> Path:
    return Path(c[CommonArgs].report_dir) if c[CommonArgs].report_dir else work_dir() / "reports"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        step, c = parse(argv)
        result, markdown, code = run(step, c)
        write_reports(_report_dir(c), step, result, markdown)
    except FlywheelError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result, indent=2, default=str))
    print(markdown, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
