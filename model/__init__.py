"""Flywheel's model and its lifecycle, one sub-package per stage of the loop.

``core`` (config, errors, plumbing) → ``data`` and ``artifact`` (the contracts: examples, snapshots,
the model artifact) → ``registry`` (MLflow) → ``evaluate`` → ``train`` / ``prepare`` / ``collect`` /
``serve`` → ``deploy`` → ``loop``. Each package may import only the ones before it in this list
(``data_checks`` sits between ``registry`` and ``evaluate``); the import contract in pyproject.toml
enforces it (``make lint``).
"""
