"""Stand-ins and real servers: serving, the collector and its outages, PostgreSQL, the mlflow server,
promtool on the alert and canary queries, the pod as its manifests start it, and the delivery steps
against the stand-ins for GitHub, an OCI registry, Prometheus and KServe + Knative (see conftest.py)."""
