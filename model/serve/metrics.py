"""The predictor's Prometheus series, labelled by model version (kserve serves /metrics).

No ``arm`` label: in a cluster each Knative revision serves one version and cannot know its traffic
share; the collector's ``flywheel_arm_info{arm, model_version}`` says which arm a version serves, and
the alert rules and dashboard join on it. Their names and labels are what the alert rules, the
dashboard and canary analysis query (``tests/code/test_wiring.py`` checks every query names a series
exported here or by the collector).
"""

from __future__ import annotations

import re

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from model.artifact.predictor import Prediction

VERSION_LABELS = ("model_version",)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 10)) + (0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_MODEL_ROUTE = re.compile(r"^/v[12]/models/([^/:]+)")


class ServingMetrics:
    """Requests, latency, predictions, confidence, hand-offs, errors, batch sizes and shadow agreement."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        def counter(name: str, doc: str, *extra_labels: str) -> Counter:
            return Counter(name, doc, [*VERSION_LABELS, *extra_labels], registry=registry)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(name, doc, VERSION_LABELS, buckets=buckets, registry=registry)

        self.requests = counter("flywheel_requests", "requests to a model, by HTTP status", "code")
        self.latency = histogram(
            "flywheel_request_duration_seconds", "time from request parsed to prediction ready", LATENCY_BUCKETS
        )
        self.predictions = counter("flywheel_predictions", "predictions per intent", "intent")
        self.confidence = histogram(
            "flywheel_prediction_confidence", "confidence of the predicted intent", CONFIDENCE_BUCKETS
        )
        self.fallbacks = counter("flywheel_fallbacks", "predictions handed off to a human")
        self.errors = counter("flywheel_errors", "requests answered with an error status", "status")
        self.batch_size = histogram("flywheel_batch_texts", "texts per forward pass", BATCH_BUCKETS)
        self.shadow_agreement = Counter(
            "flywheel_shadow_agreement",
            "shadow predictions, by agreement with the primary",
            ["model_version", "primary_version", "agree"],
            registry=registry,
        )
        self._versions: dict[str, str] = {}  # endpoint name -> version

    def add_endpoint(self, name: str, version: str) -> None:
        self._versions[name] = version
        # the series exists from the start, at 0: "no series" then means "not scraped", never "no traffic yet"
        self.requests.labels(version, "200")

    def observe_status(self, path: str, status: int) -> None:
        """Count model requests and error answers per version; models not served count as version "unknown"."""
        match = _MODEL_ROUTE.match(path)
        version = self._versions.get(match.group(1) if match else "", "unknown")
        if match:
            self.requests.labels(version, str(status)).inc()
        if status >= 400:
            self.errors.labels(version, str(status)).inc()

    def observe(self, version: str, preds: list[Prediction], seconds: float) -> None:
        self.latency.labels(version).observe(seconds)
        for p in preds:
            self.predictions.labels(version, p.intent).inc()
            self.confidence.labels(version).observe(p.confidence)
            if p.fallback:
                self.fallbacks.labels(version).inc()
