"""What the in-process server tests share: a fleet variant, a server built on a temporary
state folder, and a client that drives the ASGI application without a socket.

The fleet is the repository's example with two agents added, so that every client
authentication method has an agent: `keyed-agent` signs `private_key_jwt` assertions with
a key generated for the test session, and `post-agent` sends its secret in the form.

The server is `open_local` on a temporary state folder, as `fleetid serve` builds it, with
one movable clock given to the context and to the store it opens. The clock follows the
wall clock plus an offset: PyJWT checks an assertion's `exp` against the wall clock, so a
clock that stood still in the past would make every assertion look expired.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

import fleetid.server.local
from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import read_sources
from fleetid.keys import LocalKeyFile
from fleetid.server.app import create_app
from fleetid.server.audit import JsonlAudit, read_jsonl
from fleetid.server.clients import ASSERTION_TYPE, LocalClientSecrets
from fleetid.server.context import ServerContext
from fleetid.server.local import LocalState, open_local
from fleetid.store import SQLiteStore

REPO_ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://id.fleet.test"
TOKEN_ENDPOINT = f"{ISSUER}/token"

CRM = "https://crm.acme.example.com"
TOOLS = "https://tools.acme.example.com/mcp"
SALES = "sales-assistant"
SUPPORT = "support-triage"
FINANCE = "finance-reporter"
RECONCILER = "crm-reconciler"
KEYED = "keyed-agent"
POSTER = "post-agent"
KEYED_KID = "keyed-agent-1"

REDIRECT = {
    SALES: "https://sales.acme.example.com/oauth/callback",
    SUPPORT: "https://support.acme.example.com/callback",
    FINANCE: "https://finance.acme.example.com/callback",
}

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def agent_urn(agent: str) -> str:
    return f"urn:fleetid:agent:{agent}"


def s256(verifier: str) -> str:
    hashed = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(hashed).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified: the tests read what the server put in."""
    return jwt.decode(token, options={"verify_signature": False})


def public_jwk(key: rsa.RSAPrivateKey, kid: str = KEYED_KID) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.cache
def _example_text() -> str:
    return (REPO_ROOT / "fleet.yaml").read_text()


def fleet_document(signer: rsa.RSAPrivateKey) -> dict[str, Any]:
    """The example fleet with `keyed-agent` (private_key_jwt) and `post-agent` added."""
    document: dict[str, Any] = yaml.load(_example_text(), Loader=_Loader)  # noqa: S506
    document["agents"][KEYED] = {
        "runtime": "external",
        "description": "Signs its client assertions with a key of its own",
        "scopes": {"tools": ["tools:search"]},
        "roles": ["analyst"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public_jwk(signer)]},
    }
    document["agents"][POSTER] = {
        "runtime": "external",
        "description": "Sends its client secret in the request body",
        "scopes": {"crm": ["crm:read"]},
        "roles": ["crm-sync"],
        "token_endpoint_auth_method": "client_secret_post",
    }
    return document


def write_fleet(folder: Path, document: Mapping[str, Any]) -> Path:
    """fleet.yaml and a copy of the example's policies/ in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policies").mkdir(exist_ok=True)
    for policy in sorted((REPO_ROOT / "policies").glob("*.yaml")):
        (folder / "policies" / policy.name).write_text(policy.read_text())
    path = folder / "fleet.yaml"
    path.write_text(yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False))
    return path


@dataclass(frozen=True)
class Template:
    """What every test's server starts from, made once per session: the fleet folder, and
    a signing key ring (generating RSA keys for each test would dominate the run)."""

    fleet: Path
    key_ring: bytes

    @classmethod
    def make(cls, folder: Path, signer: rsa.RSAPrivateKey) -> Template:
        fleet = write_fleet(folder / "fleet", fleet_document(signer))
        keys = LocalKeyFile(folder / "keys.json")
        keys.jwks()
        return cls(fleet.parent, (folder / "keys.json").read_bytes())


def compile_fleet(path: Path) -> Revision:
    return compile_sources(read_sources(path))


class Clock:
    """The wall clock plus an offset that a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Client:
    """A synchronous face on `httpx.AsyncClient` over `ASGITransport`: no socket, no thread.

    Each client has its own event loop and cookie jar, so two clients are two browsers.
    """

    def __init__(self, app: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=ISSUER, follow_redirects=False
        )

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@dataclass
class Authorization:
    """Where the authorization endpoint sent the browser back, and what to redeem it with."""

    agent: str
    redirect_uri: str
    verifier: str
    location: str
    parameters: dict[str, str]

    @property
    def code(self) -> str:
        return self.parameters["code"]


@dataclass
class Server:
    """A server on a temporary state folder, and a client that talks to it."""

    fleet: Path
    state: Path
    signer: rsa.RSAPrivateKey
    clock: Clock
    context: ServerContext
    app: Any
    secrets: LocalClientSecrets
    client: Client
    _clients: list[Client] = field(default_factory=list)

    # -- building ----------------------------------------------------------------------

    @classmethod
    def build(cls, folder: Path, signer: rsa.RSAPrivateKey, template: Template) -> Server:
        shutil.copytree(template.fleet, folder / "fleet")
        fleet = folder / "fleet" / "fleet.yaml"
        state = LocalState(folder / "state")
        state.create()
        descriptor = os.open(state.keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(template.key_ring)
        # One movable clock for the context and the store, so that codes, grants and
        # replay-cache entries expire when the tests say so.
        clock = Clock()
        with mock.patch.object(
            fleetid.server.local, "SQLiteStore", functools.partial(SQLiteStore, clock=clock)
        ):
            context = open_local(fleet, state, ISSUER)
        context.clock = clock
        assert isinstance(context.secrets, LocalClientSecrets)
        app = create_app(context)
        return cls(fleet, state.folder, signer, clock, context, app, context.secrets, Client(app))

    def browser(self) -> Client:
        """Another client, with cookies of its own."""
        client = Client(self.app)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in [self.client, *self._clients]:
            client.close()
        self.context.store.close()
        audit = self.context.audit
        if isinstance(audit, JsonlAudit):
            audit.close()

    # -- state -------------------------------------------------------------------------

    @property
    def revision(self) -> Revision:
        return self.context.live.get()

    @property
    def audit_path(self) -> Path:
        return self.state / "audit.jsonl"

    def audit(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.audit_path))

    def secret(self, agent: str) -> str:
        value = self.secrets.secret(agent)
        assert value is not None
        return value

    def basic(self, agent: str) -> tuple[str, str]:
        return agent, self.secret(agent)

    # -- requests ----------------------------------------------------------------------

    def post_form(
        self,
        path: str,
        form: Mapping[str, str] | Sequence[tuple[str, str]],
        *,
        agent: str | None = None,
        headers: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> httpx.Response:
        """POST an urlencoded form, authenticating as `agent` with Basic when given."""
        pairs = list(form.items()) if isinstance(form, Mapping) else list(form)
        return (client or self.client).post(
            path,
            content=urlencode(pairs).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            auth=self.basic(agent) if agent is not None else None,
        )

    def token(
        self,
        form: Mapping[str, str] | Sequence[tuple[str, str]],
        *,
        agent: str | None = None,
        headers: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> httpx.Response:
        return self.post_form("/token", form, agent=agent, headers=headers, client=client)

    def machine_token(self, agent: str, resource: str | None = None, scope: str = "") -> str:
        form = {"grant_type": CLIENT_CREDENTIALS}
        if resource is not None:
            form["resource"] = resource
        if scope:
            form["scope"] = scope
        response = self.token(form, agent=agent)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def assertion(
        self,
        agent: str = KEYED,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = KEYED_KID,
        audience: str | None = TOKEN_ENDPOINT,
        lifetime: float = 60,
        jti: str | None = None,
        **claims: Any,
    ) -> str:
        now = self.clock()
        payload = {
            "iss": agent,
            "sub": agent,
            **({"aud": audience} if audience is not None else {}),
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": jti or uuid.uuid4().hex,
            **claims,
        }
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, key or self.signer, algorithm="RS256", headers=headers)

    @staticmethod
    def assertion_form(assertion: str) -> dict[str, str]:
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}

    # -- the authorization code flow ---------------------------------------------------

    def authorize_query(
        self,
        agent: str,
        *,
        scope: str,
        resources: Iterable[str] = (),
        verifier: str,
        state: str = "state-1",
        redirect_uri: str | None = None,
        nonce: str | None = "nonce-1",
    ) -> list[tuple[str, str]]:
        query = [
            ("response_type", "code"),
            ("client_id", agent),
            ("redirect_uri", redirect_uri or REDIRECT[agent]),
            ("scope", scope),
            ("state", state),
            ("code_challenge", s256(verifier)),
            ("code_challenge_method", "S256"),
        ]
        if nonce is not None:
            query.append(("nonce", nonce))
        query += [("resource", resource) for resource in resources]
        return query

    def start(
        self,
        agent: str,
        *,
        scope: str,
        resources: Iterable[str] = (),
        verifier: str | None = None,
        client: Client | None = None,
    ) -> tuple[str, str]:
        """GET /authorize; the interaction id from the sign-in page, and the verifier."""
        verifier = verifier or new_verifier()
        browser = client or self.client
        response = browser.get(
            "/authorize",
            params=self.authorize_query(
                agent, scope=scope, resources=resources, verifier=verifier
            ),
        )
        assert response.status_code == 200, response.text
        return interaction_of(response.text), verifier

    def sign_in(self, interaction: str, user: str, *, client: Client | None = None) -> None:
        response = self.post_form(
            "/authorize/sign-in", {"interaction": interaction, "user": user}, client=client
        )
        assert response.status_code == 200, response.text

    def consent(
        self, interaction: str, decision: str = "allow", *, client: Client | None = None
    ) -> httpx.Response:
        return self.post_form(
            "/authorize/consent", {"interaction": interaction, "decision": decision}, client=client
        )

    def authorize(
        self,
        agent: str,
        user: str,
        *,
        scope: str,
        resources: Iterable[str] = (),
        client: Client | None = None,
    ) -> Authorization:
        """The whole browser side: authorize, sign in as a dev user, allow."""
        interaction, verifier = self.start(agent, scope=scope, resources=resources, client=client)
        self.sign_in(interaction, user, client=client)
        response = self.consent(interaction, client=client)
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        return Authorization(
            agent, REDIRECT[agent], verifier, location, redirect_parameters(location)
        )

    def redeem(self, authorization: Authorization, **overrides: str) -> httpx.Response:
        form = {
            "grant_type": AUTHORIZATION_CODE,
            "code": authorization.code,
            "redirect_uri": authorization.redirect_uri,
            "code_verifier": authorization.verifier,
            **overrides,
        }
        return self.token(form, agent=authorization.agent)

    def tokens_for(
        self, agent: str, user: str, *, scope: str, resources: Iterable[str] = ()
    ) -> dict[str, Any]:
        """A person's sign-in, redeemed: the token response."""
        response = self.redeem(self.authorize(agent, user, scope=scope, resources=resources))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def refresh(self, agent: str, refresh_token: str, **extra: str) -> httpx.Response:
        return self.token(
            {"grant_type": REFRESH_TOKEN, "refresh_token": refresh_token, **extra}, agent=agent
        )

    def exchange(
        self,
        agent: str,
        subject_token: str,
        *targets: str,
        scope: str | None = None,
        target_name: str = "resource",
        **extra: str,
    ) -> httpx.Response:
        form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            *[(target_name, target) for target in targets],
            *extra.items(),
        ]
        if scope is not None:
            form.append(("scope", scope))
        return self.token(form, agent=agent)

    def introspect(self, agent: str, token: str) -> dict[str, Any]:
        response = self.post_form("/introspect", {"token": token}, agent=agent)
        assert response.status_code == 200, response.text
        return dict(response.json())


_INTERACTION = re.compile(r'name="interaction" value="([^"]+)"')


def interaction_of(page: str) -> str:
    found = _INTERACTION.search(page)
    assert found is not None, page
    return found.group(1)


def redirect_parameters(location: str) -> dict[str, str]:
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values()), location
    return {name: values[0] for name, values in query.items()}


def oauth_error(response: httpx.Response) -> str:
    """The RFC 6749 §5.2 error code of a JSON error response."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    return str(response.json()["error"])
