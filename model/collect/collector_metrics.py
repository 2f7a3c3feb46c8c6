"""The collector's Prometheus series: events by outcome, feedback per arm and version, time to
acknowledge, which version each arm serves, and the spool and store as they are at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from model.collect.arms import ArmMap

if TYPE_CHECKING:
    from model.collect.collector import Collector


class ArmInfo:
    """``flywheel_arm_info{arm, model_version} 1`` for each arm the mounted ConfigMap names, read at scrape.

    The predictor's series carry only ``model_version`` (a revision cannot know its arm); the alert
    rules and the dashboard join them with this to say which arm a version serves.
    """

    def __init__(self, arm_map: ArmMap):
        self.arm_map = arm_map

    def collect(self):
        info = GaugeMetricFamily(
            "flywheel_arm_info", "the model version each traffic arm serves now", labels=["arm", "model_version"]
        )
        for arm, version in sorted(self.arm_map.arms().items()):
            info.add_metric([arm, version], 1)
        yield info


class CollectorMetrics:
    """The collector's Prometheus series: events by outcome, feedback per arm and version, time to acknowledge,
    and which version each arm serves."""

    def __init__(self, registry: CollectorRegistry, arm_map: ArmMap):
        self.registry = registry
        registry.register(ArmInfo(arm_map))
        self.events = Counter(
            "flywheel_collector_events", "events by type and outcome", ["type", "outcome"], registry=registry
        )
        # what the alert rules and canary analysis query: feedback on the answers of each model version
        self.feedback = Counter(
            "flywheel_feedback",
            "stored feedback by kind, on answers of this arm and model version ('unknown' if it names no answer)",
            ["kind", "arm", "model_version"],
            registry=registry,
        )
        self.latency = Histogram(
            "flywheel_collector_ack_seconds",
            "time from request to commit and answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.drained = Counter(
            "flywheel_collector_spool_drained",
            "spooled events written to the store once it answered, by outcome (stored, duplicate)",
            ["outcome"],
            registry=registry,
        )


class SpoolStatus:
    """The spool and the store as they are at scrape time: what the alert on a filling spool reads."""

    def __init__(self, collector: Collector):
        self.collector = collector

    def collect(self):
        spool = self.collector.spool
        for name, help_text, value in (
            ("flywheel_collector_spool_bytes", "bytes of acknowledged events in the spool, waiting for the store",
             spool.bytes),
            ("flywheel_collector_spool_events", "acknowledged events in the spool, waiting for the store",
             spool.events),
            ("flywheel_collector_spool_max_bytes", "the spool's cap: past it events are refused (503)",
             spool.max_bytes),
            ("flywheel_collector_store_up", "1 while the store takes writes, 0 while events go to the spool",
             int(self.collector.store_up)),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, help_text, value=value)
