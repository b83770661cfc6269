"""The commands that work on the state folder of `fleetid serve`: `serve` failing to start
(a state file it cannot use, a folder another server holds, an address it cannot listen
on), `keys rotate`, `credentials` and `audit`, run through `main` as the installed script
calls it.

`serve` never gets as far as listening here: the function that would run uvicorn is
replaced by one that fails the test, or by one that returns at once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clikit import Run
from isolation import free_port

from fleetid.keys import Algorithm, LocalKeyFile
from fleetid.server.local import LocalState, LocalStateError

LOOPBACK = "127.0.0.1"
# Ports these tests may bind on loopback.
# Older than the time a next key must have been published before it may become active.
LONG_AGO = 3600


def old_ring(path: Path, algorithm: Algorithm = "RS256") -> str:
    """Make a key ring at `path` whose keys were made an hour ago; its active kid."""
    ring = LocalKeyFile(path, algorithm=algorithm, clock=lambda: time.time() - LONG_AGO)
    kid, _ = ring.active_key()
    return kid


def active_kid(path: Path, algorithm: Algorithm = "RS256") -> str:
    kid, _ = LocalKeyFile(path, algorithm=algorithm).active_key()
    return kid


@pytest.fixture(scope="module")
def ring_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid RS256 key ring file, made once for the module."""
    path = tmp_path_factory.mktemp("ring") / "keys.json"
    old_ring(path)
    return path.read_bytes()


@pytest.fixture
def state(tmp_path: Path, ring_bytes: bytes) -> Path:
    """A state folder as a first start leaves it: a key ring and no other file yet."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    descriptor = os.open(folder / "keys.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(ring_bytes)
    return folder


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("fleetid serve went on to start the server")

    monkeypatch.setattr("fleetid.server.serving.serve", refuse)


def serve(run: Callable[..., Run], fleet: Path, state: Path | str, *args: str) -> Run:
    return run("serve", "--fleet", fleet, "--state", state, "--port", str(free_port()), *args)


def assert_one_line_failure(result: Run, *fragments: str) -> None:
    assert result.code == 1
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith("fleetid: ")
    for fragment in fragments:
        assert fragment in line


# serve: a state folder or file it cannot use


def test_serve_names_a_file_in_the_way_of_the_state_folder(
    run: Callable[..., Run], example_copy: Path, no_server: None
) -> None:
    state = example_copy / "state"

    result = serve(run, example_copy, state)

    assert_one_line_failure(
        result, f"cannot create the state folder {state}: {example_copy} is a file"
    )


def test_serve_names_a_state_folder_that_cannot_be_made(
    run: Callable[..., Run], example_copy: Path, no_server: None
) -> None:
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc, where no folder can be made")

    result = serve(run, example_copy, "/proc/fleetid-state")

    assert_one_line_failure(result, "cannot create the state folder /proc/fleetid-state: ")


def test_serve_refuses_a_file_given_as_the_state_folder(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, no_server: None
) -> None:
    somefile = tmp_path / "somefile"
    somefile.write_text("")

    result = serve(run, example_copy, somefile)

    assert_one_line_failure(
        result, f"cannot use {somefile} as the state folder: it is not a folder"
    )


def test_serve_names_a_store_that_is_no_database(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    (state / "store.sqlite3").write_bytes(b"garbage, not SQLite\n" * 10)

    result = serve(run, example_copy, state)

    assert_one_line_failure(
        result, f"cannot open the store {state / 'store.sqlite3'}: file is not a database"
    )


def test_serve_names_a_truncated_key_ring(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    keys = state / "keys.json"
    keys.write_bytes(keys.read_bytes()[:100])

    result = serve(run, example_copy, state)

    assert_one_line_failure(result, f"key ring file {keys} is not JSON")


def test_serve_refuses_a_key_ring_others_can_read(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    keys = state / "keys.json"
    keys.chmod(0o644)

    result = serve(run, example_copy, state)

    assert_one_line_failure(result, f"key ring file {keys} is open to other users (mode 0644)")


def test_serve_names_a_broken_key_ring_of_a_resources_algorithm(
    run: Callable[..., Run], es256_fleet: Path, state: Path, no_server: None
) -> None:
    (state / "keys-ES256.json").write_text("{}")
    os.chmod(state / "keys-ES256.json", 0o600)

    result = serve(run, es256_fleet, state)

    assert_one_line_failure(result, str(state / "keys-ES256.json"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"sales-assistant": ', "is not JSON (Expecting value: line 1, column 21)"),
        (b"[1, 2]", "is not a JSON object"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
    ids=["truncated", "list", "binary"],
)
def test_serve_names_a_broken_client_secrets_file(
    run: Callable[..., Run],
    example_copy: Path,
    state: Path,
    no_server: None,
    content: bytes,
    problem: str,
) -> None:
    (state / "clients.json").write_bytes(content)

    result = serve(run, example_copy, state)

    assert_one_line_failure(result, f"the client secrets file {state / 'clients.json'} {problem}")


def test_serve_names_an_audit_trail_that_is_a_folder(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    (state / "audit.jsonl").mkdir()

    result = serve(run, example_copy, state)

    assert_one_line_failure(result, f"cannot use {state / 'audit.jsonl'}: is a directory")


# serve: one server per state folder


def test_serve_refuses_a_state_folder_another_server_holds(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    before = sorted(path.name for path in state.iterdir())

    with LocalState(state).lock_for_serving():
        result = serve(run, example_copy, state)

    assert_one_line_failure(
        result,
        f"state folder {state} is in use by another fleetid serve (process {os.getpid()}): "
        "stop it, or give this one another folder with --state",
    )
    # Refused before anything was made: no secrets, no store, no record of the fleet.
    assert sorted(path.name for path in state.iterdir()) == sorted([*before, "serve.lock"])


def test_serve_holds_its_state_folder_while_it_runs_and_lets_go_after(
    run: Callable[..., Run], example_copy: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals: list[str] = []

    def running(*args: Any) -> None:
        with pytest.raises(LocalStateError) as refused:
            LocalState(state).lock_for_serving()
        refusals.append(str(refused.value))

    monkeypatch.setattr("fleetid.server.serving.serve", running)

    first = serve(run, example_copy, state)
    second = serve(run, example_copy, state)

    assert (first.code, second.code) == (0, 0), first.err + second.err
    assert len(refusals) == 2
    assert f"(process {os.getpid()})" in refusals[0]
    LocalState(state).lock_for_serving().release()


def test_serve_lock_without_a_process_id_still_refuses(
    run: Callable[..., Run], example_copy: Path, state: Path, no_server: None
) -> None:
    with LocalState(state).lock_for_serving():
        (state / "serve.lock").write_text("not a number\n")
        result = serve(run, example_copy, state)

    assert_one_line_failure(result, f"state folder {state} is in use by another fleetid serve: ")


def test_serve_reports_an_invalid_fleet_and_exits_2(
    run: Callable[..., Run], write_fleet: Callable[..., Path], tmp_path: Path, no_server: None
) -> None:
    result = serve(run, write_fleet("version: 1\n"), tmp_path / "state")

    assert result.code == 2
    assert result.err.splitlines()[-1] == "1 problem found"
    assert not (tmp_path / "state").exists()


# serve: an address it cannot listen on


@pytest.fixture
def busy_port() -> Iterator[int]:
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen()
        yield port


def test_serve_on_a_port_in_use_fails_before_the_banner(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, busy_port: int, no_server: None
) -> None:
    state = tmp_path / "state"

    result = run("serve", "--fleet", example_copy, "--state", state, "--port", str(busy_port))

    assert result.code == 1
    assert result.out == ""
    where = f"{LOOPBACK}:{busy_port}"
    assert result.err == f"fleetid: cannot listen on {where}: address already in use\n"
    assert not state.exists()


def test_serve_on_a_host_that_does_not_resolve_fails_before_the_banner(
    run: Callable[..., Run],
    example_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_server: None,
) -> None:
    def unknown(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)

    result = run(
        "serve", "--fleet", example_copy, "--state", tmp_path / "state",
        "--host", "nosuchhost.invalid", "--port", "19100",
    )  # fmt: skip

    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "fleetid: cannot listen on nosuchhost.invalid:19100: name or service not known\n"
    )


def test_serve_refuses_port_0(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, no_server: None
) -> None:
    result = run("serve", "--fleet", example_copy, "--state", tmp_path / "state", "--port", "0")

    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        "fleetid: --port 0 is not supported: the issuer URL must name the port\n"
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])  # noqa: S104 - refused, never bound
def test_serve_on_every_address_needs_the_issuer_clients_use(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, no_server: None, host: str
) -> None:
    state = tmp_path / "state"

    result = serve(run, example_copy, state, "--host", host)

    assert result.code == 2
    assert result.out == ""
    [line] = result.err.splitlines()
    assert "listens on every address of the machine" in line
    assert "give the one they reach it at with --issuer" in line
    # Refused before anything was bound or made.
    assert not state.exists()


@pytest.mark.parametrize(
    ("issuer", "problem"),
    [
        ("id.example.test", "it must be an http or https URL"),
        ("ftp://id.example.test", "it must be an http or https URL"),
        ("https:///fleetid", "it names no host"),
        ("https://id.example.test/?tenant=acme", "no query or fragment (RFC 8414 section 2)"),
        ("https://id.example.test/#top", "no query or fragment (RFC 8414 section 2)"),
        ("https://id.example.test?", "no query or fragment (RFC 8414 section 2)"),
        ("https://id.example.test:99999", "Port out of range"),
    ],
)
def test_serve_refuses_an_issuer_that_is_no_issuer_url(
    run: Callable[..., Run],
    example_copy: Path,
    tmp_path: Path,
    no_server: None,
    issuer: str,
    problem: str,
) -> None:
    result = serve(run, example_copy, tmp_path / "state", "--issuer", issuer)

    assert result.code == 2
    assert result.err.startswith(f"fleetid: --issuer {issuer!r}: ")
    assert problem in result.err


def test_serve_does_not_repeat_an_issuer_with_a_password(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, no_server: None
) -> None:
    result = serve(
        run, example_copy, tmp_path / "state", "--issuer", "https://admin:hunter2@id.example.test"
    )

    assert result.code == 2
    assert result.err == "fleetid: --issuer: an issuer carries no user name or password\n"


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("127.0.0.1", "http://127.0.0.1:8787"),
        ("localhost", "http://localhost:8787"),
        ("::1", "http://[::1]:8787"),
        ("0:0:0:0:0:0:0:1", "http://[::1]:8787"),
    ],
)
def test_the_default_issuer_is_the_address_served(host: str, issuer: str) -> None:
    # Called directly: binding anything but 127.0.0.1 is not for these tests.
    from fleetid.cli import _issuer_url

    assert _issuer_url(None, host, 8787) == issuer


def test_serve_announces_the_issuer_it_is_given(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleetid.server.serving.serve", lambda *args: None)

    result = serve(
        run, example_copy, tmp_path / "state", "--issuer", "https://id.example.test/fleetid/"
    )

    assert result.code == 0, result.err
    assert "discovery: https://id.example.test/fleetid/.well-known/openid-configuration\n" in (
        result.out
    )


def test_a_server_that_does_not_start_exits_1_not_3(
    run: Callable[..., Run],
    example_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What uvicorn does when it loses the port between the check and its own bind.
    def startup_failure(*args: Any) -> None:
        raise SystemExit(3)

    monkeypatch.setattr("fleetid.server.serving.serve", startup_failure)
    port = free_port()

    result = run(
        "serve", "--fleet", example_copy, "--state", tmp_path / "state", "--port", str(port)
    )

    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        f"fleetid: the server did not start on {LOOPBACK}:{port}"
    )


def test_serve_records_the_fleet_it_serves(
    run: Callable[..., Run],
    example_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fleetid.server.serving.serve", lambda *args: None)
    state = tmp_path / "state"

    result = serve(run, example_copy, state)

    assert result.code == 0, result.err
    assert "discovery: http://127.0.0.1:" in result.out
    recorded = json.loads((state / "serve.json").read_text())
    assert recorded == {"fleet": str(example_copy.resolve())}
    assert (state / "serve.json").stat().st_mode & 0o077 == 0


# keys rotate


@pytest.fixture
def es256_fleet(example_copy: Path) -> Path:
    """The example fleet with the tools resource signed ES256."""
    text = example_copy.read_text()
    identifier = "    identifier: https://tools.acme.example.com/mcp\n"
    signed = identifier + "    signing_algorithm: ES256\n"
    example_copy.write_text(text.replace(identifier, signed))
    return example_copy


def test_keys_rotate_rotates_every_ring_the_fleet_signs_with(
    run: Callable[..., Run], es256_fleet: Path, state: Path
) -> None:
    rs256 = active_kid(state / "keys.json")
    es256 = old_ring(state / "keys-ES256.json", "ES256")

    result = run("keys", "rotate", "--fleet", es256_fleet, "--state", state)

    assert result.code == 0, result.err
    rotated_rs256 = active_kid(state / "keys.json")
    rotated_es256 = active_kid(state / "keys-ES256.json", "ES256")
    assert rotated_rs256 != rs256
    assert rotated_es256 != es256
    assert result.out.splitlines() == [
        f"{state / 'keys.json'} (RS256): active key {rs256} -> {rotated_rs256}",
        f"{state / 'keys-ES256.json'} (ES256): active key {es256} -> {rotated_es256}",
        "a running server adopts the new keys within a second",
    ]


def test_keys_rotate_says_when_a_resources_ring_is_not_made_yet(
    run: Callable[..., Run], es256_fleet: Path, state: Path
) -> None:
    before = active_kid(state / "keys.json")

    result = run("keys", "rotate", "--fleet", es256_fleet, "--state", state)

    assert result.code == 0, result.err
    assert f"{state / 'keys-ES256.json'}: no ES256 key ring yet" in result.out
    assert active_kid(state / "keys.json") != before
    assert not (state / "keys-ES256.json").exists()


def test_keys_rotate_rotates_nothing_when_one_ring_is_damaged(
    run: Callable[..., Run], es256_fleet: Path, state: Path
) -> None:
    before = active_kid(state / "keys.json")
    (state / "keys-ES256.json").write_text('{"format": ')
    os.chmod(state / "keys-ES256.json", 0o600)

    result = run("keys", "rotate", "--fleet", es256_fleet, "--state", state)

    assert_one_line_failure(result, f"key ring file {state / 'keys-ES256.json'} is not JSON")
    assert active_kid(state / "keys.json") == before


def test_keys_rotate_refuses_a_key_ring_others_can_read(
    run: Callable[..., Run], example_copy: Path, state: Path
) -> None:
    (state / "keys.json").chmod(0o644)

    result = run("keys", "rotate", "--fleet", example_copy, "--state", state)

    assert_one_line_failure(
        result, f"key ring file {state / 'keys.json'} is open to other users (mode 0644)"
    )


def test_keys_rotate_without_a_state_folder_says_so(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path
) -> None:
    result = run("keys", "rotate", "--fleet", example_copy, "--state", tmp_path / "none")

    assert_one_line_failure(result, f"no state folder {tmp_path / 'none'}")


# credentials


@pytest.fixture
def secrets_state(state: Path) -> Path:
    """Client secrets for two of the example's agents and for one the fleet no longer has."""
    secrets = {
        "sales-assistant": "fis_sales",
        "crm-reconciler": "fis_reconciler",
        "retired-agent": "fis_retired",
        "crm": "fis_crm",
    }
    descriptor = os.open(state / "clients.json", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(secrets, handle)
    return state


def test_credentials_prints_an_agents_secret(
    run: Callable[..., Run], example_copy: Path, secrets_state: Path
) -> None:
    result = run(
        "credentials", "crm-reconciler", "--state", secrets_state, "--fleet", example_copy
    )

    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "client_id": "crm-reconciler",
        "client_secret": "fis_reconciler",
    }


def test_credentials_refuses_an_agent_removed_from_the_fleet(
    run: Callable[..., Run], example_copy: Path, secrets_state: Path
) -> None:
    result = run("credentials", "retired-agent", "--state", secrets_state, "--fleet", example_copy)

    assert result.code == 2
    assert result.out == ""
    assert result.err == f"fleetid: no agent 'retired-agent' in {example_copy}\n"


def test_credentials_prints_an_introspecting_resources_secret(
    run: Callable[..., Run], example_copy: Path, secrets_state: Path
) -> None:
    result = run("credentials", "crm", "--state", secrets_state, "--fleet", example_copy)

    assert result.code == 0, result.err
    assert json.loads(result.out) == {"client_id": "crm", "client_secret": "fis_crm"}


def test_credentials_refuses_a_resource_that_does_not_introspect(
    run: Callable[..., Run], example_copy: Path, secrets_state: Path
) -> None:
    result = run("credentials", "tools", "--state", secrets_state, "--fleet", example_copy)

    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        f"fleetid: resource 'tools' in {example_copy} has no credentials: "
        "`introspection: true` gives its server some\n"
    )


def test_credentials_reads_the_fleet_the_server_recorded(
    run: Callable[..., Run],
    example_copy: Path,
    secrets_state: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The current folder's fleet.yaml has no crm-reconciler; the served one has.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fleet.yaml").write_text(
        example_copy.read_text().replace("  crm-reconciler:\n", "  other-reconciler:\n")
    )
    shutil.copytree(example_copy.parent / "policies", elsewhere / "policies")
    monkeypatch.chdir(elsewhere)
    (secrets_state / "serve.json").write_text(json.dumps({"fleet": str(example_copy)}))

    served = run("credentials", "crm-reconciler", "--state", secrets_state)
    local = run("credentials", "crm-reconciler", "--state", secrets_state, "--fleet", "fleet.yaml")

    assert served.code == 0, served.err
    assert json.loads(served.out)["client_secret"] == "fis_reconciler"
    assert local.code == 2
    assert local.err == "fleetid: no agent 'crm-reconciler' in fleet.yaml\n"


def test_credentials_names_a_broken_secrets_file(
    run: Callable[..., Run], example_copy: Path, state: Path
) -> None:
    (state / "clients.json").write_text('{"sales-assistant": "fis_')

    result = run("credentials", "sales-assistant", "--state", state, "--fleet", example_copy)

    assert_one_line_failure(
        result,
        f"the client secrets file {state / 'clients.json'} is not JSON "
        "(Unterminated string starting at: line 1, column 21)",
    )
    assert "fis_" not in result.err


def test_credentials_without_a_state_folder_says_so(
    run: Callable[..., Run], example_copy: Path, tmp_path: Path
) -> None:
    result = run("credentials", "sales-assistant", "--state", tmp_path / "none")

    assert_one_line_failure(result, f"no state folder {tmp_path / 'none'}; start `fleetid serve`")


# audit


def event(moment: float, **fields: Any) -> dict[str, Any]:
    return {"time": moment, "event": "token_issued", "agent": "sales-assistant", **fields}


def write_audit(state: Path, *lines: dict[str, Any] | bytes | str) -> Path:
    path = state / "audit.jsonl"
    with path.open("ab") as handle:
        for line in lines:
            if isinstance(line, dict):
                handle.write(json.dumps(line).encode() + b"\n")
            elif isinstance(line, str):
                handle.write(line.encode())
            else:
                handle.write(line)
    return path


ISSUED = event(
    1796300000.0,
    revision="0123456789abcdef0123",
    subject="alice",
    tenant="acme",
    resource="crm",
    act=["sales-assistant"],
    requested=["crm:read", "crm:write"],
    granted=["crm:read"],
    refused=[{"scope": "crm:write", "code": "approval_required", "reason": "needs approval"}],
    jti="Jti-1",
    grant_type="urn:ietf:params:oauth:grant-type:token-exchange",
)


def test_audit_text_has_every_field_of_a_decision(run: Callable[..., Run], state: Path) -> None:
    write_audit(state, ISSUED)

    result = run("audit", "--state", state)

    assert result.code == 0, result.err
    assert result.out == (
        "2026-12-03T12:13:20Z token_issued agent=sales-assistant subject=alice tenant=acme "
        "resource=crm act=sales-assistant requested=crm:read,crm:write granted=crm:read "
        "refused=crm:write(approval_required) revision=0123456789ab jti=Jti-1\n"
    )


def test_audit_text_shows_a_reason(run: Callable[..., Run], state: Path) -> None:
    write_audit(state, event(1796300000.0, event="refresh_reused", reason="presented again"))

    result = run("audit", "--state", state)

    assert result.out.endswith(" reason=presented again\n")


def test_audit_skips_a_last_line_torn_inside_a_character(
    run: Callable[..., Run], state: Path
) -> None:
    torn = json.dumps(event(1796300001.0, subject="zoë"), ensure_ascii=False).encode()
    write_audit(state, ISSUED, torn[: torn.index("ë".encode()) + 1])

    result = run("audit", "--state", state, "--format", "json")

    assert result.code == 0, result.err
    assert result.err == ""
    assert [line["jti"] for line in json.loads(result.out)] == ["Jti-1"]


def test_audit_reports_damaged_lines_and_prints_the_rest(
    run: Callable[..., Run], state: Path
) -> None:
    path = write_audit(
        state,
        event(1796300000.0, jti="first"),
        {"time": "abc", "event": "token_issued"},
        event(1796300001.0, refused=[{"scope": "crm:write"}]),
        b"\xff\xfe not text\n",
        '{"time": 1796300002, "event": "torn" {"time": 1796300003}\n',
        event(1796300004.0, jti="last"),
    )

    result = run("audit", "--state", state, "--format", "json")

    assert result.code == 2
    assert [line["jti"] for line in json.loads(result.out)] == ["first", "last"]
    assert result.err.splitlines() == [
        f"fleetid: {path}:2: time is not a number of seconds; line skipped",
        f"fleetid: {path}:3: refused[0] has no code; line skipped",
        f"fleetid: {path}:4: not UTF-8 text (byte 1); line skipped",
        f"fleetid: {path}:5: not JSON (Expecting ',' delimiter: column 38); line skipped",
        f"fleetid: 4 lines of {path} could not be read",
    ]


def test_audit_of_a_trail_that_is_a_folder_says_so(run: Callable[..., Run], state: Path) -> None:
    (state / "audit.jsonl").mkdir()

    result = run("audit", "--state", state)

    assert_one_line_failure(result, f"cannot read {state / 'audit.jsonl'}: is a directory")


def test_audit_without_a_state_folder_says_so(run: Callable[..., Run], tmp_path: Path) -> None:
    result = run("audit", "--state", tmp_path / "nonexistent")

    assert_one_line_failure(result, f"no state folder {tmp_path / 'nonexistent'}")


def test_audit_of_a_state_folder_without_a_trail_says_so(
    run: Callable[..., Run], state: Path
) -> None:
    result = run("audit", "--state", state)

    assert_one_line_failure(result, f"no audit trail in {state}")


@pytest.mark.parametrize("since", ["90", "90s", "2m", "1h"])
def test_audit_since_takes_an_age(run: Callable[..., Run], state: Path, since: str) -> None:
    now = time.time()
    write_audit(state, event(now - 7200, jti="old"), event(now - 30, jti="recent"))

    result = run("audit", "--state", state, "--since", since, "--format", "json")

    assert result.code == 0, result.err
    assert [line["jti"] for line in json.loads(result.out)] == ["recent"]


def test_audit_since_0_is_from_now(run: Callable[..., Run], state: Path) -> None:
    now = time.time()
    write_audit(state, event(now - 30, jti="past"), event(now + 60, jti="ahead"))

    result = run("audit", "--state", state, "--since", "0", "--format", "json")

    assert result.code == 0, result.err
    assert [line["jti"] for line in json.loads(result.out)] == ["ahead"]


def test_audit_since_an_age_older_than_the_epoch_is_everything(
    run: Callable[..., Run], state: Path
) -> None:
    write_audit(state, event(12.0, jti="early"))

    result = run("audit", "--state", state, "--since", "9" * 40, "--format", "json")

    assert result.code == 0, result.err
    assert [line["jti"] for line in json.loads(result.out)] == ["early"]


def test_audit_since_takes_an_iso_time(run: Callable[..., Run], state: Path) -> None:
    write_audit(state, event(1796300000.0, jti="before"), event(1796400000.0, jti="after"))

    result = run("audit", "--state", state, "--since", "2026-12-04T00:00:00Z", "--format", "json")

    assert [line["jti"] for line in json.loads(result.out)] == ["after"]


@pytest.mark.parametrize("since", ["5x", "-90", "1.5h", ""])
def test_audit_since_names_the_forms_it_takes(
    run: Callable[..., Run], state: Path, since: str
) -> None:
    write_audit(state, ISSUED)

    result = run("audit", "--state", state, "--since", since)

    assert result.code == 2
    assert result.out == ""
    assert result.err == (
        f"fleetid: --since {since!r} is neither an ISO 8601 time nor an age (whole seconds "
        "such as 90, or a number with a unit: 90s, 15m, 12h, 30d)\n"
    )
