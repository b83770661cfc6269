"""Checks that need the whole fleet: every name refers to something that exists, nothing
clashes, and nothing is written that would widen access by accident.

Each check yields `(pointer, message)` pairs; the loader turns them into positioned
problems. All checks run, so one `fleetid validate` reports everything at once.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from fleetid.fleet.model import Fleet, OAuthConnection, PolicyFile
from fleetid.fleet.source import join_pointer

__all__ = ["Known", "check_fleet", "check_policies", "connection_urn", "is_absolute_url"]

Finding = tuple[str, str]

_SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "API_KEY", "APIKEY", "PRIVATE_KEY", "CREDENTIAL")
_SECRET_WORD = re.compile("|".join(_SECRET_WORDS))
_GLOB = frozenset("*?[")


def connection_urn(name: str) -> str:
    """The `resource` an agent names to fetch a connection's credential."""
    return f"urn:fleetid:connection:{name}"


def is_absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and not parts.fragment and " " not in value


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normal_url(value: str) -> str:
    parts = urlsplit(value)
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}?{parts.query}"


# Stands for every name of a section that could not be read as a mapping at all.
ANY_NAME = "*"


class _AnyName(set[str]):
    """A section whose names could not be read: every name counts as known."""

    def __contains__(self, name: object) -> bool:
        return True


def _names(names: Iterable[str]) -> set[str]:
    known = set(names)
    return _AnyName(known) if ANY_NAME in known else known


class Known:
    """The names each section of a fleet defines, counting entries that failed the schema
    (they exist, they are just wrong), so that one bad entry does not also make every
    reference to it an error."""

    def __init__(self, fleet: Fleet, broken: Mapping[str, Iterable[str]] | None = None) -> None:
        broken = broken or {}
        self.tenants = _names([*fleet.tenants, *broken.get("tenants", ())])
        self.roles = _names([*fleet.roles, *broken.get("roles", ())])
        self.resources = _names([*fleet.resources, *broken.get("resources", ())])
        self.agents = _names([*fleet.agents, *broken.get("agents", ())])
        self.connections = _names([*fleet.connections, *broken.get("connections", ())])
        self.broken_resources = bool(set(broken.get("resources", ())))


# The two checks below run for every list of every entry: lists rather than generators,
# and a set operation first, so that a list with nothing wrong costs next to nothing.


def _unknown(
    names: Sequence[str], known: set[str], what: str, pointer: Sequence[str | int]
) -> list[Finding]:
    # Only a shortcut: a section that could not be read knows every name, but through `in`.
    if known.issuperset(names):
        return []
    return [
        (join_pointer(*pointer, index), f"unknown {what} {name!r}")
        for index, name in enumerate(names)
        if name not in known
    ]


def _duplicates(values: Sequence[str], what: str, pointer: Sequence[str | int]) -> list[Finding]:
    if len(set(values)) == len(values):
        return []
    found: list[Finding] = []
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            found.append((join_pointer(*pointer, index), f"{what} {value!r} is listed twice"))
        seen.add(value)
    return found


def check_fleet(fleet: Fleet, known: Known | None = None) -> Iterator[Finding]:
    """Every cross-reference problem; `known` adds the names of entries that failed the
    schema and were left out of `fleet`."""
    known = known or Known(fleet)
    yield from _check_identity(fleet)
    yield from _check_tenants(fleet, known)
    yield from _check_resources(fleet, known)
    yield from _check_agents(fleet, known)
    yield from _check_gateways(fleet, known)
    yield from _check_connections(fleet, known)
    yield from _check_registration(fleet, known)
    yield from _check_dev_users(fleet, known)
    yield from _check_clashes(fleet)


def _check_identity(fleet: Fleet) -> Iterator[Finding]:
    issuer = fleet.identity.issuer
    if issuer is not None:
        parts = urlsplit(issuer)
        if not is_absolute_url(issuer) or parts.query:
            yield (
                "/identity/issuer",
                "the issuer must be an absolute URL with no query or fragment",
            )
        elif parts.scheme != "https" and not _is_loopback(parts.hostname):
            yield "/identity/issuer", "the issuer must use https"


def _check_tenants(fleet: Fleet, known: Known) -> Iterator[Finding]:
    for name, tenant in fleet.tenants.items():
        for group, roles in tenant.groups.items():
            pointer = ("tenants", name, "groups", group)
            yield from _unknown(roles, known.roles, "role", pointer)
        if tenant.sso is not None and not _is_https(tenant.sso.issuer):
            yield (
                join_pointer("tenants", name, "sso", "issuer"),
                "the SSO issuer must be an https URL",
            )


def _is_https(value: str) -> bool:
    parts = urlsplit(value)
    return is_absolute_url(value) and (parts.scheme == "https" or _is_loopback(parts.hostname))


def _check_resources(fleet: Fleet, known: Known) -> Iterator[Finding]:
    for name, resource in fleet.resources.items():
        if not is_absolute_url(resource.identifier):
            yield (
                join_pointer("resources", name, "identifier"),
                "the identifier must be an absolute URL without a fragment (RFC 8707)",
            )
        for scope_name, scope in resource.scopes.items():
            pointer = ("resources", name, "scopes", scope_name, "roles")
            yield from _unknown(scope.roles, known.roles, "role", pointer)
            yield from _duplicates(scope.roles, "role", pointer)


def _check_agents(fleet: Fleet, known: Known) -> Iterator[Finding]:
    for name, agent in fleet.agents.items():
        base = ("agents", name)
        for resource_name, scopes in agent.scopes.items():
            resource = fleet.resources.get(resource_name)
            if resource is None:
                if resource_name not in known.resources:
                    yield (
                        join_pointer(*base, "scopes", resource_name),
                        (f"unknown resource {resource_name!r}"),
                    )
                continue
            for index, scope in enumerate(scopes):
                if scope not in resource.scopes:
                    yield (
                        join_pointer(*base, "scopes", resource_name, index),
                        (f"resource {resource_name!r} defines no scope {scope!r}"),
                    )
            yield from _duplicates(scopes, "scope", (*base, "scopes", resource_name))
        yield from _unknown(
            agent.connections, known.connections, "connection", (*base, "connections")
        )
        yield from _unknown(agent.roles, known.roles, "role", (*base, "roles"))
        yield from _unknown(agent.tenants, known.tenants, "tenant", (*base, "tenants"))
        for index, uri in enumerate(agent.redirect_uris):
            problem = _redirect_uri_problem(uri)
            if problem is not None:
                yield join_pointer(*base, "redirect_uris", index), problem
        yield from _duplicates(agent.redirect_uris, "redirect URI", (*base, "redirect_uris"))
        if agent.redirect_uris and not agent.tenants:
            yield (
                join_pointer(*base, "redirect_uris"),
                ("the agent has redirect URIs but serves no tenant, so no one could sign in"),
            )
        if agent.token_endpoint_auth_method == "private_key_jwt" and agent.jwks is None:
            yield join_pointer(*base), "private_key_jwt needs `jwks`, the agent's public keys"
        if agent.jwks is not None:
            yield from _check_jwks(agent.jwks, (*base, "jwks"))
        if agent.agentcore is not None or agent.runtime == "agentcore":
            yield from _check_agentcore(name, fleet)


_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _check_jwks(jwks: Mapping[str, object], pointer: tuple[str, ...]) -> Iterator[Finding]:
    keys = jwks.get("keys")
    if not isinstance(keys, list | tuple) or not keys:
        yield join_pointer(*pointer), "a JWK Set has a non-empty `keys` list"
        return
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping) or key.get("kty") not in {"RSA", "EC"}:
            yield join_pointer(*pointer, "keys", index), "each key is an RSA or EC public JWK"
        elif _PRIVATE_JWK_MEMBERS.intersection(key):
            # Not echoed: these members are the private key.
            yield (
                join_pointer(*pointer, "keys", index),
                ("this key includes private key material; only public keys belong here"),
            )


def _check_agentcore(name: str, fleet: Fleet) -> Iterator[Finding]:
    agent = fleet.agents[name]
    if agent.runtime == "agentcore" and agent.agentcore is None:
        yield join_pointer("agents", name), "an agentcore agent needs `agentcore` settings"
    if agent.runtime != "agentcore" and agent.agentcore is not None:
        yield (
            join_pointer("agents", name, "agentcore"),
            (f"`agentcore` settings are for agentcore agents; this one runs on {agent.runtime}"),
        )
    if agent.agentcore is None:
        return
    for variable in agent.agentcore.environment:
        if _SECRET_WORD.search(variable.upper()):
            # The value is not echoed: it may be the very secret that should not be here.
            yield (
                join_pointer("agents", name, "agentcore", "environment", variable),
                (
                    f"{variable} looks like a secret; environment values are plain text, so give "
                    "the agent a connection instead"
                ),
            )


# The common cases, an https URL with a host or an http one on loopback, with no fragment,
# without parsing them.
_PLAIN_HTTPS = re.compile(r"^https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[^#\s]*)?$")
_PLAIN_LOOPBACK = re.compile(r"^http://(?:127\.0\.0\.1|localhost)(?::[0-9]{1,5})?(?:/[^#\s]*)?$")


def _redirect_uri_problem(uri: str) -> str | None:
    if _PLAIN_HTTPS.match(uri) or _PLAIN_LOOPBACK.match(uri):
        return None
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return "a redirect URI must be an absolute URL"
    if parts.fragment:
        return "a redirect URI must not have a fragment"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return None
    return "a redirect URI must use https (http is allowed only on loopback)"


def _check_gateways(fleet: Fleet, known: Known) -> Iterator[Finding]:
    for name, gateway in fleet.gateways.items():
        base = ("gateways", name)
        yield from _unknown(gateway.agents, known.agents, "agent", (*base, "agents"))
        yield from _duplicates(gateway.agents, "agent", (*base, "agents"))
        for target_name, target in gateway.targets.items():
            pointer = (*base, "targets", target_name)
            if target.resource is not None and target.resource not in known.resources:
                yield join_pointer(*pointer, "resource"), f"unknown resource {target.resource!r}"
            if not _is_https(target.endpoint):
                yield join_pointer(*pointer, "endpoint"), "a target endpoint must be an https URL"


def _check_connections(fleet: Fleet, known: Known) -> Iterator[Finding]:
    listed_by: dict[str, list[str]] = {}
    for agent_name, agent in fleet.agents.items():
        for listed in agent.connections:
            listed_by.setdefault(listed, []).append(agent_name)

    for name, connection in fleet.connections.items():
        base = ("connections", name)
        allowed = connection.allowed
        if allowed.agents is not None:
            yield from _unknown(
                allowed.agents, known.agents, "agent", (*base, "allowed", "agents")
            )
            for agent_name in listed_by.get(name, []):
                if agent_name not in allowed.agents:
                    yield (
                        join_pointer(*base, "allowed", "agents"),
                        (
                            f"agent {agent_name!r} lists this connection but is not among its "
                            "allowed agents"
                        ),
                    )
        if allowed.roles is not None:
            yield from _unknown(allowed.roles, known.roles, "role", (*base, "allowed", "roles"))
        if allowed.tenants is not None:
            yield from _unknown(
                allowed.tenants, known.tenants, "tenant", (*base, "allowed", "tenants")
            )
        if isinstance(connection, OAuthConnection):
            provider = connection.provider
            for field_name in (
                "discovery_url",
                "authorization_endpoint",
                "token_endpoint",
                "revocation_endpoint",
            ):
                url = getattr(provider, field_name)
                if url is not None and not _is_https(url):
                    yield (
                        join_pointer(*base, "provider", field_name),
                        ("provider endpoints must be https URLs (http only on loopback)"),
                    )


def _check_registration(fleet: Fleet, known: Known) -> Iterator[Finding]:
    registration = fleet.registration
    for resource_name, scopes in registration.resources.items():
        resource = fleet.resources.get(resource_name)
        if resource is None:
            if resource_name not in known.resources:
                yield (
                    join_pointer("registration", "resources", resource_name),
                    (f"unknown resource {resource_name!r}"),
                )
            continue
        for index, scope in enumerate(scopes):
            if scope not in resource.scopes:
                yield (
                    join_pointer("registration", "resources", resource_name, index),
                    (f"resource {resource_name!r} defines no scope {scope!r}"),
                )
    if registration.tenants is not None:
        yield from _unknown(
            registration.tenants, known.tenants, "tenant", ("registration", "tenants")
        )


def _check_dev_users(fleet: Fleet, known: Known) -> Iterator[Finding]:
    for name, user in fleet.dev_users.items():
        if user.tenant not in known.tenants:
            yield join_pointer("dev_users", name, "tenant"), f"unknown tenant {user.tenant!r}"


def _check_clashes(fleet: Fleet) -> Iterator[Finding]:
    # Two resources with one identifier would share an audience: a token for one would be
    # accepted by the other.
    audiences: dict[str, str] = {}
    for name, resource in fleet.resources.items():
        key = _normal_url(resource.identifier)
        if key in audiences:
            yield (
                join_pointer("resources", name, "identifier"),
                (f"the identifier is already used by resource {audiences[key]!r}"),
            )
        else:
            audiences[key] = name
    issuer = fleet.identity.issuer
    if issuer is not None and _normal_url(issuer) in audiences:
        yield (
            "/identity/issuer",
            (f"the issuer is also the identifier of resource {audiences[_normal_url(issuer)]!r}"),
        )

    # Agents and gateways both become named clients and AWS resources.
    for name in fleet.gateways:
        if name in fleet.agents:
            yield join_pointer("gateways", name), f"{name!r} is also the name of an agent"
    # A resource server that introspects authenticates with its name as its client id.
    for name, resource in fleet.resources.items():
        if resource.introspection and name in fleet.agents:
            yield (
                join_pointer("resources", name, "introspection"),
                f"{name!r} is also the name of an agent, whose client id it would share",
            )
    for name in fleet.connections:
        if name in fleet.resources:
            yield join_pointer("connections", name), f"{name!r} is also the name of a resource"

    # A client's redirect URI that another client also registered would let either
    # receive the other's authorization codes.
    owners: dict[str, str] = {}
    for name, agent in fleet.agents.items():
        for index, uri in enumerate(agent.redirect_uris):
            owner = owners.setdefault(uri, name)
            if owner != name:
                yield (
                    join_pointer("agents", name, "redirect_uris", index),
                    (f"agent {owner!r} already uses this redirect URI"),
                )


def check_policies(
    fleet: Fleet, policies: Mapping[str, PolicyFile], known: Known | None = None
) -> Iterator[tuple[str, Finding]]:
    """Problems in policy files, each with the file it is in."""
    known = known or Known(fleet)
    seen: dict[str, str] = {}
    every_scope = {scope for resource in fleet.resources.values() for scope in resource.scopes}
    for file_name, policy in policies.items():
        for index, rule in enumerate(policy.rules):
            base = ("rules", index)
            if rule.id in seen:
                yield (
                    file_name,
                    (
                        join_pointer(*base, "id"),
                        f"rule id {rule.id!r} is already used in {seen[rule.id]}",
                    ),
                )
            else:
                seen[rule.id] = file_name
            match = rule.match
            if match.resources is not None:
                for found in _unknown(
                    match.resources, known.resources, "resource", (*base, "match", "resources")
                ):
                    yield file_name, found
            if match.tenants is not None:
                for found in _unknown(
                    match.tenants, known.tenants, "tenant", (*base, "match", "tenants")
                ):
                    yield file_name, found
            if match.roles is not None:
                for found in _unknown(match.roles, known.roles, "role", (*base, "match", "roles")):
                    yield file_name, found
            if match.agents is not None:
                for position, pattern in enumerate(match.agents):
                    if not _GLOB.intersection(pattern) and pattern not in known.agents:
                        yield (
                            file_name,
                            (
                                join_pointer(*base, "match", "agents", position),
                                f"unknown agent {pattern!r}",
                            ),
                        )
            # Scopes of resources that failed the schema (or do not exist) are unknown; a
            # pattern that may be meant for them cannot be judged.
            if match.resources is None:
                partly_broken = known.broken_resources
            else:
                partly_broken = any(name not in fleet.resources for name in match.resources)
            if match.scopes is not None and not partly_broken:
                scopes = every_scope
                if match.resources is not None:
                    scopes = {
                        scope
                        for resource_name in match.resources
                        if resource_name in fleet.resources
                        for scope in fleet.resources[resource_name].scopes
                    }
                for position, pattern in enumerate(match.scopes):
                    if not any(fnmatch.fnmatchcase(scope, pattern) for scope in scopes):
                        yield (
                            file_name,
                            (
                                join_pointer(*base, "match", "scopes", position),
                                f"{pattern!r} matches no scope of the resources this rule covers",
                            ),
                        )
