"""AgentClient: an agent's OAuth client credentials at the identity server.

Every agent in the fleet is a confidential client whose `client_id` is its name. Its secret is
generated once and kept in Pulumi state, encrypted as a secret, so a deployment does not
rotate it; `pulumi up --replace <urn of its RandomPassword>` does. Only the secret's SHA-256
digest is written to the server's table, where `StoredClientSecrets` reads it.

An agent on AgentCore gets its secret through Secrets Manager (`AgentRuntime`); an agent
elsewhere is a directory entry, and its credentials are stack outputs marked secret.
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

__all__ = ["AgentClient", "AgentClientArgs"]

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
        child = pulumi.ResourceOptions(parent=self)

        # 43 characters from 62 letters and digits: 256 bits from the provider's CSPRNG.
        password = random.RandomPassword(f"{name}-secret", length=43, special=False, opts=child)
        self.client_secret = pulumi.Output.secret(
            password.result.apply(lambda value: SECRET_PREFIX + value)
        )

        # The server compares digests; the table never holds a secret.
        aws.dynamodb.TableItem(
            f"{name}-digest",
            table_name=args.server.table_name,
            hash_key=HASH_KEY,
            range_key=RANGE_KEY,
            item=self.client_secret.apply(
                lambda secret: record_item_json(
                    CLIENT_SECRET_NAMESPACE, args.agent, {"sha256": digest(secret)}
                )
            ),
            opts=child,
        )

        self.client_id = pulumi.Output.from_input(args.agent)
        self.register_outputs({"client_id": self.client_id, "client_secret": self.client_secret})
