"""Fixtures for the tests of the Pulumi program, which run it under Pulumi's mocks.

`components` and `__main__.py` live at the repository's root, which is not installed: the
root goes on the import path, as it is when Pulumi runs the program from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from components.mocks import lambda_archive  # noqa: E402

# The example fleet's connection secrets, as `pulumi config set --secret` leaves them.
EXAMPLE_SECRETS = {
    "fleetid:reporting-api-key": "rk_live_5d1f0c-example",
    "fleetid:google-calendar-client-secret": "GOCSPX-example-calendar-secret",
}


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lambda_archive(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def example_secrets() -> dict[str, str]:
    return dict(EXAMPLE_SECRETS)


def pytest_configure(config: pytest.Config) -> None:
    # pulumi_aws warns about its own deprecated resource classes as it imports them.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:pulumi_aws.*")
