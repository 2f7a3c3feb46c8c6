"""``flywheel check-data``: Great Expectations suites for logged events and training snapshots.

Two suites, built in code so they change with the contracts they check:

- ``logged_events``: the conversation snapshot (schema in ``model/data/conversations.py``): columns and
  types, unique request ids, sane timestamps, known arms and feedback values, model version
  present, confidence in [0, 1], at least ``min_events`` rows, no personal data in ``text``,
  predicted entities that fit their text (below) with a confidence in [0, 1].
- ``training_snapshot``: a prepared training set: labels known or declared new, at least
  ``min_examples_per_intent`` per intent, text lengths within bounds, no duplicate texts, no text
  in both train and test, no personal data, entity spans that fit their text.

A row's entity spans fit its text when each lies inside it, claims the text it covers
(``value == text[start:end]``), overlaps no other and touches no redaction placeholder
(``model.data.entities``). Like the case-blind duplicates, this is checked on a column derived from
the row (``entity_problem``: what is wrong, empty when nothing is) that a built-in expectation
expects to be empty, so a failure quotes the offending rows.

The check fails when any expectation fails *or* did not run (raised an error), or when fewer ran
than the suite defines. Data Docs (HTML) go to ``<report dir>/data_docs``; the step's JSON result
is the machine-readable summary.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from data_checks.args import CheckDataArgs
from model.core.config import CheckConfig, DataConfig, PrepareConfig
from model.core.errors import FlywheelError
from model.core.steps import EXIT_OK, EXIT_REJECTED, StepResult
from model.data.conversations import ARMS, NO_ENTITIES, THUMBS, read_snapshot
from model.data.conversations import COLUMNS as EVENT_COLUMNS
from model.data.entities import cell_problem, is_blank, load_spans
from model.data.examples import COLUMNS as EXAMPLE_COLUMNS
from model.data.examples import load_examples
from model.data.readers import read_table

EVENTS_SUITE, TRAINING_SUITE = "logged_events", "training_snapshot"
ENTITY_PROBLEM = "entity_problem"  # derived column: why a row's entity spans do not fit its text
SOURCES = ("seed", "human", "auto")
SPLITS = ("train", "val", "test")


def _gx():
    """Great Expectations and the project's own expectations (importing them registers them).

    GX takes seconds to import, so it loads when a check runs, not when the loop imports ``check_data``.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics leave the machine
    import great_expectations as gx

    from data_checks import expectations

    return gx, expectations


class _Suite:
    """A suite's name and expectations, built before there is a context to attach them to."""

    def __init__(self, name: str):
        self.name, self.expectations = name, []

    def add_expectation(self, expectation) -> None:
        self.expectations.append(expectation)


def events_suite(cfg: CheckConfig, now: datetime):
    gx, custom = _gx()
    E = gx.expectations
    suite = _Suite(EVENTS_SUITE)
    for column in EVENT_COLUMNS:
        suite.add_expectation(E.ExpectColumnToExist(column=column))
    for column in EVENT_COLUMNS:
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=cfg.min_events))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="request_id"))
    for column in ("request_id", "conversation_id", "text", "predicted_intent", "model_version"):
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1))
    suite.add_expectation(E.ExpectColumnValuesToBeOfType(column="timestamp", type_="Timestamp"))
    suite.add_expectation(
        E.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value=now - timedelta(days=cfg.max_event_age_days),
            max_value=now + timedelta(minutes=cfg.clock_skew_minutes),
        )
    )
    for column in ("confidence", "latency_ms"):
        suite.add_expectation(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=["float64", "float32"]))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="latency_ms", min_value=0.0))
    for column in ("fallback", "abandoned", "escalated", "resolved"):
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=column, type_="bool"))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="arm", value_set=list(ARMS)))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="thumbs", value_set=list(THUMBS)))
    suite.add_expectation(custom.ExpectColumnValuesToContainNoPersonalData(column="text"))
    suite.add_expectation(E.ExpectColumnValuesToBeNull(column=ENTITY_PROBLEM))
    return suite


def training_suite(intents: set[str], data_cfg: DataConfig, prep_cfg: PrepareConfig):
    gx, custom = _gx()
    E = gx.expectations
    suite = _Suite(TRAINING_SUITE)
    for column in EXAMPLE_COLUMNS:
        suite.add_expectation(E.ExpectColumnToExist(column=column))
    for column in ("text", "intent", "source", "split"):
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=1))
    allowed = sorted(intents | set(prep_cfg.new_intents) | {data_cfg.oos_label})
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="intent", value_set=allowed))
    suite.add_expectation(
        custom.ExpectColumnValueCountsToBeAtLeast(
            column="intent", min_count=data_cfg.min_examples_per_intent, ignore=[data_cfg.oos_label]
        )
    )
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    suite.add_expectation(
        E.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=prep_cfg.min_chars, max_value=data_cfg.max_text_chars
        )
    )
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="text_casefolded"))
    suite.add_expectation(custom.ExpectNoTextInBothTrainAndTest())
    suite.add_expectation(custom.ExpectColumnValuesToContainNoPersonalData(column="text"))
    suite.add_expectation(E.ExpectColumnValuesToBeNull(column=ENTITY_PROBLEM))
    return suite


def with_entity_problems(df: pd.DataFrame, *, predicted: bool) -> pd.DataFrame:
    """``df`` with ``entity_problem`` added in place: why the row's ``entities`` do not fit its ``text``, else None.

    ``predicted``: the spans are a model's answer (the conversation snapshot), each also carrying a
    confidence in [0, 1]. A row without entities (or a frame without the column) has no problem:
    whether the column must exist is the schema expectations' business.
    """
    if not {"text", "entities"} <= set(df.columns):
        df[ENTITY_PROBLEM] = None
        return df
    problems = []
    for text, cell in zip(df["text"], df["entities"]):
        if isinstance(cell, str) and cell == NO_ENTITIES:  # most rows: no span, nothing to check
            problems.append(None)
            continue
        problem = cell_problem(cell, text) if isinstance(text, str) else None
        if problem is None and predicted and isinstance(cell, str) and not is_blank(cell):
            problem = _confidence_problem(cell)
        problems.append(problem)
    df[ENTITY_PROBLEM] = pd.Series(problems, index=df.index, dtype=object)
    return df


def _confidence_problem(cell: str) -> str | None:
    for span in load_spans(cell):
        c = span.get("confidence")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 1:
            return f"entity {span['type']!r}: confidence {c!r} is not in [0, 1]"
    return None


@dataclass(frozen=True)
class DataCheck:
    """Each suite's expectations on its file, and every failure in a sentence."""

    passed: bool
    suites: list[dict]  # suite, file, rows, defined, ran, passed, failed, success, expectations
    failures: list[str]
    data_docs: str  # Great Expectations' Data Docs index


def check_data_command(
    args: CheckDataArgs, *, data: DataConfig, prepare: PrepareConfig, checks: CheckConfig, report_dir: Path
) -> StepResult[DataCheck]:
    """Validate logged events and/or a training snapshot with Great Expectations: exit 1 on any failure."""
    events, training, reference = (Path(p) if p else None for p in (args.events, args.training, args.reference))
    result, md, passed = check_data(
        events, training, reference, data_cfg=data, prep_cfg=prepare, cfg=checks, docs_dir=report_dir / "data_docs"
    )
    if not passed:
        print("flywheel: check-data failed:\n  " + "\n  ".join(result.failures), file=sys.stderr)
    return StepResult(result, md, EXIT_OK if passed else EXIT_REJECTED)


def check_data(
    events: Path | None,
    training: Path | None,
    reference: Path | None,
    *,
    data_cfg: DataConfig,
    prep_cfg: PrepareConfig,
    cfg: CheckConfig,
    docs_dir: Path,
    now: datetime | None = None,
) -> tuple[DataCheck, str, bool]:
    """Validate the given files; return the summary, a markdown report and whether everything passed."""
    if events is None and training is None:
        raise FlywheelError("nothing to check: give --events and/or --training")
    now = now or datetime.now(UTC)
    targets = []
    # each file is read once, its derived columns added in place, and that one frame is what the
    # expectations and the report of offending rows read: a month's window is held once, not copied
    if events is not None:
        logs = with_entity_problems(_row_numbered(read_snapshot(events, strict=False)), predicted=True)
        targets.append((events_suite(cfg, now), logs, events))
    if training is not None:
        # as it is (no schema fixes): the expectations judge it, and a blank cell is a missing value
        df = _row_numbered(read_table(training, blanks_as_missing=True))
        if "text" in df.columns:  # case-blind duplicates; a derived column the built-in expectation can check
            df["text_casefolded"] = df["text"].astype("string").str.casefold()
        df = with_entity_problems(df, predicted=False)
        intents = set()
        if reference is not None:
            intents = set(load_examples(reference, data_cfg)["intent"])
        targets.append((training_suite(intents, data_cfg, prep_cfg), df, training))
    results = _validate(targets, docs_dir)
    return _summarise(results, targets, cfg, docs_dir)


def _row_numbered(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` indexed 0..n-1, as the rows the report names are numbered (a file read is already)."""
    return (
        df
        if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
        else df.reset_index(drop=True)
    )


def _validate(targets, docs_dir: Path):
    gx, _ = _gx()
    docs_dir = docs_dir.resolve()
    from great_expectations.data_context.types.base import ProgressBarsConfig  # GX: see _gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # CI logs, not a terminal
    context.add_data_docs_site(
        site_name="flywheel",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    source = context.data_sources.add_pandas("flywheel")
    results = []
    for suite, df, path in targets:
        suite = context.suites.add(gx.ExpectationSuite(name=suite.name, expectations=suite.expectations))
        batch_def = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe(Path(path).name)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch_def, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"check-{suite.name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "partial_unexpected_count": 20},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": df})
        results.extend(run.run_results.values())
    return results


def _summarise(results, targets, cfg: CheckConfig, docs_dir: Path) -> tuple[DataCheck, str, bool]:
    suites, failures = [], []
    for result, (suite, df, path) in zip(results, targets):
        defined = len(suite.expectations)
        ran = 0
        checks = []
        for r in result.results:
            conf = r.expectation_config
            error = _raised(r.exception_info)
            raised = error is not None
            ran += not raised
            item = {
                "expectation": conf.type,
                "column": conf.kwargs.get("column"),
                "success": bool(r.success) and not raised,
                "ran": not raised,
                "observed": _offending(r.result, df, cfg.shown_rows),
            }
            if raised:
                item["error"] = error
            checks.append(item)
            if not item["success"]:
                failures.append(_message(suite.name, path, item))
        if ran < defined:
            failures.append(f"suite '{suite.name}' ({path}): only {ran} of {defined} expectations ran")
        suites.append(
            {
                "suite": suite.name,
                "file": str(path),
                "rows": len(df),
                "defined": defined,
                "ran": ran,
                "passed": sum(c["success"] for c in checks),
                "failed": sum(not c["success"] for c in checks),
                "success": ran == defined and all(c["success"] for c in checks),
                "expectations": checks,
            }
        )
    passed = not failures
    docs_index = docs_dir / "index.html"
    summary = DataCheck(passed, suites, failures, str(docs_index))
    lines = [f"## Data checks: {'passed' if passed else 'FAILED'}", ""]
    lines += [
        f"- `{s['suite']}` on `{s['file']}` ({s['rows']} rows): {s['passed']}/{s['defined']} expectations passed"
        + ("" if s["ran"] == s["defined"] else f", only {s['ran']} ran")
        for s in suites
    ]
    if failures:
        lines += ["", "### Failures", "", *[f"- {f}" for f in failures]]
    lines += ["", f"Data Docs: `{docs_index}`", ""]
    return summary, "\n".join(lines), passed


def _raised(info) -> str | None:
    """The error message if the expectation could not be computed (GX keys errors by metric when it can)."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            return (str(entry.get("exception_message") or "error").splitlines() or ["error"])[0][:300]
    return None


def _offending(result: dict, df: pd.DataFrame, shown: int) -> dict:
    """Counts and a few offending rows (row index and value; row and entity types for personal data)."""
    out: dict = {}
    if not result:
        return out
    for key in ("observed_value", "element_count", "unexpected_count", "unexpected_percent"):
        if result.get(key) is not None:
            out[key] = result[key] if not hasattr(result[key], "isoformat") else str(result[key])
    index = result.get("partial_unexpected_index_list")
    if index:
        values = result.get("partial_unexpected_list") or [None] * len(index)
        out["rows"] = [{"row": int(i), "value": _short(v)} for i, v in list(zip(index, values))[:shown]]
    details = result.get("details") or {}
    if "rows" in details:
        out["rows"] = details["rows"][:shown]
    if "request_id" in df.columns:  # the id an operator can look up in the conversation store
        for row in out.get("rows", []):
            if 0 <= row["row"] < len(df):
                row["request_id"] = str(df["request_id"].iloc[row["row"]])
    if "below_min_count" in details:
        out["below_min_count"] = details["below_min_count"]
    if isinstance(out.get("observed_value"), (list, dict)):
        out["observed_value"] = _short(out["observed_value"])
    return out


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(suite: str, path: Path, item: dict) -> str:
    where = f"column '{item['column']}'" if item["column"] else "the table"
    head = f"suite '{suite}' ({path}): {item['expectation']} on {where}"
    if not item["ran"]:
        return f"{head} could not run: {item.get('error', 'error')}"
    obs = item["observed"]
    parts = []
    if obs.get("unexpected_count"):
        parts.append(f"{obs['unexpected_count']} row(s) unexpected")
    elif "observed_value" in obs:
        parts.append(f"observed {obs['observed_value']}")
    if obs.get("below_min_count"):
        parts.append("below minimum: " + ", ".join(f"{k} ({v})" for k, v in obs["below_min_count"].items()))
    if obs.get("rows"):
        parts.append("e.g. " + "; ".join(", ".join(f"{k} {v}" for k, v in r.items()) for r in obs["rows"]))
    if not parts:
        parts.append("column not found" if item["expectation"] == "expect_column_to_exist" else "see Data Docs")
    return f"{head} failed: " + "; ".join(parts)
