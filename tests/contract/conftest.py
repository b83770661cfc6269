"""Fixtures for the contract tests, which run each backend pair against SQLite and moto.

No contract test may reach AWS or any other host: credentials are fake, configuration files
are hidden, and a guard fails any connection to an address other than 127.0.0.1, where the
moto server listens.
"""

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> Iterator[None]:
    """Fake credentials and a fixed region, so that nothing real is found or used."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)

        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_SESSION_TOKEN", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[None]:
    """Refuse name lookups and connections for any host but the loopback address."""
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        internet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if internet and address[0] != LOOPBACK:
            raise RuntimeError(f"contract tests may only connect to {LOOPBACK}")

        connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # A lookup would already leak the name of the service a test meant to reach.
        if host not in (LOOPBACK, "localhost", None):
            raise RuntimeError(f"contract tests may only look up {LOOPBACK}")

        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield


@pytest.fixture(scope="session")
def moto_server_url(aws_environment: None) -> Iterator[str]:
    """A moto server on a free loopback port, for tests that call it from many threads.

    In-process ``mock_aws`` patches botocore and is not safe under concurrent calls; the
    server answers each request on its own thread, as a real endpoint would.
    """
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
