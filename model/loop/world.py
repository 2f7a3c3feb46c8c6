"""What the loop's first stage sets up and every later stage works in, and the seeds of its traffic.

``World`` is what ``Loop.setup`` returns and each later stage is handed: the data plan (seed set,
traffic pool, full test set), the intents the first model knows and those held back, the seed set as
the steps read it, and the stand-ins (the GitOps repository, the cluster) with the simulated users who
talk to them. Nothing in it is replaced once made; the users keep what they sent
(``LiveTraffic.sent``, ``LiveTraffic.truth``), which the reviewer and ``loop.json`` read.

``Batch`` names a batch of simulated traffic and the two seeds it is drawn with, so no stage passes
a bare number: each batch has its own streams, and a rerun with the same ``loop.seed`` and
``traffic.seed`` sends the same messages with the same reactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.loop.live_traffic import LiveTraffic
from model.loop.plan import DataPlan
from model.loop.record import Intents
from model.loop.stand_in import LocalCluster, StandInRepo


@dataclass(frozen=True)
class World:
    plan: DataPlan
    intents: Intents
    seed_csv: Path  # the first model's training set as the steps read it (plan.seed, written once)
    repo: StandInRepo
    cluster: LocalCluster
    users: LiveTraffic


@dataclass(frozen=True)
class Batch:
    """One batch of simulated traffic: its phase (as the traffic file and the report name it) and its seeds."""

    phase: str
    draw: int  # added to loop.seed: which messages the users send (plan.draw_traffic)
    react: int  # traffic.simulate's seed_offset: each request's route and its user's reaction


# Distinct numbers give each batch its own draws; these are the values every earlier loop.json was made with.
BEFORE_SHIFT = Batch("before-shift", draw=0, react=1)
SHIFTED = Batch("shifted", draw=1, react=2)
AFTER_RELEASE = Batch("after-release", draw=99, react=99)


def canary_look(look: int) -> Batch:
    """The traffic before canary analysis number ``look`` (1, 2, ...)."""
    return Batch(f"canary-look-{look}", draw=10 + look, react=10 + look)
