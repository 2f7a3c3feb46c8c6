"""Retrain: fine-tune the encoder with its intent head (seeded, GPU when present, one process or N under
torchrun with DDP), checkpoint it so a killed run resumes, calibrate the fallback threshold, package
the result as a sealed artifact with an ONNX export checked against PyTorch; the ``train`` step,
which also evaluates on the test split and logs the MLflow run.
The step's flags are in ``args``, apart so that the step table imports no PyTorch.

Imports: ``model.core``, ``model.data``, ``model.artifact``, ``model.registry``, ``model.evaluate``.
"""
