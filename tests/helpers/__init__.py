"""What the tests share that is not a fixture: plain functions, constants and stand-in code, imported by
test modules and conftest files. Fixtures live in ``conftest.py`` (``tests/conftest.py`` for every
folder, a folder's own for its tests); a test module never imports another test module.

- ``real_parts``: the rule for tests of real system tools (fail under CI, skip elsewhere);
- ``data``: subsets of the sample data; ``snapshots``: conversation snapshots in the export schema;
- ``registry``: a local MLflow store's config, a real ``mlflow server`` on loopback;
- ``git``: a commit identity and small git calls on a test's GitOps repository;
- ``events``: KServe logger and feedback CloudEvents, the arms ConfigMap;
- ``serving``: ``flywheel serve`` as a process on a free loopback port; its prediction log's records;
- ``delivery``: the delivery tests' configs, a local HTTP server for stand-ins, the images a manifest names;
- ``pod``: a manifest's container started as the kubelet would start it;
- ``cli``: every step's parser, and what the real parser refuses in a ``flywheel ...`` call;
- ``trainjobs``: a TrainJob as ``flywheel train-job`` renders it, the training namespace's access objects;
- ``trainer_stand_in``: the Kubernetes API and Kubeflow Trainer controller ``flywheel train-job`` talks to.
"""
