"""What the Lambda function is told through its environment, read once per cold start.

The Pulumi program sets these variables; the names are defined here once so that the
program and the function cannot disagree on them. Nothing secret is ever among them: the
function finds its keys through KMS key ids and its state through the table and bucket
names.

=================================  =============================================================
variable                           meaning
=================================  =============================================================
``FLEETID_TABLE``                  the DynamoDB table of the store
``FLEETID_BUCKET``                 the S3 bucket holding ``revisions/<hash>.json`` and the pointer
``FLEETID_FLEET``                  the fleet's ``identity.name``, bound into every KMS context
``FLEETID_KEY_CUSTODY``            ``kms-wrapped`` (default) or ``kms-sign``
``FLEETID_WRAPPING_KEY``           kms-wrapped: the symmetric KMS key that wraps the signing keys
``FLEETID_SIGNING_KEYS``           kms-sign: JSON object, algorithm to asymmetric KMS key id
``FLEETID_VAULT_KEY``              the vault's KMS key (an alias), for connection secrets
``FLEETID_ISSUER``                 the issuer, when known before deployment (a custom domain);
                                   otherwise the pointer names it
``FLEETID_REVISION_CHECK_SECONDS`` how often the pointer is checked for a new revision (30)
=================================  =============================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "BUCKET",
    "FLEET",
    "ISSUER",
    "KEY_CUSTODY",
    "REVISION_CHECK_SECONDS",
    "SIGNING_KEYS",
    "TABLE",
    "VAULT_KEY",
    "WRAPPING_KEY",
    "LambdaSettings",
    "SettingsError",
]

TABLE: Final = "FLEETID_TABLE"
BUCKET: Final = "FLEETID_BUCKET"
FLEET: Final = "FLEETID_FLEET"
KEY_CUSTODY: Final = "FLEETID_KEY_CUSTODY"
WRAPPING_KEY: Final = "FLEETID_WRAPPING_KEY"
SIGNING_KEYS: Final = "FLEETID_SIGNING_KEYS"
VAULT_KEY: Final = "FLEETID_VAULT_KEY"
ISSUER: Final = "FLEETID_ISSUER"
REVISION_CHECK_SECONDS: Final = "FLEETID_REVISION_CHECK_SECONDS"

DEFAULT_REVISION_CHECK_SECONDS: Final = 30.0
_ALGORITHMS: Final = ("RS256", "ES256")

Custody = Literal["kms-wrapped", "kms-sign"]


class SettingsError(Exception):
    """The function's environment lacks a setting, or holds one that cannot be used."""


@dataclass(frozen=True)
class LambdaSettings:
    """The function's settings, checked: every problem names the variable to fix."""

    table: str
    bucket: str
    fleet: str
    custody: Custody = "kms-wrapped"
    wrapping_key: str | None = None
    signing_keys: Mapping[str, str] = field(default_factory=dict)
    vault_key: str | None = None
    issuer: str | None = None
    revision_check_seconds: float = DEFAULT_REVISION_CHECK_SECONDS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> LambdaSettings:
        custody = environ.get(KEY_CUSTODY, "kms-wrapped")
        if custody not in ("kms-wrapped", "kms-sign"):
            raise SettingsError(f"{KEY_CUSTODY} must be kms-wrapped or kms-sign, not {custody!r}")

        settings = cls(
            table=_required(environ, TABLE),
            bucket=_required(environ, BUCKET),
            fleet=_required(environ, FLEET),
            custody="kms-sign" if custody == "kms-sign" else "kms-wrapped",
            wrapping_key=environ.get(WRAPPING_KEY) or None,
            signing_keys=_signing_keys(environ.get(SIGNING_KEYS)),
            vault_key=environ.get(VAULT_KEY) or None,
            issuer=(environ.get(ISSUER) or "").rstrip("/") or None,
            revision_check_seconds=_seconds(environ.get(REVISION_CHECK_SECONDS)),
        )

        if settings.custody == "kms-wrapped" and settings.wrapping_key is None:
            raise SettingsError(f"{WRAPPING_KEY} is required with kms-wrapped custody")
        if settings.custody == "kms-sign" and not settings.signing_keys:
            raise SettingsError(f"{SIGNING_KEYS} is required with kms-sign custody")

        return settings


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise SettingsError(f"{name} is not set")

    return value


def _signing_keys(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}

    try:
        keys = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{SIGNING_KEYS} is not JSON") from exc

    valid = isinstance(keys, dict) and all(
        algorithm in _ALGORITHMS and isinstance(key_id, str) and key_id
        for algorithm, key_id in keys.items()
    )
    if not valid:
        raise SettingsError(f"{SIGNING_KEYS} must map {' or '.join(_ALGORITHMS)} to KMS key ids")

    return dict(keys)


def _seconds(raw: str | None) -> float:
    if not raw:
        return DEFAULT_REVISION_CHECK_SECONDS

    try:
        seconds = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{REVISION_CHECK_SECONDS} is not a number") from exc

    if not math.isfinite(seconds) or seconds < 0:
        raise SettingsError(f"{REVISION_CHECK_SECONDS} must be zero or more seconds")

    return seconds
