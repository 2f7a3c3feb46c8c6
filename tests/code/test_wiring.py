"""Every `flywheel ...` call written outside Python (workflow `run:` steps, the containers of the
manifests, the Dockerfile, the Makefile, the shell blocks of the README and docs/) names a real step
and only flags that step knows, checked with the CLI's own parser; and the step outputs the workflows
branch on are ones the steps write."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from model.core.config import PROJECT_ROOT
from tests.helpers.cli import problems

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))
MANIFESTS = sorted((PROJECT_ROOT / "manifests").rglob("*.yaml"))
DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def _calls_in_shell(command: str, comments: bool = False) -> list[list[str]]:
    """The argument lists following each `flywheel` (any path to it) in a shell command line."""
    tokens = shlex.split(command, comments=comments, posix=True)
    calls, command_starts = [], True  # only a command word runs a program, not an argument such as "flywheel"
    for i, token in enumerate(tokens):
        if command_starts and (token == "flywheel" or token.endswith("/flywheel")):
            rest = []
            for t in tokens[i + 1 :]:
                if t in SHELL_OPERATORS:
                    break
                rest.append(t)
            calls.append(rest)
        command_starts = token in SHELL_OPERATORS or (command_starts and re.match(r"^[A-Za-z_]\w*=", token) is not None)
    return calls


def workflow_calls() -> list[tuple[str, list[str]]]:
    out = []
    for path in WORKFLOWS:
        doc = yaml.safe_load(path.read_text())
        for job_name, job in doc["jobs"].items():
            for step in job.get("steps", []):
                for argv in _calls_in_shell(step.get("run", "")):
                    out.append((f"{path.name} job {job_name} step {step.get('name', '?')!r}", argv))
    return out


def _dockerfile_instruction(name: str) -> list[str]:
    lines = [line for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"Dockerfile: expected one {name}"
    return json.loads(lines[0][len(name) + 1 :])  # exec form, as a JSON array


def _containers(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _containers(value)


def manifest_calls() -> list[tuple[str, list[str], dict]]:
    """(where, flywheel argv, container) for each container running this repository's image."""
    entrypoint = _dockerfile_instruction("ENTRYPOINT")
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            for container in _containers(doc):
                if not re.search(r"/flywheel[:@]", str(container.get("image", ""))):  # by tag or pinned digest
                    continue
                command = container.get("command", entrypoint)
                where = f"{path.relative_to(PROJECT_ROOT)} container {container.get('name')}"
                assert Path(command[0]).name == "flywheel", f"{where}: runs {command}, not flywheel"
                out.append((where, [*command[1:], *map(str, container.get("args", []))], container))
    return out


def dockerfile_calls() -> list[tuple[str, list[str]]]:
    assert _dockerfile_instruction("ENTRYPOINT") == ["flywheel"]
    return [("Dockerfile CMD", _dockerfile_instruction("CMD"))]


def makefile_calls() -> list[tuple[str, list[str]]]:
    out = []
    for line in (PROJECT_ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and re.search(r"/flywheel\b", line):
            calls = _calls_in_shell(line.replace("$(BIN)", ".venv/bin"))
            out += [(f"Makefile: {line.strip()}", argv) for argv in calls]
    return out


def docs_calls(paths: list[Path] = DOCS) -> list[tuple[str, list[str]]]:
    """The `flywheel` calls in markdown files' shell blocks (comments and line continuations as a shell reads them)."""
    out = []
    for path in paths:
        for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                if "flywheel" in line:
                    name = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
                    out += [(f"{name}: {line.strip()}", argv) for argv in _calls_in_shell(line, comments=True)]
    return out


ALL_CALLS = [
    *workflow_calls(),
    *[(w, a) for w, a, _ in manifest_calls()],
    *dockerfile_calls(),
    *makefile_calls(),
    *docs_calls(),
]


def test_every_place_that_runs_flywheel_is_found():
    where = " ".join(w for w, _ in ALL_CALLS)
    for name in ("canary.yml", "ci.yml", "drift.yml", "release.yml", "retrain.yml", "Dockerfile", "Makefile"):
        assert name in where
    for page in ("docs/data.md", "docs/delivery.md", "docs/loop.md", "docs/model.md", "docs/serving.md"):
        assert page in where
    runs = {(w.split(" container")[0], a[0]) for w, a, _ in manifest_calls()}
    for env in ("staging", "production"):
        assert (f"manifests/{env}/collector.yaml", "collect") in runs
        assert (f"manifests/{env}/inferenceservice.yaml", "serve") in runs


@pytest.mark.parametrize(("where", "argv"), ALL_CALLS, ids=[f"{w} ({a[0] if a else ''})" for w, a in ALL_CALLS])
def test_flywheel_call_parses_with_the_real_cli(where, argv):
    assert problems(argv) == [], f"{where}: flywheel {' '.join(argv)}"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["collect", "--port", "8080"], "unknown flag --port"),
        (["collect", "--http", "8080"], "unknown flag --http"),  # a prefix argparse alone would accept
        (["export", "--days", "7"], "unknown step 'export'"),
        (["check-data", "--suite", "events"], "unknown flag --suite"),
        (["release", "--canary", "ten"], "the parser refuses it"),
        (["serve", "/mnt/models"], "is not a flag"),
    ],
)
def test_the_check_catches_mismatches(argv, fragment):
    assert any(fragment in p for p in problems(argv)), problems(argv)


def test_docs_shell_blocks_are_read_as_a_shell_reads_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nflywheel drift --reference a \\\n    --current b   # or --bogus\nflywheel collect &\n```\n"
        "```python\nflywheel train --not-shell\n```\n"
    )
    assert [argv for _, argv in docs_calls([page])] == [["drift", "--reference", "a", "--current", "b"], ["collect"]]


def test_positional_only_where_the_step_declares_it():
    assert problems(["report", "work/loop/x/loop.json", "--out", "report.html"]) == []
    assert any("is not a flag" in p for p in problems(["report", "a.json", "b.json"]))
    assert any("is not a flag" in p for p in problems(["drift", "snapshot.parquet"]))


def test_variables_stand_in_for_values_not_flags():
    assert problems(["release", "--env", "$ENVIRONMENT", "--model-version", "$MODEL_VERSION"]) == []
    assert problems(["collect", "--store-url", "$(FLYWHEEL_STORE_URL)"]) == []
    assert problems(["collect", "--$FLAG", "1"]) != []


@pytest.mark.parametrize(("where", "argv", "container"), manifest_calls(), ids=lambda v: str(v)[:60])
def test_kubernetes_expansions_name_the_containers_env(where, argv, container):
    """Kubernetes expands $(VAR) in args only for variables the container defines; others stay literal."""
    defined = {e["name"] for e in container.get("env", [])}
    used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)))
    assert used <= defined, f"{where}: {sorted(used - defined)} not in the container's env"


def test_collector_listens_where_its_service_and_probes_point():
    for where, argv, container in manifest_calls():
        if argv[0] != "collect":
            continue
        port = argv[argv.index("--http-port") + 1]
        assert [p["containerPort"] for p in container["ports"]] == [int(port)], where
        assert "--store-url" in argv, f"{where}: without --store-url the collector writes a SQLite file in the pod"


def test_branching_outputs_are_written_by_the_steps(tmp_path, monkeypatch):
    """drift.yml branches on `steps.drift.outputs.drift`: the drift result's `drift` verdict, as the CLI writes it."""
    from data_checks.drift import decide
    from model.core.command_line import github_outputs
    from model.core.config import DriftConfig

    drift = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "drift.yml").read_text())
    steps = drift["jobs"]["drift"]["steps"]
    (check,) = [s for s in steps if s.get("id") == "drift"]
    assert _calls_in_shell(check["run"])[0][0] == "drift"
    conditions = {s.get("if") for s in steps if "if" in s}
    assert conditions == {"steps.drift.outputs.drift == 'true'"}
    outputs = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    scores = {"fallback_rate": {"method": "z", "score": 1e-9, "reference": 0.05, "current": 0.3}}
    github_outputs(decide(scores, DriftConfig()).to_dict())
    assert "drift=true\n" in outputs.read_text()


def _exported_series() -> set[str]:
    """Every series name the predictor and the collector export (counters as *_total, histograms' parts)."""
    from prometheus_client import CollectorRegistry

    from model.collect.arms import ArmMap
    from model.collect.collector_metrics import CollectorMetrics, SpoolStatus
    from model.serve.metrics import ServingMetrics

    names = set()
    # the spool's gauges are read from the running collector at scrape time: any collector-shaped object will do
    collector = SimpleNamespace(spool=SimpleNamespace(bytes=0, events=0, max_bytes=1), store_up=True)
    # the collector's flywheel_arm_info family is there even while its arms folder names no version
    for make in (
        ServingMetrics,
        lambda registry: CollectorMetrics(registry, ArmMap(None)),
        lambda registry: registry.register(SpoolStatus(collector)),
    ):
        registry = CollectorRegistry()
        make(registry)
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
            else:
                names.add(family.name)
    return names


def test_monitoring_queries_name_series_that_exist():
    """Alert rules, dashboards and canary analysis query series the predictor or the collector exports."""
    exported = _exported_series()
    sources = [
        *(PROJECT_ROOT / "manifests").rglob("prometheusrule.yaml"),
        *(PROJECT_ROOT / "manifests").rglob("dashboard.yaml"),
        PROJECT_ROOT / "model" / "deploy" / "canary_metrics.py",
    ]
    used = {(path.relative_to(PROJECT_ROOT), name) for path in sources for name in re.findall(
        r"\bflywheel_[a-z_]+", path.read_text()
    )}  # fmt: skip
    assert {name for _, name in used}, "no queries found"
    missing = sorted(f"{path}: {name}" for path, name in used if name not in exported)
    assert not missing, f"not exported by the predictor or the collector: {missing}"


def test_queue_proxy_queries_name_the_series_knative_exports():
    """Every query on queue-proxy names its one series and its label as Knative 1.21 exports them
    (model.deploy.canary_metrics, from knative/serving's source): a misspelt name would find no series,
    and the analysis would call queue-proxy unscraped."""
    from model.deploy.canary_metrics import QUEUE_PROXY_REQUESTS, REVISION

    assert QUEUE_PROXY_REQUESTS == "http_server_request_duration_seconds_count"
    assert REVISION == "serving_knative_dev_revision"
    sources = [
        *(PROJECT_ROOT / "manifests").rglob("prometheusrule.yaml"),
        *(PROJECT_ROOT / "manifests").rglob("dashboard.yaml"),
    ]
    for path in sources:
        text = path.read_text()
        assert set(re.findall(r"\bhttp_server_[a-z_]+", text)) == {QUEUE_PROXY_REQUESTS}, path
        labels = set(re.findall(r"\b(http_response_[a-z_]+|serving_knative_[a-z_]+)", text))
        assert labels == {"http_response_status_code", REVISION}, path
