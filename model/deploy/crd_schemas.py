"""Objects of a custom resource checked against the CRD's own published schema: the ``openAPIV3Schema``
its project ships (``schemas/``: prometheus-operator's PodMonitor and PrometheusRule, Kubeflow Trainer's
TrainJob; each file's ``$comment`` names the release and file it was taken from), read with
``jsonschema``. Unknown fields are refused, as ``kubernetes-validate`` does for the core kinds in
strict mode and as the API server's structural pruning would silently drop them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

SCHEMAS = Path(__file__).with_name("schemas")


def _strict(schema):
    """``schema`` with unknown fields refused wherever an object lists its fields (as ``kubectl --validate=strict``)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k != "enum" else v for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def _validator(schema_file: str):
    import jsonschema  # only check-manifests and train-job need it

    schema = json.loads((SCHEMAS / schema_file).read_text())
    return jsonschema.Draft7Validator(_strict(schema))


def schema_errors(doc: dict, schema_file: str) -> list[str]:
    """What the CRD schema in ``schemas/<schema_file>`` refuses in ``doc``, each as ``<field path>: <why>``,
    in field order."""
    found = sorted(_validator(schema_file).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found]
