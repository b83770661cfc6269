"""What fleetid shares about talking to AWS: error codes, and what botocore logs."""

from __future__ import annotations

from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["AWS_ERRORS", "BODY_LOGGERS", "aws_error_code"]

AWS_ERRORS: Final = (BotoCoreError, ClientError)

# botocore writes whole request bodies ("Making request ... with params") and response bodies
# ("Response body:") at DEBUG on these two loggers. For KMS Encrypt and Decrypt those bodies
# carry the private key, base64-encoded.
BODY_LOGGERS: Final = ("botocore.endpoint", "botocore.parsers")


def aws_error_code(exc: BotoCoreError | ClientError) -> str:
    """The AWS error code of `exc`, or the botocore error's class name; never its message."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)

    return type(exc).__name__
