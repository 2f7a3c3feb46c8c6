"""The closed loop's last step: one self-contained HTML page telling what happened and why.

Reads the loop record (``loop.json``, written by the orchestrator), the simulated traffic it points to
(Parquet, one row per request) and the stand-in Git repository, and writes charts (plotly, its
JavaScript inlined once, so the page works offline), verdicts and tables. Everything taken from the
record is escaped by the template; only markdown rendered with raw HTML disabled goes in as markup.
A loop that stopped early still gets a report: stages that did not run read "not reached".
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from jinja2 import Environment
from markdown_it import MarkdownIt
from markupsafe import Markup
from plotly.subplots import make_subplots

from model.core.config import required, setting
from model.core.errors import FlywheelError
from model.core.files import write_text
from model.core.git import git, run_git
from model.core.steps import StepResult

RECORD_KEYS = (
    "dataset",
    "started_at",
    "finished_at",
    "seconds",
    "intents",
    "stages",
    "traffic",
    "events",
    "drift",
    "gate",
    "canary",
    "offline",
    "labelling",
    "pull_requests",
    "git_repo",
    "registry",
)
TRAFFIC_COLUMNS = ("time", "phase", "model_version", "arm", "correct", "fallback", "feedback")
RATED = ("thumbs_up", "thumbs_down")
PALETTE = ("#4c78a8", "#e45756", "#54a24b", "#b279a2", "#f58518", "#72b7b2")  # one per model version
# enough points for a shape, enough requests per point for a rate to mean something
MAX_BUCKETS, MIN_REQUESTS_PER_BUCKET = 40, 75
OUTCOME_WORDS = {"promote": "canary promoted", "rollback": "canary rolled back", "hold": "canary held"}

# "js-default": CommonMark plus tables and strikethrough, raw HTML off, javascript: links refused
_markdown = MarkdownIt("js-default")


def render_report(record: dict, out: Path) -> Path:
    """Write the report for ``record`` to ``out`` (through a temporary file) and return its path."""
    out = Path(out)
    traffic = load_traffic(record.get("traffic"))
    events = _events(record.get("events") or [])
    charts = _charts(record, traffic, events)
    html = _template().render(
        r={key: None for key in RECORD_KEYS} | record,  # a loop that stopped early leaves keys out
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
        version=_version_label,
        pct=_pct,
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
                "versions": ", ".join(f"{_version_label(v)}: {n}" for v, n in counts.items()),
                "accuracy": g["correct"].mean(),
            }
        )
    return rows


def outcome_line(record: dict) -> str:
    """The loop in one line, e.g. "v1 → drift found → v2 trained on 300 labels → canary promoted"."""
    versions = sorted(v["version"] for v in (record.get("registry") or {}).get("versions", []))
    steps = [_version_label(versions[0]) if versions else "no first model"]
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


def _charts(record: dict, traffic: pd.DataFrame | None, events: list[tuple[pd.Timestamp, str]]) -> dict:
    looks = (record.get("canary") or {}).get("looks") or []
    colour = _version_colours(record, traffic, looks)
    charts = {}
    if traffic is not None and len(traffic):
        bucketed = traffic.assign(bucket=_buckets(traffic["time"]))
        charts["accuracy"] = _rate_over_time(
            bucketed, "correct", "Accuracy over time per model version", "accuracy", events, colour
        )
        rated = bucketed[bucketed["feedback"].isin(RATED)].assign(up=lambda d: d["feedback"] == "thumbs_up")
        charts["thumbs"] = _rate_over_time(
            rated,
            "up",
            "Thumbs-up rate over time per model version (of rated answers)",
            "thumbs-up rate",
            events,
            colour,
        )
        charts["arms"] = _arm_traffic(bucketed, events, colour)
    if looks:
        charts["canary"] = _canary_looks(looks, colour)
    if record.get("offline"):
        charts["offline"] = _offline(record["offline"])
    return {name: Markup(_figure_html(fig, f"chart-{name}")) for name, fig in charts.items()}


def _version_colours(record: dict, traffic: pd.DataFrame | None, looks: list[dict]) -> dict[str, str]:
    """One colour per model version, the same on every chart."""
    versions = set() if traffic is None else set(traffic["model_version"])
    versions |= {str(o["model_version"]) for o in record.get("offline") or []}
    versions |= {str((look.get(arm) or {}).get("model_version")) for look in looks for arm in ("stable", "canary")}
    ordered = sorted(versions, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered)}


def _buckets(times: pd.Series) -> pd.Series:
    """Equal-width time buckets, each labelled by its middle, as many as the traffic fills."""
    n = max(1, min(MAX_BUCKETS, len(times) // MIN_REQUESTS_PER_BUCKET))
    start = times.min()
    width = max((times.max() - start) / n, pd.Timedelta(milliseconds=1))
    index = ((times - start) // width).clip(upper=n - 1)
    return start + (index + 0.5) * width


def _rate_over_time(df: pd.DataFrame, column: str, title: str, what: str, events, colour) -> go.Figure:
    fig = go.Figure()
    for version, g in df.groupby("model_version", sort=True):
        per = g.groupby("bucket")[column].agg(["mean", "size"]).reset_index()
        fig.add_trace(
            go.Scatter(
                x=per["bucket"],
                y=per["mean"],
                customdata=per["size"],
                mode="lines+markers",
                name=_version_label(version),
                line_color=colour[version],
                hovertemplate=f"%{{y:.1%}} {what} over %{{customdata}} requests<extra>%{{fullData.name}}</extra>",
            )
        )
    fig.update_yaxes(title=what, tickformat=".0%", range=[0, 1.05])
    return _with_events(fig, title, events)


def _arm_traffic(df: pd.DataFrame, events, colour) -> go.Figure:
    """Requests per time bucket, stacked by arm and version (canary hatched): the canary's slice at a glance."""
    counts = df.groupby(["bucket", "arm", "model_version"]).size().rename("requests").reset_index()
    middles = counts["bucket"].drop_duplicates().sort_values()
    width = middles.diff().min() if len(middles) > 1 else pd.Timedelta(seconds=1)
    fig = go.Figure()
    for (arm, version), g in sorted(
        counts.groupby(["arm", "model_version"]), key=lambda kv: (kv[0][0] != "stable", kv[0])
    ):
        fig.add_trace(
            go.Bar(
                x=g["bucket"],
                y=g["requests"],
                width=0.95 * width / pd.Timedelta(milliseconds=1),
                name=f"{arm} · {_version_label(version)}",
                marker={"color": colour[version], "pattern": {"shape": "/" if arm == "canary" else ""}},
                hovertemplate="%{y} requests<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="requests per bucket")
    return _with_events(fig, "Traffic per arm and model version", events)


def _with_events(fig: go.Figure, title: str, events) -> go.Figure:
    for when, label in events:
        fig.add_shape(type="line", x0=when, x1=when, y0=0, y1=1, yref="paper", line={"dash": "dot", "color": "#555"})
        fig.add_annotation(
            x=when,
            y=1,
            yref="paper",
            text=label,
            showarrow=False,
            textangle=-90,
            xanchor="right",
            yanchor="top",
            font={"size": 11, "color": "#555"},
            bgcolor="rgba(255,255,255,0.8)",
        )
    fig.update_layout(title=title, xaxis_title="time (UTC)", hovermode="x unified")
    return fig


def _canary_looks(looks: list[dict], colour) -> go.Figure:
    """Per look, stable vs canary on the rates the canary analysis judges."""
    metrics = [
        ("error rate", "errors", "requests"),
        ("fallback rate", "fallbacks", "requests"),
        ("escalation rate", "escalations", "requests"),
        ("thumbs-down rate", "thumbs_down", None),
    ]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[0] for m in metrics], shared_yaxes=True)
    x = [f"look {look.get('look')}<br>{look.get('decision', '')}" for look in looks]
    for arm in ("stable", "canary"):
        version = str((looks[-1].get(arm) or {}).get("model_version"))
        name = f"{arm} ({_version_label(version)})" if version != "None" else arm
        for col, (title, count, over) in enumerate(metrics, start=1):
            rates = [_arm_rate(look.get(arm) or {}, count, over) for look in looks]
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=rates,
                    name=name,
                    legendgroup=arm,
                    showlegend=col == 1,
                    marker={"color": colour.get(version, "#999"), "pattern": {"shape": "/" if arm == "canary" else ""}},
                    hovertemplate=f"{arm}: %{{y:.1%}} {title}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_layout(title="Canary looks: stable vs canary", barmode="group")
    return fig


def _arm_rate(arm: dict, count: str, over: str | None) -> float | None:
    denominator = arm.get(over, 0) if over else arm.get("thumbs_up", 0) + arm.get("thumbs_down", 0)
    return arm.get(count, 0) / denominator if denominator else None


def _offline(offline: list[dict]) -> go.Figure:
    x = [_version_label(o["model_version"]) for o in offline]
    fig = go.Figure()
    for key, name, shade in (("test_accuracy", "accuracy", "#4a4a4a"), ("macro_f1", "macro-F1", "#a8a8a8")):
        values = [o.get(key) for o in offline]
        fig.add_trace(
            go.Bar(x=x, y=values, name=name, marker_color=shade, text=[_pct(v) for v in values], textposition="outside")
        )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    fig.update_layout(title="Offline: each version on the full test set (all intents)", barmode="group")
    return fig


def _figure_html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", height=380, margin={"t": 90, "b": 40, "l": 60, "r": 20})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


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
        return _version_label(canary_version)
    return _version_label(versions[-1]) if len(versions) > 1 else "a new model"


def _version_label(version) -> str:
    text = str(version)
    return f"v{text}" if text.isdigit() else text


def _pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def _template():
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = lambda s, n=12: str(s)[:n] if s else ""
    env.filters["seconds"] = lambda s: f"{s:.1f} s" if isinstance(s, (int, float)) else "–"
    return env.from_string(TEMPLATE)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Flywheel loop report: {{ r.dataset }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } .outcome { font-size: 1.3em; font-weight: 600; margin: .3em 0 1em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #9db4f0; height: .8em; min-width: 1px; }
.done { color: #17803d; } .failed { color: #b3261e; font-weight: 600; } .skipped, .muted { color: #777; }
.verdict { font-weight: 600; } .yes { color: #17803d; } .no { color: #b3261e; }
details { margin: .3em 0; } summary { cursor: pointer; } code, pre { font-size: 13px; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
.md h1, .md h2, .md h3 { font-size: 1.05em; }
section { margin-top: 2em; } iframe { width: 100%; height: 700px; border: 1px solid #ddd; }
</style>
<script type="text/javascript">{{ plotly_js }}</script>
</head><body>
<h1>Flywheel loop report</h1>
<p class="outcome" id="outcome">{{ outcome }}</p>
<p>Dataset <code>{{ r.dataset }}</code> · {{ r.started_at }} → {{ r.finished_at }} ({{ r.seconds | seconds }})
{% if r.intents %}
· {{ r.intents.known_at_start | length }} intents known at start, {{ r.intents.held_back | length }} held back
{% endif %}</p>
{% if r.intents %}
<details><summary>Intents</summary>
<p>Known at start: {{ r.intents.known_at_start | join(", ") }}</p>
<p>Held back (appear when the traffic shifts): {{ r.intents.held_back | join(", ") }}</p>
</details>
{% endif %}

<section id="stages"><h2>Stages</h2>
{% if stages %}
<table><tr><th>stage</th><th>status</th><th class="num">seconds</th><th style="width:30%"></th><th>summary</th></tr>
{% for s in stages %}
<tr><td>{{ s.title or s.name }}</td><td class="{{ s.status }}">{{ s.status }}</td>
<td class="num">{{ s.seconds | seconds }}</td>
<td><div class="bar" style="width: {{ '%.1f' | format(s.width) }}%"></div></td><td>{{ s.summary }}</td></tr>
{% endfor %}
</table>
{% else %}<p class="muted">No stage ran.</p>{% endif %}
</section>

<section id="traffic"><h2>What the users saw</h2>
{% if traffic is none %}<p class="muted">Traffic simulation: not reached.</p>
{% elif not traffic | length %}<p class="muted">The traffic file holds no requests.</p>
{% else %}
<table id="by-version"><tr><th>model version</th><th class="num">requests</th><th class="num">share</th>
<th class="num">accuracy</th><th class="num">fallback rate</th><th class="num">escalation rate</th>
<th class="num">thumbs-up rate (rated)</th></tr>
{% for v in by_version %}
<tr><td>{{ version(v.model_version) }}</td><td class="num">{{ v.requests }}</td><td class="num">{{ pct(v.share) }}</td>
<td class="num">{{ pct(v.accuracy) }}</td><td class="num">{{ pct(v.fallback_rate) }}</td>
<td class="num">{{ pct(v.escalation_rate) }}</td><td class="num">{{ pct(v.thumbs_up_rate) }} ({{ v.rated }})</td></tr>
{% endfor %}
</table>
{{ charts.accuracy }}
{{ charts.thumbs }}
{{ charts.arms }}
<table id="by-phase"><tr><th>phase</th><th>from</th><th>to</th><th class="num">requests</th>
<th>requests per version</th><th class="num">accuracy</th></tr>
{% for p in by_phase %}
<tr><td>{{ p.phase }}</td><td>{{ p.start.strftime("%H:%M:%S") }}</td><td>{{ p.end.strftime("%H:%M:%S") }}</td>
<td class="num">{{ p.requests }}</td><td>{{ p.versions }}</td><td class="num">{{ pct(p.accuracy) }}</td></tr>
{% endfor %}
</table>
<p class="muted">Traffic: <code>{{ r.traffic }}</code></p>
{% endif %}
</section>

<section id="drift"><h2>Drift</h2>
{% if r.drift is none %}<p class="muted">Drift check: not reached.</p>
{% else %}
<p class="verdict {{ 'no' if r.drift.drift else 'yes' }}">{{ "Drift found" if r.drift.drift else "No drift" }}</p>
<ul>{% for reason in r.drift.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
<details><summary>Drift summary</summary>{{ md(r.drift.markdown) }}</details>
{% if drift_html %}
<p>Evidently report: <a href="{{ drift_html.href }}">{{ drift_html.path }}</a>
{% if not drift_html.exists %} <span class="no">(file missing)</span>{% endif %}</p>
{% if drift_html.exists %}
<details><summary>Show the Evidently report here</summary>
<iframe loading="lazy" src="{{ drift_html.href }}" title="Evidently drift report"></iframe></details>
{% endif %}
{% endif %}
{% endif %}
</section>

<section id="labelling"><h2>Labelling</h2>
{% if r.labelling is none %}<p class="muted">Labelling: not reached.</p>
{% else %}
<p>{{ r.labelling.labelled }} of a budget of {{ r.labelling.budget }} review-queue items labelled by the simulated
annotator; {{ r.labelling.wrong_labels }} wrong labels (configured error rate {{ pct(r.labelling.error_rate) }}).</p>
{% endif %}
</section>

<section id="gate"><h2>Gate</h2>
{% if r.gate is none %}<p class="muted">Gate: not reached.</p>
{% else %}
<p class="verdict {{ 'yes' if r.gate.passed else 'no' }}">{{ "Passed" if r.gate.passed else "Rejected" }}</p>
<ul>{% for reason in r.gate.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
{{ md(r.gate.markdown) }}
{% endif %}
{{ charts.offline }}
</section>

<section id="canary"><h2>Canary</h2>
{% if r.canary is none %}<p class="muted">Canary analysis: not reached.</p>
{% else %}
<p class="verdict {{ 'no' if r.canary.decision == 'rollback' else 'yes' }}">Decision: {{ r.canary.decision }}</p>
<ul>{% for reason in r.canary.reasons %}<li>{{ reason }}</li>{% endfor %}</ul>
{{ charts.canary }}
<details><summary>Last analysis</summary>{{ md(r.canary.markdown) }}</details>
{% endif %}
</section>

<section id="pull-requests"><h2>Pull requests</h2>
{% for pr in r.pull_requests or [] %}
<details><summary><b>{{ pr.kind }}</b>: {{ pr.title }}
· <code>{{ pr.branch }}</code> @ <code>{{ pr.commit | short }}</code>
· <span class="{{ 'yes' if pr.merged else 'no' }}">{{ "merged" if pr.merged else "not merged" }}</span></summary>
{{ md(pr.body) }}</details>
{% else %}<p class="muted">No pull request was opened.</p>
{% endfor %}
</section>

<section id="git"><h2>Git log of the stand-in repository</h2>
{% if git is none %}<p class="muted">Stand-in repository: not reached.</p>
{% else %}
<p class="muted"><code>{{ r.git_repo }}</code></p>
<table id="git-log"><tr><th>commit</th><th>date</th><th>author</th><th>subject</th></tr>
{% for c in git.log %}
<tr><td><code>{{ c.commit }}</code></td><td>{{ c.date }}</td><td>{{ c.author }}</td><td>{{ c.subject }}</td></tr>
{% else %}<tr><td colspan="4" class="muted">no commits</td></tr>
{% endfor %}
</table>
<table id="git-branches"><tr><th>branch</th><th>head</th><th>subject</th><th>merged</th></tr>
{% for b in git.branches %}
<tr><td><code>{{ b.name }}</code></td><td><code>{{ b.commit }}</code></td><td>{{ b.subject }}</td>
<td class="{{ 'yes' if b.merged else 'no' }}">{{ "yes" if b.merged else "no" }}</td></tr>
{% endfor %}
</table>
<details><summary>Graph</summary><pre>{{ git.graph }}</pre></details>
{% endif %}
</section>

<section id="registry"><h2>MLflow registry</h2>
{% if not r.registry %}<p class="muted">Registry: not reached.</p>
{% else %}
<p>Model <code>{{ r.registry.model_name }}</code> at <code>{{ r.registry.tracking_uri }}</code></p>
<table id="registry-versions"><tr><th>version</th><th>aliases</th><th>created</th><th>run id</th>
<th>dataset digest</th><th>git sha</th><th>metrics</th></tr>
{% for v in r.registry.versions %}
<tr><td>{{ version(v.version) }}</td><td>{{ v.aliases | join(", ") }}</td><td>{{ v.created }}</td>
<td><code>{{ v.run_id }}</code></td><td><code title="{{ v.dataset_digest }}">{{ v.dataset_digest | short }}</code></td>
<td><code title="{{ v.git_sha }}">{{ v.git_sha | short(10) }}</code></td>
<td>{% for k, x in (v.metrics or {}).items() | sort %}{{ k }} = {{ "%.4g" | format(x) }}
{%- if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}
</table>
{% endif %}
</section>
</body></html>
"""


@dataclass
class ReportArgs:
    POSITIONAL: ClassVar[tuple[str, ...]] = ("loop_json",)  # flywheel report LOOP_JSON
    loop_json: str = required("the loop record (loop.json) of a `flywheel demo` run")
    out: str | None = setting(None, "HTML file to write (unset: report.html beside the loop record)")


def report_command(args: ReportArgs) -> StepResult:
    """Render the HTML report of a loop from its record (loop.json), e.g. after changing the template."""
    source = Path(args.loop_json)
    try:
        record = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FlywheelError(f"loop record {source}: {exc}") from exc
    out = render_report(record, Path(args.out) if args.out else source.with_name("report.html"))
    return StepResult({"report": str(out), "loop_record": str(source)}, f"Loop report: `{out}`\n")
