"""The loop report's charts: plotly figures of the traffic over time, the canary's looks and each version's
offline scores, as HTML fragments without plotly.js (the page inlines it once). One colour per model
version on every chart; the loop's events are marked on the time charts.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.subplots import make_subplots

RATED = ("thumbs_up", "thumbs_down")
PALETTE = ("#4c78a8", "#e45756", "#54a24b", "#b279a2", "#f58518", "#72b7b2")  # one per model version
# enough points for a shape, enough requests per point for a rate to mean something
MAX_BUCKETS, MIN_REQUESTS_PER_BUCKET = 40, 75


def render_charts(record: dict, traffic: pd.DataFrame | None, events: list[tuple[pd.Timestamp, str]]) -> dict:
    """Each chart the record and traffic allow, as an HTML fragment keyed by name (``chart-<name>`` its div id)."""
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
                name=version_label(version),
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
                name=f"{arm} · {version_label(version)}",
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
        name = f"{arm} ({version_label(version)})" if version != "None" else arm
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
    x = [version_label(o["model_version"]) for o in offline]
    fig = go.Figure()
    for key, name, shade in (("test_accuracy", "accuracy", "#4a4a4a"), ("macro_f1", "macro-F1", "#a8a8a8")):
        values = [o.get(key) for o in offline]
        fig.add_trace(
            go.Bar(x=x, y=values, name=name, marker_color=shade, text=[pct(v) for v in values], textposition="outside")
        )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    fig.update_layout(title="Offline: each version on the full test set (all intents)", barmode="group")
    return fig


def _figure_html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", height=380, margin={"t": 90, "b": 40, "l": 60, "r": 20})
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def version_label(version) -> str:
    """ "v2" for a registered version number; anything else as it is."""
    text = str(version)
    return f"v{text}" if text.isdigit() else text


def pct(value) -> str:
    """A rate as a percentage, "–" where there is none."""
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"
