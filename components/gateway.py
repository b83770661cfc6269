"""Gateway: an MCP gateway on Amazon Bedrock AgentCore Gateway, for the agents it lists.

What it deploys, for one gateway of fleet.yaml:

- the gateway (protocol MCP), with an inbound JWT authorizer that trusts fleetid as each of
  its agents' authorizers does (`components.agentcore.gateway_authorizer`): fleetid's
  discovery URL, the listed agents as allowed clients;
- one target per `targets` entry, an MCP server at its endpoint. A target whose `resource` is
  a fleet resource is called with the token fleetid issued for that resource: the agent
  exchanges its token for one addressed to the resource (fleetid decides its scopes, under
  the same policy as any request), presents it to the gateway, and the gateway passes it on
  (JWT passthrough). The resource then checks a fleetid token as it would from any caller;
- the gateway's role, which needs no permission for MCP server targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.agentcore import custom_jwt_authorizer, gateway_authorizer
from components.aws import dash_name, policy_json
from components.identity_server import ServerLink
from fleetid.fleet.compile import Revision

__all__ = ["Gateway", "GatewayArgs"]


@dataclass
class GatewayArgs:
    """The revision and the gateway's name in it; the server its authorizer trusts."""

    revision: Revision
    gateway: str
    server: ServerLink


class Gateway(pulumi.ComponentResource):
    gateway_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:Gateway", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        settings = args.revision.fleet.gateways[args.gateway]
        server = args.server

        # AgentCore assumes it to reach targets; MCP servers called over HTTPS need nothing.
        role = aws.iam.Role(
            f"{name}-role",
            description=f"fleetid gateway {args.gateway} on AgentCore Gateway",
            assume_role_policy=server.account.account_id.apply(
                lambda account_id: policy_json(
                    [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "bedrock-agentcore.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
                        }
                    ]
                )
            ),
            opts=child,
        )

        gateway = aws.bedrock.AgentcoreGateway(
            f"{name}-gateway",
            name=dash_name(server.fleet, args.gateway, pulumi.get_stack()),
            description=settings.description,
            role_arn=role.arn,
            protocol_type="MCP",
            authorizer_type="CUSTOM_JWT",
            authorizer_configuration=server.issuer.apply(
                lambda issuer: custom_jwt_authorizer(
                    gateway_authorizer(args.revision, args.gateway, issuer)
                )
            ),
            opts=child,
        )

        for target_name, target in sorted(settings.targets.items()):
            # Passthrough only where fleetid issued the token for this very target.
            outbound = {"jwt_passthrough": {}} if target.resource is not None else None
            aws.bedrock.AgentcoreGatewayTarget(
                f"{name}-{target_name}",
                gateway_identifier=gateway.gateway_id,
                name=dash_name(target_name),
                description=target.description,
                target_configuration={"mcp": {"mcp_server": {"endpoint": target.endpoint}}},
                credential_provider_configuration=outbound,
                opts=child,
            )

        self.gateway_url = gateway.gateway_url
        self.register_outputs({"gateway_url": self.gateway_url})
