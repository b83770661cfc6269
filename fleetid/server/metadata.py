"""Discovery (OpenID Connect Discovery 1.0 and RFC 8414) and the JWKS.

Only what is implemented is advertised: a client that believes the metadata never tries a
grant, method or parameter that this server would refuse.
"""

from __future__ import annotations

from typing import Any

from fleetid.fleet.compile import Revision
from fleetid.server.clients import ASSERTION_ALGORITHMS
from fleetid.server.context import Endpoints
from fleetid.server.grants import (
    authorization_code,
    client_credentials,
    refresh_token,
    token_exchange,
)

__all__ = ["AUTH_METHODS", "OIDC_SCOPES", "metadata"]

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")


def metadata(endpoints: Endpoints, revision: Revision, signing_algorithm: str) -> dict[str, Any]:
    resource_scopes = sorted(
        {scope for resource in revision.fleet.resources.values() for scope in resource.scopes}
    )
    return {
        "issuer": endpoints.issuer,
        "authorization_endpoint": endpoints.authorization,
        "token_endpoint": endpoints.token,
        "jwks_uri": endpoints.jwks,
        "userinfo_endpoint": endpoints.userinfo,
        "introspection_endpoint": endpoints.introspection,
        "revocation_endpoint": endpoints.revocation,
        "scopes_supported": [*OIDC_SCOPES, *resource_scopes],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [
            authorization_code.GRANT_TYPE,
            refresh_token.GRANT_TYPE,
            client_credentials.GRANT_TYPE,
            token_exchange.GRANT_TYPE,
        ],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [signing_algorithm],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "azp",
            "name",
            "email",
            "tenant",
        ],
        "authorization_response_iss_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
