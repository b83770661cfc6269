"""The `fleetid` command line.

Exit codes: 0 success; 2 the input is invalid (the problems are on stderr); 3 `diff
--fail-on widens` found a widening; 1 anything else, reported in one line. No input makes
it print a traceback: every known failure is a domain error with a message, and the last
resort in `main` names the error's type only, since its text could carry a secret.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetInvalid, read_sources
from fleetid.fleet.source import Problem
from fleetid.policy.decide import AccessRequest, Subject, decide
from fleetid.policy.explain import decision_json, explain_text

__all__ = ["main"]

EXIT_INVALID = 2
EXIT_WIDENS = 3


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


@cli.command()
@_FLEET
def serve(fleet: str) -> None:
    """Validate the fleet and print what it compiles to."""
    revision = _compile(fleet)
    click.echo(json.dumps(revision.summary(), indent=2))


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
