"""The end-to-end harness: a real `fleetid serve` process, driven over HTTP on 127.0.0.1.

The OAuth side is Authlib's httpx client (authorization URL with PKCE S256, token requests
of every grant, introspection, revocation); the browser side of the code flow (sign-in
page, consent page) is plain httpx keeping cookies and reading the forms; tokens are
verified with PyJWT against the server's JWKS.

Everything secret the tests see (client secrets, codes, access, refresh and ID tokens) is
remembered on the server object, so that a module can check at its end that none of it
reached the audit trail or the server's log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from isolation import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
FLEETID = Path(sys.executable).with_name("fleetid")
if not FLEETID.exists():
    FLEETID = REPO_ROOT / ".venv" / "bin" / "fleetid"

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CRM = "https://crm.acme.example.com"
# sales-assistant's loopback redirect URI; nothing listens there, the tests read Location.
LOOPBACK_CALLBACK = "http://127.0.0.1:8765/callback"
SUPPORT_CALLBACK = "https://support.acme.example.com/callback"
# Everything sales-assistant may ask for: a person consents to crm and tools, so the code
# is redeemed for a sign-in token addressed to the agent itself.
SALES_SCOPE = "openid profile email crm:read crm:write tools:search"

START_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
# What a leaked secret would look like, whatever test produced it.
SECRET_SHAPES = (
    re.compile(r"\b(?:fis|firt|fic)_[A-Za-z0-9_-]{20,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}"),
    re.compile(r"BEGIN (?:RSA |EC )?PRIVATE KEY"),
)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The CLI's own HTTP clients honour proxy variables; loopback must never go through one.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


ENVIRONMENT = _environment()


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; that value, or a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def edit_fleet(path: Path, *replacements: tuple[str, str]) -> None:
    """Edit a fleet file in one atomic write, so the watcher never reads half an edit."""
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"expected exactly one {old!r} in {path.name}"
        text = text.replace(old, new)
    write_atomically(path, text)


def write_atomically(path: Path, text: str) -> None:
    # The temporary name does not end in .yaml: the watcher only looks at *.yaml files.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclass
class PageForm:
    action: str
    method: str
    hidden: dict[str, str] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[PageForm] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(PageForm(attributes.get("action", ""), attributes.get("method", "")))
            return
        if not self.forms:
            return
        form = self.forms[-1]
        kind = attributes.get("type")
        if tag == "input" and kind == "hidden":
            form.hidden[attributes.get("name", "")] = attributes.get("value", "")
        elif tag == "input" and kind == "radio":
            form.choices.append(attributes.get("value", ""))
        elif tag == "button":
            form.buttons.append(attributes.get("value", ""))


def page_form(response: httpx.Response) -> PageForm:
    """The one form of an HTML page the server sent."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    reader = _FormReader()
    reader.feed(response.text)
    assert len(reader.forms) == 1, response.text
    form = reader.forms[0]
    assert form.method.lower() == "post"
    return form


@dataclass
class SignIn:
    """One pass through the code flow: what the client sent, saw and got."""

    client: OAuth2Client
    state: str
    nonce: str
    verifier: str
    consent_page: str
    location: str
    callback: dict[str, str]
    token: dict[str, Any] | None

    @property
    def access_token(self) -> str:
        assert self.token is not None
        return str(self.token["access_token"])


class FleetServer:
    """A `fleetid serve` process, and the client side the tests drive it with."""

    def __init__(self, fleet: Path, state: Path, log: Path) -> None:
        self.fleet = fleet
        self.state = state
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.metadata: dict[str, Any] = {}
        self.secrets: set[str] = set()
        self._credentials: dict[str, str] = {}
        self._clients: list[httpx.Client] = []
        self._jwks: jwt.PyJWKClient | None = None

    # -- the process ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self, port: int | None = None) -> subprocess.Popen[bytes]:
        """Start `fleetid serve` on this fleet and state, its output appended to the log."""
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [
                    str(FLEETID),
                    "serve",
                    "--fleet",
                    str(self.fleet),
                    "--state",
                    str(self.state),
                    "--port",
                    str(port or self.port),
                    "--host",
                    "127.0.0.1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ENVIRONMENT,
            )

    def run_another(self, *, timeout: float = 30) -> int:
        """Run a second `fleetid serve` on this fleet and state, on another port, to its
        exit; its exit code. One still running after `timeout` seconds is killed."""
        process = self.spawn(port=free_port())
        try:
            return process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = self.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"fleetid serve exited with {code}:\n{self.log_text()}")
            try:
                response = httpx.get(self.discovery_url, timeout=2, trust_env=False)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                self.metadata = response.json()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fleetid serve did not answer:\n{self.log_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.stop()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, pattern: str, *, timeout: float = 15) -> re.Match[str]:
        expression = re.compile(pattern)
        match: re.Match[str] = wait_until(
            lambda: expression.search(self.log_text()), timeout=timeout, what=f"log {pattern!r}"
        )
        return match

    @property
    def revision_short(self) -> str:
        """The revision the server started with, as its first line announced it."""
        match = re.search(r"fleetid: revision ([0-9a-f]{12}) of ", self.log_text())
        assert match, self.log_text()
        return match.group(1)

    # -- the command line ----------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLEETID), *args],
            capture_output=True,
            text=True,
            env=ENVIRONMENT,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def credentials(self, *agents: str) -> str:
        """The first agent's client secret, as `fleetid credentials` prints it; the others'
        are fetched at the same time (each command is a Python start-up), for later."""
        missing = [agent for agent in dict.fromkeys(agents) if agent not in self._credentials]
        commands = {
            agent: subprocess.Popen(
                [str(FLEETID), "credentials", agent, "--state", str(self.state)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENVIRONMENT,
            )
            for agent in missing
        }
        for agent, command in commands.items():
            stdout, stderr = command.communicate(timeout=CLI_TIMEOUT)
            assert command.returncode == 0, stderr
            printed = json.loads(stdout)
            assert printed["client_id"] == agent
            self._credentials[agent] = printed["client_secret"]
            self.remember(printed["client_secret"])
        return self._credentials[agents[0]]

    # -- OAuth clients -------------------------------------------------------------------

    def remember(self, *values: str | None) -> None:
        self.secrets.update(value for value in values if value)

    def remember_token(self, token: Mapping[str, Any]) -> None:
        self.remember(token.get("access_token"), token.get("refresh_token"), token.get("id_token"))

    def browser(self) -> httpx.Client:
        """A cookie-keeping HTTP client that does not follow redirects, like a browser whose
        redirects the test wants to read."""
        client = httpx.Client(timeout=10, trust_env=False, follow_redirects=False)
        self._clients.append(client)
        return client

    def client(self, agent: str, **options: Any) -> OAuth2Client:
        """Authlib's client for `agent`, authenticating with its secret (Basic)."""
        client = OAuth2Client(
            client_id=agent,
            client_secret=self.credentials(agent),
            token_endpoint_auth_method="client_secret_basic",
            timeout=10,
            trust_env=False,
            **options,
        )
        self._clients.append(client)
        return client

    @property
    def token_endpoint(self) -> str:
        return str(self.metadata["token_endpoint"])

    def fetch(self, client: OAuth2Client, **parameters: Any) -> dict[str, Any]:
        token = dict(client.fetch_token(self.token_endpoint, **parameters))
        self.remember_token(token)
        return token

    def exchange(
        self,
        agent: str | OAuth2Client,
        subject_token: str,
        *,
        resource: str | None = CRM,
        audience: str | None = None,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """RFC 8693: trade `subject_token` for a token on `resource` (RFC 8707)."""
        client = self.client(agent) if isinstance(agent, str) else agent
        return self.fetch(
            client,
            grant_type=TOKEN_EXCHANGE,
            subject_token=subject_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            resource=resource,
            audience=audience,
            scope=scope,
        )

    def client_credentials(
        self, agent: str, *, resource: str | None = None, scope: str | None = None
    ) -> dict[str, Any]:
        return self.fetch(
            self.client(agent), grant_type="client_credentials", resource=resource, scope=scope
        )

    def sign_in(
        self,
        agent: str,
        user: str,
        *,
        scope: str = SALES_SCOPE,
        redirect_uri: str = LOOPBACK_CALLBACK,
        decision: str = "allow",
        redeem: bool = True,
    ) -> SignIn:
        """The code flow with PKCE S256: Authlib builds the authorization URL and redeems
        the code; a cookie-keeping browser signs `user` in and answers the consent page."""
        client = self.client(agent, redirect_uri=redirect_uri, code_challenge_method="S256")
        verifier = generate_token(64)
        nonce = generate_token(24)
        url, state = client.create_authorization_url(
            self.metadata["authorization_endpoint"],
            code_verifier=verifier,
            nonce=nonce,
            scope=scope,
        )

        browser = self.browser()
        sign_in = page_form(browser.get(url))
        assert sign_in.action == "/authorize/sign-in"
        assert user in sign_in.choices, f"{user} is not offered: {sign_in.choices}"
        consent_response = browser.post(
            f"{self.issuer}{sign_in.action}", data={**sign_in.hidden, "user": user}
        )
        consent = page_form(consent_response)
        assert consent.action == "/authorize/consent"
        assert set(consent.buttons) == {"allow", "deny"}
        answer = browser.post(
            f"{self.issuer}{consent.action}", data={**consent.hidden, "decision": decision}
        )
        assert answer.status_code == 303, answer.text
        location = answer.headers["location"]
        assert location.startswith(f"{redirect_uri}?")
        callback = dict(parse_qsl(urlsplit(location).query))
        self.remember(callback.get("code"))

        token = None
        if redeem and "code" in callback:
            token = self.fetch(
                client, authorization_response=location, state=state, code_verifier=verifier
            )
        return SignIn(
            client, state, nonce, verifier, consent_response.text, location, callback, token
        )

    # -- verification --------------------------------------------------------------------

    def signing_key(self, token: str) -> Any:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(str(self.metadata["jwks_uri"]), cache_keys=True)
        return self._jwks.get_signing_key_from_jwt(token).key

    def verify(self, token: str, *, audience: str, typ: str = "at+jwt") -> dict[str, Any]:
        """The claims of a token this server signed, checked with PyJWT against its JWKS."""
        header = jwt.get_unverified_header(token)
        assert header["typ"] == typ
        assert header["alg"] == "RS256"
        claims: dict[str, Any] = jwt.decode(
            token,
            self.signing_key(token),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            options={"require": ["iss", "sub", "aud", "iat", "exp"]},
        )
        return claims

    def introspect(self, agent: str, token: str) -> dict[str, Any]:
        response = self.client(agent).introspect_token(
            self.metadata["introspection_endpoint"], token=token
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def revoke(self, agent: str, token: str) -> httpx.Response:
        response: httpx.Response = self.client(agent).revoke_token(
            self.metadata["revocation_endpoint"], token=token
        )
        return response

    # -- what must never be written down ------------------------------------------------

    def signing_key_material(self) -> list[str]:
        """The private signing keys in the state folder, as the strings a leak would show."""
        material = []
        # keys.json holds the default algorithm's ring; keys-<alg>.json any other's.
        rings = [json.loads(path.read_text()) for path in self.state.glob("keys*.json")]
        # A retired key keeps only its public half, to verify the tokens it signed.
        for key in (key for ring in rings for key in ring["keys"] if "private_key" in key):
            pem = key["private_key"]["pem"]
            body = [line for line in pem.splitlines() if line and "-----" not in line]
            material.append("".join(body))
            material.extend(line for line in body if len(line) >= 40)
        assert material
        return material

    def assert_nothing_secret_written(self) -> None:
        """Neither the audit trail nor the server's output holds a secret it handed out."""
        every_secret = set(self.secrets)
        every_secret.update(json.loads((self.state / "clients.json").read_text()).values())
        every_secret.update(self.signing_key_material())
        assert len(self.secrets) > 5, "the tests collected suspiciously few secrets"

        written = {
            "audit trail": (self.state / "audit.jsonl").read_text(),
            "server log": self.log_text(),
        }
        assert written["audit trail"].strip(), "the audit trail is empty"
        for where, text in written.items():
            for secret in every_secret:
                assert secret not in text, f"the {where} contains a secret ({secret[:8]}…)"
            for shape in SECRET_SHAPES:
                found = shape.search(text)
                assert found is None, f"the {where} contains {found.group(0)[:12]}…"
