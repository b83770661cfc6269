"""What the KMS custodies share about talking to AWS: error codes, and what botocore logs."""

from __future__ import annotations

import logging
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from fleetid.keys.errors import KeyExposureRisk

__all__ = ["AWS_ERRORS", "aws_error_code", "refuse_if_kms_bodies_are_logged"]

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


def refuse_if_kms_bodies_are_logged() -> None:
    """Raise `KeyExposureRisk` if botocore would log a KMS call that carries a private key."""
    for name in BODY_LOGGERS:
        if logging.getLogger(name).isEnabledFor(logging.DEBUG):
            raise KeyExposureRisk(
                f"logger {name!r} is at DEBUG, where botocore logs KMS request and response "
                "bodies, and these would hold a private key; set it to INFO or above"
            )
