"""End-to-end fixtures: one `fleetid serve` per test module (module scope), on its own copy
of the repository's fleet.yaml and policies/, with its own state folder and free port, and
killed at teardown whatever happened. The harness that drives it is in harness.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPO_ROOT, FleetServer

# The example fleet's agents, whose secrets every module needs.
AGENTS = ("sales-assistant", "support-triage", "crm-reconciler")


@pytest.fixture(scope="module")
def fleet_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's fleet.yaml and policies/, copied where a test may edit them."""
    root = tmp_path_factory.mktemp("fleet")
    shutil.copy(REPO_ROOT / "fleet.yaml", root / "fleet.yaml")
    shutil.copytree(REPO_ROOT / "policies", root / "policies")
    return root / "fleet.yaml"


@pytest.fixture(scope="module")
def fleet_server(
    fleet_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetServer]:
    """One `fleetid serve` for the module, killed at teardown whatever happened."""
    folder = tmp_path_factory.mktemp("serve")
    server = FleetServer(fleet_copy, folder / "state", folder / "server.log")
    server.start()
    try:
        server.credentials(*AGENTS)
        yield server
    finally:
        server.close()
