"""Prepare: logged conversations plus the current training set become the next training set:
redacted (``data_checks.pii``), cleaned and deduplicated, auto-labelled from confident well-rated
answers, merged with human labels from the review queue, checked for likely-wrong new labels
(cross-validated confident learning, ``label_check``), balanced, split and snapshotted with a
digest and a datasheet; the review queue itself (CSV and Label Studio tasks with the model's
intent and entity spans pre-annotated, spread over clusters of similar messages, its recheck
section of flagged labels, and their import) and the candidate new intents those clusters make
(named in one decision each).
The step's flags are in ``args``, apart so that the step table imports none of this.

Imports: ``model.core``, ``model.data``, ``model.artifact``, ``model.registry``, ``data_checks``.
"""
