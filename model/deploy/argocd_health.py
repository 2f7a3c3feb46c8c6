"""What Argo CD shows as an InferenceService's health: Argo CD's own Lua health check, run as Argo CD runs it.

Argo CD decides a KServe InferenceService's health with the script it bundles,
``resource_customizations/serving.kserve.io/InferenceService/health.lua``; this project ships that
file unchanged beside this module (``argocd/health.lua``, with Argo CD's licence and the upstream
commit in ``argocd/UPSTREAM.md``) and runs it on a Lua 5.1 runtime (``lupa.lua51``; Argo CD embeds
gopher-lua, a Lua 5.1) the way argo-cd ``util/lua/lua.go`` does:

- the object, as the API server returns it, becomes the global ``obj`` (``runLua``: ``decodeValue``
  turns maps into tables, lists into 1-based arrays, JSON null into nil); built-in scripts get the
  standard libraries (``GetHealthScript``: "standard libraries will be enabled for all built-in scripts");
- the script's return value is its health (``ExecuteHealthLua``): a table becomes ``{status, message}``,
  a status outside Argo CD's health codes becomes ``Unknown`` ("Lua returned an invalid health status"),
  nil becomes an empty health, and anything else is an error.

Its verdicts that matter here: a False or Unknown condition is **Progressing**, never Degraded;
``Stopped`` True is Suspended; only ``status.modelStatus.transitionStatus`` other than ``UpToDate`` or
``InProgress`` (e.g. ``BlockedByFailedLoad``) is Degraded; every condition True is Healthy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from lupa import lua51

from model.core.errors import FlywheelError

SCRIPT = "argocd/health.lua"
# health.HealthStatusCode values Argo CD accepts from a script (util/lua/lua.go, isValidHealthStatusCode)
CODES = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
INVALID = "Lua returned an invalid health status"


@dataclass(frozen=True)
class Health:
    """Argo CD's health of one resource: ``status`` (one of ``CODES``, "" when the script returned nil)."""

    status: str
    message: str = ""


@cache
def script() -> str:
    return resources.files("model.deploy").joinpath(SCRIPT).read_text()


def _decode(runtime, value):
    """A JSON value as argo-cd's ``decodeValue`` puts it into Lua."""
    if isinstance(value, dict):
        return runtime.table_from({str(k): _decode(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list | tuple):
        return runtime.table_from([_decode(runtime, v) for v in value])
    return value if isinstance(value, bool | int | float | str) else None  # decodeValue: any other type is nil


def inferenceservice_health(obj: dict) -> Health:
    """Argo CD's health of ``obj``, an InferenceService as ``kubectl get isvc NAME -o json`` prints it."""
    if not isinstance(obj, dict):
        raise FlywheelError(f"expected an InferenceService object, got {type(obj).__name__}")
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    runtime.globals().obj = _decode(runtime, obj)
    try:
        result = runtime.execute(script())
    except lua51.LuaError as exc:
        raise FlywheelError(f"Argo CD's InferenceService health check failed on this object: {exc}") from exc
    if result is None:
        return Health("")
    if lua51.lua_type(result) != "table":
        got = lua51.lua_type(result) or type(result).__name__
        raise FlywheelError(f"expect table output from Lua script, not {got}")
    status, message = result["status"], result["message"]
    if status not in CODES:
        return Health("Unknown", INVALID)
    return Health(str(status), "" if message is None else str(message))
