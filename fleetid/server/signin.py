"""The sign-in step of the authorization endpoint, as one pluggable piece.

The authorization endpoint knows nothing about how people prove who they are. It hands an
interaction to a `SignIn`, which either shows a page (and later receives its form) or
sends the browser elsewhere (a tenant's IdP, for federation) and later receives the
callback; either way it ends with a `SignedInUser`: who, in which tenant, in which IdP
groups. Groups are inputs: only the tenant's group map turns them into roles.

`DevUserSignIn` is the step `fleetid serve` uses: a page listing the fleet's dev users for
the tenants the agent serves.
"""

from __future__ import annotations

import html
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import HTMLResponse

from fleetid.fleet.compile import Revision

__all__ = [
    "DevUserSignIn",
    "SignIn",
    "SignInFailed",
    "SignInPage",
    "SignedInUser",
    "page_response",
    "render_page",
]

# RFC 9700 §4.16: the authorization server "MUST prevent clickjacking attacks": no page
# of sign-in, consent or linking may be shown inside another site's frame.
_PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


@dataclass(frozen=True, slots=True)
class SignedInUser:
    user: str
    tenant: str
    groups: tuple[str, ...]
    name: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class SignInPage:
    """HTML whose form posts back, with the interaction id, to where `begin` was told."""

    html: str


class SignInFailed(Exception):
    """The person could not be signed in; the message is shown to them."""


class SignIn(ABC):
    @abstractmethod
    def begin(
        self,
        revision: Revision,
        agent: str | None,
        interaction: str,
        *,
        action: str = "/authorize/sign-in",
    ) -> SignInPage:
        """What the browser gets first; its form posts to `action`. `agent` is the agent
        being signed in to, or None when a person signs in to fleetid itself (to link a
        connection), in which case any tenant's people may."""

    @abstractmethod
    def complete(
        self, revision: Revision, agent: str | None, form: Mapping[str, str]
    ) -> SignedInUser:
        """The person the submitted form signs in, or SignInFailed."""


class DevUserSignIn(SignIn):
    """Pick one of the fleet's dev users: for development, demos and tests only."""

    def begin(
        self,
        revision: Revision,
        agent: str | None,
        interaction: str,
        *,
        action: str = "/authorize/sign-in",
    ) -> SignInPage:
        tenants = _tenants(revision, agent)
        users = [
            (name, user)
            for name, user in sorted(revision.fleet.dev_users.items())
            if user.tenant in tenants
        ]
        if not users:
            options = "<p>No dev user of this fleet belongs to a tenant this agent serves.</p>"
        else:
            options = "\n".join(
                f'<label><input type="radio" name="user" value="{html.escape(name)}" required>'
                f" {html.escape(user.name)} ({html.escape(name)}, tenant "
                f"{html.escape(user.tenant)})</label><br>"
                for name, user in users
            )
        return SignInPage(
            render_page(
                "Sign in",
                f"<p>Sign in to <b>{html.escape(agent or 'fleetid')}</b> as one of the "
                "fleet's dev users.</p>"
                f'<form method="post" action="{html.escape(action)}">'
                f'<input type="hidden" name="interaction" value="{html.escape(interaction)}">'
                f'{options}<p><button type="submit">Sign in</button></p></form>',
            )
        )

    def complete(
        self, revision: Revision, agent: str | None, form: Mapping[str, str]
    ) -> SignedInUser:
        name = form.get("user", "")
        user = revision.fleet.dev_users.get(name)
        if user is None:
            raise SignInFailed("choose one of the listed users")
        if user.tenant not in _tenants(revision, agent):
            raise SignInFailed(f"{agent} does not serve tenant {user.tenant}")
        return SignedInUser(name, user.tenant, tuple(user.groups), user.name, user.email)


def _tenants(revision: Revision, agent: str | None) -> frozenset[str]:
    if agent is None:
        return frozenset(revision.fleet.tenants)
    return revision.agent_tenants.get(agent, frozenset())


def page_response(content: str, status: int = 200) -> HTMLResponse:
    """An HTML page of the server, which no other site can frame."""
    return HTMLResponse(content, status_code=status, headers=_PAGE_HEADERS)


def render_page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · fleetid</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;"
        "line-height:1.5}table{border-collapse:collapse}td,th{padding:.2em .8em;"
        "text-align:left;border-bottom:1px solid #ddd}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
