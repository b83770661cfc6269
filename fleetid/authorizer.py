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
from fleetid.login import server_reason, transport_problem
from fleetid.server.tokens import agent_audience

__all__ = [
    "AuthorizerConfig",
    "IssuerKeys",
    "IssuerUnreadable",
    "Verdict",
    "check_token",
    "inbound_authorizer",
    "judge_token",
    "read_issuer",
]

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


class IssuerUnreadable(Exception):
    """The issuer's discovery document or JWKS could not be read; the message names the URL
    and what went wrong. Nothing was said about the token."""


@dataclass(frozen=True)
class IssuerKeys:
    """What the authorizer reads from the issuer: its `issuer` and its published keys."""

    issuer: str
    keys: jwt.PyJWKSet


def read_issuer(config: AuthorizerConfig, *, client: httpx.Client | None = None) -> IssuerKeys:
    """Fetch the discovery document and the JWKS it names, as the authorizer does, or raise
    IssuerUnreadable."""
    http = client or httpx.Client(timeout=10)
    try:
        discovery = _fetch_document(http, config.discovery_url, "discovery document")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnreadable(f"{config.discovery_url} names no jwks_uri")
        jwks = _fetch_document(http, jwks_uri, "JWKS")
    finally:
        if client is None:
            http.close()
    try:
        keys = jwt.PyJWKSet.from_dict(jwks)
    except jwt.PyJWTError as exc:
        raise IssuerUnreadable(f"the JWKS {jwks_uri} holds no usable key") from exc
    return IssuerKeys(str(discovery.get("issuer")), keys)


def _fetch_document(http: httpx.Client, url: str, what: str) -> dict[str, Any]:
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        raise IssuerUnreadable(f"cannot reach {transport_problem(exc)}") from exc
    if response.status_code != 200:
        reason = server_reason(response)
        said = f": {reason}" if reason else ""
        raise IssuerUnreadable(f"the {what} {url} answered {response.status_code}{said}")
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise IssuerUnreadable(f"the {what} {url} is not a JSON object")
    return document


def check_token(
    token: str,
    config: AuthorizerConfig,
    *,
    client: httpx.Client | None = None,
    algorithms: Sequence[str] = AGENTCORE_ALGORITHMS,
) -> Verdict:
    """Accept or reject `token` as the authorizer configured by `config` would; an issuer
    whose documents cannot be read rejects every token, as the authorizer would."""
    try:
        issuer = read_issuer(config, client=client)
    except IssuerUnreadable as exc:
        return Verdict(False, f"cannot read discovery or JWKS: {exc}")
    return judge_token(token, config, issuer, algorithms=algorithms)


def judge_token(
    token: str,
    config: AuthorizerConfig,
    issuer: IssuerKeys,
    *,
    algorithms: Sequence[str] = AGENTCORE_ALGORITHMS,
) -> Verdict:
    """Accept or reject `token` against documents already read from its issuer."""
    keys = issuer.keys
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
            issuer=issuer.issuer,
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
