"""Deploy and monitor by Git: reading and editing the manifests Argo CD syncs (keeping comments and
order), validating them, the release / promote / rollback / request-retrain steps as pull
requests through a forge (GitHub's REST API or a local repository), and canary analysis with its
metric sources (the collector's store, Prometheus, a file). The steps' flags are in ``args``.

Imports: ``model.core``, ``model.registry``, ``model.collect`` (the store's counts for canary analysis).
"""
