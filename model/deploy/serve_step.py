"""``flywheel serve``: where serving starts, so where a ``models:/`` URI becomes an artifact folder.

On a cluster KServe's storage initializer downloads the InferenceService's storage URI to
``/mnt/models`` before the predictor starts, and the manifest passes the version
(``--stable-version``); the predictor opens a folder. Run by hand or by the loop's stand-in cluster,
``flywheel serve`` may be given ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` instead:
this step fetches each such model from the registry (``model.registry.versions.fetch_model``) and
hands the serving package folders and versions, so that ``model.serve`` never imports MLflow (the
import contract in pyproject.toml says so). MLflow is imported only when a URI names the registry.
"""

from __future__ import annotations

from model.core.config import RegistryConfig, ServeConfig
from model.core.steps import StepResult
from model.serve.args import ServeArgs
from model.serve.predictor import ModelSource
from model.serve.serving import Arms, Served, serve_step

REGISTRY_URI = "models:/"


def serve_command(args: ServeArgs, *, serve: ServeConfig, registry: RegistryConfig) -> StepResult[Served]:
    """Serve stable/canary/shadow models with the KServe ModelServer (V1 and V2 REST) until SIGTERM."""
    return StepResult(*serve_step(arms(args, registry), serve))


def arms(args: ServeArgs, reg_cfg: RegistryConfig) -> Arms:
    """The models to serve, each a folder with its version; the registry's are fetched first."""
    return Arms(
        stable=model_source(args.stable, reg_cfg, version=args.stable_version or ""),
        canary=model_source(args.canary, reg_cfg) if args.canary else None,
        shadow=model_source(args.shadow, reg_cfg) if args.shadow else None,
        stable_sha256=args.stable_sha256 or "",
    )


def model_source(source: str, reg_cfg: RegistryConfig, *, version: str = "") -> ModelSource:
    """A folder as it is; a ``models:/`` URI fetched, with the version it names (``version`` wins: the manifest's)."""
    if not source.startswith(REGISTRY_URI):
        return ModelSource(source, version)
    from model.registry.versions import fetch_model  # MLflow takes seconds to import: only for a registry URI

    folder, number = fetch_model(reg_cfg, source)
    return ModelSource(str(folder), version or str(number), origin=source)
