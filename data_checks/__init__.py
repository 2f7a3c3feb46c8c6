"""What data must satisfy before it is trained on or trusted: Great Expectations suites on logged
events and training snapshots, the PII scanner/redactor, and drift checks (Evidently).
The ``check-data`` and ``drift`` steps' flags are in ``args``, apart so that the step table
imports neither Great Expectations nor Evidently.

Imports: ``model.core``, ``model.data``, ``model.artifact`` (the drift encoder) and
``model.registry`` (a ``models:/`` baseline); the stages that need these checks (``model.prepare``,
``model.collect``, ``model.loop``) import them, never the other way round.
"""
