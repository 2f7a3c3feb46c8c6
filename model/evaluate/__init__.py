"""Validate: offline metrics of a model on a labelled set (accuracy, macro-F1, per intent, span-level
entity P/R/F1 per type, calibration error, CPU time per query) and the gate, a pure function deciding
whether a challenger may replace the champion; the ``evaluate`` and ``gate`` steps.
The steps' flags are in ``args``, apart so that the step table imports no PyTorch.

Imports: ``model.core``, ``model.data``, ``model.artifact``, ``model.registry`` (to open
``models:/`` URIs).
"""
