"""The decision function on the example fleet: the stories the example was written for, and
the edges of a request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetSources
from fleetid.policy.decide import (
    APPROVAL_REQUIRED,
    DENIED,
    NO_ROLE,
    NO_SCOPE_REQUESTED,
    NOT_IN_AGENT_LIST,
    TENANT_NOT_SERVED,
    UNKNOWN_AGENT,
    UNKNOWN_RESOURCE,
    UNKNOWN_SCOPE,
    UNKNOWN_TENANT,
    AccessRequest,
    Decision,
    LifetimeCap,
    Subject,
    decide,
)

ALICE = Subject("alice", "acme", ("Sales Managers",))
BOB = Subject("bob", "acme", ("Sales",))
GLOBEX_ADMIN = Subject("gina", "globex", ("crm-admins@globex.example",))
CAROL = Subject("carol", "globex", ("helpdesk@globex.example",))
DAN = Subject("dan", "acme", ("Finance Analysts",))


def ask(
    revision: Revision,
    agent: str,
    resource: str,
    *scopes: str,
    subject: Subject | None = None,
    approved: frozenset[str] = frozenset(),
) -> Decision:
    return decide(revision, AccessRequest(agent, resource, scopes, subject, approved))


def codes(decision: Decision) -> dict[str, str]:
    return {refusal.scope: refusal.code for refusal in decision.refused}


# The stories


def test_alice_gets_crm_read_while_crm_write_waits_for_approval(
    example_revision: Revision,
) -> None:
    decision = ask(
        example_revision, "sales-assistant", "crm", "crm:read", "crm:write", subject=ALICE
    )

    assert decision.granted == ("crm:read",)
    assert codes(decision) == {"crm:write": APPROVAL_REQUIRED}
    (refusal,) = decision.refused
    assert refusal.rules == ("crm-write-needs-approval",)
    assert "crm-write-needs-approval" in refusal.reason
    assert decision.needs_approval == ("crm:write",)
    assert decision.roles == frozenset({"sales", "sales-manager"})
    assert decision.lifetime == 900
    assert decision.allowed
    assert decision.revision == example_revision.hash


def test_alices_approved_crm_write_is_granted_and_capped_by_the_scope(
    example_revision: Revision,
) -> None:
    decision = ask(
        example_revision,
        "sales-assistant",
        "crm",
        "crm:read",
        "crm:write",
        subject=ALICE,
        approved=frozenset({"crm:write"}),
    )

    assert decision.granted == ("crm:read", "crm:write")
    assert decision.refused == ()
    assert decision.needs_approval == ()
    assert decision.lifetime == 300
    assert decision.caps == (LifetimeCap(300, "scope crm:write", "crm:write"),)


def test_an_approval_of_another_scope_does_not_count(example_revision: Revision) -> None:
    decision = ask(
        example_revision,
        "sales-assistant",
        "crm",
        "crm:write",
        subject=ALICE,
        approved=frozenset({"crm:read", "tools:search"}),
    )

    assert decision.granted == ()
    assert codes(decision) == {"crm:write": APPROVAL_REQUIRED}
    assert decision.lifetime == 0


def test_bob_is_refused_crm_write_for_lack_of_a_role(example_revision: Revision) -> None:
    decision = ask(
        example_revision,
        "sales-assistant",
        "crm",
        "crm:write",
        subject=BOB,
        approved=frozenset({"crm:write"}),
    )

    assert decision.granted == ()
    assert codes(decision) == {"crm:write": NO_ROLE}
    assert decision.roles == frozenset({"sales"})
    assert "crm-sync, sales-manager" in decision.refused[0].reason
    assert not decision.allowed
    assert decision.lifetime == 0


def test_bob_still_reads_the_crm(example_revision: Revision) -> None:
    decision = ask(
        example_revision, "sales-assistant", "crm", "crm:read", "crm:write", subject=BOB
    )

    assert decision.granted == ("crm:read",)
    assert codes(decision) == {"crm:write": NO_ROLE}


def test_a_globex_admin_is_denied_crm_write_by_policy(example_revision: Revision) -> None:
    decision = ask(
        example_revision,
        "sales-assistant",
        "crm",
        "crm:read",
        "crm:write",
        subject=GLOBEX_ADMIN,
        approved=frozenset({"crm:write"}),
    )

    assert decision.granted == ("crm:read",)
    assert codes(decision) == {"crm:write": DENIED}
    assert decision.refused[0].rules == ("globex-no-crm-writes",)
    assert decision.refused[0].reason == "denied by policy globex-no-crm-writes"
    assert decision.roles == frozenset({"sales", "sales-manager"})


def test_support_triage_may_never_ask_for_crm_write(example_revision: Revision) -> None:
    decision = ask(example_revision, "support-triage", "crm", "crm:write", subject=ALICE)

    assert decision.granted == ()
    assert codes(decision) == {"crm:write": NOT_IN_AGENT_LIST}
    assert "support-triage" in decision.refused[0].reason


def test_support_triage_serves_carol_at_globex(example_revision: Revision) -> None:
    decision = ask(
        example_revision, "support-triage", "tools", "tools:tickets", "tools:search", subject=CAROL
    )

    assert decision.granted == ("tools:tickets", "tools:search")
    assert decision.lifetime == 900


def test_finance_reporter_does_not_serve_globex(example_revision: Revision) -> None:
    decision = ask(example_revision, "finance-reporter", "tools", "tools:search", subject=CAROL)

    assert decision.granted == ()
    assert codes(decision) == {"tools:search": TENANT_NOT_SERVED}
    assert decision.refused[0].reason == "agent 'finance-reporter' does not serve tenant 'globex'"


def test_finance_reporter_serves_dan_at_acme(example_revision: Revision) -> None:
    decision = ask(example_revision, "finance-reporter", "tools", "tools:search", subject=DAN)

    assert decision.granted == ("tools:search",)
    assert decision.roles == frozenset({"analyst"})


def test_crm_reconciler_acting_as_itself_writes_with_a_two_minute_token(
    example_revision: Revision,
) -> None:
    decision = ask(example_revision, "crm-reconciler", "crm", "crm:read", "crm:write")

    assert decision.granted == ("crm:read", "crm:write")
    assert decision.refused == ()
    assert decision.roles == frozenset({"crm-sync"})
    assert decision.lifetime == 120
    assert set(decision.caps) == {
        LifetimeCap(120, "policy crm-machine-tokens-short", "crm:read"),
        LifetimeCap(300, "scope crm:write", "crm:write"),
        LifetimeCap(120, "policy crm-machine-tokens-short", "crm:write"),
    }


def test_crm_reconciler_serves_no_user(example_revision: Revision) -> None:
    decision = ask(example_revision, "crm-reconciler", "crm", "crm:read", subject=ALICE)

    assert codes(decision) == {"crm:read": TENANT_NOT_SERVED}


def test_an_agent_acting_as_itself_without_roles_gets_nothing(
    example_revision: Revision,
) -> None:
    decision = ask(example_revision, "sales-assistant", "crm", "crm:read")

    assert decision.granted == ()
    assert codes(decision) == {"crm:read": NO_ROLE}
    assert decision.roles == frozenset()
    assert "acting as itself" in decision.refused[0].reason


def test_a_refusal_for_want_of_a_role_says_who_lacks_it(example_revision: Revision) -> None:
    nobody = Subject("eve", "acme", ("Everyone",))

    for _ in range(2):
        as_user = ask(example_revision, "sales-assistant", "crm", "crm:read", subject=nobody)
        as_itself = ask(example_revision, "sales-assistant", "crm", "crm:read")

        (user_refusal,), (agent_refusal,) = as_user.refused, as_itself.refused
        assert user_refusal.reason.startswith("the user holds none of the roles")
        assert agent_refusal.reason.startswith("the agent, acting as itself, holds none")
        assert user_refusal.reason.endswith(agent_refusal.reason.rsplit(" (", 1)[1])


# Groups are inputs, never grants


def test_groups_not_in_the_tenants_map_grant_nothing(example_revision: Revision) -> None:
    subject = Subject("eve", "acme", ("Administrators", "sales", "sales-manager", "Everyone"))

    decision = ask(example_revision, "sales-assistant", "crm", "crm:read", subject=subject)

    assert decision.roles == frozenset()
    assert codes(decision) == {"crm:read": NO_ROLE}


def test_a_group_name_from_another_tenant_grants_nothing(example_revision: Revision) -> None:
    in_acme = Subject("gina", "acme", ("crm-admins@globex.example",))
    in_globex = Subject("alice", "globex", ("Sales Managers",))

    for subject in (in_acme, in_globex):
        decision = ask(example_revision, "sales-assistant", "crm", "crm:read", subject=subject)
        assert decision.roles == frozenset()
        assert decision.granted == ()


def test_group_names_match_exactly(example_revision: Revision) -> None:
    for group in ("sales managers", "Sales Managers ", "SALES MANAGERS"):
        subject = Subject("alice", "acme", (group,))
        assert ask(
            example_revision, "sales-assistant", "crm", "crm:read", subject=subject
        ).roles == (frozenset())


def test_roles_from_several_groups_add_up(example_revision: Revision) -> None:
    subject = Subject("fay", "acme", ("Sales", "Customer Support"))

    decision = ask(
        example_revision,
        "support-triage",
        "tools",
        "tools:tickets",
        "tools:search",
        subject=subject,
    )

    assert decision.roles == frozenset({"sales", "support"})
    assert decision.granted == ("tools:tickets", "tools:search")


# Unknown names and odd requests


@pytest.mark.parametrize(
    ("agent", "resource", "subject", "code"),
    [
        ("ghost-agent", "crm", ALICE, UNKNOWN_AGENT),
        ("sales-assistant", "billing", ALICE, UNKNOWN_RESOURCE),
        ("sales-assistant", "https://crm.acme.example.com", ALICE, UNKNOWN_RESOURCE),
        ("sales-assistant", "crm", Subject("x", "initech", ("Sales",)), UNKNOWN_TENANT),
    ],
)
def test_unknown_names_refuse_every_scope(
    example_revision: Revision, agent: str, resource: str, subject: Subject, code: str
) -> None:
    decision = ask(example_revision, agent, resource, "crm:read", "crm:write", subject=subject)

    assert decision.granted == ()
    assert [(r.scope, r.code) for r in decision.refused] == [
        ("crm:read", code),
        ("crm:write", code),
    ]
    assert decision.lifetime == 0
    assert decision.roles == frozenset()


def test_a_scope_the_resource_does_not_define_is_refused(example_revision: Revision) -> None:
    decision = ask(
        example_revision, "sales-assistant", "crm", "crm:read", "crm:delete", "tools:search",
        subject=ALICE,
    )  # fmt: skip

    assert decision.granted == ("crm:read",)
    assert codes(decision) == {"crm:delete": UNKNOWN_SCOPE, "tools:search": UNKNOWN_SCOPE}


def test_a_scope_asked_for_twice_is_decided_once(example_revision: Revision) -> None:
    decision = ask(
        example_revision, "sales-assistant", "crm", "crm:read", "crm:write", "crm:read",
        "crm:write", subject=ALICE,
    )  # fmt: skip

    assert decision.granted == ("crm:read",)
    assert [refusal.scope for refusal in decision.refused] == ["crm:write"]


def test_a_scope_asked_for_twice_is_refused_once_even_for_an_unknown_agent(
    example_revision: Revision,
) -> None:
    decision = ask(example_revision, "ghost-agent", "crm", "crm:read", "crm:read")

    assert [refusal.scope for refusal in decision.refused] == ["crm:read"]


def test_an_empty_request_grants_nothing(example_revision: Revision) -> None:
    decision = ask(example_revision, "sales-assistant", "crm", subject=ALICE)

    assert decision.granted == ()
    assert [refusal.code for refusal in decision.refused] == [NO_SCOPE_REQUESTED]
    assert decision.lifetime == 0
    assert not decision.allowed


def test_the_decision_is_a_pure_function(example_revision: Revision) -> None:
    request = AccessRequest(
        "sales-assistant", "crm", ("crm:write", "crm:read"), ALICE, frozenset({"crm:write"})
    )

    first, second = decide(example_revision, request), decide(example_revision, request)

    assert first == second
    assert first.request is request


def test_granted_keeps_the_order_of_the_request(example_revision: Revision) -> None:
    decision = ask(example_revision, "crm-reconciler", "crm", "crm:write", "crm:read")

    assert decision.granted == ("crm:write", "crm:read")


# Policies only restrict

STRICT_POLICY = """\
version: 1
rules:
  - id: no-support-tickets-for-globex
    description: d
    effect: deny
    match:
      agents: ["support-*"]
      tenants: [globex]
      scopes: ["tools:tickets"]
  - id: search-needs-approval-for-analysts
    description: d
    effect: require_approval
    match:
      roles: [analyst]
      scopes: ["tools:search"]
  - id: short-tools
    description: d
    effect: cap_lifetime
    max_lifetime: 90s
    match:
      resources: [tools]
      subject: user
  - id: shorter-search
    description: d
    effect: cap_lifetime
    max_lifetime: 1m
    match:
      scopes: ["tools:search"]
      tenants: [acme]
"""


@pytest.fixture(scope="module")
def strict_revision(
    make_sources: Callable[..., FleetSources],
    example_fleet_text: str,
    example_policy_texts: dict[str, str],
) -> Revision:
    policies = {f"policies/{name}": text for name, text in example_policy_texts.items()}
    policies["policies/strict.yaml"] = STRICT_POLICY
    return compile_sources(make_sources(example_fleet_text, policies))


def test_an_agent_pattern_and_tenant_deny(strict_revision: Revision) -> None:
    at_globex = ask(strict_revision, "support-triage", "tools", "tools:tickets", subject=CAROL)
    at_acme = ask(
        strict_revision,
        "support-triage",
        "tools",
        "tools:tickets",
        subject=Subject("sam", "acme", ("Customer Support",)),
    )

    assert codes(at_globex) == {"tools:tickets": DENIED}
    assert at_acme.granted == ("tools:tickets",)
    assert at_acme.lifetime == 90


def test_a_role_selector_requires_approval_only_for_that_role(
    strict_revision: Revision,
) -> None:
    analyst = ask(strict_revision, "finance-reporter", "tools", "tools:search", subject=DAN)
    approved = ask(
        strict_revision,
        "finance-reporter",
        "tools",
        "tools:search",
        subject=DAN,
        approved=frozenset({"tools:search"}),
    )
    seller = ask(strict_revision, "sales-assistant", "tools", "tools:search", subject=BOB)

    assert codes(analyst) == {"tools:search": APPROVAL_REQUIRED}
    assert analyst.refused[0].rules == ("search-needs-approval-for-analysts",)
    assert approved.granted == ("tools:search",)
    assert seller.granted == ("tools:search",)


def test_the_shortest_applicable_cap_wins(strict_revision: Revision) -> None:
    at_acme = ask(strict_revision, "sales-assistant", "tools", "tools:search", subject=BOB)
    at_globex = ask(
        strict_revision, "sales-assistant", "tools", "tools:search", subject=GLOBEX_ADMIN
    )

    assert at_acme.lifetime == 60
    assert {cap.source for cap in at_acme.caps} == {"policy short-tools", "policy shorter-search"}
    assert at_globex.lifetime == 90


def test_approval_never_lifts_a_deny(strict_revision: Revision) -> None:
    decision = ask(
        strict_revision,
        "support-triage",
        "tools",
        "tools:tickets",
        subject=CAROL,
        approved=frozenset({"tools:tickets"}),
    )

    assert codes(decision) == {"tools:tickets": DENIED}


REQUIRES_APPROVAL = """\
      tools:tickets:
        description: Open and update support tickets
        roles: [support]
        requires_approval: true
"""


def test_a_scope_that_requires_approval_waits_for_it(
    make_sources: Callable[..., FleetSources], example_fleet_text: str
) -> None:
    original = (
        "      tools:tickets:\n        description: Open and update support tickets\n"
        "        roles: [support]\n"
    )
    assert original in example_fleet_text
    revision = compile_sources(
        make_sources(example_fleet_text.replace(original, REQUIRES_APPROVAL))
    )

    waiting = ask(revision, "support-triage", "tools", "tools:tickets", subject=CAROL)
    approved = ask(
        revision,
        "support-triage",
        "tools",
        "tools:tickets",
        subject=CAROL,
        approved=frozenset({"tools:tickets"}),
    )

    assert codes(waiting) == {"tools:tickets": APPROVAL_REQUIRED}
    assert waiting.refused[0].rules == ()
    assert "the scope requires it" in waiting.refused[0].reason
    assert approved.granted == ("tools:tickets",)
