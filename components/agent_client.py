"""AgentClient: an agent's OAuth client credentials at the identity server.

Every agent in the fleet is a confidential client whose `client_id` is its name. Its secret is
generated once and kept in Pulumi state, encrypted as a secret, so a deployment does not
rotate it; `pulumi up --replace <urn of its RandomPassword>` does. Only the secret's SHA-256
digest is written to the server's table, where `StoredClientSecrets` reads it.

An agent on AgentCore gets its secret through Secrets Manager (`AgentRuntime`); an agent
elsewhere is a directory entry, and its credentials are stack outputs marked secret.
`ResourceClient` is the same for the server of a resource that introspects.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.identity_server import ServerLink
from fleetid.deploy.records import CLIENT_SECRET_NAMESPACE, record_item_json
from fleetid.server.tokens import digest
from fleetid.store.dynamodb import HASH_KEY, RANGE_KEY

__all__ = [
    "AgentClient",
    "AgentClientArgs",
    "ResourceClient",
    "ResourceClientArgs",
    "client_secret",
]

# The prefix fleetid's client secrets carry everywhere, so secret scanners can tell them.
SECRET_PREFIX = "fis_"


@dataclass
class AgentClientArgs:
    """The agent whose client this is, and the server whose table gets its secret's digest."""

    agent: str
    server: ServerLink


class AgentClient(pulumi.ComponentResource):
    client_id: pulumi.Output[str]
    client_secret: pulumi.Output[str]

    def __init__(
        self, name: str, args: AgentClientArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:AgentClient", name, None, opts)
        self.client_secret = client_secret(name, args.agent, args.server, self)
        self.client_id = pulumi.Output.from_input(args.agent)
        self.register_outputs({"client_id": self.client_id, "client_secret": self.client_secret})


@dataclass
class ResourceClientArgs:
    """The resource whose server introspects, and the server whose table gets the digest."""

    resource: str
    server: ServerLink


class ResourceClient(pulumi.ComponentResource):
    """The client credentials of a resource's server, for the introspection endpoint only:
    its `client_id` is the resource's name, which no agent shares (fleetid validates it)."""

    client_id: pulumi.Output[str]
    client_secret: pulumi.Output[str]

    def __init__(
        self, name: str, args: ResourceClientArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:ResourceClient", name, None, opts)
        self.client_secret = client_secret(name, args.resource, args.server, self)
        self.client_id = pulumi.Output.from_input(args.resource)
        self.register_outputs({"client_id": self.client_id, "client_secret": self.client_secret})


def client_secret(
    name: str, client_id: str, server: ServerLink, parent: pulumi.ComponentResource
) -> pulumi.Output[str]:
    """A new client secret for `client_id`, kept in state as a secret; its digest goes to
    the server's table."""
    child = pulumi.ResourceOptions(parent=parent)

    # 43 characters from 62 letters and digits: 256 bits from the provider's CSPRNG.
    password = random.RandomPassword(f"{name}-secret", length=43, special=False, opts=child)
    secret = pulumi.Output.secret(password.result.apply(lambda value: SECRET_PREFIX + value))

    # The server compares digests; the table never holds a secret.
    aws.dynamodb.TableItem(
        f"{name}-digest",
        table_name=server.table_name,
        hash_key=HASH_KEY,
        range_key=RANGE_KEY,
        item=secret.apply(
            lambda value: record_item_json(
                CLIENT_SECRET_NAMESPACE, client_id, {"sha256": digest(value)}
            )
        ),
        opts=child,
    )
    return secret
