"""Loading a fleet: every problem at once, each as `file:line:col: error: message (at /ptr)`
at the line and column it concerns; the cross-reference checks; secrets never echoed."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetid.fleet.load import (
    FleetInvalid,
    FleetSources,
    LoadedFleet,
    load,
    paused_gc,
    read_sources,
)
from fleetid.fleet.source import Problem

MakeSources = Callable[..., FleetSources]

BASE = """\
version: 1
identity:
  name: test-fleet
  tokens:
    access_token: 15m
tenants:
  acme:
    groups:
      Sales: [sales]
      Managers: [sales, manager]
  globex:
    groups:
      crm-users@globex.example: [sales]
roles:
  sales:
    description: Sells
  manager:
    description: Manages
resources:
  crm:
    kind: api
    identifier: https://crm.example.com
    scopes:
      crm:read:
        description: Read
        roles: [sales, manager]
      crm:write:
        description: Write
        roles: [manager]
        max_lifetime: 5m
agents:
  assistant:
    runtime: external
    description: Helps
    scopes:
      crm: [crm:read, crm:write]
    redirect_uris: [https://assistant.example.com/cb]
    tenants: [acme]
  batch:
    runtime: langgraph
    description: Nightly
    scopes:
      crm: [crm:read]
    roles: [manager]
gateways:
  gw:
    agents: [assistant]
    targets:
      crm-target:
        endpoint: https://crm.example.com/api
        resource: crm
connections:
  reporting:
    kind: api_key
    key: {config: reporting-key}
    allowed:
      agents: [assistant]
      tenants: [acme]
dev_users:
  alice:
    name: Alice
    tenant: acme
    groups: [Managers]
"""

POLICY = """\
version: 1
rules:
  - id: writes-need-approval
    description: Writes need approval
    effect: require_approval
    match:
      resources: [crm]
      scopes: ["crm:write"]
"""

SECRET = "sk-live-7f3a9c2e1b"


def where(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based line and column of the n-th occurrence of `needle` in `text`."""
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert text.count(old) == 1, f"{old!r} must occur exactly once"
        text = text.replace(old, new)
    return text


def problems_of(sources: FleetSources) -> tuple[Problem, ...]:
    with pytest.raises(FleetInvalid) as raised:
        load(sources)
    return raised.value.problems


def formatted(problems: tuple[Problem, ...]) -> list[str]:
    return [problem.format() for problem in problems]


def test_the_base_fleet_of_these_tests_is_valid(make_sources: MakeSources) -> None:
    loaded = load(make_sources(BASE, {"policies/a.yaml": POLICY}))

    assert set(loaded.fleet.agents) == {"assistant", "batch"}
    assert set(loaded.policies) == {"policies/a.yaml"}


def test_the_example_fleet_loads(repo_root: Path) -> None:
    loaded = load(read_sources(repo_root / "fleet.yaml"))

    assert isinstance(loaded, LoadedFleet)
    assert loaded.fleet.identity.name == "acme-agents"
    assert sorted(Path(name).name for name in loaded.policies) == ["crm.yaml", "tenants.yaml"]


# Every problem at once

MANY_PROBLEMS = edit(
    BASE,
    ("    access_token: 15m\n", "    access_token: 15 minutes\n"),
    ("  manager:\n    description: Manages\n", "  manager:\n    description: Manages\n"
     "    colour: blue\n"),
    ("    kind: api\n", "    kind: rest-api\n"),
    ("    runtime: langgraph\n", "    runtime: mainframe\n"),
    ("    tenants: [acme]\n  batch", "    tenants: [acme, initech]\n  batch"),
    ("    redirect_uris: [https://assistant.example.com/cb]\n",
     "    redirect_uris: [http://assistant.example.com/cb]\n    connections: [ledger]\n"),
    ("    agents: [assistant]\n    targets:", "    agents: [assistant, ghost]\n    targets:"),
    ("    key: {config: reporting-key}\n", f"    key: {SECRET}\n"),
    ("    tenant: acme\n", "    tenant: initech\n"),
)  # fmt: skip

MANY_POLICY_A = """\
version: 1
rules:
  - id: writes-need-approval
    description: Writes need approval
    effect: require_approval
    match:
      agents: [assistant, nobody]
"""

MANY_POLICY_B = """\
version: 1
rules:
  - id: writes-need-approval
    description: Defined a second time
    effect: deny
    match:
      roles: [auditor]
      tenants: [globex]
"""

MANY_POLICY_C = """\
version: 1
rules:
  - id: short
    description: Short tokens
    effect: cap_lifetime
    max_lifetime: forever
"""


def test_every_problem_is_reported_at_once_in_file_order(make_sources: MakeSources) -> None:
    text = MANY_PROBLEMS
    a, b, c = "policies/a.yaml", "policies/b.yaml", "policies/c.yaml"
    sources = make_sources(text, {a: MANY_POLICY_A, b: MANY_POLICY_B, c: MANY_POLICY_C})

    with pytest.raises(FleetInvalid) as raised:
        load(sources)

    def at(file: str, content: str, needle: str, pointer: str, message: str) -> str:
        line, column = where(content, needle)
        return f"{file}:{line}:{column}: error: {message} (at {pointer})"

    duration = (
        "a duration is a whole number of seconds or a number with a unit, "
        "such as 90s, 15m, 12h or 30d"
    )
    fleet = "fleet.yaml"
    expected = [
        at(fleet, text, "access_token", "/identity/tokens/access_token", duration),
        at(fleet, text, "colour", "/roles/manager/colour", "unknown key `colour`"),
        at(fleet, text, "kind: rest-api", "/resources/crm/kind", "must be 'api' or 'mcp'"),
        at(
            fleet,
            text,
            "http://assistant",
            "/agents/assistant/redirect_uris/0",
            "a redirect URI must use https (http is allowed only on loopback)",
        ),
        at(
            fleet, text, "ledger", "/agents/assistant/connections/0", "unknown connection 'ledger'"
        ),
        at(fleet, text, "initech", "/agents/assistant/tenants/1", "unknown tenant 'initech'"),
        at(
            fleet,
            text,
            "runtime: mainframe",
            "/agents/batch/runtime",
            "must be 'agentcore', 'vertex', 'foundry', 'langgraph' or 'external'",
        ),
        at(fleet, text, "ghost", "/gateways/gw/agents/1", "unknown agent 'ghost'"),
        at(
            fleet,
            text,
            "key: sk-live",
            "/connections/reporting/key",
            "a secret must be a reference, {config: NAME} for a Pulumi config secret or "
            "{env: VARIABLE} for a local run, never the value itself (the value is not shown)",
        ),
        at(fleet, text, "tenant: initech", "/dev_users/alice/tenant", "unknown tenant 'initech'"),
        at(a, MANY_POLICY_A, "nobody", "/rules/0/match/agents/1", "unknown agent 'nobody'"),
        at(
            b,
            MANY_POLICY_B,
            "id: writes",
            "/rules/0/id",
            f"rule id 'writes-need-approval' is already used in {a}",
        ),
        at(b, MANY_POLICY_B, "auditor", "/rules/0/match/roles/0", "unknown role 'auditor'"),
        at(c, MANY_POLICY_C, "max_lifetime", "/rules/0/max_lifetime", duration),
    ]
    assert formatted(raised.value.problems) == expected
    assert str(raised.value) == f"the fleet has {len(expected)} problems"
    assert not any(SECRET in line for line in formatted(raised.value.problems))


def test_problems_of_one_kind_in_several_entries_are_all_reported(
    make_sources: MakeSources,
) -> None:
    text = edit(
        BASE,
        ("      crm: [crm:read, crm:write]\n", "      crm: [crm:read, crm:admin]\n"),
        ("      crm: [crm:read]\n", "      crm: [crm:delete]\n"),
    )

    problems = problems_of(make_sources(text))

    assert [(p.pointer, p.message, (p.line, p.column)) for p in problems] == [
        (
            "/agents/assistant/scopes/crm/1",
            "resource 'crm' defines no scope 'crm:admin'",
            where(text, "crm:admin"),
        ),
        (
            "/agents/batch/scopes/crm/0",
            "resource 'crm' defines no scope 'crm:delete'",
            where(text, "crm:delete"),
        ),
    ]


# The cross-reference checks, one kind at a time

SEMANTIC_CASES = {
    "unknown role in a scope": (
        [("        roles: [manager]\n", "        roles: [manager, ghost-role]\n")],
        "ghost-role",
        "/resources/crm/scopes/crm:write/roles/1",
        "unknown role 'ghost-role'",
    ),
    "unknown role in a tenant's group map": (
        [("      Sales: [sales]\n", "      Sales: [sales, ghost-role]\n")],
        "ghost-role",
        "/tenants/acme/groups/Sales/1",
        "unknown role 'ghost-role'",
    ),
    "unknown role of an agent": (
        [("    roles: [manager]\ngateways:", "    roles: [ghost-role]\ngateways:")],
        "ghost-role",
        "/agents/batch/roles/0",
        "unknown role 'ghost-role'",
    ),
    "unknown role allowed a connection": (
        [("      tenants: [acme]\ndev", "      tenants: [acme]\n      roles: [ghost-role]\ndev")],
        "ghost-role",
        "/connections/reporting/allowed/roles/0",
        "unknown role 'ghost-role'",
    ),
    "unknown scope of a resource": (
        [("      crm: [crm:read]\n", "      crm: [crm:read, crm:delete]\n")],
        "crm:delete",
        "/agents/batch/scopes/crm/1",
        "resource 'crm' defines no scope 'crm:delete'",
    ),
    "scope listed twice by an agent": (
        [("      crm: [crm:read]\n", "      crm: [crm:read, crm:read]\n")],
        "crm:read]\n    roles",
        "/agents/batch/scopes/crm/1",
        "scope 'crm:read' is listed twice",
    ),
    "unknown resource in an agent's scopes": (
        [("      crm: [crm:read]\n", "      crm: [crm:read]\n      billing: [invoices:read]\n")],
        "billing",
        "/agents/batch/scopes/billing",
        "unknown resource 'billing'",
    ),
    "unknown resource behind a gateway target": (
        [("        resource: crm\n", "        resource: ledger\n")],
        "resource: ledger",
        "/gateways/gw/targets/crm-target/resource",
        "unknown resource 'ledger'",
    ),
    "unknown connection": (
        [
            (
                "    roles: [manager]\ngateways:",
                "    roles: [manager]\n    connections: [ledger]\ngateways:",
            )
        ],
        "ledger",
        "/agents/batch/connections/0",
        "unknown connection 'ledger'",
    ),
    "unknown tenant of an agent": (
        [("    tenants: [acme]\n  batch", "    tenants: [acme, initech]\n  batch")],
        "initech",
        "/agents/assistant/tenants/1",
        "unknown tenant 'initech'",
    ),
    "unknown tenant of a dev user": (
        [("    tenant: acme\n", "    tenant: initech\n")],
        "tenant: initech",
        "/dev_users/alice/tenant",
        "unknown tenant 'initech'",
    ),
    "unknown tenant allowed a connection": (
        [("      tenants: [acme]\ndev", "      tenants: [initech]\ndev")],
        "initech",
        "/connections/reporting/allowed/tenants/0",
        "unknown tenant 'initech'",
    ),
    "unknown agent of a gateway": (
        [("    agents: [assistant]\n    targets", "    agents: [ghost]\n    targets")],
        "ghost",
        "/gateways/gw/agents/0",
        "unknown agent 'ghost'",
    ),
    "unknown agent allowed a connection": (
        [("      agents: [assistant]\n      tenants", "      agents: [ghost]\n      tenants")],
        "ghost",
        "/connections/reporting/allowed/agents/0",
        "unknown agent 'ghost'",
    ),
    "two resources with one identifier": (
        [
            (
                "agents:\n",
                "  crm-copy:\n    kind: mcp\n    identifier: HTTPS://CRM.example.com/\n"
                "    scopes:\n      x:\n        description: X\n        roles: [sales]\n"
                "agents:\n",
            )
        ],
        "identifier: HTTPS",
        "/resources/crm-copy/identifier",
        "the identifier is already used by resource 'crm'",
    ),
    "a redirect URI used by two agents": (
        [
            (
                "    roles: [manager]\ngateways:",
                "    roles: [manager]\n    tenants: [acme]\n"
                "    redirect_uris: [https://assistant.example.com/cb]\ngateways:",
            )
        ],
        ("https://assistant.example.com/cb", 2),
        "/agents/batch/redirect_uris/0",
        "agent 'assistant' already uses this redirect URI",
    ),
    "a gateway named like an agent": (
        [("  gw:\n", "  batch:\n")],
        ("batch:", 2),
        "/gateways/batch",
        "'batch' is also the name of an agent",
    ),
    "an introspecting resource named like an agent": (
        [
            (
                "    identifier: https://crm.example.com\n",
                "    identifier: https://crm.example.com\n    introspection: true\n",
            ),
            ("  batch:\n    runtime: langgraph", "  crm:\n    runtime: langgraph"),
        ],
        "introspection: true",
        "/resources/crm/introspection",
        "'crm' is also the name of an agent, whose client id it would share",
    ),
    "a connection named like a resource": (
        [("  reporting:\n", "  crm:\n")],
        ("crm:\n    kind: api_key", 1),
        "/connections/crm",
        "'crm' is also the name of a resource",
    ),
    "a redirect URI that is not https": (
        [("[https://assistant.example.com/cb]", "[http://assistant.example.com/cb]")],
        "http://assistant",
        "/agents/assistant/redirect_uris/0",
        "a redirect URI must use https (http is allowed only on loopback)",
    ),
    "a redirect URI with another scheme": (
        [("[https://assistant.example.com/cb]", "[myapp://assistant.example.com/cb]")],
        "myapp://",
        "/agents/assistant/redirect_uris/0",
        "a redirect URI must use https (http is allowed only on loopback)",
    ),
    "a redirect URI with a fragment": (
        [("[https://assistant.example.com/cb]", "['https://assistant.example.com/cb#top']")],
        "'https://assistant",
        "/agents/assistant/redirect_uris/0",
        "a redirect URI must not have a fragment",
    ),
    "a relative redirect URI": (
        [("[https://assistant.example.com/cb]", "[/cb]")],
        "/cb]",
        "/agents/assistant/redirect_uris/0",
        "a redirect URI must be an absolute URL",
    ),
    "an identifier that is not an absolute URL": (
        [("    identifier: https://crm.example.com\n", "    identifier: crm.example.com\n")],
        "identifier",
        "/resources/crm/identifier",
        "the identifier must be an absolute URL without a fragment (RFC 8707)",
    ),
    "an identifier with a fragment": (
        [
            (
                "    identifier: https://crm.example.com\n",
                "    identifier: https://crm.example.com/api#v1\n",
            )
        ],
        "identifier",
        "/resources/crm/identifier",
        "the identifier must be an absolute URL without a fragment (RFC 8707)",
    ),
    "a gateway target endpoint over http": (
        [("        endpoint: https://crm", "        endpoint: http://crm")],
        "endpoint",
        "/gateways/gw/targets/crm-target/endpoint",
        "a target endpoint must be an https URL",
    ),
}


@pytest.mark.parametrize(
    ("changes", "anchor", "pointer", "message"),
    SEMANTIC_CASES.values(),
    ids=SEMANTIC_CASES.keys(),
)
def test_each_cross_reference_problem_is_reported_where_it_is(
    make_sources: MakeSources,
    changes: list[tuple[str, str]],
    anchor: str | tuple[str, int],
    pointer: str,
    message: str,
) -> None:
    text = edit(BASE, *changes)
    needle, occurrence = anchor if isinstance(anchor, tuple) else (anchor, 1)
    line, column = where(text, needle, occurrence)

    problems = problems_of(make_sources(text, {"policies/a.yaml": POLICY}))

    assert formatted(problems) == [f"fleet.yaml:{line}:{column}: error: {message} (at {pointer})"]


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8765/callback",
        "http://127.0.0.1/callback",
        "http://localhost:3000/cb",
        "'http://[::1]:8080/cb'",
        "https://assistant.example.com/cb?x=1",
    ],
)
def test_loopback_http_redirect_uris_are_allowed(make_sources: MakeSources, uri: str) -> None:
    text = edit(BASE, ("[https://assistant.example.com/cb]", f"[{uri}]"))

    loaded = load(make_sources(text))

    assert loaded.fleet.agents["assistant"].redirect_uris == (uri.strip("'"),)


@pytest.mark.parametrize(
    "uri", ["http://localhost.evil.example/cb", "http://127.0.0.1.nip.io/cb", "http://[::2]/cb"]
)
def test_http_on_a_host_that_only_looks_like_loopback_is_refused(
    make_sources: MakeSources, uri: str
) -> None:
    text = edit(BASE, ("[https://assistant.example.com/cb]", f"['{uri}']"))

    problems = problems_of(make_sources(text))

    assert [p.message for p in problems] == [
        "a redirect URI must use https (http is allowed only on loopback)"
    ]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://localhost/cb#x", "a redirect URI must not have a fragment"),
        ("http://127.0.0.1:8765/cb#x", "a redirect URI must not have a fragment"),
        ("http://localhost:80@evil.example/cb", "a redirect URI must use https"),
        ("http://127.0.0.1.evil.example:80/cb", "a redirect URI must use https"),
        ("http://LOCALHOST:3000/cb", None),
        ("http://127.0.0.2/cb", None),
    ],
)
def test_loopback_redirect_uris_are_judged_as_parsing_them_would(
    make_sources: MakeSources, uri: str, message: str | None
) -> None:
    text = edit(BASE, ("[https://assistant.example.com/cb]", f"['{uri}']"))

    try:
        load(make_sources(text))
        found = []
    except FleetInvalid as invalid:
        found = [problem.message for problem in invalid.problems]

    assert [m[: len(message or "")] for m in found] == ([message] if message else [])


# Secrets

KEY = "    key: {config: reporting-key}\n"
AGENTCORE_WITH_ENVIRONMENT = (
    "    roles: [manager]\n  runner:\n    runtime: agentcore\n    description: R\n"
    "    agentcore:\n      artifact: {container_uri: repo/image:1}\n"
    f"      environment:\n        CRM_API_KEY: {SECRET}\n"
)
INLINE_SECRETS = {
    "api key": (KEY, f"    key: {SECRET}\n", SECRET),
    "api key quoted": (KEY, f"    key: '{SECRET}'\n", SECRET),
    "api key as a list": (KEY, f"    key: [{SECRET}]\n", SECRET),
    "api key as a number": (KEY, "    key: 7301946285\n", "7301946285"),
    "api key under an unknown name": (KEY, f"    key: {{value: {SECRET}}}\n", SECRET),
    "api key as a config name": (KEY, f"    key: {{config: '{SECRET} x'}}\n", SECRET),
    "sso client secret": (
        "  globex:\n",
        "  globex:\n    sso:\n      issuer: https://idp.example.com\n      client_id: abc\n"
        f"      client_secret: {SECRET}\n",
        SECRET,
    ),
    "oauth client secret": (
        "dev_users:\n",
        "  calendar:\n    kind: oauth\n    provider:\n"
        "      discovery_url: https://accounts.example.com/.well-known/openid-configuration\n"
        f"    client_id: abc\n    client_secret: {SECRET}\n    scopes: [openid]\ndev_users:\n",
        SECRET,
    ),
    "agentcore environment variable named like a secret": (
        "    roles: [manager]\ngateways:",
        AGENTCORE_WITH_ENVIRONMENT + "gateways:",
        SECRET,
    ),
}


@pytest.mark.parametrize(
    ("old", "new", "secret"), INLINE_SECRETS.values(), ids=INLINE_SECRETS.keys()
)
def test_an_inline_secret_is_refused_without_being_echoed(
    make_sources: MakeSources, old: str, new: str, secret: str
) -> None:
    text = edit(BASE, (old, new))

    problems = problems_of(make_sources(text))

    assert len(problems) == 1, formatted(problems)
    assert problems[0].line == where(text, secret)[0]
    everything = "\n".join(formatted(problems)) + repr([p.as_json() for p in problems])
    assert secret not in everything


JWKS_AGENT = """\
  signer:
    runtime: external
    description: Signs its client assertions
    token_endpoint_auth_method: private_key_jwt
"""


@pytest.mark.parametrize(
    ("jwks", "pointer", "message"),
    [
        (
            "{keys: [{kty: RSA, n: AQAB, e: AQAB, d: PRIVATE-EXPONENT-41f0}]}",
            "/agents/signer/jwks/keys/0",
            "this key includes private key material; only public keys belong here",
        ),
        (
            "{keys: [{kty: oct, k: PRIVATE-EXPONENT-41f0}]}",
            "/agents/signer/jwks/keys/0",
            "each key is an RSA or EC public JWK",
        ),
        ("{keys: []}", "/agents/signer/jwks", "a JWK Set has a non-empty `keys` list"),
        (None, "/agents/signer", "private_key_jwt needs `jwks`, the agent's public keys"),
    ],
    ids=["private RSA key", "symmetric key", "no keys", "missing"],
)
def test_an_agents_jwks_holds_public_keys_only(
    make_sources: MakeSources, jwks: str | None, pointer: str, message: str
) -> None:
    agent = JWKS_AGENT + (f"    jwks: {jwks}\n" if jwks else "")
    text = edit(BASE, ("gateways:\n", agent + "gateways:\n"))

    (problem,) = problems_of(make_sources(text))

    assert (problem.pointer, problem.message) == (pointer, message)
    assert "PRIVATE-EXPONENT" not in problem.format()


def test_an_agent_with_a_public_jwks_is_valid(make_sources: MakeSources) -> None:
    agent = JWKS_AGENT + "    jwks: {keys: [{kty: EC, crv: P-256, x: AQAB, y: AQAB}]}\n"
    text = edit(BASE, ("gateways:\n", agent + "gateways:\n"))

    assert "signer" in load(make_sources(text)).fleet.agents


def test_an_inline_secret_message_says_what_to_write_instead(make_sources: MakeSources) -> None:
    text = edit(BASE, ("    key: {config: reporting-key}\n", f"    key: {SECRET}\n"))

    (problem,) = problems_of(make_sources(text))

    assert "{config: NAME}" in problem.message
    assert "{env: VARIABLE}" in problem.message
    assert problem.pointer == "/connections/reporting/key"


def test_a_secret_reference_needs_a_place(make_sources: MakeSources) -> None:
    text = edit(BASE, ("    key: {config: reporting-key}\n", "    key: {}\n"))

    (problem,) = problems_of(make_sources(text))

    assert problem.message == "a secret reference needs `config`, `env` or both"


# Schema problems


SCHEMA_CASES = {
    "unknown top-level key": (
        ("version: 1\n", "version: 1\nextras: true\n"),
        "extras",
        "/extras",
        "unknown key `extras`",
    ),
    "unknown key in an agent": (
        ("    description: Nightly\n", "    description: Nightly\n    owner: me\n"),
        "owner",
        "/agents/batch/owner",
        "unknown key `owner`",
    ),
    "unknown key in a scope": (
        ("        max_lifetime: 5m\n", "        max_lifetime: 5m\n        ttl: 1\n"),
        "ttl",
        "/resources/crm/scopes/crm:write/ttl",
        "unknown key `ttl`",
    ),
    "wrong runtime": (
        ("    runtime: external\n", "    runtime: lambda\n"),
        "runtime: lambda",
        "/agents/assistant/runtime",
        "must be 'agentcore', 'vertex', 'foundry', 'langgraph' or 'external'",
    ),
    "wrong signing algorithm": (
        ("    access_token: 15m\n", "    access_token: 15m\n  signing:\n    algorithm: HS256\n"),
        "algorithm",
        "/identity/signing/algorithm",
        "must be 'RS256' or 'ES256'",
    ),
    "wrong version": (("version: 1\n", "version: 2\n"), "version", "/version", "must be 1"),
    "duration with a unit spelled out": (
        ("        max_lifetime: 5m\n", "        max_lifetime: 5 minutes\n"),
        "max_lifetime",
        "/resources/crm/scopes/crm:write/max_lifetime",
        "a duration is a whole number of seconds or a number with a unit, "
        "such as 90s, 15m, 12h or 30d",
    ),
    "zero duration": (
        ("        max_lifetime: 5m\n", "        max_lifetime: 0\n"),
        "max_lifetime",
        "/resources/crm/scopes/crm:write/max_lifetime",
        "input should be greater than 0",
    ),
    "a duration over the bound": (
        ("        max_lifetime: 5m\n", "        max_lifetime: 500d\n"),
        "max_lifetime",
        "/resources/crm/scopes/crm:write/max_lifetime",
        "input should be less than or equal to 34560000",
    ),
    "a name that is not a name": (
        ("  batch:\n", "  Batch Job:\n"),
        "Batch Job",
        "/agents/Batch Job",
        "'Batch Job' is not a valid name: names use lower-case letters, digits, '.', '_' "
        "and '-', at most 64 characters",
    ),
    "a scope name with a space": (
        ("      crm:write:\n", "      crm write:\n"),
        "crm write",
        "/resources/crm/scopes/crm write",
        "'crm write' is not a valid name: a scope is printable ASCII without spaces, quotes "
        "or backslashes (RFC 6749)",
    ),
    "a missing required key": (
        ("    description: Nightly\n", ""),
        "batch:",
        "/agents/batch",
        "`description` is required",
    ),
    "a scope without roles": (
        ("        roles: [manager]\n", "        roles: []\n"),
        "roles: []",
        "/resources/crm/scopes/crm:write/roles",
        "must not be empty",
    ),
    "a list where a mapping belongs": (
        ("  sales:\n    description: Sells\n", "  sales: [x]\n"),
        "sales: [x]",
        "/roles/sales",
        "must be a mapping",
    ),
}


@pytest.mark.parametrize(
    ("change", "anchor", "pointer", "message"), SCHEMA_CASES.values(), ids=SCHEMA_CASES.keys()
)
def test_each_schema_problem_is_reported_where_it_is(
    make_sources: MakeSources, change: tuple[str, str], anchor: str, pointer: str, message: str
) -> None:
    text = edit(BASE, change)
    line, column = where(text, anchor)

    problems = problems_of(make_sources(text))

    assert formatted(problems) == [f"fleet.yaml:{line}:{column}: error: {message} (at {pointer})"]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("600", 600)],
)
def test_durations_are_read_in_seconds(
    make_sources: MakeSources, written: str, seconds: int
) -> None:
    text = edit(BASE, ("    access_token: 15m\n", f"    access_token: {written}\n"))

    assert load(make_sources(text)).fleet.identity.tokens.access_token == seconds


def test_a_boolean_is_not_a_duration(make_sources: MakeSources) -> None:
    text = edit(BASE, ("    access_token: 15m\n", "    access_token: yes\n"))

    problems_of(make_sources(text))


def test_an_unknown_effect_names_the_key_plainly(make_sources: MakeSources) -> None:
    policy = edit(POLICY, ("effect: require_approval", "effect: block"))

    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert problem.message.startswith("`effect` must be one of")


def test_an_unknown_effect_is_reported(make_sources: MakeSources) -> None:
    policy = edit(POLICY, ("effect: require_approval", "effect: block"))

    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert "'deny', 'require_approval', 'cap_lifetime'" in problem.message
    assert (problem.file, problem.pointer) == ("policies/a.yaml", "/rules/0/effect")
    assert (problem.line, problem.column) == where(policy, "effect: block")


def test_an_unknown_connection_kind_is_reported_on_the_entry(make_sources: MakeSources) -> None:
    text = edit(BASE, ("    kind: api_key\n", "    kind: password\n"))

    (problem,) = problems_of(make_sources(text))

    assert problem.message.endswith("must be one of 'oauth', 'api_key'")
    assert problem.pointer == "/connections/reporting/kind"
    assert (problem.line, problem.column) == where(text, "kind: password")


# Policy files


def test_a_rule_id_used_twice_across_files_is_reported_in_the_later_file(
    make_sources: MakeSources,
) -> None:
    other = edit(POLICY, ("effect: require_approval", "effect: deny"))

    problems = problems_of(
        make_sources(BASE, {"policies/a.yaml": POLICY, "policies/b.yaml": other})
    )

    line, column = where(other, "id:")
    assert formatted(problems) == [
        f"policies/b.yaml:{line}:{column}: error: rule id 'writes-need-approval' is already "
        "used in policies/a.yaml (at /rules/0/id)"
    ]


def test_a_rule_id_used_twice_in_one_file_is_reported(make_sources: MakeSources) -> None:
    rule = POLICY.split("rules:\n", 1)[1]
    policy = POLICY + rule

    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert problem.pointer == "/rules/1/id"
    assert (problem.line, problem.column) == where(policy, "id:", 2)


@pytest.mark.parametrize(
    ("match", "pattern"),
    [
        ('      resources: [crm]\n      scopes: ["crm:delete"]\n', "crm:delete"),
        ('      scopes: ["billing:*"]\n', "billing:*"),
        ('      scopes: ["crm:read", "CRM:*"]\n', "CRM:*"),
    ],
)
def test_a_scope_pattern_that_matches_nothing_is_reported(
    make_sources: MakeSources, match: str, pattern: str
) -> None:
    policy = edit(POLICY, ('      resources: [crm]\n      scopes: ["crm:write"]\n', match))

    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert problem.message == f"{pattern!r} matches no scope of the resources this rule covers"
    assert (problem.line, problem.column) == where(policy, f'"{pattern}"')


def test_scope_patterns_that_match_are_accepted(make_sources: MakeSources) -> None:
    policy = edit(POLICY, ('scopes: ["crm:write"]', 'scopes: ["crm:*", "*:read", "crm:wr?te"]'))

    loaded = load(make_sources(BASE, {"policies/a.yaml": policy}))

    assert loaded.policies["policies/a.yaml"].rules[0].match.scopes == (
        "crm:*",
        "*:read",
        "crm:wr?te",
    )


@pytest.mark.parametrize(
    ("match", "anchor", "message"),
    [
        ("      agents: [nobody]\n", "nobody", "unknown agent 'nobody'"),
        ("      tenants: [initech]\n", "initech", "unknown tenant 'initech'"),
        ("      roles: [auditor]\n", "auditor", "unknown role 'auditor'"),
        ("      resources: [ledger]\n", "ledger", "unknown resource 'ledger'"),
    ],
)
def test_a_rule_naming_what_does_not_exist_is_reported(
    make_sources: MakeSources, match: str, anchor: str, message: str
) -> None:
    policy = edit(POLICY, ('      resources: [crm]\n      scopes: ["crm:write"]\n', match))

    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert (problem.file, problem.message) == ("policies/a.yaml", message)
    assert (problem.line, problem.column) == where(policy, anchor)


def test_an_agent_pattern_need_not_match_an_agent(make_sources: MakeSources) -> None:
    policy = edit(POLICY, ("      resources: [crm]\n", "      agents: ['support-*']\n"))

    assert load(make_sources(BASE, {"policies/a.yaml": policy})).policies


def test_a_policy_file_with_yaml_problems_does_not_hide_the_others(
    make_sources: MakeSources,
) -> None:
    broken = "version: 1\nversion: 1\nrules: []\n"
    other = edit(POLICY, ("      resources: [crm]\n", "      agents: [nobody]\n"))

    problems = problems_of(
        make_sources(BASE, {"policies/a.yaml": broken, "policies/b.yaml": other})
    )

    # The duplicate key does not hide what else is wrong in the same file either.
    assert [(p.file, p.message) for p in problems] == [
        ("policies/a.yaml", "duplicate key 'version' in this mapping"),
        ("policies/a.yaml", "must not be empty"),
        ("policies/b.yaml", "unknown agent 'nobody'"),
    ]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("version: 1\nrules: []\n", "must not be empty"),
        ("version: 1\n", "`rules` is required"),
        ("- id: x\n", "must be a mapping"),
    ],
)
def test_a_policy_file_without_rules_is_reported(
    make_sources: MakeSources, policy: str, message: str
) -> None:
    (problem,) = problems_of(make_sources(BASE, {"policies/a.yaml": policy}))

    assert problem.message == message


# A bad entry does not make every reference to it an error

BROKEN_ENTRIES = {
    "role": ("    description: Manages\n", "    description: Manages\n    colour: x\n"),
    "resource": ("    kind: api\n", "    kind: rest\n"),
    "agent": ("    runtime: external\n", "    runtime: lambda\n"),
    "tenant": ("      Sales: [sales]\n", "      Sales: sales\n"),
    "connection": ("    kind: api_key\n", "    kind: api_key\n    colour: x\n"),
}


@pytest.mark.parametrize("change", BROKEN_ENTRIES.values(), ids=BROKEN_ENTRIES.keys())
def test_a_broken_entry_causes_no_unknown_reference_errors(
    make_sources: MakeSources, change: tuple[str, str]
) -> None:
    text = edit(BASE, change)
    # Every section is referred to from here too.
    policy = edit(
        POLICY,
        (
            '      resources: [crm]\n      scopes: ["crm:write"]\n',
            '      resources: [crm]\n      scopes: ["crm:write"]\n      agents: [assistant]\n'
            "      tenants: [acme]\n      roles: [manager]\n",
        ),
    )
    text = edit(
        text,
        (
            "    tenants: [acme]\n  batch",
            "    tenants: [acme]\n    connections: [reporting]\n  batch",
        ),
    )

    problems = problems_of(make_sources(text, {"policies/a.yaml": policy}))

    assert len(problems) == 1, formatted(problems)
    assert not problems[0].message.startswith(
        ("unknown role", "unknown resource", "unknown agent")
    )


def test_a_section_written_as_a_list_causes_no_unknown_reference_errors(
    make_sources: MakeSources,
) -> None:
    text = edit(
        BASE,
        ("  sales:\n    description: Sells\n  manager:\n    description: Manages\n",
         "  - sales\n  - manager\n"),
    )  # fmt: skip

    problems = problems_of(make_sources(text))

    assert [p.pointer for p in problems] == ["/roles"]


def test_a_broken_resource_causes_no_unmatched_pattern_errors(make_sources: MakeSources) -> None:
    text = edit(BASE, ("    kind: api\n", "    kind: rest\n"))
    policy = edit(POLICY, ("      resources: [crm]\n", ""))

    problems = problems_of(make_sources(text, {"policies/a.yaml": policy}))

    assert [p.pointer for p in problems] == ["/resources/crm/kind"]


def test_semantic_checks_still_run_beside_schema_problems(make_sources: MakeSources) -> None:
    text = edit(
        BASE,
        ("    description: Nightly\n", "    description: Nightly\n    owner: me\n"),
        ("    tenants: [acme]\n  batch", "    tenants: [initech]\n  batch"),
    )

    problems = problems_of(make_sources(text))

    assert [p.message for p in problems] == ["unknown tenant 'initech'", "unknown key `owner`"]


# Whole files that are not fleets


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"# nothing yet\n", "the file is empty"),
        (b"---\n", "the file is empty"),
        (b"- a\n- b\n", "must be a mapping"),
        (b"just text\n", "must be a mapping"),
        (b"version: 1\n---\nversion: 1\n", "YAML: but found another document"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "the file is not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_a_fleet_is_one_problem(
    make_sources: MakeSources, content: bytes, message: str
) -> None:
    (problem,) = problems_of(make_sources(content))

    assert problem.message.startswith(message)
    assert problem.file == "fleet.yaml"


def test_a_mapping_without_identity_says_what_is_required(make_sources: MakeSources) -> None:
    problems = problems_of(make_sources("version: 1\n"))

    assert [(p.pointer, p.message) for p in problems] == [("", "`identity` is required")]


def test_read_sources_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FleetInvalid) as raised:
        read_sources(tmp_path / "nowhere.yaml")

    (problem,) = raised.value.problems
    assert problem.message.startswith("cannot read the file: ")
    assert problem.file == str(tmp_path / "nowhere.yaml")


def test_read_sources_reports_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FleetInvalid) as raised:
        read_sources(tmp_path)

    assert raised.value.problems[0].message.startswith("cannot read the file: ")


def test_read_sources_takes_yaml_and_yml_policies_only(
    write_fleet: Callable[..., Path],
) -> None:
    path = write_fleet(BASE, {"a.yaml": POLICY, "b.yml": "x", "notes.txt": "x", "c.json": "{}"})

    sources = read_sources(path)

    assert sources.fleet == BASE.encode()
    assert sorted(Path(name).name for name in sources.policies) == ["a.yaml", "b.yml"]
    assert sources.policies[str(path.parent / "policies" / "a.yaml")] == POLICY.encode()


def test_read_sources_without_a_policies_folder(write_fleet: Callable[..., Path]) -> None:
    sources = read_sources(write_fleet(BASE))

    assert dict(sources.policies) == {}
    assert load(sources).policies == {}


def test_problems_carry_the_paths_they_were_read_from(
    write_fleet: Callable[..., Path],
) -> None:
    policy = edit(POLICY, ("      resources: [crm]\n", "      agents: [nobody]\n"))
    path = write_fleet(edit(BASE, ("version: 1\n", "version: 1\nx: 1\n")), {"a.yaml": policy})

    with pytest.raises(FleetInvalid) as raised:
        load(read_sources(path))

    assert [p.file for p in raised.value.problems] == [
        str(path),
        str(path.parent / "policies" / "a.yaml"),
    ]


def test_one_problem_is_counted_in_the_singular(make_sources: MakeSources) -> None:
    with pytest.raises(FleetInvalid, match=r"^the fleet has 1 problem$"):
        load(make_sources("version: 1\n"))


# The garbage collector while loading


def in_generation(generation: int, value: object) -> bool:
    return any(found is value for found in gc.get_objects(generation))


def test_what_a_pause_made_is_left_to_the_oldest_generation() -> None:
    assert gc.get_freeze_count() == 0, "nothing else may be frozen for this test"
    with paused_gc():
        assert not gc.isenabled()
        made: list[list[int]] = [[1]]

    assert gc.isenabled()
    assert in_generation(2, made)
    assert gc.get_freeze_count() == 0


def test_a_pause_leaves_what_others_froze_frozen() -> None:
    frozen: list[list[int]] = [[1]]
    gc.freeze()
    try:
        with paused_gc():
            pass

        assert not any(in_generation(generation, frozen) for generation in (0, 1, 2))
    finally:
        gc.unfreeze()


def test_a_pause_inside_a_pause_resumes_nothing() -> None:
    with paused_gc():
        with paused_gc():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
