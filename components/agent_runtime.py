"""AgentRuntime: an agent of the fleet on Amazon Bedrock AgentCore Runtime.

What it deploys, for one agent whose runtime is agentcore:

- its client credentials (`AgentClient`), the secret delivered as a Secrets Manager secret
  whose resource policy lets only the agent's role (and the deployer, who wrote it) read it;
  the runtime's environment holds the secret's ARN, never the secret;
- its execution role, allowed to read that secret, pull its own artifact (its ECR repository,
  or its code object in S3) and write its own log groups;
- the runtime, with its artifact, network and protocol from fleet.yaml, and an inbound JWT
  authorizer that trusts fleetid exactly as `fleetid.authorizer.inbound_authorizer` says:
  fleetid's discovery URL, the agent as the only allowed client, its own audience, and a
  claim rule requiring `azp` to be the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.agent_client import AgentClient, AgentClientArgs
from components.agentcore import custom_jwt_authorizer
from components.aws import agentcore_name, policy_json
from components.identity_server import ServerLink
from fleetid.authorizer import inbound_authorizer
from fleetid.fleet.compile import Revision
from fleetid.fleet.model import AgentCoreSettings
from fleetid.server.tokens import agent_audience

__all__ = ["AGENT_ENVIRONMENT", "AgentRuntime", "AgentRuntimeArgs"]

# What `fleetid.agent` reads to find fleetid and prove who it is.
AGENT_ENVIRONMENT = (
    "FLEETID_ISSUER",
    "FLEETID_CLIENT_ID",
    "FLEETID_CLIENT_SECRET_ARN",
    "FLEETID_AUDIENCE",
)

_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"/(?P<repository>[^:@]+)"
)


@dataclass
class AgentRuntimeArgs:
    """The revision and the agent's name in it; the server's outputs it trusts and writes to."""

    revision: Revision
    agent: str
    server: ServerLink


class AgentRuntime(pulumi.ComponentResource):
    client_id: pulumi.Output[str]
    runtime_arn: pulumi.Output[str]
    secret_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: AgentRuntimeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:AgentRuntime", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        agent = args.revision.fleet.agents[args.agent]
        if agent.agentcore is None:
            raise ValueError(f"agent {args.agent} runs on {agent.runtime}, not on agentcore")
        agentcore = agent.agentcore
        _refuse_reserved_environment(args.agent, agentcore)
        server, account = args.server, args.server.account
        # Runtime names are unique per account and region: two stacks of one fleet can share
        # an account.
        runtime_name = agentcore_name(server.fleet, args.agent, pulumi.get_stack())

        credentials = AgentClient(
            f"{name}-client", AgentClientArgs(args.agent, server), opts=child
        )

        # Assumed by AgentCore to run this agent, and only on behalf of this account.
        role = aws.iam.Role(
            f"{name}-role",
            description=f"fleetid agent {args.agent} on AgentCore Runtime",
            assume_role_policy=account.account_id.apply(
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

        # The client secret reaches the agent through Secrets Manager, read at start with
        # the role's credentials: never in the runtime's environment or its configuration.
        secret = aws.secretsmanager.Secret(
            f"{name}-client-secret",
            description=f"fleetid client secret of agent {args.agent}",
            recovery_window_in_days=7,
            opts=child,
        )
        version = aws.secretsmanager.SecretVersion(
            f"{name}-client-secret-value",
            secret_id=secret.id,
            secret_string=credentials.client_secret,
            opts=child,
        )
        # An IAM policy elsewhere in the account could grant GetSecretValue on "*"; this deny
        # holds against it for every principal but the agent's role and the deployer.
        aws.secretsmanager.SecretPolicy(
            f"{name}-client-secret-policy",
            secret_arn=secret.arn,
            block_public_policy=True,
            policy=pulumi.Output.all(role.arn, account.deployer_arn).apply(
                lambda arns: _secret_policy(arns[0], arns[1])
            ),
            opts=child,
        )

        role_policy = aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.all(
                secret.arn, account.partition, account.region, account.account_id
            ).apply(lambda values: _runtime_policy(agentcore, runtime_name, values)),
            opts=child,
        )

        authorizer = server.issuer.apply(
            lambda issuer: custom_jwt_authorizer(
                inbound_authorizer(args.revision, args.agent, issuer)
            )
        )
        environment: dict[str, pulumi.Input[str]] = {
            **agentcore.environment,
            "FLEETID_ISSUER": server.issuer,
            "FLEETID_CLIENT_ID": args.agent,
            "FLEETID_CLIENT_SECRET_ARN": secret.arn,
            "FLEETID_AUDIENCE": agent_audience(args.agent),
        }
        # AgentCore checks at creation that the role can pull the artifact, so the role's
        # permissions and the secret's value come first.
        runtime = aws.bedrock.AgentcoreAgentRuntime(
            f"{name}-runtime",
            agent_runtime_name=runtime_name,
            description=agent.description[:1200],
            role_arn=role.arn,
            agent_runtime_artifact=_artifact(agentcore),
            network_configuration=_network(agentcore),
            protocol_configuration={"server_protocol": agentcore.protocol},
            authorizer_configuration=authorizer,
            environment_variables=environment,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy, version]),
        )

        self.client_id = credentials.client_id
        self.runtime_arn = runtime.agent_runtime_arn
        self.secret_arn = secret.arn
        self.register_outputs(
            {
                "client_id": self.client_id,
                "runtime_arn": self.runtime_arn,
                "secret_arn": self.secret_arn,
            }
        )


def _refuse_reserved_environment(agent: str, agentcore: AgentCoreSettings) -> None:
    reserved = sorted(set(agentcore.environment) & set(AGENT_ENVIRONMENT))
    if reserved:
        raise ValueError(
            f"agents.{agent}.agentcore.environment sets {', '.join(reserved)}, which fleetid "
            "sets itself"
        )


def _artifact(agentcore: AgentCoreSettings) -> dict[str, Any]:
    artifact = agentcore.artifact
    if artifact.container_uri is not None:
        return {"container_configuration": {"container_uri": artifact.container_uri}}

    assert artifact.code is not None
    code = artifact.code
    return {
        "code_configuration": {
            "entry_points": list(code.entry_point),
            "runtime": code.runtime,
            "code": {"s3": {"bucket": code.bucket, "prefix": code.prefix}},
        }
    }


def _network(agentcore: AgentCoreSettings) -> dict[str, Any]:
    network = agentcore.network
    if network.mode == "PUBLIC":
        return {"network_mode": "PUBLIC"}

    return {
        "network_mode": "VPC",
        "network_mode_config": {
            "subnets": list(network.subnets),
            "security_groups": list(network.security_groups),
        },
    }


def _secret_policy(role_arn: str, deployer_arn: str) -> str:
    return policy_json(
        [
            {
                "Sid": "AgentReads",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "*",
            },
            {
                "Sid": "NoOneElseReads",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalArn": [role_arn, deployer_arn]}},
            },
        ]
    )


def _runtime_policy(agentcore: AgentCoreSettings, runtime_name: str, values: list[str]) -> str:
    secret_arn, partition, region, account_id = values
    # AgentCore names each runtime's log groups after the runtime's id, which begins with
    # its name.
    log_groups = (
        f"arn:{partition}:logs:{region}:{account_id}:log-group:"
        f"/aws/bedrock-agentcore/runtimes/{runtime_name}-*"
    )
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ClientSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret_arn,
        },
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:DescribeLogStreams",
                "logs:PutLogEvents",
            ],
            "Resource": [log_groups, f"{log_groups}:*"],
        },
    ]

    artifact = agentcore.artifact
    if artifact.container_uri is not None:
        image = _ECR_IMAGE.match(artifact.container_uri)
        if image is None:
            raise ValueError(
                f"{artifact.container_uri} is not an Amazon ECR image, which AgentCore needs"
            )
        repository = (
            f"arn:{partition}:ecr:{image['region']}:{image['account']}:repository/"
            f"{image['repository']}"
        )
        statements += [
            {
                "Sid": "PullImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": repository,
            },
            # ECR grants registry tokens for the whole registry only: this action takes no
            # resource but "*", and reads nothing by itself.
            {
                "Sid": "RegistryToken",
                "Effect": "Allow",
                "Action": "ecr:GetAuthorizationToken",
                "Resource": "*",
            },
        ]
    else:
        assert artifact.code is not None
        statements.append(
            {
                "Sid": "ReadCode",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": f"arn:{partition}:s3:::{artifact.code.bucket}/{artifact.code.prefix}",
            }
        )

    return policy_json(statements)
