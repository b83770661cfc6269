"""The semantic diff of two fleets: who gains and who loses which access, in words.

A line diff of fleet.yaml shows what was typed; a reviewer needs what it means. One role
added to one IdP group can hand a scope to every agent that serves the tenant, and a deny
rule deleted from policies/ can reopen access that fleet.yaml never mentions. So this module
compares two compiled revisions by meaning:

- their *effective access*: every (agent, resource, scope, role, tenant) that a token could
  ever carry, exactly as `fleetid.policy.decide` grants it or holds it for approval;
- every other change a reviewer has to weigh: token lifetimes, approval requirements,
  redirect URIs, connections and who may use them, agents, gateways, tenants and their group
  maps, registration policy, policy rules, signing, and whom fleetid trusts.

No library does this: generic structural diffs know nothing of what a role, a tenant's group
map or a deny rule means, and the access set has to be computed before it can be compared.
It is written here, on the compiled revision only, never on the YAML.

Each change has an effect. It *widens* when after it someone can get access they could not
get before, keep it longer, get it with less in the way (an approval, a cap, a deny rule, a
PKCE check), or when fleetid starts trusting someone new (an IdP issuer, a client key, a
token audience, a gateway endpoint). It *narrows* in the opposite cases, and is *neutral*
when it does neither (descriptions, display names, runtimes, definitions nothing refers to
yet). Additions of a thing that acts (an agent, a gateway, a connection, a tenant) widen;
additions of a definition that grants nothing until referred to (a role, a resource, a
scope) are neutral; removing a restriction widens.

JSON format (``fleetid diff --format json``)
--------------------------------------------

One object with three members::

    {
      "revision": {"base": "<sha256>", "head": "<sha256>"},
      "access": {
        "added":   [{"agent": "...", "resource": "...", "scope": "...",
                     "role": "...", "tenant": "..." | null}, ...],
        "removed": [...]
      },
      "changes": [{"kind": "...", "id": "...",
                   "effect": "widens" | "narrows" | "neutral", "summary": "..."}, ...]
    }

``revision`` holds the content hashes of the two compiled revisions (``fleetid validate``
prints the first twelve characters of the same hash).

``access.added`` and ``access.removed`` list what a token could carry on one side and not on
the other. An entry means: `agent` may be issued `scope` on `resource` because the subject
holds `role`, for a user of `tenant`; `tenant` is null when the agent acts as itself
(client credentials) with its own roles. A user of a tenant counts when a single one of the
tenant's IdP groups gives them the role and no deny rule stops it; scopes that need a
person's approval count, since approval is a step, not a wall. Entries are sorted by agent,
resource, scope, role, then tenant, with null first.

``changes`` lists everything else that differs, and also the edits that caused the access
changes, each once. Sorted by effect (widens, then narrows, then neutral), then kind, id and
summary.

- ``kind`` is one of: ``identity``, ``signing``, ``lifetime``, ``tenant``, ``tenant.sso``,
  ``tenant.group``, ``role``, ``resource``, ``scope``, ``scope.roles``, ``approval``,
  ``agent``, ``agent.scopes``, ``agent.roles``, ``agent.tenants``, ``agent.connections``,
  ``agent.auth``, ``redirect_uri``, ``gateway``, ``gateway.agents``, ``gateway.target``,
  ``connection``, ``connection.allowed``, ``connection.scopes``, ``registration``,
  ``policy.rule``, ``dev_user``, and ``fleet`` for a top-level section this version of
  fleetid does not know.
- ``id`` says what changed: a JSON pointer (RFC 6901) into fleet.yaml, such as
  ``/agents/support-triage/scopes/crm``, except for ``policy.rule``, where it is the rule's
  id. Several changes may share an id (a group that gains one role and loses another).
- ``effect`` is ``widens``, ``narrows`` or ``neutral``, as defined above.
- ``summary`` is one sentence for a reviewer, such as "agent support-triage may now request
  crm:write on crm". Its wording may improve between versions; match on kind, id and effect.

``fleetid diff --fail-on widens`` exits with status 3 when any change widens access or any
access is added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeVar

from pydantic import BaseModel

from fleetid.fleet.compile import CompiledRule, Revision
from fleetid.fleet.model import (
    Agent,
    ApiKeyConnection,
    Connection,
    ConnectionUsers,
    DevUser,
    Fleet,
    Gateway,
    GatewayTarget,
    Identity,
    LifetimeRule,
    OAuthConnection,
    PolicyMatch,
    PolicyRule,
    Registration,
    Resource,
    Role,
    Scope,
    Sso,
    Tenant,
    format_seconds,
)
from fleetid.fleet.source import join_pointer

__all__ = [
    "MARKDOWN_LIST_ITEMS",
    "MARKDOWN_MAX_CHARS",
    "MARKDOWN_TABLE_ROWS",
    "AccessTuple",
    "Change",
    "Effect",
    "FleetDiff",
    "diff_json",
    "diff_revisions",
    "effective_access",
    "render_markdown",
    "render_text",
    "verdict",
]

Effect = Literal["widens", "narrows", "neutral"]
_Entry = TypeVar("_Entry")

# A pull-request comment stays readable, and under GitHub's 65,536-character limit.
MARKDOWN_TABLE_ROWS: Final = 50
MARKDOWN_LIST_ITEMS: Final = 100
MARKDOWN_MAX_CHARS: Final = 60_000
_DESCRIPTION_CHARS = 100

_EFFECT_ORDER: Final[Mapping[Effect, int]] = {"widens": 0, "narrows": 1, "neutral": 2}
_OPPOSITE: Final[Mapping[Effect, Effect]] = {
    "widens": "narrows",
    "narrows": "widens",
    "neutral": "neutral",
}
# Within a model, the one list whose order means something: an agent's command line.
_ORDERED_LISTS = frozenset({"entry_point"})
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")


class AccessTuple(NamedTuple):
    """One thing a token could carry: `agent` holding `scope` on `resource` through `role`,
    for a user of `tenant`, or acting as itself when `tenant` is None."""

    agent: str
    resource: str
    scope: str
    role: str
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """One difference a reviewer should see; `id` is a JSON pointer into fleet.yaml, or a
    policy rule's id."""

    kind: str
    id: str
    effect: Effect
    summary: str


@dataclass(frozen=True)
class FleetDiff:
    """What changes from the base revision to the head revision."""

    base: str
    head: str
    added: tuple[AccessTuple, ...]
    removed: tuple[AccessTuple, ...]
    changes: tuple[Change, ...]

    @property
    def widening(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.effect == "widens")

    @property
    def narrowing(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.effect == "narrows")

    @property
    def neutral(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.effect == "neutral")

    @property
    def ways_widened(self) -> int:
        # An edit that looks narrowing can still add access through a restriction it
        # interacts with (a role removed from a group stops a deny rule that matched it);
        # the verdict must then not say that access only narrows.
        return max(len(self.widening), 1 if self.added else 0)

    @property
    def ways_narrowed(self) -> int:
        return max(len(self.narrowing), 1 if self.removed else 0)

    @property
    def widens(self) -> bool:
        return self.ways_widened > 0

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changes)


# -- Effective access ------------------------------------------------------------------

_Held = dict[str | None, frozenset[str]]
_NO_ROLES: frozenset[str] = frozenset()


def effective_access(revision: Revision) -> frozenset[AccessTuple]:
    """Every (agent, resource, scope, role, tenant) a token of this revision could carry."""
    access = _Access(revision)
    return frozenset(
        AccessTuple(agent, resource, scope, role, tenant)
        for (agent, resource), scopes in revision.agent_scopes.items()
        for scope in scopes
        for tenant, roles in access.held(agent, resource, scope).items()
        for role in roles
    )


class _Access:
    """The effective access of one revision, one (agent, resource, scope) at a time, as
    the roles it is held through per tenant (None: the agent acting as itself).

    A user's side is worked out one IdP group at a time, which is enough: deny rules match
    on any role held, so a user in more groups is never denied less, and whatever several
    groups grant, one of them grants alone. So per tenant, and per set of deny rules that
    could stop a request, what matters is the roles that some group confers without a rule
    stopping it; a scope is then held through each of its roles among those.
    """

    def __init__(self, revision: Revision) -> None:
        self.revision = revision
        self._role_sets = {
            tenant: tuple(set(mapping.values()))
            for tenant, mapping in revision.group_roles.items()
        }
        self._denies: dict[
            tuple[str, str], tuple[tuple[CompiledRule, ...], tuple[str, ...], bool]
        ] = {}
        # By the ids of the deny rules in the way, then by tenant: thousands of scopes share
        # their deny rules (most share none at all).
        self._reach: dict[tuple[str, ...], dict[str, frozenset[str]]] = {}

    def denies(self, resource: str, scope: str) -> tuple[CompiledRule, ...]:
        """The deny rules covering a scope, whatever the agent."""
        return self._covering(resource, scope)[0]

    def held(
        self, agent: str, resource: str, scope: str, among: Iterable[str] | None = None
    ) -> _Held:
        """Per tenant, the roles through which `agent` may hold `scope` on `resource`;
        with `among`, only for users of those tenants, and not for the agent itself."""
        inputs = self._inputs(agent, resource, scope)
        if inputs is None:
            return {}

        holders, denies, ids = inputs
        reachable = self._reachable(agent, denies, ids)
        served = self.revision.agent_tenants[agent]
        held: _Held = {}
        for tenant in served if among is None else served.intersection(among):
            roles = holders & reachable.get(tenant, _NO_ROLES)
            if roles:
                held[tenant] = roles
        if among is not None:
            return held

        own_roles = self.revision.agent_roles[agent]
        usable = holders & own_roles
        if usable and not any(rule.applies(agent, None, own_roles, False) for rule in denies):
            held[None] = usable

        return held

    def _inputs(
        self, agent: str, resource: str, scope: str
    ) -> tuple[frozenset[str], tuple[CompiledRule, ...], tuple[str, ...]] | None:
        holders = self.revision.scope_roles.get((resource, scope))
        if holders is None or agent not in self.revision.agent_tenants:
            return None

        denies, ids, names_agents = self._covering(resource, scope)
        if names_agents:
            denies = tuple(rule for rule in denies if rule.agents is None or agent in rule.agents)
            ids = tuple(rule.id for rule in denies)
        return holders, denies, ids

    def _covering(
        self, resource: str, scope: str
    ) -> tuple[tuple[CompiledRule, ...], tuple[str, ...], bool]:
        found = self._denies.get((resource, scope))
        if found is None:
            rules = tuple(
                rule
                for rule in self.revision.rules_covering(resource, scope)
                if rule.effect == "deny"
            )
            ids = tuple(rule.id for rule in rules)
            found = (rules, ids, any(rule.agents is not None for rule in rules))
            self._denies[(resource, scope)] = found
        return found

    def _reachable(
        self, agent: str, denies: tuple[CompiledRule, ...], ids: tuple[str, ...]
    ) -> Mapping[str, frozenset[str]]:
        """Per tenant, the roles a user can get from one group without a deny rule stopping
        the request. `agent` only meets the rules' agent selectors, which the caller has
        already applied, so the answer holds for every agent facing these rules."""
        reachable = self._reach.get(ids)
        if reachable is None:
            reachable = {
                tenant: frozenset(
                    role
                    for roles in role_sets
                    if not any(rule.applies(agent, tenant, roles, True) for rule in denies)
                    for role in roles
                )
                for tenant, role_sets in self._role_sets.items()
            }
            self._reach[ids] = reachable
        return reachable


def _access_order(entry: AccessTuple) -> tuple[str, str, str, str, bool, str]:
    return (
        entry.agent,
        entry.resource,
        entry.scope,
        entry.role,
        entry.tenant is not None,
        entry.tenant or "",
    )


class _AccessDelta:
    """Access added and removed between two revisions.

    Only what can differ is worked out. An (agent, resource, scope) whose inputs are the
    same on both sides (the agent's tenants and own roles, the scope's roles, the deny
    rules covering it) has the same access on both, except for users of a tenant whose
    group map changed, and there only through roles in a role set that one side has and
    the other has not. When only deny rules change, only the agents, tenants and kind of
    subject those rules can match are looked at again.
    """

    def __init__(self, base: Revision, head: Revision) -> None:
        self.base, self.head = base, head
        self.before, self.after = _Access(base), _Access(head)
        self.added: list[AccessTuple] = []
        self.removed: list[AccessTuple] = []

    def run(self) -> tuple[tuple[AccessTuple, ...], tuple[AccessTuple, ...]]:
        base, head = self.base, self.head
        unsettled = self._unsettled_roles()
        rules_changed = self._rules_changed()
        touched_by_agent: dict[str, frozenset[str] | None] = {}
        nothing: frozenset[str] = frozenset()

        for (agent, resource), scopes in head.agent_scopes.items():
            listed_before = base.agent_scopes.get((agent, resource), nothing)
            if agent not in touched_by_agent:
                touched_by_agent[agent] = self._touched(agent, unsettled.keys())
            touched = touched_by_agent[agent]
            if touched is None or listed_before != scopes:
                for scope in scopes | listed_before:
                    self._compare(agent, resource, scope, scope in listed_before, scope in scopes)
                continue

            for scope in scopes:
                changed = rules_changed.get((resource, scope), ())
                if changed is None:
                    self._compare(agent, resource, scope, True, True)
                    continue
                among = self._among(
                    agent,
                    resource=resource,
                    scope=scope,
                    touched=touched,
                    unsettled=unsettled,
                    changed=changed,
                )
                if among is None:
                    self._compare(agent, resource, scope, True, True)
                elif among:
                    self._record(
                        agent,
                        resource,
                        scope,
                        self.before.held(agent, resource, scope, among),
                        self.after.held(agent, resource, scope, among),
                    )

        for (agent, resource), scopes in base.agent_scopes.items():
            if (agent, resource) not in head.agent_scopes:
                for scope in scopes:
                    self._compare(agent, resource, scope, True, False)

        return (
            tuple(sorted(self.added, key=_access_order)),
            tuple(sorted(self.removed, key=_access_order)),
        )

    def _rules_changed(self) -> dict[tuple[str, str], tuple[CompiledRule, ...] | None]:
        """Per scope that changes: None when its roles change, else the deny rules covering
        it that only one side has."""
        base, head = self.base, self.head
        changed: dict[tuple[str, str], tuple[CompiledRule, ...] | None] = {}
        for key in base.scope_roles.keys() | head.scope_roles.keys():
            if base.scope_roles.get(key) != head.scope_roles.get(key):
                changed[key] = None
                continue
            before, after = self.before.denies(*key), self.after.denies(*key)
            if before != after:
                changed[key] = tuple(set(before) ^ set(after))
        return changed

    def _among(
        self,
        agent: str,
        *,
        resource: str,
        scope: str,
        touched: frozenset[str],
        unsettled: Mapping[str, frozenset[str]],
        changed: tuple[CompiledRule, ...],
    ) -> set[str] | None:
        """The tenants whose users' access to the scope may differ for a steady agent, or
        None when the agent acting as itself may be affected too."""
        among: set[str] = set()
        if touched:
            holders = self.head.scope_roles.get((resource, scope), _NO_ROLES)
            among.update(tenant for tenant in touched if not holders.isdisjoint(unsettled[tenant]))
        if not changed:
            return among

        served = self.head.agent_tenants[agent]
        for rule in changed:
            if rule.agents is not None and agent not in rule.agents:
                continue
            if rule.subject != "user" and rule.tenants is None:
                return None
            if rule.subject != "machine":
                among.update(served if rule.tenants is None else served & rule.tenants)
        return among

    def _unsettled_roles(self) -> dict[str, frozenset[str]]:
        """Per tenant whose group map changed, the roles of the role sets that only one
        side's groups confer: only through those can its users' access differ."""
        base, head = self.base.group_roles, self.head.group_roles
        unsettled: dict[str, frozenset[str]] = {}
        for tenant in base.keys() | head.keys():
            old, new = base.get(tenant), head.get(tenant)
            if old == new:
                continue
            sets = set((old or {}).values()) ^ set((new or {}).values())
            unsettled[tenant] = frozenset(role for roles in sets for role in roles)
        return unsettled

    def _touched(self, agent: str, unsettled: Iterable[str]) -> frozenset[str] | None:
        """None when the agent's tenants or own roles change; else its tenants whose group
        map changed."""
        tenants = self.head.agent_tenants[agent]
        if tenants != self.base.agent_tenants.get(agent):
            return None
        if self.head.agent_roles[agent] != self.base.agent_roles.get(agent):
            return None
        return tenants.intersection(unsettled)

    def _compare(self, agent: str, resource: str, scope: str, was: bool, now: bool) -> None:
        old = self.before.held(agent, resource, scope) if was else {}
        new = self.after.held(agent, resource, scope) if now else {}
        self._record(agent, resource, scope, old, new)

    def _record(self, agent: str, resource: str, scope: str, old: _Held, new: _Held) -> None:
        if old == new:
            return
        for tenant in old.keys() | new.keys():
            was, now = old.get(tenant, _NO_ROLES), new.get(tenant, _NO_ROLES)
            self.added.extend(
                AccessTuple(agent, resource, scope, role, tenant) for role in now - was
            )
            self.removed.extend(
                AccessTuple(agent, resource, scope, role, tenant) for role in was - now
            )


# -- Other changes ---------------------------------------------------------------------


def diff_revisions(base: Revision, head: Revision) -> FleetDiff:
    """Everything that changes from `base` to `head`, access first."""
    if base.hash == head.hash:
        # The hash covers meaning only, so equal hashes mean nothing to report.
        return FleetDiff(base.hash, head.hash, (), (), ())

    added, removed = _AccessDelta(base, head).run()
    found = _Changes()
    _compare_fleet(found, base.fleet, head.fleet)
    _compare_rules(found, _rules_by_id(base), _rules_by_id(head))
    changes = tuple(sorted(set(found.changes), key=_change_order))

    return FleetDiff(base.hash, head.hash, added, removed, changes)


def _change_order(change: Change) -> tuple[int, str, str, str]:
    return _EFFECT_ORDER[change.effect], change.kind, change.id, change.summary


_Phrase = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class _Limit:
    """How to say that a list which, when absent, means "any" changed."""

    gained: _Phrase
    lost: _Phrase
    opened: _Phrase
    limited: _Phrase


class _Changes:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def add(self, effect: Effect, kind: str, ident: str, summary: str) -> None:
        self.changes.append(Change(kind, ident, effect, summary))

    def widens(self, kind: str, ident: str, summary: str) -> None:
        self.add("widens", kind, ident, summary)

    def narrows(self, kind: str, ident: str, summary: str) -> None:
        self.add("narrows", kind, ident, summary)

    def neutral(self, kind: str, ident: str, summary: str) -> None:
        self.add("neutral", kind, ident, summary)

    def members(
        self,
        kind: str,
        ident: str,
        before: Iterable[str],
        after: Iterable[str],
        *,
        gained: _Phrase,
        lost: _Phrase,
        growing: Effect = "widens",
    ) -> None:
        """One change per item gained or lost; `growing` is the effect of a gain."""
        old, new = set(before), set(after)
        for item in sorted(new - old):
            self.add(growing, kind, ident, gained(item))
        for item in sorted(old - new):
            self.add(_OPPOSITE[growing], kind, ident, lost(item))

    def limit(
        self,
        kind: str,
        ident: str,
        before: Collection[str] | None,
        after: Collection[str] | None,
        *,
        phrase: _Limit,
        growing: Effect = "widens",
    ) -> None:
        """Changes to a list where None means "any"; `growing` is the effect of more."""
        if before is None and after is None:
            return
        if before is None:
            assert after is not None
            self.add(_OPPOSITE[growing], kind, ident, phrase.limited(_words(after)))
            return
        if after is None:
            self.add(growing, kind, ident, phrase.opened(_words(before)))
            return
        self.members(
            kind, ident, before, after, gained=phrase.gained, lost=phrase.lost, growing=growing
        )

    def lifetime(
        self, kind: str, ident: str, what: str, before: int | None, after: int | None
    ) -> None:
        """A lifetime or a cap on one; None means no cap."""
        if before == after:
            return
        if after is None:
            assert before is not None
            self.widens(
                kind, ident, f"{what} is no longer capped (it was {format_seconds(before)})"
            )
            return
        if before is None:
            self.narrows(kind, ident, f"{what} is now capped at {format_seconds(after)}")
            return
        effect: Effect = "widens" if after > before else "narrows"
        self.add(
            effect,
            kind,
            ident,
            f"{what} goes from {format_seconds(before)} to {format_seconds(after)}",
        )

    def leftovers(
        self,
        kind: str,
        parts: Sequence[str],
        before: BaseModel,
        after: BaseModel,
        *,
        handled: Collection[str],
        what: str,
        ident: str | None = None,
    ) -> None:
        """Fields compared by no rule of their own: reported, as neutral, so that a field
        added to the model later is never silently left out of a review. `ident` replaces
        the pointer for things outside fleet.yaml."""
        for name in type(after).model_fields:
            if name in handled:
                continue
            if _meaning(getattr(before, name, None)) != _meaning(getattr(after, name, None)):
                label = name.replace("_", " ")
                where = ident if ident is not None else join_pointer(*parts, name)
                self.neutral(kind, where, f"the {label} of {what} changes")


def _meaning(value: Any, key: str | None = None) -> Any:
    """A model's value compared by meaning: defaults filled in, lists of plain values
    sorted as the sets they are. Keys here are the model's field names, never a user's."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {name: _meaning(child, name) for name, child in value.items()}
    if isinstance(value, list | tuple):
        items = [_meaning(child) for child in value]
        if key in _ORDERED_LISTS or not all(isinstance(item, str) for item in items):
            return items
        return sorted(set(items))
    return value


def _words(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _named(noun: str, items: Collection[str]) -> str:
    """`role sales` or `roles sales, support`."""
    return f"{noun}{'s' if len(items) != 1 else ''} {_words(items)}"


def _brief(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _DESCRIPTION_CHARS:
        return text
    return text[: _DESCRIPTION_CHARS - 1].rstrip() + "…"


def _entries(
    before: Mapping[str, _Entry], after: Mapping[str, _Entry]
) -> tuple[list[str], list[str], list[tuple[str, _Entry, _Entry]]]:
    """Names added, names removed, and (name, before, after) for entries that differ."""
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = [
        (name, before[name], entry)
        for name, entry in after.items()
        if name in before and before[name] != entry
    ]
    return added, removed, changed


def _compare_fleet(found: _Changes, before: Fleet, after: Fleet) -> None:
    _compare_identity(found, before.identity, after.identity)
    _compare_tenants(found, before.tenants, after.tenants)
    _compare_roles(found, before.roles, after.roles)
    _compare_resources(found, before.resources, after.resources)
    _compare_agents(found, before.agents, after.agents)
    _compare_gateways(found, before.gateways, after.gateways)
    _compare_connections(found, before.connections, after.connections)
    _compare_registration(found, before.registration, after.registration)
    _compare_dev_users(found, before.dev_users, after.dev_users)

    handled = {
        "identity",
        "tenants",
        "roles",
        "resources",
        "agents",
        "gateways",
        "connections",
        "registration",
        "dev_users",
    }
    for name in type(after).model_fields:
        if name in handled:
            continue
        if _meaning(getattr(before, name)) != _meaning(getattr(after, name)):
            found.neutral("fleet", join_pointer(name), f"the {name} of the fleet file changes")


_TOKEN_NAMES: Final = {
    "access_token": "access token",
    "refresh_token": "refresh token",
    "authorization_code": "authorization code",
    "id_token": "ID token",
}


def _compare_identity(found: _Changes, before: Identity, after: Identity) -> None:
    if before == after:
        return

    if before.name != after.name:
        found.neutral(
            "identity",
            "/identity/name",
            f"the fleet's name goes from {before.name} to {after.name}",
        )
    if before.display_name != after.display_name:
        found.neutral("identity", "/identity/display_name", "the fleet's display name changes")
    if before.issuer != after.issuer:
        old = before.issuer or "the server's own URL"
        new = after.issuer or "the server's own URL"
        found.neutral("identity", "/identity/issuer", f"the issuer goes from {old} to {new}")

    for name in type(after.tokens).model_fields:
        label = _TOKEN_NAMES.get(name, name.replace("_", " "))
        found.lifetime(
            "lifetime",
            join_pointer("identity", "tokens", name),
            f"the {label} lifetime",
            getattr(before.tokens, name),
            getattr(after.tokens, name),
        )

    signing_before, signing_after = before.signing, after.signing
    if signing_before.algorithm != signing_after.algorithm:
        note = ""
        if signing_after.algorithm != "RS256":
            note = " (AgentCore's inbound JWT authorizer is known to accept RS256 only)"
        found.neutral(
            "signing",
            "/identity/signing/algorithm",
            f"tokens are now signed with {signing_after.algorithm} instead of "
            f"{signing_before.algorithm}{note}",
        )
    if signing_before.custody != signing_after.custody:
        if signing_after.custody == "kms-sign":
            found.narrows(
                "signing",
                "/identity/signing/custody",
                "the signing key now stays in KMS: each token is signed with KMS Sign",
            )
        else:
            found.widens(
                "signing",
                "/identity/signing/custody",
                "the signing key now leaves KMS, wrapped, and is held in the server's memory "
                f"(custody goes from {signing_before.custody} to {signing_after.custody})",
            )
    found.leftovers(
        "signing",
        ("identity", "signing"),
        signing_before,
        signing_after,
        handled={"algorithm", "custody"},
        what="the signing settings",
    )
    found.leftovers(
        "identity",
        ("identity",),
        before,
        after,
        handled={"name", "display_name", "issuer", "tokens", "signing"},
        what="the identity settings",
    )


def _compare_tenants(
    found: _Changes, before: Mapping[str, Tenant], after: Mapping[str, Tenant]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        sso = after[name].sso
        through = f", signing users in through {sso.issuer}" if sso is not None else ""
        found.widens("tenant", join_pointer("tenants", name), f"tenant {name} added{through}")
    for name in removed:
        found.narrows(
            "tenant",
            join_pointer("tenants", name),
            f"tenant {name} removed: its users lose all access through it",
        )

    for name, old, new in changed:
        if old.display_name != new.display_name:
            found.neutral(
                "tenant",
                join_pointer("tenants", name, "display_name"),
                f"the display name of tenant {name} changes",
            )
        _compare_sso(found, name, old.sso, new.sso)
        _compare_groups(found, name, old.groups, new.groups)
        found.leftovers(
            "tenant",
            ("tenants", name),
            old,
            new,
            handled={"display_name", "sso", "groups"},
            what=f"tenant {name}",
        )


def _compare_sso(found: _Changes, tenant: str, before: Sso | None, after: Sso | None) -> None:
    ident = join_pointer("tenants", tenant, "sso")
    if before == after:
        return
    if before is None:
        assert after is not None
        found.widens(
            "tenant.sso", ident, f"users of tenant {tenant} may now sign in through {after.issuer}"
        )
        return
    if after is None:
        found.narrows(
            "tenant.sso", ident, f"users of tenant {tenant} may no longer sign in through an IdP"
        )
        return

    if before.issuer != after.issuer:
        found.widens(
            "tenant.sso",
            join_pointer("tenants", tenant, "sso", "issuer"),
            f"tenant {tenant} now trusts the IdP at {after.issuer} instead of {before.issuer}",
        )
    if before.groups_claim != after.groups_claim:
        # Roles come from this claim: another claim may hold values users can set themselves.
        found.widens(
            "tenant.sso",
            join_pointer("tenants", tenant, "sso", "groups_claim"),
            f'tenant {tenant} now reads IdP groups from the "{after.groups_claim}" claim '
            f'instead of "{before.groups_claim}"',
        )
    if before.client_id != after.client_id:
        found.neutral(
            "tenant.sso",
            join_pointer("tenants", tenant, "sso", "client_id"),
            f"tenant {tenant} now signs in with IdP client {after.client_id} "
            f"instead of {before.client_id}",
        )
    if before.client_secret != after.client_secret:
        found.neutral(
            "tenant.sso",
            join_pointer("tenants", tenant, "sso", "client_secret"),
            f"the IdP client secret of tenant {tenant} is read from a different place",
        )
    found.members(
        "tenant.sso",
        join_pointer("tenants", tenant, "sso", "scopes"),
        before.scopes,
        after.scopes,
        gained=lambda scope: f"sign-in for tenant {tenant} now also asks the IdP for {scope}",
        lost=lambda scope: f"sign-in for tenant {tenant} no longer asks the IdP for {scope}",
        growing="neutral",
    )
    found.leftovers(
        "tenant.sso",
        ("tenants", tenant, "sso"),
        before,
        after,
        handled={"issuer", "groups_claim", "client_id", "client_secret", "scopes"},
        what=f"the sign-in settings of tenant {tenant}",
    )


def _compare_groups(
    found: _Changes,
    tenant: str,
    before: Mapping[str, Collection[str]],
    after: Mapping[str, Collection[str]],
) -> None:
    added, removed, changed = _entries(before, after)
    for group in added:
        ident = join_pointer("tenants", tenant, "groups", group)
        roles = set(after[group])
        summary = f'IdP group "{group}" of tenant {tenant} added'
        if roles:
            found.widens("tenant.group", ident, f"{summary}, mapping to {_named('role', roles)}")
        else:
            found.neutral("tenant.group", ident, f"{summary}, mapping to no role")
    for group in removed:
        ident = join_pointer("tenants", tenant, "groups", group)
        roles = set(before[group])
        summary = f'IdP group "{group}" of tenant {tenant} removed'
        if roles:
            found.narrows(
                "tenant.group", ident, f"{summary} (it mapped to {_named('role', roles)})"
            )
        else:
            found.neutral("tenant.group", ident, summary)
    for group, old, new in changed:
        _compare_group(found, tenant, group, old, new)


def _compare_group(
    found: _Changes, tenant: str, group: str, before: Collection[str], after: Collection[str]
) -> None:
    found.members(
        "tenant.group",
        join_pointer("tenants", tenant, "groups", group),
        before,
        after,
        gained=lambda role: f'IdP group "{group}" of tenant {tenant} now also maps to role {role}',
        lost=lambda role: f'IdP group "{group}" of tenant {tenant} no longer maps to role {role}',
    )


def _compare_roles(found: _Changes, before: Mapping[str, Role], after: Mapping[str, Role]) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        found.neutral("role", join_pointer("roles", name), f"role {name} added")
    for name in removed:
        found.neutral("role", join_pointer("roles", name), f"role {name} removed")
    for name, old, new in changed:
        if old.description != new.description:
            found.neutral(
                "role",
                join_pointer("roles", name, "description"),
                f"the description of role {name} changes",
            )
        found.leftovers(
            "role", ("roles", name), old, new, handled={"description"}, what=f"role {name}"
        )


def _compare_resources(
    found: _Changes, before: Mapping[str, Resource], after: Mapping[str, Resource]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        resource = after[name]
        found.neutral(
            "resource",
            join_pointer("resources", name),
            f"resource {name} ({resource.kind}, {resource.identifier}) added",
        )
    for name in removed:
        found.narrows(
            "resource",
            join_pointer("resources", name),
            f"resource {name} removed: no token for {before[name].identifier} can be issued",
        )

    for name, old, new in changed:
        if old.identifier != new.identifier:
            found.widens(
                "resource",
                join_pointer("resources", name, "identifier"),
                f"the identifier (token audience) of resource {name} goes from "
                f"{old.identifier} to {new.identifier}",
            )
        if old.kind != new.kind:
            found.neutral(
                "resource",
                join_pointer("resources", name, "kind"),
                f"resource {name} changes from {old.kind} to {new.kind}",
            )
        if old.description != new.description:
            found.neutral(
                "resource",
                join_pointer("resources", name, "description"),
                f"the description of resource {name} changes",
            )
        if old.signing_algorithm != new.signing_algorithm:
            algorithm = new.signing_algorithm or "the fleet's algorithm"
            found.neutral(
                "signing",
                join_pointer("resources", name, "signing_algorithm"),
                f"tokens for resource {name} are now signed with {algorithm}",
            )
        if old.introspection != new.introspection:
            pointer = join_pointer("resources", name, "introspection")
            if new.introspection:
                found.widens(
                    "resource",
                    pointer,
                    f"the server of resource {name} may introspect the tokens addressed to "
                    "it, with a client secret of its own",
                )
            else:
                found.narrows(
                    "resource",
                    pointer,
                    f"the server of resource {name} may no longer introspect: its client "
                    "secret stops working",
                )
        _compare_scopes(found, name, old.scopes, new.scopes)
        found.leftovers(
            "resource",
            ("resources", name),
            old,
            new,
            handled={
                "identifier",
                "kind",
                "description",
                "signing_algorithm",
                "introspection",
                "scopes",
            },
            what=f"resource {name}",
        )


def _compare_scopes(
    found: _Changes, resource: str, before: Mapping[str, Scope], after: Mapping[str, Scope]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        found.neutral(
            "scope",
            join_pointer("resources", resource, "scopes", name),
            f"resource {resource} gains scope {name}",
        )
    for name in removed:
        found.narrows(
            "scope",
            join_pointer("resources", resource, "scopes", name),
            f"scope {name} is removed from resource {resource}",
        )

    for name, old, new in changed:
        _compare_scope(found, resource, name, old, new)


def _compare_scope(found: _Changes, resource: str, name: str, old: Scope, new: Scope) -> None:
    parts = ("resources", resource, "scopes", name)
    found.members(
        "scope.roles",
        join_pointer(*parts, "roles"),
        old.roles,
        new.roles,
        gained=lambda role: f"role {role} may now hold {name} on {resource}",
        lost=lambda role: f"role {role} may no longer hold {name} on {resource}",
    )
    if old.requires_approval and not new.requires_approval:
        found.widens(
            "approval",
            join_pointer(*parts, "requires_approval"),
            f"{name} on {resource} no longer needs a person's approval",
        )
    if new.requires_approval and not old.requires_approval:
        found.narrows(
            "approval",
            join_pointer(*parts, "requires_approval"),
            f"{name} on {resource} now needs a person's approval for each grant",
        )
    found.lifetime(
        "lifetime",
        join_pointer(*parts, "max_lifetime"),
        f"the lifetime of tokens carrying {name} on {resource}",
        old.max_lifetime,
        new.max_lifetime,
    )
    if old.description != new.description:
        found.neutral(
            "scope",
            join_pointer(*parts, "description"),
            f"the description of {name} on {resource} changes",
        )
    found.leftovers(
        "scope",
        parts,
        old,
        new,
        handled={"roles", "requires_approval", "max_lifetime", "description"},
        what=f"{name} on {resource}",
    )


_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


def _compare_agents(
    found: _Changes, before: Mapping[str, Agent], after: Mapping[str, Agent]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        found.widens(
            "agent", join_pointer("agents", name), f"agent {name} ({after[name].runtime}) added"
        )
    for name in removed:
        found.narrows("agent", join_pointer("agents", name), f"agent {name} removed")

    for name, old, new in changed:
        _compare_agent(found, name, old, new)


def _compare_agent(found: _Changes, name: str, old: Agent, new: Agent) -> None:
    base = ("agents", name)
    for resource in sorted(old.scopes.keys() | new.scopes.keys()):
        _compare_agent_scopes(
            found, name, resource, old.scopes.get(resource, []), new.scopes.get(resource, [])
        )
    found.members(
        "agent.roles",
        join_pointer(*base, "roles"),
        old.roles,
        new.roles,
        gained=lambda role: f"agent {name}, acting as itself, now holds role {role}",
        lost=lambda role: f"agent {name}, acting as itself, no longer holds role {role}",
    )
    found.members(
        "agent.tenants",
        join_pointer(*base, "tenants"),
        old.tenants,
        new.tenants,
        gained=lambda tenant: f"agent {name} now serves users of tenant {tenant}",
        lost=lambda tenant: f"agent {name} no longer serves users of tenant {tenant}",
    )
    found.members(
        "agent.connections",
        join_pointer(*base, "connections"),
        old.connections,
        new.connections,
        gained=lambda connection: f"agent {name} may now use connection {connection}",
        lost=lambda connection: f"agent {name} may no longer use connection {connection}",
    )
    found.members(
        "redirect_uri",
        join_pointer(*base, "redirect_uris"),
        old.redirect_uris,
        new.redirect_uris,
        gained=lambda uri: f"redirect URI {uri} added to agent {name}",
        lost=lambda uri: f"redirect URI {uri} removed from agent {name}",
    )
    _compare_client_auth(found, name, old, new)

    if old.runtime != new.runtime:
        found.neutral(
            "agent",
            join_pointer(*base, "runtime"),
            f"agent {name} moves from runtime {old.runtime} to {new.runtime}",
        )
    if old.description != new.description:
        found.neutral(
            "agent",
            join_pointer(*base, "description"),
            f"the description of agent {name} changes",
        )
    found.members(
        "agent",
        join_pointer(*base, "tags"),
        old.tags,
        new.tags,
        gained=lambda tag: f"agent {name} gains tag {tag}",
        lost=lambda tag: f"agent {name} loses tag {tag}",
        growing="neutral",
    )
    if _meaning(old.agentcore) != _meaning(new.agentcore):
        found.neutral("agent", join_pointer(*base, "agentcore"), _agentcore_change(name, old, new))
    found.leftovers(
        "agent",
        base,
        old,
        new,
        handled={
            "scopes",
            "roles",
            "tenants",
            "connections",
            "redirect_uris",
            "token_endpoint_auth_method",
            "jwks",
            "runtime",
            "description",
            "tags",
            "agentcore",
        },
        what=f"agent {name}",
    )


def _compare_agent_scopes(
    found: _Changes, name: str, resource: str, before: Collection[str], after: Collection[str]
) -> None:
    found.members(
        "agent.scopes",
        join_pointer("agents", name, "scopes", resource),
        before,
        after,
        gained=lambda scope: f"agent {name} may now request {scope} on {resource}",
        lost=lambda scope: f"agent {name} may no longer request {scope} on {resource}",
    )


def _compare_client_auth(found: _Changes, name: str, old: Agent, new: Agent) -> None:
    ident = join_pointer("agents", name, "token_endpoint_auth_method")
    before, after = old.token_endpoint_auth_method, new.token_endpoint_auth_method
    if before != after:
        summary = f"agent {name} now authenticates with {after} instead of {before}"
        if before in _SECRET_METHODS and after not in _SECRET_METHODS:
            found.narrows("agent.auth", ident, f"{summary}: a private key instead of a secret")
        elif after in _SECRET_METHODS and before not in _SECRET_METHODS:
            found.widens("agent.auth", ident, f"{summary}: a shared secret instead of a key")
        else:
            found.neutral("agent.auth", ident, summary)

    old_keys, new_keys = _keys(old.jwks), _keys(new.jwks)
    ident = join_pointer("agents", name, "jwks")
    for key in sorted(new_keys.keys() - old_keys.keys()):
        found.widens("agent.auth", ident, f"{new_keys[key]} may now authenticate as agent {name}")
    for key in sorted(old_keys.keys() - new_keys.keys()):
        found.narrows(
            "agent.auth", ident, f"{old_keys[key]} may no longer authenticate as agent {name}"
        )


def _keys(jwks: Mapping[str, Any] | None) -> dict[str, str]:
    """The keys of a JWK Set, each by its canonical form, with words that name it."""
    if jwks is None:
        return {}
    keys = jwks.get("keys")
    if not isinstance(keys, list | tuple):
        return {}
    named: dict[str, str] = {}
    for key in keys:
        if not isinstance(key, Mapping):
            continue
        canonical = json.dumps(_thawed(key), sort_keys=True)
        kid = key.get("kid")
        named[canonical] = f"the key {kid}" if kid else f"a {key.get('kty', 'JWK')} key"
    return named


def _thawed(value: Any) -> Any:
    """Plain JSON values, order kept: a JWK's `x5c` chain is ordered."""
    if isinstance(value, Mapping):
        return {str(name): _thawed(child) for name, child in value.items()}
    if isinstance(value, list | tuple):
        return [_thawed(child) for child in value]
    return value


def _agentcore_change(name: str, old: Agent, new: Agent) -> str:
    if old.agentcore is None:
        return f"agent {name} now has AgentCore runtime settings"
    if new.agentcore is None:
        return f"agent {name} no longer has AgentCore runtime settings"
    before, after = _meaning(old.agentcore), _meaning(new.agentcore)
    parts = sorted(
        key for key in after.keys() | before.keys() if before.get(key) != after.get(key)
    )
    return f"the AgentCore settings of agent {name} change ({', '.join(parts)})"


def _compare_gateways(
    found: _Changes, before: Mapping[str, Gateway], after: Mapping[str, Gateway]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        agents = after[name].agents
        found.widens(
            "gateway",
            join_pointer("gateways", name),
            f"gateway {name} added, for {_named('agent', agents)}",
        )
    for name in removed:
        found.narrows("gateway", join_pointer("gateways", name), f"gateway {name} removed")

    for name, old, new in changed:
        _compare_gateway(found, name, old, new)


def _compare_gateway(found: _Changes, name: str, old: Gateway, new: Gateway) -> None:
    found.members(
        "gateway.agents",
        join_pointer("gateways", name, "agents"),
        old.agents,
        new.agents,
        gained=lambda agent: f"agent {agent} may now call gateway {name}",
        lost=lambda agent: f"agent {agent} may no longer call gateway {name}",
    )
    if old.description != new.description:
        found.neutral(
            "gateway",
            join_pointer("gateways", name, "description"),
            f"the description of gateway {name} changes",
        )
    _compare_targets(found, name, old.targets, new.targets)
    found.leftovers(
        "gateway",
        ("gateways", name),
        old,
        new,
        handled={"agents", "description", "targets"},
        what=f"gateway {name}",
    )


def _compare_targets(
    found: _Changes,
    gateway: str,
    before: Mapping[str, GatewayTarget],
    after: Mapping[str, GatewayTarget],
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        found.widens(
            "gateway.target",
            join_pointer("gateways", gateway, "targets", name),
            f"gateway {gateway} gains target {name} ({after[name].endpoint})",
        )
    for name in removed:
        found.narrows(
            "gateway.target",
            join_pointer("gateways", gateway, "targets", name),
            f"gateway {gateway} loses target {name}",
        )

    for name, old, new in changed:
        parts = ("gateways", gateway, "targets", name)
        if old.endpoint != new.endpoint:
            found.widens(
                "gateway.target",
                join_pointer(*parts, "endpoint"),
                f"target {name} of gateway {gateway} now sends calls to {new.endpoint} "
                f"instead of {old.endpoint}",
            )
        if old.resource != new.resource:
            ident = join_pointer(*parts, "resource")
            if new.resource is None:
                found.narrows(
                    "gateway.target",
                    ident,
                    f"target {name} of gateway {gateway} is no longer called with tokens for "
                    f"resource {old.resource}",
                )
            else:
                found.widens(
                    "gateway.target",
                    ident,
                    f"target {name} of gateway {gateway} is now called with tokens for "
                    f"resource {new.resource}",
                )
        if old.description != new.description:
            found.neutral(
                "gateway.target",
                join_pointer(*parts, "description"),
                f"the description of target {name} of gateway {gateway} changes",
            )
        found.leftovers(
            "gateway.target",
            parts,
            old,
            new,
            handled={"endpoint", "resource", "description"},
            what=f"target {name} of gateway {gateway}",
        )


_CONNECTION_KINDS: Final = {"oauth": "an OAuth connection", "api_key": "an API key"}


def _compare_connections(
    found: _Changes, before: Mapping[str, Connection], after: Mapping[str, Connection]
) -> None:
    added, removed, changed = _entries(before, after)
    for name in added:
        kind = _CONNECTION_KINDS.get(after[name].kind, after[name].kind)
        found.widens(
            "connection", join_pointer("connections", name), f"connection {name} ({kind}) added"
        )
    for name in removed:
        found.narrows(
            "connection",
            join_pointer("connections", name),
            f"connection {name} removed: no agent can fetch its credential",
        )

    for name, old, new in changed:
        base = ("connections", name)
        _compare_connection_users(found, name, old.allowed, new.allowed)
        if old.description != new.description:
            found.neutral(
                "connection",
                join_pointer(*base, "description"),
                f"the description of connection {name} changes",
            )
        if isinstance(old, OAuthConnection) and isinstance(new, OAuthConnection):
            _compare_oauth(found, name, old, new)
        elif isinstance(old, ApiKeyConnection) and isinstance(new, ApiKeyConnection):
            _compare_api_key(found, name, old, new)
        else:
            found.neutral(
                "connection",
                join_pointer(*base, "kind"),
                f"connection {name} changes from {_CONNECTION_KINDS.get(old.kind, old.kind)} "
                f"to {_CONNECTION_KINDS.get(new.kind, new.kind)}",
            )


def _compare_connection_users(
    found: _Changes, name: str, before: ConnectionUsers, after: ConnectionUsers
) -> None:
    base = ("connections", name, "allowed")
    found.limit(
        "connection.allowed",
        join_pointer(*base, "agents"),
        before.agents,
        after.agents,
        phrase=_Limit(
            gained=lambda agent: f"connection {name} may now be used by agent {agent}",
            lost=lambda agent: f"connection {name} may no longer be used by agent {agent}",
            opened=lambda was: (
                f"connection {name} may now be used by any agent listing it "
                f"(it was limited to {was})"
            ),
            limited=lambda now: (
                f"connection {name} may now be used only by agents {now} "
                "(any agent listing it could)"
            ),
        ),
    )
    found.limit(
        "connection.allowed",
        join_pointer(*base, "roles"),
        before.roles,
        after.roles,
        phrase=_Limit(
            gained=lambda role: f"connection {name} may now be used for role {role}",
            lost=lambda role: f"connection {name} may no longer be used for role {role}",
            opened=lambda was: (
                f"connection {name} may now be used for any role (it was limited to {was})"
            ),
            limited=lambda now: (
                f"connection {name} may now be used only for roles {now} (any role could)"
            ),
        ),
    )
    found.limit(
        "connection.allowed",
        join_pointer(*base, "tenants"),
        before.tenants,
        after.tenants,
        phrase=_Limit(
            gained=lambda tenant: f"connection {name} may now be used for tenant {tenant}",
            lost=lambda tenant: f"connection {name} may no longer be used for tenant {tenant}",
            opened=lambda was: (
                f"connection {name} may now be used for any tenant (it was limited to {was})"
            ),
            limited=lambda now: (
                f"connection {name} may now be used only for tenants {now} (any tenant could)"
            ),
        ),
    )
    found.leftovers(
        "connection.allowed",
        base,
        before,
        after,
        handled={"agents", "roles", "tenants"},
        what=f"the users of connection {name}",
    )


def _compare_oauth(found: _Changes, name: str, old: OAuthConnection, new: OAuthConnection) -> None:
    base = ("connections", name)
    found.members(
        "connection.scopes",
        join_pointer(*base, "scopes"),
        old.scopes,
        new.scopes,
        gained=lambda scope: f"connection {name} now asks the provider for {scope}",
        lost=lambda scope: f"connection {name} no longer asks the provider for {scope}",
    )
    if old.pkce and not new.pkce:
        found.widens("connection", join_pointer(*base, "pkce"), f"connection {name} drops PKCE")
    if new.pkce and not old.pkce:
        found.narrows(
            "connection", join_pointer(*base, "pkce"), f"connection {name} now uses PKCE"
        )
    if old.provider != new.provider:
        before, after = _meaning(old.provider), _meaning(new.provider)
        parts = sorted(key for key in before.keys() | after.keys() if before[key] != after[key])
        found.neutral(
            "connection",
            join_pointer(*base, "provider"),
            f"the provider endpoints of connection {name} change ({', '.join(parts)})",
        )
    if old.client_id != new.client_id:
        found.neutral(
            "connection",
            join_pointer(*base, "client_id"),
            f"connection {name} now uses client {new.client_id} instead of {old.client_id}",
        )
    if old.client_secret != new.client_secret:
        found.neutral(
            "connection",
            join_pointer(*base, "client_secret"),
            f"the client secret of connection {name} is read from a different place",
        )
    found.leftovers(
        "connection",
        base,
        old,
        new,
        handled={
            "kind",
            "description",
            "allowed",
            "scopes",
            "pkce",
            "provider",
            "client_id",
            "client_secret",
        },
        what=f"connection {name}",
    )


def _compare_api_key(
    found: _Changes, name: str, old: ApiKeyConnection, new: ApiKeyConnection
) -> None:
    base = ("connections", name)
    if (old.header, old.prefix) != (new.header, new.prefix):
        found.neutral(
            "connection",
            join_pointer(*base, "header"),
            f"connection {name} now sends its key in {new.header}"
            f"{f' after {new.prefix!r}' if new.prefix else ''}",
        )
    if old.key != new.key:
        found.neutral(
            "connection",
            join_pointer(*base, "key"),
            f"the key of connection {name} is read from a different place",
        )
    found.leftovers(
        "connection",
        base,
        old,
        new,
        handled={"kind", "description", "allowed", "header", "prefix", "key"},
        what=f"connection {name}",
    )


def _compare_registration(found: _Changes, before: Registration, after: Registration) -> None:
    if before == after:
        return

    openings = (
        ("client_id_metadata_documents", "clients identified by a Client ID Metadata Document"),
        ("dynamic_client_registration", "dynamic client registration (RFC 7591)"),
    )
    for field_name, what in openings:
        was, now = getattr(before, field_name), getattr(after, field_name)
        ident = join_pointer("registration", field_name)
        if now and not was:
            found.widens("registration", ident, f"{what} now accepted")
        if was and not now:
            found.narrows("registration", ident, f"{what} no longer accepted")

    for resource in sorted(before.resources.keys() | after.resources.keys()):
        _compare_registration_scopes(
            found, resource, before.resources.get(resource, []), after.resources.get(resource, [])
        )
    found.limit(
        "registration",
        "/registration/tenants",
        before.tenants,
        after.tenants,
        phrase=_Limit(
            gained=lambda tenant: f"users of tenant {tenant} may now use self-registered clients",
            lost=lambda tenant: (
                f"users of tenant {tenant} may no longer use self-registered clients"
            ),
            opened=lambda was: (
                "users of any tenant may now use self-registered clients "
                f"(it was limited to {was})"
            ),
            limited=lambda now: (
                f"only users of tenants {now} may now use self-registered "
                "clients (any tenant could)"
            ),
        ),
    )
    found.lifetime(
        "lifetime",
        "/registration/max_lifetime",
        "the lifetime of tokens for self-registered clients",
        before.max_lifetime,
        after.max_lifetime,
    )
    found.leftovers(
        "registration",
        ("registration",),
        before,
        after,
        handled={
            "client_id_metadata_documents",
            "dynamic_client_registration",
            "resources",
            "tenants",
            "max_lifetime",
        },
        what="the registration policy",
    )


def _compare_registration_scopes(
    found: _Changes, resource: str, before: Collection[str], after: Collection[str]
) -> None:
    found.members(
        "registration",
        join_pointer("registration", "resources", resource),
        before,
        after,
        gained=lambda scope: f"self-registered clients may now request {scope} on {resource}",
        lost=lambda scope: f"self-registered clients may no longer request {scope} on {resource}",
    )


def _compare_dev_users(
    found: _Changes, before: Mapping[str, DevUser], after: Mapping[str, DevUser]
) -> None:
    # Dev users exist only in `fleetid serve`; a reviewer still sees them, as neutral.
    added, removed, changed = _entries(before, after)
    for name in added:
        user = after[name]
        found.neutral(
            "dev_user",
            join_pointer("dev_users", name),
            f"dev user {name} added, in tenant {user.tenant}, for fleetid serve",
        )
    for name in removed:
        found.neutral("dev_user", join_pointer("dev_users", name), f"dev user {name} removed")
    for name, old, new in changed:
        was, now = _meaning(old), _meaning(new)
        parts = sorted(key for key in was.keys() | now.keys() if was.get(key) != now.get(key))
        if parts:
            found.neutral(
                "dev_user",
                join_pointer("dev_users", name),
                f"dev user {name} changes ({', '.join(parts)}), for fleetid serve",
            )


# -- Policy rules ----------------------------------------------------------------------


def _rules_by_id(revision: Revision) -> dict[str, PolicyRule]:
    return {rule.id: rule for policy in revision.policies.values() for rule in policy.rules}


def _rule_words(rule: PolicyRule) -> str:
    if isinstance(rule, LifetimeRule):
        return f"cap lifetime at {format_seconds(rule.max_lifetime)}"
    if rule.effect == "require_approval":
        return "require approval"
    return rule.effect


def _compare_rules(
    found: _Changes, before: Mapping[str, PolicyRule], after: Mapping[str, PolicyRule]
) -> None:
    added, removed, changed = _entries(before, after)
    # A rule whose effect changes is a different rule under the same id: the old one is
    # lifted (widens) and the new one imposed (narrows), each shown for what it does.
    rewritten = [name for name, old, new in changed if old.effect != new.effect]
    for name in [*added, *rewritten]:
        rule = after[name]
        found.narrows(
            "policy.rule",
            name,
            f"policy rule {name} ({_rule_words(rule)}) added: {_brief(rule.description)}",
        )
    for name in [*removed, *rewritten]:
        rule = before[name]
        found.widens(
            "policy.rule",
            name,
            f"policy rule {name} ({_rule_words(rule)}) removed: {_brief(rule.description)}",
        )

    for name, old, new in changed:
        if old.effect != new.effect:
            continue
        if old.description != new.description:
            found.neutral("policy.rule", name, f"the description of policy rule {name} changes")
        if isinstance(old, LifetimeRule) and isinstance(new, LifetimeRule):
            found.lifetime(
                "policy.rule",
                name,
                f"the lifetime cap of policy rule {name}",
                old.max_lifetime,
                new.max_lifetime,
            )
        _compare_match(found, name, old.match, new.match)
        found.leftovers(
            "policy.rule",
            (),
            old,
            new,
            handled={"id", "effect", "description", "max_lifetime", "match"},
            what=f"policy rule {name}",
            ident=name,
        )


# Per selector: how to name one item, several items, and anything at all.
_SELECTORS: Final = (
    ("resources", "resource", "resources", "resource"),
    ("scopes", "scopes matching", "scopes matching", "scope"),
    ("agents", "agents matching", "agents matching", "agent"),
    ("tenants", "tenant", "tenants", "tenant"),
    ("roles", "subjects holding role", "subjects holding roles", "subject"),
)
_SUBJECTS: Final = {
    "any": frozenset({"user", "machine"}),
    "user": frozenset({"user"}),
    "machine": frozenset({"machine"}),
}
_SUBJECT_WORDS: Final = {
    "user": "tokens for a user",
    "machine": "agents acting as themselves",
}


def _compare_match(found: _Changes, rule: str, before: PolicyMatch, after: PolicyMatch) -> None:
    # Policies only restrict: a rule that matches more requests narrows access, one that
    # matches fewer widens it, whatever its effect.
    for field_name, one, many, anything in _SELECTORS:
        found.limit(
            "policy.rule",
            rule,
            getattr(before, field_name),
            getattr(after, field_name),
            phrase=_selector_phrases(rule, one, many, anything),
            growing="narrows",
        )
    found.members(
        "policy.rule",
        rule,
        _SUBJECTS[before.subject],
        _SUBJECTS[after.subject],
        gained=lambda subject: f"policy rule {rule} now also applies to {_SUBJECT_WORDS[subject]}",
        lost=lambda subject: f"policy rule {rule} no longer applies to {_SUBJECT_WORDS[subject]}",
        growing="narrows",
    )
    found.leftovers(
        "policy.rule",
        (),
        before,
        after,
        handled={"resources", "scopes", "agents", "tenants", "roles", "subject"},
        what=f"the match of policy rule {rule}",
        ident=rule,
    )


def _selector_phrases(rule: str, one: str, many: str, anything: str) -> _Limit:
    return _Limit(
        gained=lambda item: f"policy rule {rule} now also applies to {one} {item}",
        lost=lambda item: f"policy rule {rule} no longer applies to {one} {item}",
        opened=lambda was: (
            f"policy rule {rule} now applies to any {anything} (it applied only to {many} {was})"
        ),
        limited=lambda now: (
            f"policy rule {rule} now applies only to {many} {now} (it applied to any {anything})"
        ),
    )


# -- Rendering -------------------------------------------------------------------------


def verdict(diff: FleetDiff) -> str:
    """One sentence: how many changes widen access and how many narrow it."""
    widened, narrowed = diff.ways_widened, diff.ways_narrowed
    if not widened and not narrowed:
        return "No change to access."
    if widened and narrowed:
        return f"Widens access in {_ways(widened)}, narrows it in {_ways(narrowed)}."
    if widened:
        return f"Widens access in {_ways(widened)}."
    return f"Narrows access in {_ways(narrowed)}."


def _ways(count: int) -> str:
    return f"{count:,} way{'s' if count != 1 else ''}"


class _Row(NamedTuple):
    """Access entries of one agent, resource and scope that share their roles."""

    agent: str
    resource: str
    scope: str
    roles: tuple[str, ...]
    tenants: tuple[str, ...]
    itself: bool


def _rows(entries: Sequence[AccessTuple]) -> list[_Row]:
    """Entries grouped by agent, resource and scope, and within those, tenants that get the
    same roles put together, so ten thousand entries read as a few hundred rows."""
    by_scope: dict[tuple[str, str, str], dict[str | None, set[str]]] = {}
    for entry in entries:
        roles_by_tenant = by_scope.setdefault((entry.agent, entry.resource, entry.scope), {})
        roles_by_tenant.setdefault(entry.tenant, set()).add(entry.role)

    rows: list[_Row] = []
    for (agent, resource, scope), roles_by_tenant in by_scope.items():
        itself = roles_by_tenant.pop(None, None)
        if itself:
            rows.append(_Row(agent, resource, scope, tuple(sorted(itself)), (), True))
        tenants_by_roles: dict[tuple[str, ...], list[str]] = {}
        for tenant, held in roles_by_tenant.items():
            assert tenant is not None
            tenants_by_roles.setdefault(tuple(sorted(held)), []).append(tenant)
        for roles, tenants in tenants_by_roles.items():
            rows.append(_Row(agent, resource, scope, roles, tuple(sorted(tenants)), False))

    rows.sort(key=lambda row: (row.agent, row.resource, row.scope, not row.itself, row.roles))
    return rows


def _who(row: _Row) -> str:
    roles = _named("role", row.roles)
    if row.itself:
        return f"as itself, by {roles}"
    return f"for users of {_named('tenant', row.tenants)}, by {roles}"


def render_text(diff: FleetDiff) -> str:
    """The diff for a terminal."""
    lines = [f"fleet diff {diff.base[:12]} -> {diff.head[:12]}", verdict(diff)]
    if diff.unchanged:
        lines.append("No other change.")
        return "\n".join(lines) + "\n"

    sections = (
        ("Widens access", "+", diff.widening, "access added", diff.added),
        ("Narrows access", "-", diff.narrowing, "access removed", diff.removed),
    )
    for title, mark, changes, label, entries in sections:
        if not (changes or entries):
            continue
        lines.extend(["", f"{title}:"])
        lines.extend(f"  {mark} {change.summary}" for change in changes)
        if entries:
            lines.append(f"  {label} ({_count(len(entries), 'grant')}):")
            lines.extend(
                f"    {mark} {row.agent} -> {row.resource} {row.scope}, {_who(row)}"
                for row in _rows(entries)
            )
    if diff.neutral:
        lines.extend(["", "Other changes:"])
        lines.extend(f"  * {change.summary}" for change in diff.neutral)

    return "\n".join(lines) + "\n"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'s' if number != 1 else ''}"


def _md(text: str) -> str:
    """Plain text made inert in Markdown: fleet names and descriptions may hold markup."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def render_markdown(diff: FleetDiff) -> str:
    """The diff as a pull-request comment: the verdict, widenings first, compact tables."""
    lines = [
        f"**{verdict(diff)}**",
        "",
        f"Fleet revision `{diff.base[:12]}` → `{diff.head[:12]}`.",
    ]
    if diff.unchanged:
        lines.extend(["", "No other change."])
        return "\n".join(lines) + "\n"

    sections = (
        ("Widens access", diff.widening, "Access added", diff.added),
        ("Narrows access", diff.narrowing, "Access removed", diff.removed),
        ("Other changes", diff.neutral, "", ()),
    )
    for title, changes, label, entries in sections:
        if not (changes or entries):
            continue
        lines.extend(["", f"### {title}", ""])
        lines.extend(_md_list(changes))
        if entries:
            if changes:
                lines.append("")
            lines.extend(_md_table(label, entries))

    text = "\n".join(lines) + "\n"
    if len(text) > MARKDOWN_MAX_CHARS:
        cut = text.rfind("\n", 0, MARKDOWN_MAX_CHARS - 200)
        text = text[:cut] + "\n\n_… cut short; run `fleetid diff` for the whole diff._\n"
    return text


def _md_list(changes: Sequence[Change]) -> list[str]:
    lines = [f"- {_md(change.summary)}" for change in changes[:MARKDOWN_LIST_ITEMS]]
    if len(changes) > MARKDOWN_LIST_ITEMS:
        lines.append(f"- _… and {len(changes) - MARKDOWN_LIST_ITEMS:,} more_")
    return lines


def _md_table(label: str, entries: Sequence[AccessTuple]) -> list[str]:
    rows = _rows(entries)
    lines = [
        f"{label}: {_count(len(entries), 'grant')}, in {_count(len(rows), 'row')}.",
        "",
        "| Agent | Resource | Scope | Roles | Tenants |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows[:MARKDOWN_TABLE_ROWS]:
        tenants = "_the agent itself_" if row.itself else _md(", ".join(row.tenants))
        cells = (_md(row.agent), _md(row.resource), _md(row.scope), _md(", ".join(row.roles)))
        lines.append(f"| {' | '.join(cells)} | {tenants} |")
    if len(rows) > MARKDOWN_TABLE_ROWS:
        lines.extend(["", f"_… and {len(rows) - MARKDOWN_TABLE_ROWS:,} more rows_"])
    return lines


def diff_json(diff: FleetDiff) -> dict[str, Any]:
    """The diff in the stable JSON form described in this module's documentation."""
    return {
        "revision": {"base": diff.base, "head": diff.head},
        "access": {
            "added": [entry._asdict() for entry in diff.added],
            "removed": [entry._asdict() for entry in diff.removed],
        },
        "changes": [
            {
                "kind": change.kind,
                "id": change.id,
                "effect": change.effect,
                "summary": change.summary,
            }
            for change in diff.changes
        ],
    }
