"""Fixtures for the identity server's in-process tests: a server per test on a temporary
state folder, made from a per-session template, and the RSA key that `keyed-agent` signs
its client assertions with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverkit import Server, Template


@pytest.fixture(scope="session")
def signer() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def stranger_key() -> rsa.RSAPrivateKey:
    """A key that no agent registered."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, signer: rsa.RSAPrivateKey) -> Template:
    return Template.make(tmp_path_factory.mktemp("template"), signer)


@pytest.fixture
def server(tmp_path: Path, signer: rsa.RSAPrivateKey, template: Template) -> Iterator[Server]:
    built = Server.build(tmp_path, signer, template)
    yield built
    built.close()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, signer: rsa.RSAPrivateKey, template: Template
) -> Iterator[Server]:
    """One server for a whole module, for property tests that send hundreds of requests."""
    built = Server.build(tmp_path_factory.mktemp("shared"), signer, template)
    yield built
    built.close()
