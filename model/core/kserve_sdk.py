"""kserve, imported without letting it read our command line.

kserve's ``model_server`` module parses ``sys.argv`` when it is first imported (``parse_known_args``,
abbreviations allowed), so ``flywheel <step> --config FILE`` was read as kserve's
``--configure_logging FILE`` and the process exited. Import kserve's names from here instead.
"""

from __future__ import annotations

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    import kserve.models as kserve_models
    from kserve import model_server as kserve_server
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
finally:
    sys.argv = _argv

__all__ = ["kserve", "kserve_models", "kserve_server", "InvalidInput", "InferOutput", "InferRequest", "InferResponse"]
