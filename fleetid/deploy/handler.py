"""The AWS Lambda entry point of the identity server: ``fleetid.deploy.handler.handler``.

Importing this module loads the standard library only. The server (boto3, the fleet model,
the ASGI application, the live revision from S3, the signing keys from KMS) is assembled on
the first invocation of each execution environment and kept for every invocation after it.

Two reasons to keep the import cheap. Lambda gives the init phase a time limit of its own, so
work whose duration grows with the fleet and with KMS and S3 latency belongs in the
invocation, under the function's timeout. And a failure to assemble (S3 or KMS unreachable, a
pointer naming an object that does not verify) then fails only that invocation, and the next
one tries again, where a failed init would have been reported as a runtime crash.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetid.deploy.runtime import DeployedServer

__all__ = ["handler", "reset"]


class _Assembled:
    """The server of this execution environment, once it is built."""

    def __init__(self) -> None:
        self.server: DeployedServer | None = None
        self.lock = threading.Lock()


_assembled = _Assembled()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one Function URL (HTTP API payload 2.0) event."""
    server = _assembled.server or _assemble()

    return server(event, context)


def reset() -> None:
    """Forget the assembled server, so that the next event assembles a new one."""
    with _assembled.lock:
        _assembled.server = None


def _assemble() -> DeployedServer:
    with _assembled.lock:
        if _assembled.server is None:
            from fleetid.deploy.runtime import build_server
            from fleetid.deploy.settings import LambdaSettings

            _assembled.server = build_server(LambdaSettings.from_environment(os.environ))

        return _assembled.server
