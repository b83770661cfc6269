"""The `fleetid` command line.

Exit codes: 0 success; 2 the input is invalid (the problems are on stderr); 3 `diff
--fail-on widens` found a widening; 4 a refusal: `verify` rejected the token, or `login`
was not granted a scope asked for with `--scope`; 1 anything else, reported in one line:
the operation could not be done, such as a server that cannot be reached, a port already
in use or a damaged state file, and so also `verify` when it could not check the token.
No input makes it print a traceback: every known failure is a domain error with a message,
and the last resort in `main` names the error's type only, since its text could carry a
secret.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import click

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.diff import diff_json, diff_revisions, render_markdown, render_text
from fleetid.fleet.load import FleetInvalid, FleetSources, git_sources, read_sources
from fleetid.fleet.model import DevUser, parse_duration
from fleetid.fleet.source import Problem
from fleetid.policy.decide import AccessRequest, Subject, decide
from fleetid.policy.explain import decision_json, explain_text

if TYPE_CHECKING:
    from fleetid.keys import Algorithm, KeyCustodyError, LocalKeyFile
    from fleetid.server.clients import LocalClientSecrets
    from fleetid.server.local import LocalState

__all__ = ["main"]

EXIT_INVALID = 2
EXIT_WIDENS = 3
EXIT_REJECTED = 4
# What `fleetid serve` records in its state folder: the fleet file it serves.
SERVED_FLEET = "serve.json"


class _Failed(Exception):
    """A command failed for a reason it has already put in words."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _report(problems: Sequence[Problem], output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps([problem.as_json() for problem in problems], indent=2), err=True)
        return
    for problem in problems:
        click.echo(problem.format(), err=True)
    count = len(problems)
    click.echo(f"{count} problem{'s' if count != 1 else ''} found", err=True)


def _compile(fleet: str, output_format: str = "text") -> Revision:
    try:
        return compile_sources(read_sources(fleet))
    except FleetInvalid as invalid:
        _report(invalid.problems, output_format)
        raise _Failed("", EXIT_INVALID) from invalid


_FORMAT = click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text"
)
_FLEET = click.option(
    "--fleet",
    default="fleet.yaml",
    show_default=True,
    help="the fleet file; policies/ beside it are read too",
)


@click.group()
@click.version_option(package_name="fleetid")
def cli() -> None:
    """Identity for fleets of AI agents, declared in one fleet.yaml."""


@cli.command()
@click.argument("fleet", default="fleet.yaml")
@_FORMAT
def validate(fleet: str, output_format: str) -> None:
    """Check FLEET (default fleet.yaml) and policies/ beside it; report every problem."""
    revision = _compile(fleet, output_format)
    if output_format == "json":
        click.echo("[]")
        return
    summary = revision.summary()
    click.echo(
        f"{fleet}: valid, revision {revision.short} ({summary['agents']} agents, "
        f"{summary['resources']} resources, {summary['scopes']} scopes, "
        f"{summary['policy_rules']} policy rules)"
    )


@cli.command()
@_FLEET
@click.option("--agent", required=True, help="the requesting agent")
@click.option("--resource", required=True, help="a resource name or its identifier URL")
@click.option(
    "--scope", "scopes", multiple=True, required=True, help="a requested scope; repeat for more"
)
@click.option("--user", help="a dev user of the fleet, standing for a signed-in person")
@click.option("--tenant", help="the person's tenant, when not naming a dev user")
@click.option("--groups", default="", help="the person's IdP groups, comma-separated")
@click.option("--approved", multiple=True, help="a scope a person has approved")
@_FORMAT
def explain(
    fleet: str,
    agent: str,
    resource: str,
    scopes: tuple[str, ...],
    user: str | None,
    tenant: str | None,
    groups: str,
    approved: tuple[str, ...],
    output_format: str,
) -> None:
    """Decide one request as the server would, and say why."""
    revision = _compile(fleet)
    subject = _subject(revision, user, tenant, groups)
    resource_name = revision.resource_by_audience.get(resource, resource)
    requested = tuple(part for scope in scopes for part in scope.split())
    request = AccessRequest(
        agent=agent,
        resource=resource_name,
        scopes=requested,
        subject=subject,
        approved=frozenset(approved),
    )
    decision = decide(revision, request)
    if output_format == "json":
        click.echo(json.dumps(decision_json(revision, decision), indent=2))
    else:
        click.echo(explain_text(revision, decision))


def _subject(
    revision: Revision, user: str | None, tenant: str | None, groups: str
) -> Subject | None:
    if user is not None and tenant is not None:
        raise _Failed("give --user or --tenant with --groups, not both", EXIT_INVALID)
    if user is not None:
        dev_user = _dev_user(revision, user)
        return Subject(user, dev_user.tenant, tuple(dev_user.groups))
    if tenant is not None:
        names = tuple(group.strip() for group in groups.split(",") if group.strip())
        return Subject("(a user)", tenant, names)
    if groups:
        raise _Failed("--groups needs --tenant", EXIT_INVALID)
    return None


def _dev_user(revision: Revision, user: str) -> DevUser:
    dev_user = revision.fleet.dev_users.get(user)
    if dev_user is None:
        known = ", ".join(sorted(revision.fleet.dev_users)) or "none"
        raise _Failed(f"no dev user {user!r} in the fleet (known: {known})", EXIT_INVALID)
    return dev_user


@cli.command()
@click.argument("sides", nargs=-1, metavar="[BASE HEAD]")
@click.option(
    "--base",
    "base_revision",
    metavar="REV",
    help="compare the git revision REV with the working tree's fleet",
)
@_FLEET
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    help="markdown is a pull-request comment",
)
@click.option(
    "--fail-on",
    type=click.Choice(["widens"]),
    help="exit with status 3 when the change widens access",
)
def diff(
    sides: tuple[str, ...],
    base_revision: str | None,
    fleet: str,
    output_format: str,
    fail_on: str | None,
) -> None:
    """Say who gains and who loses which access between two fleets.

    BASE and HEAD are each a fleet file, or a git revision whose FLEET and policies/ are
    read. `--base REV` compares REV with the working tree, as in `--base origin/main`.
    """
    readers: list[Callable[[], FleetSources]]
    if base_revision is not None:
        if sides:
            raise click.UsageError("give BASE and HEAD, or --base, not both")
        readers = [lambda: git_sources(base_revision, fleet), lambda: read_sources(fleet)]
    elif len(sides) == 2:
        readers = [partial(_diff_side, side, fleet) for side in sides]
    else:
        raise click.UsageError("give BASE and HEAD, or --base REV")

    # Both sides are checked before failing, so that one run shows every problem.
    problems: list[Problem] = []
    revisions: list[Revision] = []
    for read in readers:
        try:
            revisions.append(compile_sources(read()))
        except FleetInvalid as invalid:
            problems.extend(invalid.problems)
    if problems:
        _report(problems, output_format)
        raise _Failed("", EXIT_INVALID)

    result = diff_revisions(revisions[0], revisions[1])
    if output_format == "json":
        click.echo(json.dumps(diff_json(result), indent=2))
    elif output_format == "markdown":
        click.echo(render_markdown(result), nl=False)
    else:
        click.echo(render_text(result), nl=False)
    if fail_on == "widens" and result.widens:
        raise _Failed("the change widens access", EXIT_WIDENS)


def _diff_side(side: str, fleet: str) -> FleetSources:
    """An existing file is read as it is; anything else is a git revision."""
    if Path(side).is_file():
        return read_sources(side)
    return git_sources(side, fleet)


@cli.command()
@click.argument("kind", type=click.Choice(["fleet", "policy"]), default="fleet")
@click.option("--write", is_flag=True, help="rewrite the shipped schema files")
def schema(kind: str, write: bool) -> None:
    """Print the JSON Schema of fleet.yaml or of policy files."""
    from fleetid.fleet.jsonschema import SCHEMA_FILES, rendered

    if not write:
        click.echo(rendered(kind), nl=False)  # type: ignore[arg-type]
        return
    folder = Path(__file__).parent / "fleet" / "schema"
    for name, file_name in SCHEMA_FILES.items():
        (folder / file_name).write_text(rendered(name))
        click.echo(f"wrote {folder / file_name}")


_STATE = click.option(
    "--state",
    default=".fleetid",
    show_default=True,
    help="the state folder of `fleetid serve`",
)
_SERVER = click.option(
    "--server",
    default="http://127.0.0.1:8787",
    show_default=True,
    help="the running fleetid server",
)
_SERVED_FLEET = click.option(
    "--fleet",
    help="the fleet file; default: the one `fleetid serve` last served from --state, "
    "else fleet.yaml",
)


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def _state_folder(state: str) -> Path:
    """The state folder of a server that has started at least once."""
    folder = Path(state)
    if not folder.exists():
        raise _Failed(f"no state folder {state}; start `fleetid serve` once first")
    if not folder.is_dir():
        raise _Failed(f"{state} is not a state folder: it is a file")
    return folder


def _served_fleet(state: str, fleet: str | None) -> str:
    """`--fleet` when given, else the fleet `fleetid serve` recorded in the state folder."""
    if fleet is not None:
        return fleet
    try:
        recorded = json.loads((Path(state) / SERVED_FLEET).read_text())
    except (OSError, ValueError):
        return "fleet.yaml"
    served = recorded.get("fleet") if isinstance(recorded, dict) else None
    return served if isinstance(served, str) else "fleet.yaml"


def _record_served_fleet(state: LocalState, fleet: str) -> None:
    path = state.folder / SERVED_FLEET
    temporary = path.with_name(f".{path.name}.tmp")
    text = json.dumps({"fleet": str(Path(fleet).resolve())}) + "\n"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        raise _Failed(f"cannot write {path}: {_os_reason(exc)}") from exc


def _create_state_folder(state: LocalState) -> None:
    from fleetid.server.local import LocalStateError

    folder = state.folder
    try:
        state.create()
    except LocalStateError as exc:
        raise _Failed(str(exc)) from exc
    except FileExistsError as exc:
        raise _Failed(f"cannot use {folder} as the state folder: it is not a folder") from exc
    except NotADirectoryError as exc:
        blocking = next(
            (parent for parent in folder.parents if parent.exists() and not parent.is_dir()),
            None,
        )
        reason = f"{blocking} is a file" if blocking is not None else _os_reason(exc)
        raise _Failed(f"cannot create the state folder {folder}: {reason}") from exc
    except OSError as exc:
        raise _Failed(f"cannot create the state folder {folder}: {_os_reason(exc)}") from exc


def _read_client_secrets(path: Path) -> LocalClientSecrets:
    # Imported here: the server's modules pull in boto3, which `validate` does not need.
    from fleetid.server.clients import LocalClientSecrets

    # The file holds secrets: messages say where it is broken, never what it holds.
    try:
        return LocalClientSecrets(path)
    except UnicodeDecodeError as exc:
        raise _Failed(f"the client secrets file {path} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise _Failed(
            f"the client secrets file {path} is not JSON "
            f"({exc.msg}: line {exc.lineno}, column {exc.colno})"
        ) from exc
    except ValueError as exc:
        raise _Failed(f"the client secrets file {path} is not a JSON object") from exc
    except OSError as exc:
        raise _Failed(f"cannot read the client secrets file {path}: {_os_reason(exc)}") from exc


def _local_secrets(state: str) -> LocalClientSecrets:
    path = _state_folder(state) / "clients.json"
    if not path.exists():
        raise _Failed(f"no client secrets in {state}; start `fleetid serve` once first")
    return _read_client_secrets(path)


def _fleet_rings(state: LocalState, revision: Revision) -> list[tuple[Algorithm, Path]]:
    """Each key ring the fleet's tokens are signed with, the default algorithm's first, and
    the file the server keeps it in."""
    from fleetid.keys import KeyCustodyError
    from fleetid.server.tokens import signing_algorithms

    default = revision.fleet.identity.signing.algorithm
    others = sorted(signing_algorithms(revision) - {default})
    try:
        # Which file holds which ring depends on what keys.json holds, so it is read here.
        return [
            (algorithm, state.key_ring(algorithm, default=default))
            for algorithm in (default, *others)
        ]
    except (KeyCustodyError, OSError) as exc:
        raise _Failed(_ring_problem(state.keys, exc)) from exc


def _ring_problem(path: Path, exc: KeyCustodyError | OSError) -> str:
    if isinstance(exc, OSError):
        return f"cannot read the key ring {path}: {_os_reason(exc)}"
    message = str(exc)
    return message if str(path) in message else f"key ring {path}: {message}"


def _load_ring(path: Path, algorithm: Algorithm) -> LocalKeyFile:
    """The key ring stored at `path`, loaded, or a failure naming the file."""
    from fleetid.keys import KeyCustodyError
    from fleetid.server.local import load_key_ring

    try:
        return load_key_ring(path, algorithm)
    except (KeyCustodyError, OSError) as exc:
        raise _Failed(_ring_problem(path, exc)) from exc


def _check_state(state: LocalState, revision: Revision) -> None:
    """Read what is already in the state folder, so that a damaged file is reported by name
    before the server starts; missing files are made by `open_local`."""
    if state.clients.exists():
        _read_client_secrets(state.clients)
    for algorithm, path in _fleet_rings(state, revision):
        if path.exists():
            _load_ring(path, algorithm)


def _state_problem(state: LocalState, exc: Exception) -> str:
    """What failed while the state was opened, naming the file where it can be told."""
    from fleetid.store import StoreError

    if isinstance(exc, StoreError):
        # SQLite's own words ("file is not a database") name no record, only the fault.
        cause = exc.__cause__
        detail = str(cause) if isinstance(cause, sqlite3.Error) else str(exc)
        return f"cannot open the store {state.store}: {detail}"
    if isinstance(exc, OSError):
        return f"cannot use {exc.filename or state.folder}: {_os_reason(exc)}"
    message = str(exc)
    return message if str(state.folder) in message else f"state folder {state.folder}: {message}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _issuer_url(issuer: str | None, host: str, port: int) -> str:
    """The issuer `serve` announces: `--issuer` when given, else the address it listens on,
    which must then be one address that clients can reach."""
    if issuer is not None:
        return _checked_issuer(issuer)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:  # a host name
        address = None
    if not host or (address is not None and address.is_unspecified):
        raise _Failed(
            f"--host {host or repr(host)} listens on every address of the machine, which is "
            "no URL clients can use as the issuer: give the one they reach it at with "
            f"--issuer, such as --issuer http://HOSTNAME:{port}",
            EXIT_INVALID,
        )
    if address is not None and address.version == 6:
        return f"http://[{address.compressed}]:{port}"
    return f"http://{host}:{port}"


def _checked_issuer(issuer: str) -> str:
    # RFC 8414 §2: the issuer is "a URL that uses the "https" scheme and has no query or
    # fragment components"; http is accepted too, for a server on a developer's machine.
    problem = None
    try:
        parts = urlsplit(issuer)
        parts.port  # noqa: B018 - parsing the port is what checks it
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "it must be an http or https URL"
        elif not parts.hostname:
            problem = "it names no host"
        elif parts.query or parts.fragment or issuer.endswith(("?", "#")):
            problem = "an issuer has no query or fragment (RFC 8414 section 2)"
        elif parts.username is not None or parts.password is not None:
            # Not repeated: what stands before the @ may be a password.
            raise _Failed("--issuer: an issuer carries no user name or password", EXIT_INVALID)
    if problem is not None:
        raise _Failed(f"--issuer {issuer!r}: {problem}", EXIT_INVALID)
    return issuer


def _check_listening(host: str, port: int) -> None:
    """Fail now, before anything is printed, where uvicorn would fail to listen."""
    where = _address(host, port)
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise _Failed(f"cannot listen on {where}: {_os_reason(exc)}") from exc
    for family, kind, protocol, _, address in dict.fromkeys(addresses):
        try:
            with socket.socket(family, kind, protocol) as probe:
                # As asyncio binds for uvicorn: the address reusable, IPv6 for IPv6 only.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            raise _Failed(f"cannot listen on {where}: {_os_reason(exc)}") from exc


@cli.command()
@_FLEET
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@_STATE
@click.option(
    "--issuer",
    help="the URL clients reach the server at, when it is not http://HOST:PORT: behind a "
    "proxy, or on --host 0.0.0.0",
)
def serve(fleet: str, host: str, port: int, state: str, issuer: str | None) -> None:
    """Run the identity server on this machine, with embedded state.

    Exits 2 when the fleet or an option is invalid, and 1 when it cannot start: a state
    file it cannot use, a state folder another server is using, or an address it cannot
    listen on.
    """
    from fleetid.keys import KeyCustodyError
    from fleetid.keys.offload import signing_threads_for_this_machine
    from fleetid.server.app import create_app
    from fleetid.server.clients import LocalClientSecrets, confidential_clients
    from fleetid.server.local import (
        LocalState,
        LocalStateError,
        RevisionWatcher,
        fleet_marks,
        open_local,
    )
    from fleetid.server.logs import configure_server_logging
    from fleetid.server.serving import serve as run_server
    from fleetid.store import StoreError
    from fleetid.vault import VaultError

    if port == 0:
        # The issuer and discovery URLs carry the port: clients could not find a random one.
        raise _Failed("--port 0 is not supported: the issuer URL must name the port", EXIT_INVALID)
    base = _issuer_url(issuer, host, port)
    _check_listening(host, port)
    configure_server_logging()
    local = LocalState(Path(state))
    # Before the fleet is read, so that an edit made while the server starts is switched in.
    marks = fleet_marks(fleet)
    revision = _compile(fleet)
    _create_state_folder(local)
    try:
        # Before anything in the folder is read or made: another server may be making it.
        held = local.lock_for_serving()
    except LocalStateError as exc:
        raise _Failed(str(exc)) from exc

    with held:
        _check_state(local, revision)
        try:
            context = open_local(fleet, local, base, revision=revision)
        except (StoreError, KeyCustodyError, VaultError, LocalStateError, OSError) as exc:
            raise _Failed(_state_problem(local, exc)) from exc
        _record_served_fleet(local, fleet)
        # Token signatures go to native threads that give way to the one process's event
        # loop, which keeps HTTP and policy.
        context.tokens.sign_on_threads(signing_threads_for_this_machine())
        secrets = context.secrets
        assert isinstance(secrets, LocalClientSecrets)

        def on_switch(revision: Revision) -> None:
            for client_id in secrets.ensure(confidential_clients(revision.fleet)):
                kind = "agent" if client_id in revision.fleet.agents else "resource server"
                click.echo(f"new {kind} {client_id}: client_id {client_id}")

        watcher = RevisionWatcher(fleet, context, on_switch=on_switch, state=local, seen=marks)
        click.echo(f"fleetid: revision {revision.short} of {revision.fleet.identity.name}")
        click.echo(f"discovery: {context.issuer}/.well-known/openid-configuration")
        for agent in sorted(revision.fleet.agents):
            click.echo(f"  agent {agent}: client_id {agent}")
        for name, resource in sorted(revision.fleet.resources.items()):
            if resource.introspection:
                click.echo(f"  resource {name}: client_id {name}, for introspection")
        click.echo(f"credentials: fleetid credentials AGENT --state {state}")
        watcher.start()
        try:
            run_server(create_app(context), host, port)
        except SystemExit as stopped:
            # uvicorn exits 3 when it cannot start, which here would read as "diff widens".
            if stopped.code in (None, 0):
                raise
            raise _Failed(f"the server did not start on {_address(host, port)}") from None
        finally:
            watcher.stop()


@cli.command()
@click.argument("agent")
@_STATE
@_SERVED_FLEET
def credentials(agent: str, state: str, fleet: str | None) -> None:
    """Print AGENT's local client_id and client_secret as JSON.

    AGENT must be in the fleet: the server accepts no credentials of an agent removed
    from it. A resource whose server introspects (`introspection: true`) has credentials
    too, under its name.
    """
    from fleetid.server.clients import confidential_clients

    secrets = _local_secrets(state)
    served = _served_fleet(state, fleet)
    declared = _compile(served).fleet
    if agent not in confidential_clients(declared):
        if agent in declared.resources:
            raise _Failed(
                f"resource {agent!r} in {served} has no credentials: "
                "`introspection: true` gives its server some",
                EXIT_INVALID,
            )
        raise _Failed(f"no agent {agent!r} in {served}", EXIT_INVALID)
    secret = secrets.secret(agent)
    if secret is None:
        raise _Failed(f"no credentials for {agent!r} in {state}", EXIT_INVALID)
    click.echo(json.dumps({"client_id": agent, "client_secret": secret}, indent=2))


@cli.command()
@click.option("--agent", required=True, help="the agent whose client signs the user in")
@click.option("--user", required=True, help="a dev user of the fleet")
@click.option("--resource", "resources", multiple=True, help="a resource identifier URL")
@click.option("--scope", "scopes", multiple=True, help="a scope to ask for; repeat for more")
@click.option("--redirect-uri", help="default: the agent's first redirect URI")
@_SERVED_FLEET
@_STATE
@_SERVER
def login(
    agent: str,
    user: str,
    resources: tuple[str, ...],
    scopes: tuple[str, ...],
    redirect_uri: str | None,
    fleet: str | None,
    state: str,
    server: str,
) -> None:
    """Sign USER in to AGENT through the real code + PKCE flow; print the token response.

    Without --scope it asks for every scope the agent lists. Scopes not granted are named
    on stderr with the server's reasons. Exits 4 when a scope given with --scope was not
    granted (the token response is printed all the same), 2 on bad input, and 1 when the
    flow fails, with what the server said.
    """
    from fleetid.login import LoginFailed
    from fleetid.login import login as run_login

    fleet = _served_fleet(state, fleet)
    revision = _compile(fleet)
    definition = revision.fleet.agents.get(agent)
    if definition is None:
        raise _Failed(f"no agent {agent!r} in {fleet}", EXIT_INVALID)
    if not definition.redirect_uris and redirect_uri is None:
        raise _Failed(f"agent {agent!r} has no redirect URI, so no one can sign in to it")
    _dev_user(revision, user)
    secret = _local_secrets(state).secret(agent)
    if secret is None:
        raise _Failed(f"no credentials for agent {agent!r} in {state}")
    requested = [part for scope in scopes for part in scope.split()]
    if not requested:
        requested = sorted({scope for listed in definition.scopes.values() for scope in listed})
    try:
        signed_in = run_login(
            server,
            client_id=agent,
            client_secret=secret,
            user=user,
            redirect_uri=redirect_uri or definition.redirect_uris[0],
            resources=resources,
            scopes=requested,
        )
    except LoginFailed as failed:
        raise _Failed(f"login failed: {failed}") from failed
    click.echo(json.dumps(signed_in.token, indent=2))
    left_out = signed_in.not_granted(requested)
    if not left_out:
        return
    named = "; ".join(f"{scope} ({reason})" for scope, reason in left_out.items())
    if scopes:
        raise _Failed(f"not granted: {named}", EXIT_REJECTED)
    click.echo(f"fleetid: not granted: {named}", err=True)


@cli.command()
@click.argument("token")
@click.option("--agent", required=True, help="the agent whose inbound authorizer to apply")
@_FLEET
@_SERVER
def verify(token: str, agent: str, fleet: str, server: str) -> None:
    """Accept or reject TOKEN as AgentCore's inbound JWT authorizer for AGENT would.

    Exits 0 when the token is accepted, 4 when it is rejected, 1 when it could not be
    checked (the discovery document or JWKS could not be read), 2 on bad input.
    """
    from fleetid.authorizer import IssuerUnreadable, inbound_authorizer, judge_token, read_issuer

    revision = _compile(fleet)
    if agent not in revision.fleet.agents:
        raise _Failed(f"no agent {agent!r} in {fleet}", EXIT_INVALID)
    config = inbound_authorizer(revision, agent, server)
    try:
        issuer = read_issuer(config)
    except IssuerUnreadable as exc:
        raise _Failed(f"cannot check the token: {exc}") from exc
    verdict = judge_token(token, config, issuer)
    if not verdict.accepted:
        raise _Failed(f"rejected: {verdict.reason}", EXIT_REJECTED)
    click.echo(f"accepted: {verdict.claims.get('sub')} via {verdict.claims.get('client_id')}")


@cli.command()
@click.option("--agent", help="only this agent's decisions")
@click.option(
    "--since",
    help="only after this time: ISO 8601, or an age: whole seconds (90) or a number with a "
    "unit (90s, 15m, 12h, 30d)",
)
@_STATE
@_FORMAT
def audit(agent: str | None, since: str | None, state: str, output_format: str) -> None:
    """Read the audit trail of `fleetid serve`.

    A line that holds no event is named on stderr and skipped, and the others are printed;
    the command then exits 2.
    """
    from fleetid.server.audit import UnreadableLine, matching, read_jsonl

    threshold = _since(since)
    path = _state_folder(state) / "audit.jsonl"
    if not path.exists():
        raise _Failed(f"no audit trail in {state}; start `fleetid serve` once first")
    skipped: list[UnreadableLine] = []

    def unreadable(line: UnreadableLine) -> None:
        click.echo(f"fleetid: {line.format()}", err=True)
        skipped.append(line)

    try:
        events = matching(read_jsonl(path, unreadable=unreadable), agent=agent, since=threshold)
    except OSError as exc:
        raise _Failed(f"cannot read {path}: {_os_reason(exc)}") from exc
    if output_format == "json":
        click.echo(json.dumps(list(events), indent=2))
    else:
        for event in events:
            click.echo(_audit_line(event))
    if skipped:
        count = len(skipped)
        raise _Failed(
            f"{count} line{'s' if count != 1 else ''} of {path} could not be read", EXIT_INVALID
        )


_WHOLE_SECONDS = re.compile(r"[0-9]+")


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    if _WHOLE_SECONDS.fullmatch(value):
        age = int(value)
    else:
        try:
            age = int(parse_duration(value))
        except ValueError:
            return _moment(value)
    now = time.time()
    # An age older than the epoch lets every event through.
    return now - age if age < now else float("-inf")


def _moment(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _Failed(
            f"--since {value!r} is neither an ISO 8601 time nor an age (whole seconds such "
            "as 90, or a number with a unit: 90s, 15m, 12h, 30d)",
            EXIT_INVALID,
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _audit_line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(event["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [when, event["event"], f"agent={event.get('agent')}"]
    for name in ("subject", "tenant", "resource"):
        if event.get(name):
            parts.append(f"{name}={event[name]}")
    if event.get("act"):
        parts.append("act=" + ">".join(event["act"]))
    for name in ("requested", "granted"):
        if name in event:
            parts.append(f"{name}=" + (",".join(event[name]) or "-"))
    for refusal in event.get("refused", []):
        parts.append(f"refused={refusal['scope']}({refusal['code']})")
    if event.get("outcome"):
        parts.append(event["outcome"])
    if event.get("reason"):
        parts.append(f"reason={event['reason']}")
    if event.get("revision"):
        parts.append(f"revision={event['revision'][:12]}")
    if event.get("jti"):
        parts.append(f"jti={event['jti']}")
    return " ".join(parts)


@cli.group()
def vault() -> None:
    """The connections vault of `fleetid serve`."""


@vault.command(name="rotate")
@_SERVED_FLEET
@_STATE
def vault_rotate(fleet: str | None, state: str) -> None:
    """Add a new master key and re-wrap every record under it, while the server runs."""
    from fleetid.store import SQLiteStore
    from fleetid.vault import LocalEnvelope, Vault, VaultError

    revision = _compile(_served_fleet(state, fleet))
    folder = _state_folder(state)
    if not (folder / "store.sqlite3").is_file():
        raise _Failed(f"no state in {state}; start `fleetid serve` once first")
    envelope = LocalEnvelope(folder / "vault.key")
    store = SQLiteStore(folder / "store.sqlite3")
    try:
        key_id = envelope.rotate_master_key()
        connections = revision.fleet.connections
        report = Vault(
            store,
            envelope,
            fleet=revision.fleet.identity.name,
            connections=lambda: connections,
            redirect_uri="http://127.0.0.1/connections/callback",
        ).rewrap_all()
    except VaultError as exc:
        raise _Failed(f"rotation failed: {exc}") from exc
    finally:
        store.close()
    click.echo(
        f"master key {key_id} is current; {report.rewrapped} of {report.examined} records "
        f"re-wrapped{'' if report.complete else '; run again: some were busy'}"
    )


@cli.group()
def keys() -> None:
    """Signing keys of `fleetid serve`."""


@keys.command()
@_SERVED_FLEET
@_STATE
@click.option(
    "--force",
    is_flag=True,
    help="rotate even if a next key was published less than the JWKS cache lifetime ago",
)
def rotate(fleet: str | None, state: str, force: bool) -> None:
    """Make each key ring's published next key active, keeping the old one until its
    tokens expire: the ring of the fleet's signing algorithm and of every algorithm a
    resource asks for. A next key published less than five minutes ago, the time verifiers
    may cache the JWKS, is not made active without --force."""
    from fleetid.keys import KeyCustodyError
    from fleetid.server.local import LocalState

    revision = _compile(_served_fleet(state, fleet))
    local = LocalState(_state_folder(state))
    if not local.keys.exists():
        raise _Failed(f"no key ring in {state}; start `fleetid serve` once first")
    tokens = revision.fleet.identity.tokens
    longest = max(tokens.access_token, tokens.id_token)

    # Every ring is read before any is rotated, so a damaged one stops the rotation whole.
    rings = []
    for algorithm, path in _fleet_rings(local, revision):
        if path.exists():
            rings.append((algorithm, path, _load_ring(path, algorithm)))
        else:
            click.echo(
                f"{path}: no {algorithm} key ring yet; `fleetid serve` makes it before it "
                f"signs with {algorithm}"
            )
    for algorithm, path, custody in rings:
        before, _ = custody.active_key()
        try:
            custody.rotate(max_token_lifetime=longest + 300, force=force)
        except (KeyCustodyError, OSError) as exc:
            raise _Failed(f"rotation failed: {_ring_problem(path, exc)}") from exc
        after, _ = custody.active_key()
        click.echo(f"{path} ({algorithm}): active key {before} -> {after}")
    click.echo("a running server adopts the new keys within a second")


def _fail(message: str, code: int) -> NoReturn:
    if message:
        click.echo(f"fleetid: {message}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> Any:
    try:
        return cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except _Failed as failed:
        _fail(str(failed), failed.code)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except click.ClickException as usage:
        usage.show()
        sys.exit(EXIT_INVALID if isinstance(usage, click.UsageError) else usage.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        # Only the type: an exception's text may quote input, and input may be a secret.
        _fail(f"unexpected {type(exc).__name__}; please report it with the command you ran", 1)
