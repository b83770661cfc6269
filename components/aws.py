"""What the components share about AWS: the account they deploy into, policy documents, names.

IAM and KMS policies are built as plain dicts and serialised once, with sorted keys, so that
the same fleet always gives the same policy text and a preview shows no spurious change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

__all__ = [
    "KEY_ADMINISTRATION",
    "Account",
    "administer_key",
    "agentcore_name",
    "assume_role_policy",
    "dash_name",
    "kms_alias",
    "policy_json",
]

# Managing a KMS key without using it: none of these encrypts, decrypts or signs.
KEY_ADMINISTRATION = (
    "kms:CancelKeyDeletion",
    "kms:Create*",
    "kms:Delete*",
    "kms:Describe*",
    "kms:Disable*",
    "kms:Enable*",
    "kms:Get*",
    "kms:List*",
    "kms:Put*",
    "kms:Revoke*",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Update*",
)


def administer_key(root: str) -> dict[str, object]:
    """The key policy statement that lets the account manage a KMS key, and not use it.

    In a key policy, "Resource": "*" means this key.
    """
    return {
        "Sid": "Administer",
        "Effect": "Allow",
        "Principal": {"AWS": root},
        "Action": list(KEY_ADMINISTRATION),
        "Resource": "*",
    }


@dataclass(frozen=True)
class Account:
    """The account, region and partition the stack deploys into, and who deploys it."""

    account_id: pulumi.Output[str]
    region: pulumi.Output[str]
    partition: pulumi.Output[str]
    deployer_arn: pulumi.Output[str]

    @classmethod
    def current(cls, opts: pulumi.InvokeOptions | None = None) -> Account:
        caller = aws.get_caller_identity_output(opts=opts)
        # An assumed-role session's ARN is not what IAM conditions see; the role's is.
        session = aws.iam.get_session_context_output(arn=caller.arn, opts=opts)

        return cls(
            account_id=caller.account_id,
            region=aws.get_region_output(opts=opts).region,
            partition=aws.get_partition_output(opts=opts).partition,
            deployer_arn=session.issuer_arn,
        )

    @property
    def root(self) -> pulumi.Output[str]:
        """The account principal, through which IAM policies of the account take effect."""
        return pulumi.Output.concat("arn:", self.partition, ":iam::", self.account_id, ":root")


def policy_json(statements: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, sort_keys=True)


def assume_role_policy(service: str, account_id: str) -> str:
    """A trust policy for `service`, only on behalf of this account (the confused-deputy
    guard AWS recommends for service roles)."""
    return policy_json(
        [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
            }
        ]
    )


def agentcore_name(*parts: str) -> str:
    """An AgentCore runtime name (letters, digits, underscores; 48 at most; a letter first)
    for fleet names, which also hold '-' and '.'.

    A name that had to change gets a short hash of the original, so two fleet names that
    differ only in punctuation never become one runtime name.
    """
    original = "_".join(parts)
    name = re.sub(r"[^A-Za-z0-9_]", "_", original)
    if not name[:1].isalpha():
        name = f"a_{name}"
    if name == original and len(name) <= 48:
        return name

    return f"{name[:41]}_{_short_hash(original)}"


def dash_name(*parts: str, limit: int = 100) -> str:
    """A gateway or target name (letters and digits, single dashes between them)."""
    original = "-".join(parts)
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9]", "-", original)).strip("-")
    if name == original and len(name) <= limit:
        return name

    return f"{name[: limit - 7].rstrip('-')}-{_short_hash(original)}"


def kms_alias(*parts: str) -> str:
    """A KMS alias name, unique per project and stack: `alias/fleetid/<project>/<stack>/...`."""
    named = [re.sub(r"[^A-Za-z0-9_-]", "-", part) for part in ("fleetid", *parts)]

    return "alias/" + "/".join(named)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]
