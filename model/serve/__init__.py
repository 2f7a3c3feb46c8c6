"""Serve: the predictor on KServe's ModelServer (V1 and V2 REST, stable/canary/shadow endpoints),
micro-batching, Prometheus metrics, the prediction log, the response catalog and the local
stand-in for KServe's request logger.

``serving`` starts the server (the models loaded, then listening); ``predictor`` the
``kserve.Model`` of one arm, opened from an artifact folder; ``protocol`` V1/V2 parsing and answers;
``metrics``, ``prediction_log``, ``logger`` and ``catalog`` the parts that hang on the predictor;
``args`` the ``serve`` step's flags (the step itself, which fetches ``models:/`` URIs from the
registry first, is ``model.deploy.serve_step``).

Imports: ``model.core``, ``model.artifact``; never training, the gate, the registry or MLflow (a
contract in pyproject.toml, and a test that imports the server in a fresh interpreter).
"""
