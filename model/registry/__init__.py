"""MLflow: where the store is (``store``), training runs and their lineage (``tracking``; for a run that
trains elsewhere, its dataset and artifact moved through the run's artifact store), model
versions and the ``challenger`` / ``champion`` aliases (``versions``, read side, which the serving
path may use), registration and alias moves (``register``), the pyfunc wrapper MLflow loads, and
the ``register`` and ``promote`` (alias only) steps.

Imports: ``model.core``, ``model.artifact``.
"""
