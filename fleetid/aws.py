"""What fleetid shares about talking to AWS: error codes, and what botocore logs."""

from __future__ import annotations

import logging
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["AWS_ERRORS", "BODY_LOGGERS", "aws_error_code", "body_logger_at_debug"]

AWS_ERRORS: Final = (BotoCoreError, ClientError)

# botocore writes whole request bodies ("Making request ... with params") and response bodies
# ("Response body:") at DEBUG on these two loggers. For KMS Encrypt and Decrypt those bodies
# carry the private key, base64-encoded.
BODY_LOGGERS: Final = ("botocore.endpoint", "botocore.parsers")


def body_logger_at_debug() -> str | None:
    """The first of botocore's body loggers that would log at DEBUG, or None."""
    for name in BODY_LOGGERS:
        if logging.getLogger(name).isEnabledFor(logging.DEBUG):
            return name

    return None


def aws_error_code(exc: BotoCoreError | ClientError) -> str:
    """The AWS error code of `exc`, or the botocore error's class name; never its message."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)

    return type(exc).__name__
