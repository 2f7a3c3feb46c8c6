"""MLflow: where the store is (``store``), training runs and their lineage (``tracking``; for a run that
trains elsewhere, its dataset and artifact moved through the run's artifact store), model
versions and the ``challenger`` / ``champion`` aliases (``versions``, read side; its ``fetch_model``
gives ``flywheel serve`` a registry model's folder and version), registration and alias moves
(``register``), the pyfunc wrapper MLflow loads, and the ``register`` and ``set-champion`` (alias
only) steps, whose flags are in ``args``.

Imports: ``model.core``, ``model.artifact``.
"""
