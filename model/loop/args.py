"""The flags of ``flywheel traffic``, ``flywheel demo`` and ``flywheel report``, apart from the steps so
that the step table (``scripts/cli.py``) names them without importing the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from model.core.config import SAMPLE_DATA, CollectorConfig, ServeConfig, required, setting


@dataclass
class TrafficArgs:
    data: str = setting(str(SAMPLE_DATA), "labelled messages to replay as users (any format `train` reads)")
    limit: int | None = setting(
        None, "send at most this many messages (unset: all), after shuffling with the traffic seed"
    )
    predictor_url: str = setting(f"http://{ServeConfig.host}:{ServeConfig.http_port}", "the running `flywheel serve`")
    collector_url: str = setting(
        f"http://{CollectorConfig.host}:{CollectorConfig.http_port}", "the running `flywheel collect`"
    )
    endpoint: str = setting(ServeConfig.endpoint, "the predictor's model name; the canary is <endpoint>-canary")
    canary_percent: int = setting(0, "share of messages (0-100) sent to the canary, each drawn independently")
    phase: str = setting("traffic", "label stored on every row (e.g. before-shift, canary)")
    out: str | None = setting(None, "Parquet file of the rows (unset: <work dir>/traffic/<time>-<phase>.parquet)")


@dataclass
class DemoArgs:
    dataset: str = setting(
        str(SAMPLE_DATA), "labelled dataset the loop replays as users (any format `train` reads, e.g. Banking77)"
    )
    out: str | None = setting(None, "new folder for everything the loop makes (unset: <work dir>/loop/<time>)")


@dataclass
class ReportArgs:
    POSITIONAL: ClassVar[tuple[str, ...]] = ("loop_json",)  # flywheel report LOOP_JSON
    loop_json: str = required("the loop record (loop.json) of a `flywheel demo` run")
    out: str | None = setting(None, "HTML file to write (unset: report.html beside the loop record)")
