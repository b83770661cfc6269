"""Who is calling: the fleet's agents as OAuth clients, and how they prove it.

Every agent in the live revision is a confidential client whose `client_id` is its name.
So is every resource whose server introspects (`introspection: true`), for the introspection
endpoint alone, with a secret by `client_secret_basic` or `client_secret_post`. An agent
authenticates with the one method fleet.yaml gives it (RFC 6749 §2.3):

- `client_secret_basic` / `client_secret_post`: a high-entropy secret, compared through its
  SHA-256 digest (a slow password hash on a random 256-bit secret buys nothing and costs
  milliseconds per token);
- `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9): a short-lived JWT signed by a key in the
  agent's JWKS, each `jti` accepted once.

Where the secrets come from is behind `ClientSecrets`: a 0600 file generated on first start
for `fleetid serve`, digests in the store on AWS.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt

from fleetid.fleet.compile import Revision
from fleetid.fleet.model import Agent, Fleet, Resource, thaw_json
from fleetid.server.errors import InvalidClient, InvalidRequest
from fleetid.server.tokens import digest, new_secret
from fleetid.store import Store

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ASSERTION_TYPE",
    "AuthenticatedClient",
    "AuthenticatedResource",
    "ClientSecrets",
    "LocalClientSecrets",
    "StoredClientSecrets",
    "authenticate",
    "authenticate_introspection_caller",
    "confidential_clients",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "ES256", "PS256"]
# The advertised algorithms a key of each type (and curve) can verify, when its JWK does
# not pin one with `alg`; never `none` nor an HMAC, whose key would be a shared secret.
_ALGORITHMS_BY_KEY_TYPE: Mapping[tuple[object, object], tuple[str, ...]] = {
    ("RSA", None): ("RS256", "PS256"),
    ("EC", "P-256"): ("ES256",),
}
ASSERTION_NAMESPACE = "assertion"
# An assertion living longer than this would make the replay cache hold it as long.
MAX_ASSERTION_LIFETIME = 600


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    client_id: str
    agent: Agent
    method: str


@dataclass(frozen=True, slots=True)
class AuthenticatedResource:
    """A resource server that proved it holds its introspection secret."""

    client_id: str
    resource: Resource
    method: str


def confidential_clients(fleet: Fleet) -> list[str]:
    """The client ids that hold secrets: every agent, and every resource that introspects."""
    resources = [name for name, resource in fleet.resources.items() if resource.introspection]
    return sorted({*fleet.agents, *resources})


class ClientSecrets(ABC):
    """The digests of the client secrets: the agents', and those of introspecting resources."""

    @abstractmethod
    def digest(self, client_id: str) -> str | None: ...


class LocalClientSecrets(ClientSecrets):
    """Secrets in `<state>/clients.json` (mode 0600), one per confidential client (agent or
    introspecting resource), generated on first start and kept across restarts; `fleetid
    credentials` reads them back."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = self._read()
        self._digests = {client: digest(secret) for client, secret in self._secrets.items()}

    def _read(self) -> dict[str, str]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        loaded = json.loads(raw)
        if not isinstance(loaded, dict):
            raise ValueError(f"{self.path} is not a JSON object")
        return {str(client): str(secret) for client, secret in loaded.items()}

    def ensure(self, agents: Iterable[str]) -> list[str]:
        """Generate secrets for agents that have none; the names of those that got one."""
        with self._lock:
            added = [agent for agent in agents if agent not in self._secrets]
            if not added:
                return []
            # Written to the file first: a failed write changes nothing, in memory either.
            secrets = {**self._secrets, **{agent: new_secret("fis") for agent in added}}
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump(secrets, handle, indent=2, sort_keys=True)
            os.replace(temporary, self.path)
            self._digests = {**self._digests, **{agent: digest(secrets[agent]) for agent in added}}
            self._secrets = secrets
            return added

    def secret(self, client_id: str) -> str | None:
        return self._secrets.get(client_id)

    def digest(self, client_id: str) -> str | None:
        return self._digests.get(client_id)


class StoredClientSecrets(ClientSecrets):
    """Digests kept in the store under `client_secret/<client_id>`, written at deploy time."""

    namespace = "client_secret"

    def __init__(self, store: Store) -> None:
        self.store = store

    def digest(self, client_id: str) -> str | None:
        record = self.store.get(self.namespace, client_id)
        if record is None:
            return None
        value = record.value.get("sha256")
        return value if isinstance(value, str) else None


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError) as exc:
        # ValueError also covers non-ASCII text, which b64decode refuses outright.
        raise InvalidClient("the Basic credentials are not valid base64") from exc
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise InvalidClient("the Basic credentials have no ':'")
    # RFC 6749 §2.3.1: the client id and secret are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)


def authenticate(
    revision: Revision,
    secrets: ClientSecrets,
    store: Store,
    form: Mapping[str, str],
    authorization: str | None,
    *,
    audiences: frozenset[str],
    now: float,
) -> AuthenticatedClient:
    """The client making this request, or InvalidClient saying why not."""
    basic = _basic_credentials(authorization) if authorization else None
    return _authenticate(revision, secrets, store, form, basic, audiences=audiences, now=now)


def _authenticate(
    revision: Revision,
    secrets: ClientSecrets,
    store: Store,
    form: Mapping[str, str],
    basic: tuple[str, str] | None,
    *,
    audiences: frozenset[str],
    now: float,
) -> AuthenticatedClient:
    posted, asserted = _one_method(form, basic)
    if basic is not None:
        client_id, secret = basic
        agent = _agent(revision, client_id, form)
        try:
            _check_secret(secrets, client_id, secret, agent, "client_secret_basic")
        except InvalidClient as refused:
            refused.agent = client_id
            raise
        return AuthenticatedClient(client_id, agent, "client_secret_basic")
    if posted:
        client_id = form.get("client_id", "")
        agent = _agent(revision, client_id, form)
        try:
            _check_secret(secrets, client_id, form["client_secret"], agent, "client_secret_post")
        except InvalidClient as refused:
            refused.agent = client_id
            raise
        return AuthenticatedClient(client_id, agent, "client_secret_post")
    if asserted:
        return _check_assertion(revision, store, form, audiences, now)
    raise InvalidClient("client authentication is required")


def authenticate_introspection_caller(
    revision: Revision,
    secrets: ClientSecrets,
    store: Store,
    form: Mapping[str, str],
    authorization: str | None,
    *,
    audiences: frozenset[str],
    now: float,
) -> AuthenticatedClient | AuthenticatedResource:
    """Who asks the introspection endpoint: a resource server that introspects, or else an
    agent, as `authenticate` finds it; InvalidClient saying why not."""
    basic = _basic_credentials(authorization) if authorization else None
    claimed = basic[0] if basic is not None else form.get("client_id", "")
    resource = revision.fleet.resources.get(claimed)
    if resource is None or not resource.introspection:
        return _authenticate(revision, secrets, store, form, basic, audiences=audiences, now=now)
    posted, _ = _one_method(form, basic)
    if basic is not None:
        secret, method = basic[1], "client_secret_basic"
        _check_posted_id(claimed, form)
    elif posted:
        secret, method = form["client_secret"], "client_secret_post"
    else:
        raise InvalidClient("a resource server authenticates with its client secret")
    expected = secrets.digest(claimed)
    if expected is None or not hmac.compare_digest(expected, digest(secret)):
        refused = InvalidClient("client authentication failed")
        # The audit trail's `agent` is the client id claimed; no agent shares this one.
        refused.agent = claimed
        raise refused
    return AuthenticatedResource(claimed, resource, method)


def _one_method(form: Mapping[str, str], basic: tuple[str, str] | None) -> tuple[bool, bool]:
    """Whether the form posts a secret, and an assertion; InvalidRequest if the request
    uses more than one method."""
    posted = "client_secret" in form
    asserted = "client_assertion" in form
    # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    # request."
    if sum((basic is not None, posted, asserted)) > 1:
        raise InvalidRequest("use one client authentication method per request")
    return posted, asserted


def _check_posted_id(client_id: str, form: Mapping[str, str]) -> None:
    posted_id = form.get("client_id")
    if posted_id is not None and posted_id != client_id:
        raise InvalidRequest("client_id does not match the authenticated client")


def _agent(revision: Revision, client_id: str, form: Mapping[str, str]) -> Agent:
    _check_posted_id(client_id, form)
    agent = revision.fleet.agents.get(client_id)
    if agent is None:
        raise InvalidClient("unknown client")
    return agent


def _check_secret(
    secrets: ClientSecrets, client_id: str, secret: str, agent: Agent, method: str
) -> None:
    expected = secrets.digest(client_id)
    if expected is None or not hmac.compare_digest(expected, digest(secret)):
        raise InvalidClient("client authentication failed")
    if agent.token_endpoint_auth_method != method:
        raise InvalidClient(
            f"this client authenticates with {agent.token_endpoint_auth_method}, not {method}"
        )


def _check_assertion(
    revision: Revision,
    store: Store,
    form: Mapping[str, str],
    audiences: frozenset[str],
    now: float,
) -> AuthenticatedClient:
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise InvalidClient(f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form["client_assertion"]
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise InvalidClient("the client assertion is not a JWT") from exc

    client_id = str(unverified.get("sub", ""))
    agent = _agent(revision, client_id, form)
    try:
        return _check_agent_assertion(
            agent,
            assertion,
            client_id=client_id,
            store=store,
            header=header,
            audiences=audiences,
            now=now,
        )
    except InvalidClient as refused:
        refused.agent = client_id
        raise


def _check_agent_assertion(
    agent: Agent,
    assertion: str,
    *,
    client_id: str,
    store: Store,
    header: Mapping[str, Any],
    audiences: frozenset[str],
    now: float,
) -> AuthenticatedClient:
    """The assertion of `agent`, whose client id its `sub` names, checked whole."""
    if agent.token_endpoint_auth_method != "private_key_jwt":
        raise InvalidClient(
            f"this client authenticates with {agent.token_endpoint_auth_method}, "
            "not private_key_jwt"
        )
    key, algorithms = _assertion_key(agent, header)
    try:
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=list(algorithms),
            audience=list(audiences),
            issuer=client_id,
            # Expiry is checked below against the server's clock, not the wall clock.
            options={"require": ["exp", "jti", "iss", "sub", "aud"], "verify_exp": False},
        )
    except (jwt.PyJWTError, TypeError, ValueError) as exc:
        # TypeError: a header naming an algorithm of another key type than the key's.
        raise InvalidClient(f"the client assertion was refused: {type(exc).__name__}") from exc

    named = claims["aud"]
    if isinstance(named, list) and not set(named) <= audiences:
        # PyJWT accepts an audience list that merely includes this server. An assertion
        # that another authorization server would accept as well can be replayed there by
        # whoever holds it; only values naming this server are let through.
        raise InvalidClient("the client assertion's aud names other audiences than this server")
    expires_at = claims["exp"]
    if not isinstance(expires_at, int) or expires_at + 5 < now:
        raise InvalidClient("the client assertion has expired")
    if expires_at - now > MAX_ASSERTION_LIFETIME:
        raise InvalidClient(
            f"the client assertion must expire within {MAX_ASSERTION_LIFETIME} seconds"
        )
    # RFC 7523 §3: "The authorization server MAY ensure that JWTs are not replayed by
    # maintaining the set of used 'jti' values for the length of time for which the JWT
    # would be considered valid based on the applicable 'exp' instant."
    replay_key = digest(f"{client_id}\n{claims['jti']}")
    if not store.create(ASSERTION_NAMESPACE, replay_key, {}, expires_at=expires_at + 5):
        raise InvalidClient("the client assertion was already used")
    return AuthenticatedClient(client_id, agent, "private_key_jwt")


def _assertion_key(agent: Agent, header: Mapping[str, Any]) -> tuple[jwt.PyJWK, tuple[str, ...]]:
    """The key of the agent's JWKS that the assertion names, and the algorithms it may have
    been signed with."""
    if agent.jwks is None:
        raise InvalidClient("the client has no JWKS registered in the fleet")
    members = thaw_json(agent.jwks).get("keys")
    if not isinstance(members, list):
        raise InvalidClient("the client's registered JWKS is not usable")
    # A member that is no usable key for an assertion is passed over, as PyJWKSet passes
    # over the keys it cannot load.
    usable: list[tuple[jwt.PyJWK, tuple[str, ...]]] = []
    for member in members:
        algorithms = _algorithms_for(member) if isinstance(member, dict) else ()
        if not algorithms:
            continue
        try:
            usable.append((jwt.PyJWK(member, algorithms[0]), algorithms))
        except jwt.PyJWTError:
            continue
    kid = header.get("kid")
    matching = [(key, fits) for key, fits in usable if kid is None or key.key_id == kid]
    if len(matching) != 1:
        raise InvalidClient(
            "no single usable key in the client's JWKS matches the assertion's kid"
        )
    return matching[0]


def _algorithms_for(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """The key's own `alg` when it declares one of the advertised algorithms, else every
    advertised algorithm its type fits; none for any other key. PyJWK is no guide here: it
    gives an RSA key without `alg` RS256 only, and fails outright on `alg: none`."""
    declared = jwk.get("alg")
    if declared is not None:
        return (str(declared),) if declared in ASSERTION_ALGORITHMS else ()
    return _ALGORITHMS_BY_KEY_TYPE.get((jwk.get("kty"), jwk.get("crv")), ())
