"""``flywheel traffic``: the simulated users of ``model.loop.traffic`` as a step, on a running predictor and
collector. It replays a labelled dataset, writes the rows as Parquet and summarises each arm.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from model.core.config import DataConfig, TrafficConfig
from model.core.files import replacing
from model.core.steps import StepResult
from model.data.examples import load_examples
from model.loop.args import TrafficArgs
from model.loop.traffic import simulate


def summarize(frame: pd.DataFrame) -> dict:
    """Per arm: requests, failures, accuracy and fallback rate of the answered ones, feedback by kind."""
    arms = {}
    for arm, rows in frame.groupby("arm", sort=True):
        answered = rows[rows["predicted_intent"] != ""]  # a prediction came back (its feedback may have failed)
        arms[arm] = {
            "requests": len(rows),
            "failed": int((rows["error"] != "").sum()),
            "model_versions": sorted(set(answered["model_version"])),
            "accuracy": round(float(answered["correct"].astype(bool).mean()), 4) if len(answered) else None,
            "fallback_rate": round(float(answered["fallback"].astype(bool).mean()), 4) if len(answered) else None,
            "feedback": {k: int(n) for k, n in rows.loc[rows["feedback"] != "", "feedback"].value_counts().items()},
        }
    return arms


@dataclass(frozen=True)
class TrafficRun:
    """One phase of simulated users: what was sent where, and per arm what came back."""

    phase: str
    data: str
    requests: int
    canary_percent: int
    predictor_url: str
    collector_url: str
    started: str  # ISO 8601
    rows: str  # the Parquet file of the rows
    arms: dict[str, dict]  # per arm: model versions, requests, failed, accuracy, fallback rate, feedback


def traffic_command(
    args: TrafficArgs, *, data: DataConfig, traffic: TrafficConfig, work: Path
) -> StepResult[TrafficRun]:
    """Simulated users: send labelled messages through the predictor, react from the truth to the collector."""
    out = Path(args.out) if args.out else None
    return StepResult(
        *traffic_step(
            Path(args.data), args.predictor_url, args.collector_url, endpoint=args.endpoint,
            canary_percent=args.canary_percent, phase=args.phase, limit=args.limit or 0, out=out,
            data_cfg=data, cfg=traffic, work=work,
        )
    )  # fmt: skip


def traffic_step(
    data: Path,
    predictor_url: str,
    collector_url: str,
    *,
    endpoint: str,
    canary_percent: int,
    phase: str,
    limit: int,
    out: Path | None,
    data_cfg: DataConfig,
    cfg: TrafficConfig,
    work: Path,
) -> tuple[TrafficRun, str]:
    """Replay a labelled dataset (shuffled with the traffic seed, at most ``limit`` messages) as users."""
    examples = load_examples(data, data_cfg)[["text", "intent"]]
    examples = examples.sample(frac=1, random_state=cfg.seed).reset_index(drop=True)
    if limit > 0:
        examples = examples.head(limit)
    started = datetime.now(UTC)

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"traffic {phase}: {done}/{total}", file=sys.stderr, flush=True)

    frame = simulate(
        examples, predictor_url, collector_url, endpoint=endpoint, cfg=cfg, phase=phase,
        canary_percent=canary_percent, oos_label=data_cfg.oos_label, progress=report,
    )  # fmt: skip
    target = out or work / "traffic" / f"{started:%Y%m%dT%H%M%S}-{phase}.parquet"
    with replacing(target) as partial:  # a reader never sees half a file
        frame.to_parquet(partial, index=False)
    arms = summarize(frame)
    result = TrafficRun(
        phase=phase,
        data=str(data),
        requests=len(frame),
        canary_percent=canary_percent,
        predictor_url=predictor_url,
        collector_url=collector_url,
        started=started.isoformat(),
        rows=str(target),
        arms=arms,
    )
    lines = "\n".join(
        f"| {arm} | {', '.join(a['model_versions'])} | {a['requests']} | {a['failed']} | {a['accuracy']} | "
        f"{a['fallback_rate']} | {', '.join(f'{k} {n}' for k, n in sorted(a['feedback'].items())) or 'none'} |"
        for arm, a in arms.items()
    )
    md = (
        f"## Simulated traffic, phase `{phase}`\n\n{len(frame)} messages from `{data}` to {predictor_url} "
        f"({canary_percent}% to the canary), feedback to {collector_url}; rows in `{target}`.\n\n"
        "| arm | model version | requests | failed | accuracy | fallback rate | feedback |\n"
        f"|---|---|---|---|---|---|---|\n{lines}\n"
    )
    return result, md
