"""Which model locations KServe can download: a release refuses, before any pull request, a storage URI
that the cluster would refuse only after the merge (the InferenceService then never reconciles).

KServe's controller validates the predictor's storage URI (for this custom container, the
``STORAGE_URI`` env of ``kserve-container``: ``predictor_custom.go``, ``GetStorageUri``) with
``ValidateStorageURI`` in kserve ``pkg/controller/v1beta1/inferenceservice/utils/utils.go``. Past the
ClusterStorageContainer resources a cluster may add (step 1 there, not modelled: with none beyond the
default, this is the whole rule), step 2 is what ``kserve_accepts`` does, line by line:

- no ``\\w+?://`` anywhere in it (Go's ``regexp.MatchString``: unanchored, ASCII ``\\w``): a local path,
  accepted;
- it contains ``blob.core.windows.net`` (``AzureBlobURL``): accepted only if
  ``https://(.+?).blob.core.windows.net/(.+)`` (``AzureBlobURIRegEx``) matches somewhere in it;
- otherwise accepted only if it starts with one of ``SupportedStorageURIPrefixList``.

A "local path" passes KServe's check but names a file inside the storage initializer's container
(kserve ``python/storage/kserve_storage/kserve_storage.py``, ``Storage.download``: a path that does
not exist there falls through to "Cannot recognize storage type"): ``mlflow-artifacts:/1/models/...``
and ``dbfs:/databricks/...`` are read that way and fail when the pod starts. A released model must
live where the storage initializer downloads it from, so ``problem`` refuses those too.
"""

from __future__ import annotations

import re

# kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go: SupportedStorageURIPrefixList
SUPPORTED_PREFIXES = (
    *("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://"),
    *("oci://", "oci+native://", "oci+fetch://", "hf://"),
)
AZURE_BLOB_URL = "blob.core.windows.net"  # AzureBlobURL
AZURE_BLOB_URI = re.compile(r"https://(.+?).blob.core.windows.net/(.+)")  # AzureBlobURIRegEx, unescaped dots and all
AZURE_FORM = "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH"
HAS_SCHEME = re.compile(r"\w+?://", re.ASCII)  # ValidateStorageURI: `regexp.MustCompile(`\w+?://`).MatchString`

# What a user does about it. mlflow/utils/cli_args.py: `--serve-artifacts` is on by default, and
# mlflow/utils/server_cli_utils.py (resolve_default_artifact_root) then gives new experiments the artifact
# location mlflow-artifacts:/ (the server proxies them, to --artifacts-destination); with
# `--default-artifact-root s3://...` new experiments live in the bucket and clients read and write it directly.
FIX = (
    "register models with an MLflow 3 server (database backend) whose clients write artifacts straight to object "
    "storage KServe downloads: `mlflow server --backend-store-uri postgresql://... --default-artifact-root "
    "s3://BUCKET/mlflow --no-serve-artifacts` (or gs://BUCKET/mlflow); --artifacts-destination alone is not "
    "enough, clients then still see mlflow-artifacts:/. Log to an experiment created after that change (an "
    "experiment keeps the artifact location it was created with; registry.experiment names it) and re-register "
    "the model (docs/cluster.md, 'Model storage')"
)
_WHAT = (  # what a refused location is, by its prefix
    ("mlflow-artifacts:", "it is the MLflow server's artifact proxy (`mlflow server`'s default, --serve-artifacts)"),
    ("dbfs:", "it is Databricks' file system"),
    ("wasb", f"it is Azure Blob Storage as MLflow writes it; KServe reads Azure blobs only as {AZURE_FORM}"),
    ("abfs", f"it is Azure Data Lake Storage as MLflow writes it; KServe reads Azure blobs only as {AZURE_FORM}"),
)


def kserve_accepts(uri: str) -> bool:
    """KServe's ``ValidateStorageURI`` (step 2, the default storage initializer): True where it passes."""
    if not HAS_SCHEME.search(uri):
        return True  # "be an absolute or relative local path"
    if AZURE_BLOB_URL in uri:  # "need to verify Azure Blob first, because it uses http(s):// prefix"
        return AZURE_BLOB_URI.search(uri) is not None
    return uri.startswith(SUPPORTED_PREFIXES)


def problem(uri: str) -> str | None:
    """Why KServe cannot download the model at ``uri`` (None when it can), naming the fix."""
    if HAS_SCHEME.search(uri) and kserve_accepts(uri):
        return None
    why = next((what for prefix, what in _WHAT if uri.startswith(prefix)), "")
    if not HAS_SCHEME.search(uri):
        refused = "KServe takes it for a path inside its storage initializer's container, where no model is"
    else:
        refused = (
            f"KServe refuses it (ValidateStorageURI: not one of {', '.join(SUPPORTED_PREFIXES)}, nor {AZURE_FORM})"
        )
    why = f"; {why}" if why else ""
    return f"storage URI {uri!r} cannot be downloaded by KServe: {refused}{why}. Fix: {FIX}"
