"""IdentityServer: fleetid's OAuth 2.1 / OpenID Connect server on AWS Lambda.

What it deploys:

- the function (Python 3.12, `fleetid.deploy.handler` through Mangum) behind a Function URL,
  optionally under a custom domain (`CustomDomain`);
- the DynamoDB table of the store: on-demand, point-in-time recovery, TTL on the store's
  expiry attribute, the key schema and index that `fleetid.store.dynamodb` declares;
- the revisions bucket: versioned, encrypted with SSE-KMS, closed to the public, TLS only;
  `RevisionRelease` writes the revision objects and the pointer into it;
- KMS key custody. kms-wrapped (the default): a symmetric key that the function's role may
  use only to Encrypt and Decrypt under the signing keys' encryption context; the function
  generates the private keys itself at its first cold start and stores them only wrapped, so
  no private key is ever in Pulumi state. kms-sign: an asymmetric SIGN_VERIFY key per
  signing algorithm (RSA_2048 for RS256), the role may Sign and GetPublicKey;
- the function's role, allowed only this table, this bucket's `revisions/` prefix, these
  keys and its own log group; and that log group, with a retention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from components.aws import Account, administer_key, kms_alias, policy_json
from components.custom_domain import CustomDomain, CustomDomainArgs
from fleetid.authorizer import DISCOVERY_PATH
from fleetid.deploy import settings
from fleetid.deploy.package import HANDLER, read_manifest
from fleetid.deploy.revision import REVISION_PREFIX
from fleetid.fleet.compile import Revision
from fleetid.server.context import Endpoints
from fleetid.server.tokens import signing_algorithms
from fleetid.store.dynamodb import (
    ATTRIBUTE_DEFINITIONS,
    AUDIT_INDEX,
    GLOBAL_SECONDARY_INDEXES,
    KEY_SCHEMA,
    TTL_ATTRIBUTE,
)

__all__ = ["IdentityServer", "IdentityServerArgs", "LambdaCode", "ServerLink", "vault_alias"]

# The encryption context `fleetid.keys.KmsWrappedKeys` binds every wrapped signing key to.
SIGNING_KEY_PURPOSE = "signing-key"
# KMS key specs for the JWS algorithms fleetid signs with (RFC 7518 §3.1).
KEY_SPECS = {"RS256": "RSA_2048", "ES256": "ECC_NIST_P256"}
# What the store does with the table: conditional puts, strongly consistent gets, conditional
# deletes and queries of the audit trail. No scan, no update, no table administration.
STORE_ACTIONS = ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"]


def vault_alias() -> str:
    """The alias of the vault's KMS key, known before the key exists (the function needs it
    in its environment, and the key's policy needs the function's role first)."""
    return kms_alias(pulumi.get_project(), pulumi.get_stack(), "vault")


@dataclass(frozen=True)
class ServerLink:
    """What the other components take from the identity server."""

    fleet: str
    issuer: pulumi.Output[str]
    discovery_url: pulumi.Output[str]
    table_name: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    role_name: pulumi.Output[str]
    account: Account


@dataclass(frozen=True)
class LambdaCode:
    """The function's deployment archive and the architecture it was built for."""

    archive: pulumi.Archive
    architecture: str = "x86_64"

    @classmethod
    def from_build(cls, path: str | Path) -> LambdaCode:
        """The archive `python -m fleetid.deploy.package` built at `path`.

        Its manifest says which architecture its native wheels are for, so the function is
        never declared for the other one. A preview without the archive goes on with a
        placeholder and a warning; a deployment without it stops.
        """
        archive = Path(path)
        if archive.is_file():
            manifest = read_manifest(archive)
            return cls(pulumi.FileArchive(str(archive)), manifest["architecture"])

        build = f"python -m fleetid.deploy.package --arch x86_64 --out {archive}"
        if not pulumi.runtime.is_dry_run():
            raise FileNotFoundError(f"{archive} does not exist; build it first: {build}")

        pulumi.log.warn(f"{archive} does not exist: previewing without code; build it: {build}")
        placeholder = pulumi.StringAsset("built by python -m fleetid.deploy.package\n")
        return cls(pulumi.AssetArchive({"PLACEHOLDER": placeholder}))


@dataclass
class IdentityServerArgs:
    """Plain values, not inputs: names, the issuer and the key custody are decided from them
    before anything exists."""

    revision: Revision
    code: LambdaCode
    domain: str | None = None
    certificate_arn: str | None = None
    log_retention_days: int = 30
    memory_mb: int = 1024
    revision_check_seconds: int = 30


class IdentityServer(pulumi.ComponentResource):
    issuer: pulumi.Output[str]
    discovery_url: pulumi.Output[str]
    jwks_url: pulumi.Output[str]
    function_url: pulumi.Output[str]
    dns_target: pulumi.Output[str] | None
    link: ServerLink

    def __init__(
        self, name: str, args: IdentityServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:IdentityServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        identity = args.revision.fleet.identity
        known_issuer = _known_issuer(identity.issuer, args.domain, args.certificate_arn)
        account = Account.current(pulumi.InvokeOptions(parent=self))

        # The store's one table. TTL deletes expired codes, grants and replay entries within
        # days, not at once; the store treats them as gone the moment they expire.
        table = aws.dynamodb.Table(
            f"{name}-table",
            billing_mode="PAY_PER_REQUEST",
            hash_key=_key(KEY_SCHEMA, "HASH"),
            range_key=_key(KEY_SCHEMA, "RANGE"),
            attributes=[
                {"name": attribute["AttributeName"], "type": attribute["AttributeType"]}
                for attribute in ATTRIBUTE_DEFINITIONS
            ],
            global_secondary_indexes=[
                {
                    "name": index["IndexName"],
                    "key_schemas": [
                        {"attribute_name": key["AttributeName"], "key_type": key["KeyType"]}
                        for key in index["KeySchema"]
                    ],
                    "projection_type": index["Projection"]["ProjectionType"],
                }
                for index in GLOBAL_SECONDARY_INDEXES
            ],
            ttl={"attribute_name": TTL_ATTRIBUTE, "enabled": True},
            point_in_time_recovery={"enabled": True},
            server_side_encryption={"enabled": True},
            deletion_protection_enabled=True,
            opts=child,
        )

        # Revision objects are named by their hash and never rewritten; versioning keeps
        # every pointer that was ever live, so a rollback can always find its object.
        bucket = aws.s3.Bucket(f"{name}-revisions", opts=child)
        aws.s3.BucketVersioning(
            f"{name}-revisions-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        # SSE-KMS under the account's AWS-managed S3 key; the bucket key spares a KMS
        # request per object read.
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-revisions-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"},
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        # Nothing in the bucket is public, whatever a later ACL or policy might say.
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-revisions-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        # Refuse plain HTTP, so a revision is never read or written unencrypted in transit.
        aws.s3.BucketPolicy(
            f"{name}-revisions-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(_tls_only_policy),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access]),
        )

        # Lambda writes to the group named in its logging configuration; created here, with
        # a retention, rather than by Lambda on first use with none.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", retention_in_days=args.log_retention_days, opts=child
        )

        # The function's identity; what it may do is granted below, resource by resource.
        role = aws.iam.Role(
            f"{name}-role",
            description="fleetid identity server (Lambda)",
            assume_role_policy=account.account_id.apply(
                lambda account_id: policy_json(
                    [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
                        }
                    ]
                )
            ),
            opts=child,
        )

        custody = identity.signing.custody
        environment: dict[str, pulumi.Input[str]] = {}
        key_statements: pulumi.Output[list[dict[str, Any]]]
        if custody == "kms-wrapped":
            # Wraps the private keys the function generates. The key policy lets the role use
            # it only under the context KmsWrappedKeys sets, so it can open nothing else.
            wrap_key = aws.kms.Key(
                f"{name}-signing-wrap-key",
                description=f"fleetid {identity.name}: wraps the token signing keys",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                policy=pulumi.Output.all(account.root, role.arn).apply(
                    lambda values: _wrap_key_policy(values[0], values[1], identity.name)
                ),
                opts=child,
            )
            environment[settings.WRAPPING_KEY] = wrap_key.arn
            key_statements = wrap_key.arn.apply(lambda arn: [_wrap_statement(arn, identity.name)])
        else:
            # KMS signs every token; the private key never leaves KMS.
            sign_keys = {
                algorithm: aws.kms.Key(
                    f"{name}-signing-{algorithm.lower()}",
                    description=f"fleetid {identity.name}: signs tokens {algorithm}",
                    key_usage="SIGN_VERIFY",
                    customer_master_key_spec=KEY_SPECS[algorithm],
                    deletion_window_in_days=30,
                    policy=pulumi.Output.all(account.root, role.arn).apply(
                        lambda values: _sign_key_policy(values[0], values[1])
                    ),
                    opts=child,
                )
                for algorithm in sorted(signing_algorithms(args.revision))
            }
            environment[settings.SIGNING_KEYS] = pulumi.Output.json_dumps(
                {algorithm: key.arn for algorithm, key in sign_keys.items()}
            )
            key_statements = pulumi.Output.all(*[key.arn for key in sign_keys.values()]).apply(
                lambda arns: [
                    {
                        "Effect": "Allow",
                        "Action": ["kms:GetPublicKey", "kms:Sign"],
                        "Resource": sorted(arns),
                    }
                ]
            )

        # Least privilege: this table and its audit index, this bucket's revisions, these
        # keys, this log group; the vault grants its own key in `Vault`.
        role_policy = aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.all(table.arn, bucket.arn, log_group.arn, key_statements).apply(
                lambda values: _server_policy(*values)
            ),
            opts=child,
        )

        environment.update(
            {
                settings.TABLE: table.name,
                settings.BUCKET: bucket.bucket,
                settings.FLEET: identity.name,
                settings.KEY_CUSTODY: custody,
                settings.VAULT_KEY: vault_alias(),
                settings.REVISION_CHECK_SECONDS: str(args.revision_check_seconds),
            }
        )
        if known_issuer is not None:
            environment[settings.ISSUER] = known_issuer

        # The function. 1 GB buys the CPU that RSA signing and a cold start's compile want;
        # the timeout covers a cold start that compiles a large fleet.
        function = aws.lambda_.Function(
            f"{name}-function",
            description=f"fleetid identity server for {identity.name}",
            role=role.arn,
            runtime="python3.12",
            handler=HANDLER,
            code=args.code.archive,
            architectures=[args.code.architecture],
            memory_size=args.memory_mb,
            timeout=30,
            environment={"variables": environment},
            logging_config={
                "log_format": "JSON",
                "log_group": log_group.name,
                "application_log_level": "INFO",
                "system_log_level": "WARN",
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )

        # An OAuth server is public: clients authenticate to it, not to AWS.
        url = aws.lambda_.FunctionUrl(
            f"{name}-url",
            function_name=function.name,
            authorization_type="NONE",
            invoke_mode="BUFFERED",
            opts=child,
        )
        # A public Function URL needs both statements: InvokeFunctionUrl for the URL, and
        # InvokeFunction limited to calls that come through a Function URL.
        aws.lambda_.Permission(
            f"{name}-url-public",
            function=function.name,
            action="lambda:InvokeFunctionUrl",
            principal="*",
            function_url_auth_type="NONE",
            opts=child,
        )
        aws.lambda_.Permission(
            f"{name}-url-invoke",
            function=function.name,
            action="lambda:InvokeFunction",
            principal="*",
            invoked_via_function_url=True,
            opts=child,
        )

        self.dns_target = None
        if args.domain is not None and args.certificate_arn is not None:
            domain = CustomDomain(
                f"{name}-domain",
                CustomDomainArgs(args.domain, args.certificate_arn, url.function_url),
                opts=child,
            )
            self.dns_target = domain.distribution_domain

        self.function_url = url.function_url
        self.issuer = (
            pulumi.Output.from_input(known_issuer)
            if known_issuer is not None
            else url.function_url.apply(lambda value: value.rstrip("/"))
        )
        self.discovery_url = self.issuer.apply(lambda issuer: issuer + DISCOVERY_PATH)
        self.jwks_url = self.issuer.apply(lambda issuer: Endpoints(issuer).jwks)
        self.link = ServerLink(
            fleet=identity.name,
            issuer=self.issuer,
            discovery_url=self.discovery_url,
            table_name=table.name,
            bucket_name=bucket.bucket,
            role_arn=role.arn,
            role_name=role.name,
            account=account,
        )
        self.register_outputs(
            {
                "issuer": self.issuer,
                "discovery_url": self.discovery_url,
                "jwks_url": self.jwks_url,
                "function_url": self.function_url,
            }
        )


def _known_issuer(
    configured: str | None, domain: str | None, certificate_arn: str | None
) -> str | None:
    """The issuer when it is known before anything exists: fleet.yaml's or the domain's."""
    if (domain is None) != (certificate_arn is None):
        raise ValueError(
            "a custom domain needs both fleetid:domain and fleetid:certificateArn "
            "(an ACM certificate in us-east-1)"
        )
    if domain is None:
        return configured.rstrip("/") if configured else None

    from_domain = f"https://{domain}"
    if configured and configured.rstrip("/") != from_domain:
        raise ValueError(
            f"identity.issuer is {configured} but the custom domain makes it {from_domain}"
        )

    return from_domain


def _key(schema: Sequence[Mapping[str, str]], key_type: str) -> str:
    return next(key["AttributeName"] for key in schema if key["KeyType"] == key_type)


def _tls_only_policy(bucket_arn: str) -> str:
    return policy_json(
        [
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ]
    )


def _signing_context(fleet: str) -> dict[str, dict[str, str]]:
    return {
        "StringEquals": {
            "kms:EncryptionContext:fleetid:purpose": SIGNING_KEY_PURPOSE,
            "kms:EncryptionContext:fleetid:fleet": fleet,
        }
    }


def _wrap_statement(key_arn: str, fleet: str) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:Encrypt"],
        "Resource": key_arn,
        "Condition": _signing_context(fleet),
    }


def _wrap_key_policy(root: str, role_arn: str, fleet: str) -> str:
    # In a key policy, "Resource": "*" means this key. The account administers the key but
    # gets no use of it; only the server's role wraps and unwraps, and only signing keys.
    return policy_json(
        [
            administer_key(root),
            {
                "Sid": "WrapSigningKeys",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": ["kms:Decrypt", "kms:Encrypt"],
                "Resource": "*",
                "Condition": _signing_context(fleet),
            },
        ]
    )


def _sign_key_policy(root: str, role_arn: str) -> str:
    return policy_json(
        [
            administer_key(root),
            {
                "Sid": "SignTokens",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": ["kms:GetPublicKey", "kms:Sign"],
                "Resource": "*",
            },
        ]
    )


def _server_policy(
    table_arn: str, bucket_arn: str, log_group_arn: str, key_statements: list[dict[str, Any]]
) -> str:
    return policy_json(
        [
            {
                "Sid": "Store",
                "Effect": "Allow",
                "Action": STORE_ACTIONS,
                "Resource": [table_arn, f"{table_arn}/index/{AUDIT_INDEX}"],
            },
            {
                "Sid": "ReadRevisions",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"{bucket_arn}/{REVISION_PREFIX}*",
            },
            {
                "Sid": "Logs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{log_group_arn}:*",
            },
            *key_statements,
        ]
    )
