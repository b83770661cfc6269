"""`fleetid login` and `fleetid verify` against a server listening on loopback: the server's
own reasons when a sign-in fails, the scopes a sign-in did not get, a server that is no
fleetid server, and a server that is not there.

The server is the test fleet on a temporary state folder, served by uvicorn on a thread for
the whole module, with its issuer at the address it listens on; the commands run in
process, through `main` as the installed script calls it."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from clikit import Run
from isolation import free_port
from serverkit import FINANCE, SALES, SUPPORT, Template

from fleetid.server.app import create_app
from fleetid.server.local import LocalState, open_local

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Listening:
    url: str
    fleet: Path
    state: Path


@pytest.fixture(scope="module")
def listening(tmp_path_factory: pytest.TempPathFactory, template: Template) -> Iterator[Listening]:
    folder = tmp_path_factory.mktemp("listening")
    shutil.copytree(template.fleet, folder / "fleet")
    fleet = folder / "fleet" / "fleet.yaml"
    state = LocalState(folder / "state")
    state.create()
    state.keys.write_bytes(template.key_ring)
    state.keys.chmod(0o600)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    context = open_local(fleet, state, url)
    config = uvicorn.Config(
        create_app(context), host=LOOPBACK, port=port, log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fleetid-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Listening(url, fleet, state.folder)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        context.store.close()


def login(run: Callable[..., Run], at: Listening, *args: str, server: str = "") -> Run:
    return run(
        "login", "--fleet", at.fleet, "--state", at.state, "--server", server or at.url, *args
    )


def token_of(result: Run) -> dict[str, Any]:
    assert result.out, result.err
    token: dict[str, Any] = json.loads(result.out)
    return token


# login


def test_login_of_a_user_the_agent_does_not_serve_gives_the_servers_reason(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(run, listening, "--agent", FINANCE, "--user", "carol")

    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "fleetid: login failed: sign-in: the server answered 400: "
        f"Sign in: {FINANCE} does not serve tenant globex\n"
    )


def test_login_of_a_user_only_the_local_fleet_knows_gives_the_servers_reason(
    run: Callable[..., Run], listening: Listening, tmp_path: Path
) -> None:
    # The fleet given to the command names a dev user the served fleet does not have.
    local = tmp_path / "fleet.yaml"
    text = listening.fleet.read_text()
    local.write_text(
        text.replace("dev_users:\n", "dev_users:\n  zoe:\n    name: Zoe\n    tenant: acme\n", 1)
    )
    shutil.copytree(listening.fleet.parent / "policies", tmp_path / "policies")

    result = run(
        "login", "--agent", SALES, "--user", "zoe", "--fleet", local,
        "--state", listening.state, "--server", listening.url,
    )  # fmt: skip

    assert result.code == 1
    assert result.err == (
        "fleetid: login failed: sign-in: the server answered 400: "
        "Sign in: choose one of the listed users\n"
    )


def test_login_of_a_user_the_fleet_does_not_know_exits_2(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(run, listening, "--agent", SALES, "--user", "nobody")

    assert result.code == 2
    known = "alice, bob, carol, dan"
    assert result.err == f"fleetid: no dev user 'nobody' in the fleet (known: {known})\n"


def test_login_with_an_unregistered_redirect_uri_gives_the_servers_reason(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(
        run, listening, "--agent", SALES, "--user", "alice",
        "--redirect-uri", "http://127.0.0.1:9/elsewhere",
    )  # fmt: skip

    assert result.code == 1
    assert result.err == (
        "fleetid: login failed: authorization: the server answered 400: "
        "This sign-in cannot continue: The redirect URI is not registered for this client.\n"
    )


def test_login_names_a_scope_asked_for_and_not_granted_and_exits_4(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(
        run, listening, "--agent", SALES, "--user", "alice",
        "--scope", "crm:read", "--scope", "bogus:scope",
    )  # fmt: skip

    assert result.code == 4
    assert token_of(result)["token_type"] == "Bearer"
    assert result.err == (
        "fleetid: not granted: bogus:scope (no resource of this sign-in defines it)\n"
    )


def test_login_gives_the_policys_reason_for_a_refused_scope(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(run, listening, "--agent", SALES, "--user", "bob", "--scope", "crm:write")

    assert result.code == 4
    assert result.err.startswith(
        "fleetid: not granted: crm:write (the user holds none of the roles that may hold it"
    )


def test_login_with_every_scope_asked_for_is_granted(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(
        run, listening, "--agent", SALES, "--user", "alice",
        "--scope", "crm:read tools:search",
    )  # fmt: skip

    assert result.code == 0, result.err
    assert result.err == ""


def test_login_for_one_resource_reads_the_scopes_the_token_carries(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(
        run, listening, "--agent", SALES, "--user", "bob",
        "--resource", "https://crm.acme.example.com", "--scope", "crm:read",
    )  # fmt: skip

    assert result.code == 0, result.err
    assert token_of(result)["scope"] == "crm:read"
    assert result.err == ""


def test_login_without_scopes_notes_those_not_granted_and_succeeds(
    run: Callable[..., Run], listening: Listening
) -> None:
    result = login(run, listening, "--agent", SALES, "--user", "alice")

    assert result.code == 0
    assert {"access_token", "refresh_token", "id_token"} <= set(token_of(result))
    assert result.err.startswith("fleetid: not granted: crm:write (needs a person's approval")
    assert result.err.count("\n") == 1


def test_login_against_a_server_that_is_not_fleetid_names_the_url(
    run: Callable[..., Run], listening: Listening
) -> None:
    elsewhere = f"{listening.url}/jwks"

    result = login(run, listening, "--agent", SALES, "--user", "alice", server=elsewhere)

    assert result.code == 1
    assert result.err == (
        f"fleetid: login failed: {elsewhere}/.well-known/openid-configuration answered 404, "
        f"not with a discovery document; is {elsewhere} a fleetid server?\n"
    )


def test_login_against_no_server_names_the_url(
    run: Callable[..., Run], listening: Listening
) -> None:
    nowhere = f"http://{LOOPBACK}:{free_port()}"

    result = login(run, listening, "--agent", SALES, "--user", "alice", server=nowhere)

    assert result.code == 1
    assert result.err == (
        f"fleetid: login failed: cannot reach {nowhere}/.well-known/openid-configuration: "
        "connection refused\n"
    )


# verify


def verify(run: Callable[..., Run], at: Listening, token: str, agent: str, server: str) -> Run:
    return run("verify", token, "--agent", agent, "--fleet", at.fleet, "--server", server)


def _alice_token(run: Callable[..., Run], at: Listening) -> str:
    """A sign-in token, addressed to the agent: a sign-in for more than one resource."""
    result = login(run, at, "--agent", SALES, "--user", "alice")
    assert result.code == 0, result.err
    return str(token_of(result)["access_token"])


def test_verify_accepts_a_token_for_the_agent(
    run: Callable[..., Run], listening: Listening
) -> None:
    token = _alice_token(run, listening)

    result = verify(run, listening, token, SALES, listening.url)

    assert result.code == 0, result.err
    assert result.out == f"accepted: acme:alice via {SALES}\n"


def test_verify_rejects_a_token_for_another_agent_with_4(
    run: Callable[..., Run], listening: Listening
) -> None:
    token = _alice_token(run, listening)

    result = verify(run, listening, token, SUPPORT, listening.url)

    assert result.code == 4
    assert result.err == f"fleetid: rejected: client_id is not among ['{SUPPORT}']\n"


def test_verify_against_no_server_could_not_check_and_exits_1(
    run: Callable[..., Run], listening: Listening
) -> None:
    token = _alice_token(run, listening)
    nowhere = f"http://{LOOPBACK}:{free_port()}"

    result = verify(run, listening, token, SALES, nowhere)

    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "fleetid: cannot check the token: cannot reach "
        f"{nowhere}/.well-known/openid-configuration: connection refused\n"
    )


def test_verify_against_a_server_that_is_not_fleetid_could_not_check(
    run: Callable[..., Run], listening: Listening
) -> None:
    elsewhere = f"{listening.url}/jwks"

    result = verify(run, listening, "not-even-a-jwt", SALES, elsewhere)

    assert result.code == 1
    assert result.err == (
        "fleetid: cannot check the token: the discovery document "
        f"{elsewhere}/.well-known/openid-configuration answered 404: Not Found\n"
    )
