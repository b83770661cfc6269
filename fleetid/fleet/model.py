"""The fleet file's model: what `fleet.yaml` and `policies/*.yaml` can say.

These pydantic models are the one definition of the format. The JSON Schema shipped in
`fleetid/fleet/schema/` is generated from them (`fleetid schema`), so the schema an editor
checks against and the validator that `fleetid validate` runs cannot drift apart; a test
holds the committed files to the generated ones.

Every model forbids unknown keys and is frozen all the way down: mappings are read-only
views and lists are tuples, so a compiled revision cannot be changed after its hash was
taken. Collections of named things are mappings keyed by their identifier, so that two
entries can never share a name and so that the order they are written in carries no
meaning. Lists hold sets (scopes, roles, tenants); `fleetid.fleet.compile` sorts them
before hashing.

What the schema can check alone is checked here; what needs the whole file (a role that
must exist, a scope the resource must define) is checked in `fleetid.fleet.semantics`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    StringConstraints,
    WithJsonSchema,
    WrapSerializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CANONICAL",
    "Agent",
    "AgentCoreArtifact",
    "AgentCoreCode",
    "AgentCoreNetwork",
    "AgentCoreSettings",
    "ApiKeyConnection",
    "Connection",
    "ConnectionUsers",
    "DevUser",
    "Fleet",
    "Gateway",
    "GatewayTarget",
    "Identity",
    "OAuthConnection",
    "OAuthProvider",
    "PolicyFile",
    "PolicyMatch",
    "PolicyRule",
    "Registration",
    "Resource",
    "Role",
    "Scope",
    "SecretRef",
    "Signing",
    "Sso",
    "Tenant",
    "TokenLifetimes",
    "format_seconds",
    "parse_duration",
    "thaw_json",
]

K = TypeVar("K")
V = TypeVar("V")


# Serialization context under which set-like lists come out sorted: the form the revision
# hash is taken of (mappings are sorted when validated).
CANONICAL = "fleetid.canonical"


class FrozenDict(dict[K, V]):
    """A dict that refuses every change: what the model's mappings are.

    A dict subclass rather than a read-only view, because pydantic serialises dicts
    natively; the canonical form of a large fleet then costs no Python call per mapping.
    """

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a compiled fleet cannot be changed")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __copy__(self) -> FrozenDict[K, V]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict[K, V]:
        return FrozenDict({key: copy.deepcopy(value, memo) for key, value in self.items()})

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def _freeze(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    # Sorted once here, so that the canonical form needs no sorting of its own.
    return FrozenDict(sorted(value.items()))


def _empty_map() -> Mapping[Any, Any]:
    return FrozenDict()


FrozenMap = Annotated[Mapping[K, V], AfterValidator(_freeze)]


def _as_set(value: tuple[Any, ...], info: SerializationInfo) -> Any:
    # A plain serializer rather than a wrapping one, which would cost a second call back
    # into pydantic for every list of every entry: the items are strings, written as found.
    context = info.context
    if context and context.get(CANONICAL):
        return sorted(set(value))
    return value


SetOf = Annotated[tuple[V, ...], PlainSerializer(_as_set, when_used="always")]
"""A list whose order means nothing: the canonical form sorts it."""


def _freeze_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        # Key order is never meaning in JSON; list order may be (an `x5c` chain).
        return FrozenDict({key: _freeze_json(value[key]) for key in sorted(value)})
    if isinstance(value, list | tuple):
        return tuple(_freeze_json(child) for child in value)
    return value


def thaw_json(value: Any) -> Any:
    """Plain dicts and lists again, for libraries that insist on them."""
    if isinstance(value, Mapping):
        return {key: thaw_json(child) for key, child in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(child) for child in value]
    return value


FrozenJson = Annotated[
    Mapping[str, Any],
    AfterValidator(_freeze_json),
    WrapSerializer(lambda value, handler: handler(thaw_json(value))),
]

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]+$"
_DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 400 * 86400

Name = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(description="lower-case letters, digits, '.', '_' and '-'; at most 64 characters"),
]
ScopeName = Annotated[str, StringConstraints(pattern=SCOPE_PATTERN, max_length=200)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Header = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


def parse_duration(value: Any) -> Any:
    """Turn `90s`, `15m`, `12h`, `30d` or a whole number of seconds into seconds.

    Anything else is passed on unchanged, for the schema to reject with its own message.
    """
    if isinstance(value, bool):
        raise PydanticCustomError(
            "duration", "a duration is a number of seconds, not true or false"
        )
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise PydanticCustomError(
                "duration",
                "a duration is a whole number of seconds or a number with a unit, "
                "such as 90s, 15m, 12h or 30d",
            )
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


def format_seconds(seconds: int) -> str:
    """A duration as fleet.yaml would write it: `15m`, `2h`, `90s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    Field(gt=0, le=MAX_DURATION),
    WithJsonSchema(
        {
            "description": "seconds, or a number with a unit: 90s, 15m, 12h, 30d",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_DURATION},
                {"type": "string", "pattern": _DURATION.pattern},
            ],
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _refuse_inline_secret(value: Any) -> Any:
    # The message must never repeat the value: it may be a real secret pasted by mistake.
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "inline_secret",
            "a secret must be a reference, {config: NAME} for a Pulumi config secret or "
            "{env: VARIABLE} for a local run, never the value itself (the value is not shown)",
        )
    return value


class SecretRef(_Strict):
    """Where a secret lives: never the secret itself."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"minProperties": 1},
    )

    config: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] | None = Field(
        default=None, description="name of a Pulumi config secret (`pulumi config set --secret`)"
    )
    env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = (
        Field(default=None, description="environment variable read by `fleetid serve`")
    )

    @model_validator(mode="after")
    def _one_place_at_least(self) -> SecretRef:
        if self.config is None and self.env is None:
            raise PydanticCustomError(
                "empty_secret_ref", "a secret reference needs `config`, `env` or both"
            )
        return self


Secret = Annotated[SecretRef, BeforeValidator(_refuse_inline_secret)]


class TokenLifetimes(_Strict):
    access_token: Duration = Field(default=900, description="default access token lifetime")
    refresh_token: Duration = Field(default=30 * 86400)
    authorization_code: Duration = Field(default=60)
    id_token: Duration = Field(default=3600)


class Signing(_Strict):
    algorithm: Literal["RS256", "ES256"] = Field(
        default="RS256",
        description="RS256 is the algorithm AgentCore's inbound JWT authorizer accepts",
    )
    custody: Literal["kms-wrapped", "kms-sign"] = Field(
        default="kms-wrapped",
        description=(
            "on AWS: a private key wrapped by KMS and held in memory, or KMS Sign per token; "
            "`fleetid serve` always keeps a local key file"
        ),
    )


class Identity(_Strict):
    name: Name
    display_name: Text | None = None
    issuer: Url | None = Field(
        default=None,
        description="the deployed issuer URL; when absent it is the server's own URL",
    )
    tokens: TokenLifetimes = Field(default_factory=TokenLifetimes)
    signing: Signing = Field(default_factory=Signing)


class Sso(_Strict):
    protocol: Literal["oidc"] = "oidc"
    issuer: Url
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    client_secret: Secret
    groups_claim: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "groups"
    scopes: SetOf[ScopeName] = ("openid", "email", "profile")


class Tenant(_Strict):
    display_name: Text | None = None
    sso: Sso | None = None
    groups: FrozenMap[
        Annotated[str, StringConstraints(min_length=1, max_length=500)], SetOf[Name]
    ] = Field(
        default_factory=_empty_map,
        description="IdP group name, as the tenant's IdP spells it, to the roles it maps to",
    )


class Role(_Strict):
    description: Text | None = None


class Scope(_Strict):
    description: Text
    roles: SetOf[Name] = Field(min_length=1, description="roles allowed to hold this scope")
    requires_approval: bool = Field(
        default=False, description="a person must approve each grant of this scope"
    )
    max_lifetime: Duration | None = Field(
        default=None, description="tokens carrying this scope live at most this long"
    )


class Resource(_Strict):
    kind: Literal["api", "mcp"]
    identifier: Url = Field(description="absolute URL; becomes the token audience (RFC 8707)")
    description: Text | None = None
    signing_algorithm: Literal["RS256", "ES256"] | None = None
    introspection: bool = Field(
        default=False,
        description=(
            "the resource server may ask the introspection endpoint (RFC 7662) about the "
            "tokens addressed to it, as a confidential client whose client_id is the "
            "resource's name"
        ),
    )
    scopes: FrozenMap[ScopeName, Scope] = Field(min_length=1)


class AgentCoreCode(_Strict):
    bucket: Annotated[str, StringConstraints(min_length=3, max_length=63)]
    prefix: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    entry_point: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = Field(min_length=1)
    runtime: Annotated[str, StringConstraints(pattern=r"^PYTHON_3_[0-9]+$")] = "PYTHON_3_12"


class AgentCoreArtifact(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"oneOf": [{"required": ["container_uri"]}, {"required": ["code"]}]},
    )

    container_uri: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    code: AgentCoreCode | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AgentCoreArtifact:
        if (self.container_uri is None) == (self.code is None):
            raise PydanticCustomError(
                "artifact", "an artifact is either `container_uri` or `code`, exactly one"
            )
        return self


class AgentCoreNetwork(_Strict):
    mode: Literal["PUBLIC", "VPC"] = "PUBLIC"
    subnets: SetOf[Annotated[str, StringConstraints(pattern=r"^subnet-[0-9a-f]+$")]] = Field(
        default=()
    )
    security_groups: SetOf[Annotated[str, StringConstraints(pattern=r"^sg-[0-9a-f]+$")]] = Field(
        default=()
    )

    @model_validator(mode="after")
    def _vpc_needs_subnets(self) -> AgentCoreNetwork:
        if self.mode == "VPC" and not (self.subnets and self.security_groups):
            raise PydanticCustomError(
                "network", "VPC mode needs at least one subnet and one security group"
            )
        if self.mode == "PUBLIC" and (self.subnets or self.security_groups):
            raise PydanticCustomError(
                "network", "subnets and security groups are only for VPC mode"
            )
        return self


class AgentCoreSettings(_Strict):
    artifact: AgentCoreArtifact
    network: AgentCoreNetwork = Field(default_factory=AgentCoreNetwork)
    protocol: Literal["HTTP", "MCP", "A2A"] = "HTTP"
    environment: FrozenMap[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
        Annotated[str, StringConstraints(max_length=4000)],
    ] = Field(default_factory=_empty_map, description="plain settings; secrets never go here")


class Agent(_Strict):
    runtime: Literal["agentcore", "vertex", "foundry", "langgraph", "external"]
    description: Text
    tags: SetOf[Name] = Field(default=())
    scopes: FrozenMap[Name, SetOf[ScopeName]] = Field(
        default_factory=_empty_map,
        description="per resource, every scope this agent may ever request",
    )
    connections: SetOf[Name] = Field(default=())
    roles: SetOf[Name] = Field(
        default=(),
        description="the agent's own roles, used when it acts as itself (client credentials)",
    )
    redirect_uris: SetOf[Url] = Field(default=())
    tenants: SetOf[Name] = Field(
        default=(), description="tenants whose users may sign in to this agent"
    )
    token_endpoint_auth_method: Literal[
        "client_secret_basic", "client_secret_post", "private_key_jwt"
    ] = "client_secret_basic"
    jwks: FrozenJson | None = Field(
        default=None,
        description="the public keys a private_key_jwt agent signs with, as a JWK Set",
    )
    agentcore: AgentCoreSettings | None = None


class GatewayTarget(_Strict):
    description: Text | None = None
    endpoint: Url
    resource: Name | None = Field(
        default=None,
        description="the fleet resource behind this target; the gateway then calls it with "
        "tokens fleetid issues",
    )


class Gateway(_Strict):
    description: Text | None = None
    agents: SetOf[Name] = Field(min_length=1, description="agents that may call this gateway")
    targets: FrozenMap[Name, GatewayTarget] = Field(min_length=1)


class OAuthProvider(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["discovery_url"]},
                {"required": ["authorization_endpoint", "token_endpoint"]},
            ]
        },
    )

    discovery_url: Url | None = None
    authorization_endpoint: Url | None = None
    token_endpoint: Url | None = None
    revocation_endpoint: Url | None = None

    @model_validator(mode="after")
    def _discovery_or_endpoints(self) -> OAuthProvider:
        endpoints = (self.authorization_endpoint, self.token_endpoint)
        if self.discovery_url is None and None in endpoints:
            raise PydanticCustomError(
                "provider",
                "a provider needs `discovery_url`, or both `authorization_endpoint` and "
                "`token_endpoint`",
            )
        return self


class ConnectionUsers(_Strict):
    agents: SetOf[Name] | None = Field(default=None, description="absent: any agent listing it")
    roles: SetOf[Name] | None = Field(default=None, description="absent: any role")
    tenants: SetOf[Name] | None = Field(default=None, description="absent: any tenant")


class OAuthConnection(_Strict):
    kind: Literal["oauth"]
    description: Text | None = None
    provider: OAuthProvider
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    client_secret: Secret
    scopes: SetOf[ScopeName] = Field(min_length=1)
    pkce: bool = True
    allowed: ConnectionUsers = Field(default_factory=ConnectionUsers)


class ApiKeyConnection(_Strict):
    kind: Literal["api_key"]
    description: Text | None = None
    header: Header = "Authorization"
    prefix: Annotated[str, StringConstraints(max_length=50)] = ""
    key: Secret
    allowed: ConnectionUsers = Field(default_factory=ConnectionUsers)


Connection = Annotated[OAuthConnection | ApiKeyConnection, Field(discriminator="kind")]


class Registration(_Strict):
    client_id_metadata_documents: bool = Field(
        default=False, description="accept clients identified by a metadata document URL"
    )
    dynamic_client_registration: bool = Field(default=False, description="RFC 7591")
    resources: FrozenMap[Name, SetOf[ScopeName]] = Field(
        default_factory=_empty_map,
        description="per resource, the scopes a self-registered client may ever request",
    )
    tenants: SetOf[Name] | None = Field(
        default=None, description="tenants whose users may use such clients; absent: all"
    )
    max_lifetime: Duration | None = None


class DevUser(_Strict):
    name: Text
    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    tenant: Name
    groups: SetOf[Annotated[str, StringConstraints(min_length=1, max_length=500)]] = Field(
        default=()
    )


class Fleet(_Strict):
    """The whole of fleet.yaml."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="fleetid fleet.yaml",
        json_schema_extra={"$id": "https://fleetid.dev/schema/fleet.schema.json"},
    )

    version: Literal[1]
    identity: Identity
    tenants: FrozenMap[Name, Tenant] = Field(default_factory=_empty_map)
    roles: FrozenMap[Name, Role] = Field(default_factory=_empty_map)
    resources: FrozenMap[Name, Resource] = Field(default_factory=_empty_map)
    agents: FrozenMap[Name, Agent] = Field(default_factory=_empty_map)
    gateways: FrozenMap[Name, Gateway] = Field(default_factory=_empty_map)
    connections: FrozenMap[Name, Connection] = Field(default_factory=_empty_map)
    registration: Registration = Field(default_factory=Registration)
    dev_users: FrozenMap[Name, DevUser] = Field(
        default_factory=_empty_map, description="people `fleetid serve` lets you sign in as"
    )


Pattern = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,200}$")]


class PolicyMatch(_Strict):
    """Which requests a rule applies to; every selector given must match, an absent one
    matches anything."""

    resources: SetOf[Name] | None = None
    scopes: SetOf[Pattern] | None = Field(
        default=None, description="scope names or shell-style patterns such as `crm:*`"
    )
    agents: SetOf[Pattern] | None = Field(
        default=None, description="agent names or shell-style patterns such as `support-*`"
    )
    tenants: SetOf[Name] | None = None
    roles: SetOf[Name] | None = Field(
        default=None, description="matches when the subject holds any of these roles"
    )
    subject: Literal["any", "user", "machine"] = Field(
        default="any", description="`user` for delegated tokens, `machine` for an agent alone"
    )


class _RuleBase(_Strict):
    id: Name
    description: Text
    match: PolicyMatch = Field(default_factory=PolicyMatch)


class DenyRule(_RuleBase):
    effect: Literal["deny"]


class ApprovalRule(_RuleBase):
    effect: Literal["require_approval"]


class LifetimeRule(_RuleBase):
    effect: Literal["cap_lifetime"]
    max_lifetime: Duration


PolicyRule = Annotated[DenyRule | ApprovalRule | LifetimeRule, Field(discriminator="effect")]


class PolicyFile(_Strict):
    """One file of restrictive issuance rules under policies/."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="fleetid policy file",
        json_schema_extra={"$id": "https://fleetid.dev/schema/policy.schema.json"},
    )

    version: Literal[1]
    rules: tuple[PolicyRule, ...] = Field(min_length=1)
