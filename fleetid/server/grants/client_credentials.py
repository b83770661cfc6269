"""RFC 6749 §4.4: an agent acting as itself, by its own roles."""

from __future__ import annotations

from typing import Any

from fleetid.fleet.compile import Revision
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidScope, InvalidTarget
from fleetid.server.issuance import (
    TokenRequest,
    issue_for_resource,
    requested_scopes,
    resolve_target,
)

__all__ = ["GRANT_TYPE", "client_credentials"]

GRANT_TYPE = "client_credentials"


def default_resource(revision: Revision, agent: str) -> str:
    listed = sorted(revision.fleet.agents[agent].scopes)
    if len(listed) != 1:
        raise InvalidTarget(
            "name the resource with `resource` (RFC 8707): this agent may call "
            f"{len(listed)} resources"
        )
    return listed[0]


async def client_credentials(context: ServerContext, request: TokenRequest) -> dict[str, Any]:
    revision, client, form, targets, now = (
        request.revision,
        request.client,
        request.form,
        request.targets,
        request.now,
    )
    target = resolve_target(revision, targets)
    if target is not None and target.resource is None:
        raise InvalidTarget(
            "client credentials are for resources; connections and tokens for other agents "
            "are obtained by token exchange"
        )
    resource = target.resource if target else default_resource(revision, client.client_id)
    assert resource is not None

    scopes = requested_scopes(revision, form)
    if not scopes:
        # RFC 6749 §3.3: when scope is omitted the server uses a pre-defined default;
        # here, everything the agent may ever request on that resource.
        scopes = tuple(sorted(revision.agent_scopes.get((client.client_id, resource), ())))
        if not scopes:
            raise InvalidScope(
                f"fleet.yaml lists no scopes on resource {resource} for agent "
                f"{client.client_id}: there is nothing it may request there"
            )

    issued = await issue_for_resource(
        context,
        revision,
        grant_type=GRANT_TYPE,
        client_id=client.client_id,
        resource=resource,
        scopes=scopes,
        subject=None,
        now=now,
    )
    # RFC 6749 §4.4.3: "A refresh token SHOULD NOT be included."
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.decision.lifetime,
        "scope": " ".join(issued.decision.granted),
    }
