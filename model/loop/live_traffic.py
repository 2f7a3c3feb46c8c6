"""The loop's users on the running stand-in cluster, and what the conversation store makes of them.

``LiveTraffic.send`` puts a batch of examples through the simulated users (``model.loop.traffic``) to
the revision the cluster's Knative route picks for each (``LocalCluster.arm_for``), and keeps what
was sent (``sent``) and each request's true intent for the simulated reviewer (``truth``). The
predictor's logger posts to the collector in the background, so every read of the store
(``await_logger``, ``window_since``) first waits until the store holds every answered call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from model.collect.export import export_window, window_rows
from model.collect.store import open_store
from model.core.errors import FlywheelError
from model.loop.configs import LoopConfigs
from model.loop.stand_in import LocalCluster
from model.loop.traffic import simulate

LOGGER_DEADLINE_S = 120  # far above the logger's delay on a loaded 2-core machine: past it, something is down


class LiveTraffic:
    """Simulated users of ``cluster``, keeping what they sent and the truth behind it."""

    def __init__(self, cluster: LocalCluster, store_url: str, cfgs: LoopConfigs, work: Path):
        self.cluster, self.store_url, self.cfgs, self.work = cluster, store_url, cfgs, work
        self.sent: list[pd.DataFrame] = []  # each batch of requests, as sent (traffic.COLUMNS)
        self.truth: dict[str, str] = {}  # request id → true intent, for the simulated reviewer

    def send(self, examples: pd.DataFrame, phase: str, seed_offset: int) -> pd.DataFrame:
        """Each example as one user's message, to the revision the cluster's Knative route picks for it."""
        sent = simulate(
            examples,
            self.cluster.predictor_url,
            self.cluster.collector_url,
            endpoint=self.cfgs.serve.endpoint,
            cfg=self.cfgs.traffic,
            phase=phase,
            oos_label=self.cfgs.data.oos_label,
            seed_offset=seed_offset,
            route=self.cluster.arm_for,
        )
        self.truth.update(zip(sent["request_id"], sent["true_intent"]))
        self.sent.append(sent)
        return sent

    def await_logger(self, start: datetime) -> None:
        """Return once the store holds every call answered since ``start``: the predictor's logger posts
        in the background, so what a step reads must not depend on how quickly it did (a busy machine)."""
        expected = sum(int((t["status"] == 200).sum()) for t in self.sent if t["time"].min() >= start)
        deadline = time.monotonic() + LOGGER_DEADLINE_S
        with self._store() as engine:
            while True:
                stored = len(window_rows(engine, start, _just_after_now())[1])
                if stored >= expected:
                    return
                if time.monotonic() > deadline:
                    raise FlywheelError(
                        f"the collector stored {stored} of {expected} answered calls since {start.isoformat()} "
                        f"within {LOGGER_DEADLINE_S} s (see {self.work / 'logs'})"
                    )
                time.sleep(0.2)

    def window_since(self, start: datetime, name: str) -> Path:
        """The window since ``start`` as a snapshot, once the logger has delivered every answered call."""
        self.await_logger(start)
        return self.export(start, _just_after_now(), name)

    def export(self, start: datetime, end: datetime, name: str) -> Path:
        """The store's window [start, end) as the snapshot ``snapshots/<name>.parquet``."""
        with self._store() as engine:
            info = export_window(engine, start, end, self.work / "snapshots" / f"{name}.parquet")
        return Path(info.path)

    @contextmanager
    def _store(self) -> Iterator[Engine]:
        engine = open_store(self.store_url)
        try:
            yield engine
        finally:
            engine.dispose()


def _just_after_now() -> datetime:
    """A window's end that takes in a call stored this instant (the window excludes its end)."""
    return datetime.now(UTC) + timedelta(seconds=1)
