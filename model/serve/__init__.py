"""Serve: the predictor on KServe's ModelServer (V1 and V2 REST, stable/canary/shadow endpoints),
micro-batching, Prometheus metrics, the prediction log, the response catalog and the local
stand-in for KServe's request logger.

``serving`` is the ``serve`` step (the models loaded, the server started); ``predictor`` the
``kserve.Model`` of one arm; ``protocol`` V1/V2 parsing and answers; ``metrics``,
``prediction_log``, ``logger`` and ``catalog`` the parts that hang on the predictor; ``args``
the ``serve`` step's flags.

Imports: ``model.core``, ``model.artifact``, and ``model.registry.versions`` to open ``models:/``
URIs; never training, the gate or registration (a contract in pyproject.toml, and a test that
imports the predictor in a fresh interpreter).
"""
