"""Log: the collector that stores KServe logger CloudEvents and user feedback (personal data
redacted first, idempotent, durable before it answers 200: in the store, or in its spool on disk
while the store is down: ``spool``), the conversation store (SQLite or PostgreSQL) and the export
of a window as a conversation snapshot (``export``: the rules in ``snapshot_rows``, any length of
window in flat memory in ``streamed_export``, with DuckDB), with each answer's entities moved onto
the redacted text (``redaction``). ``export-events``' flags are in ``args``, apart so that the step
table imports none of this.

Imports: ``model.core``, ``model.data``, ``data_checks`` (redaction).
"""
