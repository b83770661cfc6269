"""Fixtures for the contract tests, which run each backend pair against SQLite and moto.

No contract test may reach AWS or any other host: credentials are fake, configuration files
are hidden, and a guard fails any connection to an address other than 127.0.0.1, where the
moto server listens.
"""

from collections.abc import Iterator

import pytest
from isolation import LOOPBACK, fake_aws_environment, loopback_only
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> Iterator[None]:
    with fake_aws_environment():
        yield


@pytest.fixture(scope="session", autouse=True)
def loopback_only_here() -> Iterator[None]:
    with loopback_only("contract tests"):
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
