"""AgentCore's custom JWT authorizer, as the runtimes and gateways are told to trust fleetid.

`fleetid.authorizer.inbound_authorizer` says what an agent's authorizer checks; this module
only spells that in the shape `aws.bedrock` takes, and, for a gateway that several agents
call, combines the agents' authorizers into one.
"""

from __future__ import annotations

from typing import Any

from fleetid.authorizer import AuthorizerConfig, inbound_authorizer
from fleetid.fleet.compile import Revision

__all__ = ["custom_jwt_authorizer", "gateway_authorizer"]


def custom_jwt_authorizer(config: AuthorizerConfig) -> dict[str, Any]:
    """`authorizer_configuration` for an AgentCore runtime or gateway."""
    authorizer: dict[str, Any] = {
        "discovery_url": config.discovery_url,
        "allowed_clients": list(config.allowed_clients),
        "allowed_audiences": list(config.allowed_audiences),
    }
    if config.required_claims:
        authorizer["custom_claims"] = [
            {
                "inbound_token_claim_name": claim,
                "inbound_token_claim_value_type": "STRING",
                "authorizing_claim_match_value": {
                    "claim_match_operator": "EQUALS",
                    "claim_match_value": {"match_value_string": value},
                },
            }
            for claim, value in sorted(config.required_claims.items())
        ]

    return {"custom_jwt_authorizer": authorizer}


def gateway_authorizer(revision: Revision, gateway: str, issuer: str) -> AuthorizerConfig:
    """What a gateway's authorizer checks: the union of its agents' authorizers.

    A gateway accepts the tokens each of its agents' own authorizers accept, plus tokens for
    the fleet resources its targets front: an agent trades its token for one addressed to
    such a resource, and the gateway passes it on to the target. A claim rule stays only when
    every agent requires the same value: AgentCore matches a string claim against one value,
    so the per-agent `azp` rule of a gateway shared by several agents can't be kept, and
    `allowed_clients` (matched against `client_id`, which fleetid always sets equal to
    `azp`) is what admits exactly those agents.
    """
    settings = revision.fleet.gateways[gateway]
    configs = [inbound_authorizer(revision, agent, issuer) for agent in sorted(settings.agents)]
    resources = {
        revision.fleet.resources[target.resource].identifier
        for target in settings.targets.values()
        if target.resource is not None
    }

    first = configs[0].required_claims
    shared = {
        claim: value
        for claim, value in first.items()
        if all(config.required_claims.get(claim) == value for config in configs)
    }

    return AuthorizerConfig(
        discovery_url=configs[0].discovery_url,
        allowed_clients=tuple(client for config in configs for client in config.allowed_clients),
        allowed_audiences=tuple(
            sorted({audience for config in configs for audience in config.allowed_audiences})
            + sorted(resources)
        ),
        required_claims=shared,
    )
