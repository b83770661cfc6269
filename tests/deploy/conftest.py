"""Fixtures for the tests of fleetid.deploy: AWS through moto, in process, never the network.

Credentials are fake and configuration files hidden, so nothing real is found or used, and a
guard fails any connection or name lookup outside the loopback address. moto's in-process
mock starts in about a second, so each test module shares one mock and one set of resources.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from isolation import fake_aws_environment, loopback_only


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> Iterator[None]:
    with fake_aws_environment():
        yield


@pytest.fixture(scope="session", autouse=True)
def loopback_only_here() -> Iterator[None]:
    with loopback_only("deploy tests"):
        yield
