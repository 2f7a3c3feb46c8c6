"""Flywheel's model package: data loading, training, evaluation, gate, registry and serving."""
