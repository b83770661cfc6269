"""AgentCore's inbound JWT authorizer, as fleetid configures it and as it checks tokens.

`inbound_authorizer` is the one place that says how an AgentCore runtime or gateway is
told to trust fleetid: the discovery URL (ending in `/.well-known/openid-configuration`),
`allowed_clients` matched against the token's `client_id`, `allowed_audiences` against
`aud`, and a custom claim rule requiring `azp` to name the agent. The Pulumi components
deploy exactly this configuration, and `fleetid verify` applies it to a token, fetching
discovery and the JWKS over HTTP as the authorizer does, so a token can be checked before
it is sent to AWS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from fleetid.fleet.compile import Revision
from fleetid.server.tokens import agent_audience

__all__ = ["AuthorizerConfig", "Verdict", "check_token", "inbound_authorizer"]

DISCOVERY_PATH = "/.well-known/openid-configuration"
# The only signing algorithm AgentCore's custom JWT authorizer is known to accept.
AGENTCORE_ALGORITHMS = ("RS256",)


@dataclass(frozen=True)
class AuthorizerConfig:
    discovery_url: str
    allowed_clients: tuple[str, ...]
    allowed_audiences: tuple[str, ...]
    required_claims: Mapping[str, str] = field(default_factory=dict)


def inbound_authorizer(revision: Revision, agent: str, issuer: str) -> AuthorizerConfig:
    if agent not in revision.fleet.agents:
        raise KeyError(agent)
    return AuthorizerConfig(
        discovery_url=issuer.rstrip("/") + DISCOVERY_PATH,
        allowed_clients=(agent,),
        allowed_audiences=(agent_audience(agent),),
        required_claims={"azp": agent},
    )


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str
    claims: Mapping[str, Any] = field(default_factory=dict)


def _fetch_json(client: httpx.Client, url: str) -> dict[str, Any]:
    response = client.get(url)
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return body


def check_token(
    token: str,
    config: AuthorizerConfig,
    *,
    client: httpx.Client | None = None,
    algorithms: Sequence[str] = AGENTCORE_ALGORITHMS,
) -> Verdict:
    """Accept or reject `token` as the authorizer configured by `config` would."""
    http = client or httpx.Client(timeout=10)
    try:
        try:
            discovery = _fetch_json(http, config.discovery_url)
            keys = jwt.PyJWKSet.from_dict(_fetch_json(http, str(discovery["jwks_uri"])))
        except (httpx.HTTPError, ValueError, KeyError, jwt.PyJWTError) as exc:
            return Verdict(False, f"cannot read discovery or JWKS: {type(exc).__name__}")
    finally:
        if client is None:
            http.close()

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return Verdict(False, "not a JWT")
    if header.get("alg") not in algorithms:
        return Verdict(False, f"signed with {header.get('alg')}, not {', '.join(algorithms)}")
    matching = [key for key in keys.keys if key.key_id == header.get("kid")]
    if not matching:
        return Verdict(False, "signed by a key that is not in the issuer's JWKS")
    try:
        claims = jwt.decode(
            token,
            matching[0].key,
            algorithms=list(algorithms),
            issuer=str(discovery.get("issuer")),
            options={"verify_aud": False, "require": ["exp", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        return Verdict(False, "the token has expired")
    except jwt.InvalidIssuerError:
        return Verdict(False, "the token's iss is not the discovery document's issuer")
    except jwt.PyJWTError as exc:
        return Verdict(
            False, f"the token's signature or claims are invalid ({type(exc).__name__})"
        )

    if claims.get("client_id") not in config.allowed_clients:
        return Verdict(False, f"client_id is not among {list(config.allowed_clients)}", claims)
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
    if not set(audiences) & set(config.allowed_audiences):
        return Verdict(False, f"aud is not among {list(config.allowed_audiences)}", claims)
    for name, expected in config.required_claims.items():
        if claims.get(name) != expected:
            return Verdict(False, f"claim {name} is not {expected!r}", claims)
    return Verdict(True, "accepted", claims)
