"""The connections vault: third-party credentials that agents fetch at call time.

A user links an OAuth connection once (fleetid is the OAuth client of the third party);
agents then fetch fresh access tokens, refreshed as needed, or a connection's static API key.
Every credential is stored in the `Store`, encrypted as a whole by envelope encryption:

- `Vault` is what the server calls: `begin_link` / `complete_link` / `unlink` for users,
  `fetch` after the policy decision, `load_api_keys` at start, `rewrap_all` after a master
  key rotation;
- `Envelope` is the encryption contract, with `LocalEnvelope` (master keys in an owner-only
  file in the state folder) and `KmsEnvelope` (AWS KMS `GenerateDataKey` per record). Both
  bind fleet, connection, tenant and user into the encryption context and pass the same
  contract tests;
- `VaultRecords` keeps the sealed records and their index in the store;
- `ProviderClient` is the HTTP side of the OAuth connections.

Errors are the `VaultError` tree of `fleetid.vault.errors`.
"""

from fleetid.vault.envelope import Envelope, Sealed
from fleetid.vault.errors import (
    ApiKeyMissing,
    DecryptionFailed,
    EnvelopeError,
    LinkBroken,
    LinkDenied,
    LinkRejected,
    NotLinked,
    ProviderError,
    ProviderUnreachable,
    RefreshContended,
    SecretExposureRisk,
    SecretUnavailable,
    UnknownConnection,
    VaultError,
)
from fleetid.vault.kms import KmsEnvelope
from fleetid.vault.local import LocalEnvelope
from fleetid.vault.oauth import ProviderClient, ProviderMetadata, TokenResponse
from fleetid.vault.records import (
    Binding,
    Lease,
    RotationFailure,
    RotationReport,
    VaultRecord,
    VaultRecords,
)
from fleetid.vault.results import (
    ACCESS_TOKEN_TYPE,
    API_KEY_TOKEN_TYPE,
    ApiKeysLoaded,
    Credential,
    Linked,
    LinkStart,
    LinkState,
    Revocation,
    Unlinked,
    VaultEvent,
)
from fleetid.vault.secrets import EnvironmentSecrets, SecretResolver, describe_reference
from fleetid.vault.vault import DEFAULT_LINK_URL, LINK_NAMESPACE, ConnectionSource, Vault

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "API_KEY_TOKEN_TYPE",
    "DEFAULT_LINK_URL",
    "LINK_NAMESPACE",
    "ApiKeyMissing",
    "ApiKeysLoaded",
    "Binding",
    "ConnectionSource",
    "Credential",
    "DecryptionFailed",
    "Envelope",
    "EnvelopeError",
    "EnvironmentSecrets",
    "KmsEnvelope",
    "Lease",
    "LinkBroken",
    "LinkDenied",
    "LinkRejected",
    "LinkStart",
    "LinkState",
    "Linked",
    "LocalEnvelope",
    "NotLinked",
    "ProviderClient",
    "ProviderError",
    "ProviderMetadata",
    "ProviderUnreachable",
    "RefreshContended",
    "Revocation",
    "RotationFailure",
    "RotationReport",
    "Sealed",
    "SecretExposureRisk",
    "SecretResolver",
    "SecretUnavailable",
    "TokenResponse",
    "UnknownConnection",
    "Unlinked",
    "Vault",
    "VaultError",
    "VaultEvent",
    "VaultRecord",
    "VaultRecords",
    "describe_reference",
]
