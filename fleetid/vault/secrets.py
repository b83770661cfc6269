"""Resolving the secret references of fleet.yaml: a connection's client secret or API key.

fleet.yaml never holds a secret, only where it lives: `{env: NAME}` for `fleetid serve`,
`{config: NAME}` for a Pulumi config secret that provisioning hands to the deployed server.
The vault asks a `SecretResolver` for the value and gets None when it is not available
there; it then raises `SecretUnavailable` or `ApiKeyMissing` naming the reference, never a
value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from fleetid.fleet.model import SecretRef

__all__ = ["EnvironmentSecrets", "SecretResolver", "describe_reference"]

SecretResolver = Callable[[SecretRef], str | None]
"""Returns the secret a reference names, or None when it is not available."""


class EnvironmentSecrets:
    """Resolves `{env: NAME}` from the process environment, or from the mapping given.

    A reference with only `config` resolves to None: such secrets reach the deployed server
    through provisioning, not through `fleetid serve`'s environment.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def __call__(self, reference: SecretRef) -> str | None:
        if reference.env is None:
            return None

        return self._environ.get(reference.env) or None


def describe_reference(reference: SecretRef) -> str:
    """Where a reference points, for an error message: names only, never a value."""
    places = []
    if reference.env is not None:
        places.append(f"environment variable {reference.env}")
    if reference.config is not None:
        places.append(f"Pulumi config secret {reference.config!r}")

    return " or ".join(places)
