"""The `fleetid` command line.

Exit codes: 0 success; 2 the input is invalid (the problems are on stderr); 3 `diff
--fail-on widens` found a widening; 4 `verify` rejected the token; 1 anything else,
reported in one line. No input makes it print a traceback: every known failure is a domain
error with a message, and the last resort in `main` names the error's type only, since its
text could carry a secret.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.diff import diff_json, diff_revisions, render_markdown, render_text
from fleetid.fleet.load import FleetInvalid, FleetSources, git_sources, read_sources
from fleetid.fleet.model import parse_duration
from fleetid.fleet.source import Problem
from fleetid.policy.decide import AccessRequest, Subject, decide
from fleetid.policy.explain import decision_json, explain_text

if TYPE_CHECKING:
    from fleetid.server.clients import LocalClientSecrets

__all__ = ["main"]

EXIT_INVALID = 2
EXIT_WIDENS = 3
EXIT_REJECTED = 4


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
        dev_user = revision.fleet.dev_users.get(user)
        if dev_user is None:
            known = ", ".join(sorted(revision.fleet.dev_users)) or "none"
            raise _Failed(f"no dev user {user!r} in the fleet (known: {known})", EXIT_INVALID)
        return Subject(user, dev_user.tenant, tuple(dev_user.groups))
    if tenant is not None:
        names = tuple(group.strip() for group in groups.split(",") if group.strip())
        return Subject("(a user)", tenant, names)
    if groups:
        raise _Failed("--groups needs --tenant", EXIT_INVALID)
    return None


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


@cli.command()
@_FLEET
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@_STATE
@click.option("--issuer", help="the issuer URL, when the server sits behind a proxy")
def serve(fleet: str, host: str, port: int, state: str, issuer: str | None) -> None:
    """Run the identity server on this machine, with embedded state."""
    from fleetid.server.app import create_app
    from fleetid.server.clients import LocalClientSecrets
    from fleetid.server.local import LocalState, RevisionWatcher, open_local
    from fleetid.server.logs import configure_server_logging
    from fleetid.server.serving import serve as run_server

    configure_server_logging()
    base = issuer or f"http://{host}:{port}"
    try:
        context = open_local(fleet, LocalState(Path(state)), base)
    except FleetInvalid as invalid:
        _report(invalid.problems, "text")
        raise _Failed("", EXIT_INVALID) from invalid
    secrets = context.secrets
    assert isinstance(secrets, LocalClientSecrets)

    def on_switch(revision: Revision) -> None:
        for agent in secrets.ensure(sorted(revision.fleet.agents)):
            click.echo(f"new agent {agent}: client_id {agent}")

    watcher = RevisionWatcher(fleet, context, on_switch=on_switch, state=LocalState(Path(state)))
    revision = context.live.get()
    click.echo(f"fleetid: revision {revision.short} of {revision.fleet.identity.name}")
    click.echo(f"discovery: {context.issuer}/.well-known/openid-configuration")
    for agent in sorted(revision.fleet.agents):
        click.echo(f"  agent {agent}: client_id {agent}")
    click.echo(f"credentials: fleetid credentials AGENT --state {state}")
    watcher.start()
    try:
        run_server(create_app(context), host, port)
    finally:
        watcher.stop()


def _local_secrets(state: str) -> LocalClientSecrets:
    # Imported here: the server's modules pull in boto3, which `validate` does not need.
    from fleetid.server.clients import LocalClientSecrets

    path = Path(state) / "clients.json"
    if not path.is_file():
        raise _Failed(f"no client secrets in {state}; start `fleetid serve` once first")
    try:
        return LocalClientSecrets(path)
    except (OSError, ValueError) as exc:
        raise _Failed(f"cannot read {path}: {type(exc).__name__}") from exc


@cli.command()
@click.argument("agent")
@_STATE
def credentials(agent: str, state: str) -> None:
    """Print AGENT's local client_id and client_secret as JSON."""
    secret = _local_secrets(state).secret(agent)
    if secret is None:
        raise _Failed(f"no credentials for agent {agent!r} in {state}", EXIT_INVALID)
    click.echo(json.dumps({"client_id": agent, "client_secret": secret}, indent=2))


@cli.command()
@click.option("--agent", required=True, help="the agent whose client signs the user in")
@click.option("--user", required=True, help="a dev user of the fleet")
@click.option("--resource", "resources", multiple=True, help="a resource identifier URL")
@click.option("--scope", "scopes", multiple=True, help="a scope to ask for; repeat for more")
@click.option("--redirect-uri", help="default: the agent's first redirect URI")
@_FLEET
@_STATE
@_SERVER
def login(
    agent: str,
    user: str,
    resources: tuple[str, ...],
    scopes: tuple[str, ...],
    redirect_uri: str | None,
    fleet: str,
    state: str,
    server: str,
) -> None:
    """Sign USER in to AGENT through the real code + PKCE flow; print the token response."""
    from fleetid.login import LoginFailed
    from fleetid.login import login as run_login

    revision = _compile(fleet)
    definition = revision.fleet.agents.get(agent)
    if definition is None:
        raise _Failed(f"no agent {agent!r} in {fleet}", EXIT_INVALID)
    if not definition.redirect_uris and redirect_uri is None:
        raise _Failed(f"agent {agent!r} has no redirect URI, so no one can sign in to it")
    secret = _local_secrets(state).secret(agent)
    if secret is None:
        raise _Failed(f"no credentials for agent {agent!r} in {state}")
    requested = [part for scope in scopes for part in scope.split()]
    if not requested:
        requested = sorted({scope for listed in definition.scopes.values() for scope in listed})
    try:
        response = run_login(
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
    click.echo(json.dumps(response, indent=2))


@cli.command()
@click.argument("token")
@click.option("--agent", required=True, help="the agent whose inbound authorizer to apply")
@_FLEET
@_SERVER
def verify(token: str, agent: str, fleet: str, server: str) -> None:
    """Accept or reject TOKEN as AgentCore's inbound JWT authorizer for AGENT would."""
    from fleetid.authorizer import check_token, inbound_authorizer

    revision = _compile(fleet)
    if agent not in revision.fleet.agents:
        raise _Failed(f"no agent {agent!r} in {fleet}", EXIT_INVALID)
    verdict = check_token(token, inbound_authorizer(revision, agent, server))
    if not verdict.accepted:
        raise _Failed(f"rejected: {verdict.reason}", EXIT_REJECTED)
    click.echo(f"accepted: {verdict.claims.get('sub')} via {verdict.claims.get('client_id')}")


@cli.command()
@click.option("--agent", help="only this agent's decisions")
@click.option("--since", help="only after this time: ISO 8601, or an age such as 1h or 30m")
@_STATE
@_FORMAT
def audit(agent: str | None, since: str | None, state: str, output_format: str) -> None:
    """Read the audit trail of `fleetid serve`."""
    from fleetid.server.audit import matching, read_jsonl

    events = matching(read_jsonl(Path(state) / "audit.jsonl"), agent=agent, since=_since(since))
    if output_format == "json":
        click.echo(json.dumps(list(events), indent=2))
        return
    for event in events:
        click.echo(_audit_line(event))


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        age = int(parse_duration(value))
    except ValueError:
        pass
    else:
        return time.time() - age
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _Failed(f"--since {value!r} is neither a time nor an age", EXIT_INVALID) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _audit_line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(float(event.get("time", 0)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [when, str(event.get("event")), f"agent={event.get('agent')}"]
    for name in ("subject", "tenant", "resource"):
        if event.get(name):
            parts.append(f"{name}={event[name]}")
    if event.get("act"):
        parts.append("act=" + ">".join(event["act"]))
    if "granted" in event:
        parts.append("granted=" + (",".join(event["granted"]) or "-"))
    for refusal in event.get("refused", []):
        parts.append(f"refused={refusal['scope']}({refusal['code']})")
    if event.get("outcome"):
        parts.append(str(event["outcome"]))
    if event.get("revision"):
        parts.append(f"revision={str(event['revision'])[:12]}")
    return " ".join(parts)


@cli.group()
def vault() -> None:
    """The connections vault of `fleetid serve`."""


@vault.command(name="rotate")
@_FLEET
@_STATE
def vault_rotate(fleet: str, state: str) -> None:
    """Add a new master key and re-wrap every record under it, while the server runs."""
    from fleetid.store import SQLiteStore
    from fleetid.vault import LocalEnvelope, Vault, VaultError

    revision = _compile(fleet)
    folder = Path(state)
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
@_FLEET
@_STATE
def rotate(fleet: str, state: str) -> None:
    """Make the published next key active, keep the old one until its tokens expire."""
    from fleetid.keys import KeyCustodyError, LocalKeyFile

    revision = _compile(fleet)
    path = Path(state) / "keys.json"
    if not path.is_file():
        raise _Failed(f"no key ring in {state}; start `fleetid serve` once first")
    tokens = revision.fleet.identity.tokens
    longest = max(tokens.access_token, tokens.id_token)
    try:
        custody = LocalKeyFile(path, algorithm=revision.fleet.identity.signing.algorithm)
        before, _ = custody.active_key()
        custody.rotate(max_token_lifetime=longest + 300)
        after, _ = custody.active_key()
    except KeyCustodyError as exc:
        raise _Failed(f"rotation failed: {exc}") from exc
    click.echo(f"active key {before} -> {after}; a running server adopts it within a second")


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
