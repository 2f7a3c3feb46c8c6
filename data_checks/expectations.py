"""Custom Great Expectations for what the built-in ones cannot say about chat training data.

- ``ExpectColumnValuesToContainNoPersonalData``: backed by ``data_checks.pii``. Its result lists the
  offending rows and entity types, never the values: Data Docs must not become a copy of the
  personal data the check is there to catch.
- ``ExpectColumnValueCountsToBeAtLeast``: every label has at least ``min_count`` rows (``ignore``
  lists labels exempt, such as out-of-scope).
- ``ExpectNoTextInBothTrainAndTest``: no text (case-insensitive) is in the test split and in
  another split; that would inflate test scores and make the gate compare the wrong thing.

Importing this module registers the metrics and expectations with Great Expectations.
"""

from __future__ import annotations

from typing import Any, ClassVar

from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation, ColumnAggregateExpectation
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
    column_aggregate_value,
)
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

from data_checks.pii import default_scanner

MAX_LISTED = 20


class ColumnPersonalDataRows(ColumnAggregateMetricProvider):
    metric_name = "column.flywheel_personal_data_rows"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        scanner = default_scanner()
        rows = []
        for index, text in column.items():
            found = scanner.scan(text) if isinstance(text, str) else []
            if found:
                rows.append({"row": int(index), "entities": sorted({f.entity for f in found})})
        return rows


class ExpectColumnValuesToContainNoPersonalData(ColumnAggregateExpectation):
    """Expect no email, phone, card, IBAN, IP address or SSN in any value (Presidio pattern recognizers)."""

    metric_dependencies = ("column.flywheel_personal_data_rows",)
    success_keys = ()

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
        rows = metrics["column.flywheel_personal_data_rows"]
        return {"success": not rows, "result": {"observed_value": len(rows), "details": {"rows": rows[:MAX_LISTED]}}}


class ColumnValueCountsMetric(ColumnAggregateMetricProvider):
    metric_name = "column.flywheel_value_counts"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):
        return {str(k): int(v) for k, v in column.value_counts().items()}


class ExpectColumnValueCountsToBeAtLeast(ColumnAggregateExpectation):
    """Expect every distinct value (label) to occur at least ``min_count`` times, except those in ``ignore``."""

    min_count: int
    ignore: list = []
    metric_dependencies = ("column.flywheel_value_counts",)
    success_keys = ("min_count", "ignore")
    args_keys = ("column", "min_count", "ignore")

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
        counts = metrics["column.flywheel_value_counts"]
        short = {k: v for k, v in sorted(counts.items()) if v < self.min_count and k not in set(self.ignore)}
        return {"success": not short, "result": {"observed_value": len(short), "details": {"below_min_count": short}}}


class TableTrainTestOverlap(TableMetricProvider):
    metric_name = "table.flywheel_train_test_overlap"

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(
            domain_kwargs=metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE
        )
        if not {"text", "split"} <= set(df.columns):
            raise KeyError(f"columns 'text' and 'split' are required, found {list(df.columns)}")
        key = df["text"].astype(str).str.casefold()
        test_keys = set(key[df["split"] == "test"])
        leaked = df[(df["split"] != "test") & key.isin(test_keys)]
        return [{"row": int(i), "split": str(s)} for i, s in zip(leaked.index, leaked["split"])]


class ExpectNoTextInBothTrainAndTest(BatchExpectation):
    """Expect no text (ignoring case) in the test split and also in train or validation."""

    metric_dependencies = ("table.flywheel_train_test_overlap",)
    domain_keys: ClassVar[tuple[str, ...]] = ("batch_id", "row_condition", "condition_parser")
    success_keys = ()

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict | None = None, execution_engine=None):
        rows = metrics["table.flywheel_train_test_overlap"]
        return {"success": not rows, "result": {"observed_value": len(rows), "details": {"rows": rows[:MAX_LISTED]}}}
