"""Deploy and monitor by Git: reading and editing the manifests Argo CD syncs (keeping comments and
order), validating them, the release / promote / rollback / request-retrain steps as pull
requests through a forge (GitHub's REST API or a local repository), and canary analysis with its
metric sources (the collector's store, Prometheus, a file); ``flywheel serve``'s start
(``serve_step``: a ``models:/`` URI fetched to a folder, as KServe's storage initializer does, then
the predictor). Also what runs on the cluster besides serving: the Kubeflow Trainer TrainJob that
trains there (its template checked, rendered, submitted and waited for by ``flywheel train-job``).
The steps' flags are in ``args``.

Imports: ``model.core``, ``model.registry``, ``model.collect`` (the store's counts for canary analysis),
``model.artifact`` (checking the artifact a TrainJob produced), ``model.serve`` (the predictor server,
from ``serve_step`` only).
"""
