"""What ends when an agent leaves the fleet: its sign-ins, with their refresh tokens and
codes, and the sign-ins it has in progress.

`fleetid serve` ends them before it switches a revision in (`fleetid.server.local`); the
deployed server, when it finds the revision the pointer names (`fleetid.deploy.runtime`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetid.fleet.compile import Revision
from fleetid.server.audit import audit_event
from fleetid.server.authorize import INTERACTION_NAMESPACE
from fleetid.server.context import ServerContext
from fleetid.server.issuance import GRANT_NAMESPACE, revoke_grant

__all__ = ["end_sign_ins", "sign_ins_ending"]


def sign_ins_ending(
    removed: Iterable[str], added: Iterable[str], revision: Revision
) -> dict[str, str]:
    """The agents whose sign-ins end as `revision` goes live, each with the reason.

    A removed agent's sign-ins end. An added agent can hold some only from before its removal
    (one that completed while it was being removed, or a removal while the server was
    stopped): they end too, so that coming back restores nothing.
    """
    reasons = dict.fromkeys(sorted(removed), f"the agent is not in revision {revision.short}")
    reasons.update(
        dict.fromkeys(
            sorted(added), f"the sign-in predates the agent's return in {revision.short}"
        )
    )
    return reasons


def end_sign_ins(context: ServerContext, reasons: Mapping[str, str]) -> dict[str, int]:
    """Revoke every sign-in of the agents named in `reasons`, and drop their sign-ins in
    progress; how many sign-ins each agent lost."""
    ended = dict.fromkeys(sorted(reasons), 0)
    if not ended:
        return ended

    # A revoked grant takes its refresh-token family and its authorization codes with it:
    # both are redeemed only while their grant stands.
    for grant_id, record in context.store.scan(GRANT_NAMESPACE):
        client_id = record.value.get("client_id")
        if client_id in ended and not record.value.get("revoked"):
            revoke_grant(context, grant_id)
            ended[client_id] += 1
    for interaction_id, record in context.store.scan(INTERACTION_NAMESPACE):
        if record.value.get("client_id") in ended:
            context.store.delete(INTERACTION_NAMESPACE, interaction_id)

    for agent, count in ended.items():
        if count:
            context.audit.record(
                audit_event(
                    time=context.clock(),
                    event="sign_ins_ended",
                    agent=agent,
                    outcome=f"{count} sign-in{'s' if count != 1 else ''} revoked",
                    reason=reasons[agent],
                )
            )
    return ended
