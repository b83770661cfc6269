"""Vault: the KMS key of the connections vault, and the connection secrets it starts with.

What it deploys:

- a symmetric KMS key, rotated yearly by KMS, whose key policy lets only the identity
  server's role decrypt, and only under this fleet's encryption context (the vault binds
  fleet, connection, tenant and user into it); the account may administer the key and
  encrypt with it, so that the deployer can provision secrets, but not decrypt;
- an alias, which the function finds the key by;
- for each secret a connection names as a Pulumi config secret (an API key, an OAuth client
  secret): the value encrypted under that key with KMS `Encrypt` at deployment, and only the
  ciphertext written into the server's table (`fleetid.deploy.secrets` reads it). The value
  is a Pulumi secret throughout; it is never in the function's environment or an output.

`provisioned_secrets` reads those config secrets, and refuses before anything is created
when one is missing or was set without `--secret`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.aws import administer_key, policy_json
from components.identity_server import ServerLink, vault_alias
from fleetid.deploy.records import (
    PROVISIONED_SECRET_NAMESPACE,
    provisioned_secret_context,
    record_item_json,
)
from fleetid.deploy.secrets import CIPHERTEXT_FORMAT
from fleetid.fleet.compile import Revision
from fleetid.fleet.model import ApiKeyConnection, SecretRef
from fleetid.store.dynamodb import HASH_KEY, RANGE_KEY

__all__ = ["MissingConnectionSecret", "Vault", "VaultArgs", "provisioned_secrets"]

# What the server does with the vault key: envelope encryption (a data key per record),
# opening records and provisioned secrets, and moving records to a new key.
VAULT_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo"]


class MissingConnectionSecret(ValueError):
    """Connections whose secret is not in this stack's Pulumi config as a secret."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "connection secrets are missing from the stack's config:\n  " + "\n  ".join(problems)
        )


def provisioned_secrets(revision: Revision) -> dict[str, pulumi.Output[str]]:
    """Each connection secret's config reference and its value, as Pulumi secrets."""
    secrets: dict[str, pulumi.Output[str]] = {}
    problems: list[str] = []
    for name, connection in sorted(revision.fleet.connections.items()):
        if isinstance(connection, ApiKeyConnection):
            what, reference = "API key", connection.key
        else:
            what, reference = "client secret", connection.client_secret

        problem = _read(name, what, reference, secrets)
        if problem is not None:
            problems.append(problem)

    if problems:
        raise MissingConnectionSecret(problems)

    return secrets


def _read(
    connection: str, what: str, reference: SecretRef, secrets: dict[str, pulumi.Output[str]]
) -> str | None:
    if reference.config is None:
        return (
            f"connection {connection}: its {what} is only in environment variable "
            f"{reference.env}; add `config:` to its reference for a deployment"
        )

    # A key of another namespace is written with it ("team:key"); a bare key is the project's.
    namespace, _, key = reference.config.rpartition(":")
    full_key = f"{namespace or pulumi.get_project()}:{key}"
    value = pulumi.Config(namespace or None).get_secret(key)
    command = f"pulumi config set --secret {reference.config} <{what}>"
    if value is None:
        return f"connection {connection}: its {what} is not set; run `{command}`"
    if not pulumi.runtime.is_config_secret(full_key):
        return f"connection {connection}: {full_key} is not encrypted; run `{command}` again"

    secrets[reference.config] = value

    return None


@dataclass
class VaultArgs:
    """`secrets` as `provisioned_secrets` returns them: config reference to secret value."""

    revision: Revision
    server: ServerLink
    secrets: Mapping[str, pulumi.Output[str]]


class Vault(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: VaultArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:Vault", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        server, fleet = args.server, args.server.fleet

        # The vault's master key. KMS rotates its key material yearly and keeps the old
        # material, so nothing stored needs re-encrypting for that.
        key = aws.kms.Key(
            f"{name}-key",
            description=f"fleetid {fleet}: the connections vault",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.all(server.account.root, server.role_arn).apply(
                lambda values: _key_policy(values[0], values[1], fleet)
            ),
            opts=child,
        )
        aws.kms.Alias(f"{name}-alias", name=vault_alias(), target_key_id=key.key_id, opts=child)

        # The server's role, granted the key on its side too, scoped to this key.
        aws.iam.RolePolicy(
            f"{name}-server-policy",
            role=server.role_name,
            policy=key.arn.apply(lambda arn: _server_policy(arn, fleet)),
            opts=child,
        )

        for reference, value in sorted(args.secrets.items()):
            label = re.sub(r"[^A-Za-z0-9-]", "-", reference)
            # Encrypted by KMS under the context the server decrypts with; the plaintext is
            # in state only as a Pulumi secret.
            ciphertext = aws.kms.Ciphertext(
                f"{name}-{label}-ciphertext",
                key_id=key.arn,
                plaintext=value,
                context=provisioned_secret_context(fleet, reference),
                opts=child,
            )
            aws.dynamodb.TableItem(
                f"{name}-{label}-item",
                table_name=server.table_name,
                hash_key=HASH_KEY,
                range_key=RANGE_KEY,
                item=pulumi.Output.secret(
                    pulumi.Output.all(ciphertext.ciphertext_blob, key.arn).apply(
                        lambda values, reference=reference: record_item_json(
                            PROVISIONED_SECRET_NAMESPACE,
                            reference,
                            {
                                "format": CIPHERTEXT_FORMAT,
                                "ciphertext": values[0],
                                "key_id": values[1],
                            },
                        )
                    )
                ),
                opts=child,
            )

        self.key_arn = key.arn
        self.register_outputs({"key_arn": self.key_arn})


def _fleet_context(fleet: str) -> dict[str, dict[str, str]]:
    return {"StringEquals": {"kms:EncryptionContext:fleetid:fleet": fleet}}


def _key_policy(root: str, role_arn: str, fleet: str) -> str:
    # In a key policy, "Resource": "*" means this key.
    return policy_json(
        [
            administer_key(root),
            {
                "Sid": "ProvisionSecrets",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:Encrypt",
                "Resource": "*",
                "Condition": _fleet_context(fleet),
            },
            {
                "Sid": "ServerUsesVault",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": VAULT_ACTIONS,
                "Resource": "*",
                "Condition": _fleet_context(fleet),
            },
            {
                "Sid": "ServerResolvesAlias",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "kms:DescribeKey",
                "Resource": "*",
            },
        ]
    )


def _server_policy(key_arn: str, fleet: str) -> str:
    # DescribeKey carries no encryption context, so it can't sit under the context condition.
    return policy_json(
        [
            {
                "Sid": "Vault",
                "Effect": "Allow",
                "Action": VAULT_ACTIONS,
                "Resource": key_arn,
                "Condition": _fleet_context(fleet),
            },
            {
                "Sid": "VaultKey",
                "Effect": "Allow",
                "Action": "kms:DescribeKey",
                "Resource": key_arn,
            },
        ]
    )
