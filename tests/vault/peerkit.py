"""node-oidc-provider as a real third-party OAuth provider for the vault's tests.

The peer lives read-only in `shared/peers/oidc-provider`; it is copied once into a cache
folder under the system temp dir, named after its lock file's digest, and installed there with
`npm ci`. Each `Peer` runs `server.js` in thirdparty mode on a free loopback port.

node-oidc-provider rotates a confidential client's refresh token only once 70% of the token's
14-day life has passed, so a test of rotation could not see it happen. `rotating=True` runs a
copy of `server.js` whose configuration adds `rotateRefreshToken: () => true`, the provider's
own setting for rotation on every use; nothing else differs.

`Peer.authorize` plays the user's browser: it opens the authorization URL, signs in on the
provider's development login page (any login, any password), confirms consent, and returns
the URL the provider redirected to, which nothing listens on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx

PEER_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "peers" / "oidc-provider"
CLIENT_ID = "fleetid-connector"
CLIENT_SECRET = "connector-secret-0123456789abcdef0123456789"
SCOPES = ("openid", "offline_access", "calendar.read")
LOOPBACK = "127.0.0.1"

_ROTATION_ANCHOR = "issueRefreshToken: async () => true,"
_ROTATING_SCRIPT = "server-rotating.js"


def peer_source() -> Path:
    """The peer's source folder, beside the repository."""
    if not (PEER_SOURCE / "server.js").is_file():
        raise FileNotFoundError(f"the oidc-provider peer is not at {PEER_SOURCE}")

    return PEER_SOURCE


def install_peer() -> Path:
    """The peer's folder with node_modules installed, reused across test runs."""
    source = peer_source()
    lock = (source / "package-lock.json").read_bytes()
    folder = (
        Path(tempfile.gettempdir()) / f"fleetid-oidc-peer-{hashlib.sha256(lock).hexdigest()[:12]}"
    )
    if not (folder / "node_modules" / "oidc-provider" / "package.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix="fleetid-oidc-peer-staging-"))
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=shutil.copyfile)
        os.chmod(staging, 0o700)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            check=True,
            capture_output=True,
            timeout=300,
        )
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)

    script = (folder / "server.js").read_text()
    if _ROTATION_ANCHOR not in script:
        raise RuntimeError("server.js changed: the rotating peer can't be derived from it")
    rotating = script.replace(
        _ROTATION_ANCHOR, f"{_ROTATION_ANCHOR}\n  rotateRefreshToken: () => true,"
    )
    (folder / _ROTATING_SCRIPT).write_text(rotating)

    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class Peer:
    """One running provider."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.issuer = f"http://{LOOPBACK}:{port}"
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.token_endpoint = f"{self.issuer}/token"
        self.revocation_endpoint = f"{self.issuer}/token/revocation"

    @classmethod
    def start(
        cls, folder: Path, *, redirect_uri: str, rotating: bool = False, access_ttl: int = 300
    ) -> Peer:
        port = free_port()
        log = Path(tempfile.mkstemp(prefix="oidc-peer-", suffix=".log")[1])
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PEER_MODE": "thirdparty",
            "PEER_REDIRECT_URI": redirect_uri,
            "PEER_ACCESS_TTL": str(access_ttl),
        }
        script = _ROTATING_SCRIPT if rotating else "server.js"
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["node", script, str(port)],
                cwd=folder,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        peer = cls(process, port, log)
        peer._wait_until_ready()

        return peer

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.unlink(missing_ok=True)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the peer exited: {self.log.read_text()}")
            try:
                if httpx.get(self.discovery_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

        output = self.log.read_text()
        self.stop()
        raise RuntimeError(f"the peer did not start: {output}")

    def authorize(self, authorization_url: str, *, login: str = "alice") -> str:
        """Sign in and consent as `login`; the redirect URL the provider sends back."""
        # The browser's own request logs would show the code and state; they are the test's,
        # not the vault's, and are kept out of the logs the tests search for secrets.
        with _quiet(), httpx.Client(timeout=10) as browser:
            response = browser.get(authorization_url)
            for _ in range(12):
                if response.status_code == 200:
                    response = self._submit(browser, response, login)
                    continue

                location = response.headers.get("location")
                if location is None:
                    raise AssertionError(f"the provider answered {response.status_code}")
                if not location.startswith(self.issuer) and "://" in location:
                    return location
                response = browser.get(urljoin(str(response.url), location))

        raise AssertionError("the provider never redirected back")

    @staticmethod
    def _submit(browser: httpx.Client, page: httpx.Response, login: str) -> httpx.Response:
        action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
        if action is None:
            raise AssertionError("the provider's page has no form")
        fields = {}
        for tag in re.findall(r"<input[^>]*>", page.text):
            name = re.search(r'name="([^"]+)"', tag)
            value = re.search(r'value="([^"]*)"', tag)
            if name is not None:
                fields[name.group(1)] = value.group(1) if value else ""
        if "login" in fields:
            fields |= {"login": login, "password": "any password"}

        return browser.post(urljoin(str(page.url), action.group(1)), data=fields)

    def refresh_directly(self, refresh_token: str) -> httpx.Response:
        """A refresh made outside the vault, as another client of the provider would."""
        return httpx.post(
            self.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )

    def revoke_directly(self, token: str, hint: str = "refresh_token") -> None:
        """Revoke a token at the provider, as the user would in the provider's settings."""
        response = httpx.post(
            self.revocation_endpoint,
            data={"token": token, "token_type_hint": hint},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert response.status_code == 200


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # httpcore logs through child loggers created on first use, so nothing short of
    # disabling logging as a whole keeps them quiet; no test logs anything meanwhile.
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
