"""Keeping tests off the network and away from real AWS accounts, shared by the suites that
talk to AWS (through moto) or to peers on loopback.

- `fake_aws_environment`: fake credentials and a fixed region; every AWS_ (and FLEETID_)
  variable of the machine is hidden, and so are the AWS configuration files, so that nothing
  real is found or used.
- `loopback_only`: any connection or name lookup for a host other than 127.0.0.1 fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"


@contextmanager
def fake_aws_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("AWS_", "FLEETID_")):
                patch.delenv(name)

        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_SESSION_TOKEN", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@contextmanager
def loopback_only(suite: str) -> Iterator[None]:
    """`suite` names the tests in the error, e.g. "vault tests"."""
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        internet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if internet and address[0] != LOOPBACK:
            raise RuntimeError(f"{suite} may only connect to {LOOPBACK}")

        connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # A lookup would already leak the name of the service a test meant to reach.
        if host not in (LOOPBACK, "localhost", None):
            raise RuntimeError(f"{suite} may only look up {LOOPBACK}")

        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield


def free_port() -> int:
    """A loopback port nothing listens on now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
