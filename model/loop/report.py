"""The closed loop's last step: one self-contained HTML page telling what happened and why.

Reads the loop record (``loop.json``, written by ``model.loop.stages``), the simulated traffic it points to
(Parquet, one row per request) and the stand-in Git repository, and renders ``templates/report.html.j2``
with charts (``model.loop.charts``; plotly's JavaScript inlined once, so the page works offline),
verdicts and tables. The template's environment autoescapes everything taken from the record; only
markdown rendered with raw HTML disabled goes in as markup. A loop that stopped early still gets a
report: stages that did not run read "not reached".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import urllib.parse
from pathlib import Path

import pandas as pd
import plotly.offline
from jinja2 import Environment, PackageLoader, Template
from markdown_it import MarkdownIt
from markupsafe import Markup

from model.core.errors import FlywheelError
from model.core.files import write_text
from model.core.git import git, run_git
from model.core.steps import StepResult
from model.loop.args import ReportArgs
from model.loop.charts import RATED, pct, render_charts, version_label
from model.loop.record import LoopRecord

TEMPLATE = "report.html.j2"  # in model/loop/templates, shipped as package data
TRAFFIC_COLUMNS = ("time", "phase", "model_version", "arm", "correct", "fallback", "feedback")
OUTCOME_WORDS = {"promote": "canary promoted", "rollback": "canary rolled back", "hold": "canary held"}

# "js-default": CommonMark plus tables and strikethrough, raw HTML off, javascript: links refused
_markdown = MarkdownIt("js-default")


def render_report(record: dict, out: Path) -> Path:
    """Write the report for ``record`` (loop.json's content: ``LoopRecord.to_dict()``) to ``out`` (through a
    temporary file) and return its path."""
    out = Path(out)
    traffic = load_traffic(record.get("traffic"))
    events = _events(record.get("events") or [])
    charts = render_charts(record, traffic, events)
    html = _template().render(
        # a loop that stopped early, or a record written before a section existed, leaves keys out
        r={f.name: None for f in dataclasses.fields(LoopRecord)} | record,
        outcome=outcome_line(record),
        stages=_stages(record.get("stages") or []),
        traffic=traffic,
        by_version=version_summary(traffic) if traffic is not None else None,
        by_phase=phase_summary(traffic) if traffic is not None else None,
        charts=charts,
        plotly_js=Markup(plotly.offline.get_plotlyjs()),
        md=lambda text: Markup(f'<div class="md">{_markdown.render(text or "")}</div>'),
        drift_html=_linked_file(record.get("drift") or {}, "html", out),
        git=git_history(Path(record["git_repo"])) if record.get("git_repo") else None,
        version=version_label,
        pct=pct,
    )
    return write_text(out, html)


def load_traffic(path: str | None) -> pd.DataFrame | None:
    """The simulated requests, times in UTC; None when the loop never got to simulate traffic."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"traffic file {path} (named in the loop record) does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise FlywheelError(f"traffic file {path} is not readable Parquet: {exc}") from exc
    missing = [c for c in TRAFFIC_COLUMNS if c not in df.columns]
    if missing:
        raise FlywheelError(f"traffic file {path} lacks column(s) {', '.join(missing)}")
    df = df.copy()
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["model_version"] = df["model_version"].astype(str)
    df["feedback"] = df["feedback"].fillna("").astype(str)
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def version_summary(traffic: pd.DataFrame) -> list[dict]:
    """Per model version, over all its traffic: requests, share, accuracy and the users' reactions."""
    rows = []
    for version, g in traffic.groupby("model_version", sort=True):
        rated = g["feedback"].isin(RATED)
        rows.append(
            {
                "model_version": version,
                "requests": len(g),
                "share": len(g) / len(traffic),
                "accuracy": g["correct"].mean(),
                "fallback_rate": g["fallback"].mean(),
                "escalation_rate": (g["feedback"] == "escalated").mean(),
                "thumbs_up_rate": (g.loc[rated, "feedback"] == "thumbs_up").mean() if rated.any() else None,
                "rated": int(rated.sum()),
            }
        )
    return rows


def phase_summary(traffic: pd.DataFrame) -> list[dict]:
    """Per phase, in the order the phases happened: when, how many requests, which versions, accuracy."""
    rows = []
    for phase, g in traffic.groupby("phase", sort=False):
        counts = g["model_version"].value_counts().sort_index()
        rows.append(
            {
                "phase": phase,
                "start": g["time"].min(),
                "end": g["time"].max(),
                "requests": len(g),
                "versions": ", ".join(f"{version_label(v)}: {n}" for v, n in counts.items()),
                "accuracy": g["correct"].mean(),
            }
        )
    return rows


def outcome_line(record: dict) -> str:
    """The loop in one line, e.g. "v1 → drift found → v2 trained on 300 labels → canary promoted"."""
    versions = sorted(v["version"] for v in (record.get("registry") or {}).get("versions", []))
    steps = [version_label(versions[0]) if versions else "no first model"]
    drift, gate, canary = record.get("drift"), record.get("gate"), record.get("canary")
    labelled = (record.get("labelling") or {}).get("labelled")
    new = _newest_version(record, versions)
    if drift is None:
        steps.append("drift check not reached")
    else:
        steps.append("drift found" if drift.get("drift") else "no drift found")
        if gate is None:
            steps.append("retrain not reached")
        elif not gate.get("passed"):
            steps.append("challenger rejected by the gate")
        else:
            steps.append(f"{new} trained" + (f" on {labelled} labels" if labelled is not None else ""))
            steps.append(
                OUTCOME_WORDS.get(canary.get("decision"), canary.get("decision")) if canary else "canary not reached"
            )
    failed = [s for s in record.get("stages") or [] if s.get("status") == "failed"]
    if failed:
        steps.append(f"failed at {failed[0].get('title') or failed[0].get('name')}")
    return " → ".join(str(s) for s in steps)


def git_history(repo: Path) -> dict:
    """The stand-in repository: its main line (first parents: one commit per merged pull request) and branches."""
    if not (repo / ".git").exists() and not (repo / "HEAD").is_file():
        raise FlywheelError(f"git repository {repo} (named in the loop record) does not exist")
    if run_git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode:
        return {"log": [], "branches": [], "graph": ""}
    log = [
        dict(zip(("commit", "author", "date", "subject"), line.split("\x1f")))
        for line in git(repo, "log", "--first-parent", "--format=%h%x1f%an%x1f%aI%x1f%s", "HEAD").splitlines()
    ]
    merged = set(git(repo, "branch", "--merged", "HEAD", "--format=%(refname:short)").splitlines())
    branches = []
    for line in git(
        repo, "for-each-ref", "--format=%(refname:short)%1f%(objectname:short)%1f%(subject)", "refs/heads"
    ).splitlines():
        name, commit, subject = line.split("\x1f")
        branches.append({"name": name, "commit": commit, "subject": subject, "merged": name in merged})
    graph = git(repo, "log", "--graph", "--all", "--decorate", "--format=%h%d %s").rstrip("\n")
    return {"log": log, "branches": branches, "graph": graph}


def _events(events: list[dict]) -> list[tuple[pd.Timestamp, str]]:
    parsed = []
    for i, event in enumerate(events):
        try:
            parsed.append((pd.to_datetime(event["time"], utc=True), str(event["label"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise FlywheelError(f"loop record: events[{i}] needs an ISO 'time' and a 'label' ({exc})") from exc
    return parsed


def _stages(stages: list[dict]) -> list[dict]:
    """Stages with each one's share of the longest, for the bar drawn next to its seconds."""
    longest = max([s.get("seconds") or 0 for s in stages] + [1e-9])
    return [{**s, "width": 100 * (s.get("seconds") or 0) / longest} for s in stages]


def _linked_file(section: dict, key: str, out: Path) -> dict | None:
    """A file the report links to: its path as text, a link relative to the report, and whether it exists."""
    path = section.get(key)
    if not path:
        return None
    relative = os.path.relpath(Path(path).resolve(), out.resolve().parent)
    return {"path": path, "href": urllib.parse.quote(relative), "exists": Path(path).is_file()}


def _newest_version(record: dict, versions: list[int]) -> str:
    looks = (record.get("canary") or {}).get("looks") or []
    canary_version = (looks[-1].get("canary") or {}).get("model_version") if looks else None
    if canary_version is not None:
        return version_label(canary_version)
    return version_label(versions[-1]) if len(versions) > 1 else "a new model"


@functools.cache
def _template() -> Template:
    """The page's template, found in the package (an installed one too), autoescaping every value."""
    env = Environment(
        loader=PackageLoader("model.loop", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["short"] = lambda s, n=12: str(s)[:n] if s else ""
    env.filters["seconds"] = lambda s: f"{s:.1f} s" if isinstance(s, (int, float)) else "–"
    return env.get_template(TEMPLATE)


@dataclasses.dataclass(frozen=True)
class RenderedReport:
    report: str  # the HTML file
    loop_record: str


def report_command(args: ReportArgs) -> StepResult[RenderedReport]:
    """Render the HTML report of a loop from its record (loop.json), e.g. after changing the template."""
    source = Path(args.loop_json)
    try:
        record = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FlywheelError(f"loop record {source}: {exc}") from exc
    out = render_report(record, Path(args.out) if args.out else source.with_name("report.html"))
    return StepResult(RenderedReport(str(out), str(source)), f"Loop report: `{out}`\n")
