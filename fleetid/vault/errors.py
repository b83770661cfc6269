"""Errors raised by the connections vault.

Every failure of the vault is a `VaultError`, so the server can catch one class where a
connection's credential is fetched and audit what happened by `code`, a fixed snake_case
word per class. The tree:

    VaultError                      code                 meaning
     ├── UnknownConnection          unknown_connection   no such connection, or of another kind
     ├── NotLinked                  not_linked           the user never linked it, or unlinked it
     ├── LinkBroken                 link_broken          the provider refused the refresh
     ├── LinkRejected               link_rejected        a callback that completes no link
     │    └── LinkDenied            link_denied          authorization refused at the provider
     ├── RefreshContended           refresh_contended    another fetch's refresh did not finish
     ├── ApiKeyMissing              api_key_missing      no key stored for an API-key connection
     ├── SecretUnavailable          secret_unavailable   a secret reference resolved to nothing
     ├── ProviderError              provider_error       the provider failed or answered an error
     │    └── ProviderUnreachable   provider_unreachable no answer: network failure or timeout
     ├── DecryptionFailed           decryption_failed    a record does not open under its binding
     └── EnvelopeError              envelope_error       a master key could not be used
          └── SecretExposureRisk    secret_exposure_risk refused: a key would be logged or exposed

Where an error concerns one link it carries `connection`, `tenant` and `user` (None when they
do not apply), so the audit line can name them without parsing the message. Messages are
fixed phrases built from those names, endpoint URLs, OAuth error codes and AWS error codes;
never from a token, a code, a client secret, an API key or a data key, and never from a
provider's free-text `error_description`, which may echo what was sent. The underlying httpx
or botocore exception is kept as `__cause__`.

Storage failures are not wrapped: they stay `fleetid.store.StoreError`, which the server
already answers as "temporarily unavailable".
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ApiKeyMissing",
    "DecryptionFailed",
    "EnvelopeError",
    "LinkBroken",
    "LinkDenied",
    "LinkRejected",
    "NotLinked",
    "ProviderError",
    "ProviderUnreachable",
    "RefreshContended",
    "SecretExposureRisk",
    "SecretUnavailable",
    "UnknownConnection",
    "VaultError",
]


class VaultError(Exception):
    """A connection's credential could not be linked, stored, fetched or removed."""

    code: ClassVar[str] = "vault_error"

    def __init__(
        self,
        message: str,
        *,
        connection: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
    ) -> None:
        super().__init__(message)
        self.connection = connection
        self.tenant = tenant
        self.user = user


def _who(tenant: str, user: str) -> str:
    return f"user {user!r} of tenant {tenant!r}"


class UnknownConnection(VaultError):
    """The live revision has no connection of that name, or it is of another kind."""

    code = "unknown_connection"

    def __init__(self, connection: str, *, expected: str | None = None) -> None:
        if expected is None:
            message = f"the fleet has no connection {connection!r}"
        else:
            message = f"connection {connection!r} is not an {expected} connection"
        super().__init__(message, connection=connection)
        self.expected = expected


class NotLinked(VaultError):
    """The user has not linked this OAuth connection; `link_url` is where they do it."""

    code = "not_linked"

    def __init__(self, connection: str, tenant: str, user: str, *, link_url: str) -> None:
        super().__init__(
            f"{_who(tenant, user)} has not linked connection {connection!r}; to link it, "
            f"they open {link_url} once and sign in to the provider",
            connection=connection,
            tenant=tenant,
            user=user,
        )
        self.link_url = link_url


class LinkBroken(VaultError):
    """The link no longer yields tokens; the user must link the connection again."""

    code = "link_broken"

    def __init__(
        self, connection: str, tenant: str, user: str, *, reason: str, link_url: str
    ) -> None:
        super().__init__(
            f"the link of {_who(tenant, user)} to connection {connection!r} is broken: "
            f"{reason}; they must link it again at {link_url}",
            connection=connection,
            tenant=tenant,
            user=user,
        )
        self.reason = reason
        self.link_url = link_url


class LinkRejected(VaultError):
    """An authorization callback that does not complete a link; nothing was stored."""

    code = "link_rejected"


class LinkDenied(LinkRejected):
    """The provider answered the authorization request with an error, e.g. access_denied."""

    code = "link_denied"

    def __init__(self, connection: str, tenant: str, user: str, *, error: str) -> None:
        super().__init__(
            f"the provider of connection {connection!r} did not authorize {_who(tenant, user)}: "
            f"{error}",
            connection=connection,
            tenant=tenant,
            user=user,
        )
        self.error = error


class RefreshContended(VaultError):
    """Another fetch held the refresh lease for longer than it may; try again shortly."""

    code = "refresh_contended"


class ApiKeyMissing(VaultError):
    """The vault holds no key for this API-key connection."""

    code = "api_key_missing"


class SecretUnavailable(VaultError):
    """A secret reference (`{env: NAME}`, `{config: NAME}`) could not be resolved."""

    code = "secret_unavailable"


class ProviderError(VaultError):
    """The connection's OAuth provider failed or answered with an error.

    `operation` is one of discovery, token, refresh, revocation; `status` the HTTP status and
    `error` the OAuth error code (RFC 6749 §5.2), when the provider sent them.
    """

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        connection: str,
        operation: str,
        status: int | None = None,
        error: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
    ) -> None:
        super().__init__(message, connection=connection, tenant=tenant, user=user)
        self.operation = operation
        self.status = status
        self.error = error


class ProviderUnreachable(ProviderError):
    """The provider did not answer: the connection failed or timed out."""

    code = "provider_unreachable"


class DecryptionFailed(VaultError):
    """A record did not decrypt under the binding it was read for.

    It was moved to another user's, tenant's or connection's row, changed, or sealed under a
    master key this vault does not hold.
    """

    code = "decryption_failed"


class EnvelopeError(VaultError):
    """A master key could not be used; `aws_code` is the AWS error code, if any."""

    code = "envelope_error"

    def __init__(self, message: str, *, aws_code: str | None = None) -> None:
        super().__init__(message)
        self.aws_code = aws_code


class SecretExposureRisk(EnvelopeError):
    """Refused: a plaintext key would be written to a log or readable by other users."""

    code = "secret_exposure_risk"
