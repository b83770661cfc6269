"""Fixtures shared by the unit tests: the repository's example fleet, and a way to write a
fleet folder (fleet.yaml with policies/ beside it) into a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from clikit import Run, runner

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetSources, read_sources

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FLEET = REPO_ROOT / "fleet.yaml"
EXAMPLE_POLICIES = REPO_ROOT / "policies"

Content = str | bytes
WriteFleet = Callable[..., Path]


def _as_bytes(content: Content) -> bytes:
    return content.encode() if isinstance(content, str) else content


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def example_fleet_text() -> str:
    return EXAMPLE_FLEET.read_text()


@pytest.fixture(scope="session")
def example_policy_texts() -> dict[str, str]:
    """The example's policy files, by file name (`crm.yaml`, ...)."""
    return {path.name: path.read_text() for path in sorted(EXAMPLE_POLICIES.glob("*.yaml"))}


@pytest.fixture(scope="session")
def example_revision() -> Revision:
    return compile_sources(read_sources(EXAMPLE_FLEET))


@pytest.fixture(scope="session")
def make_sources() -> Callable[..., FleetSources]:
    """In-memory sources: `make_sources(fleet_text, {"policies/a.yaml": text})`."""

    def make(
        fleet: Content, policies: Mapping[str, Content] | None = None, name: str = "fleet.yaml"
    ) -> FleetSources:
        named = {file: _as_bytes(text) for file, text in (policies or {}).items()}
        return FleetSources(name, _as_bytes(fleet), named)

    return make


@pytest.fixture
def write_fleet(tmp_path: Path) -> WriteFleet:
    """Write `fleet.yaml` and `policies/<name>` into a fresh folder; return the fleet path."""

    def write(
        fleet: Content, policies: Mapping[str, Content] | None = None, folder: str = "fleet"
    ) -> Path:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        path = root / "fleet.yaml"
        path.write_bytes(_as_bytes(fleet))
        if policies:
            (root / "policies").mkdir(exist_ok=True)
            for name, text in policies.items():
                (root / "policies" / name).write_bytes(_as_bytes(text))
        return path

    return write


@pytest.fixture
def example_copy(
    write_fleet: WriteFleet, example_fleet_text: str, example_policy_texts: dict[str, str]
) -> Path:
    """The example fleet copied into a temporary folder, safe to edit."""
    return write_fleet(example_fleet_text, example_policy_texts, folder="example")


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """`fleetid ARGS...` run in-process (`clikit.runner`)."""
    return runner(capsys)
