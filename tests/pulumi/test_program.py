"""The Pulumi program on the example fleet, under mocks: what it wires and how it guards it.

The program runs once for the module; each test reads what the mocks recorded: every
resource's inputs as the engine would receive them, secrets still marked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from components.mocks import (
    DEPLOYER_ROLE,
    FUNCTION_URL,
    Deployment,
    exposed_strings,
    is_secret,
    plain,
    run_program,
)
from fleetid.authorizer import DISCOVERY_PATH, inbound_authorizer
from fleetid.fleet.compile import Revision
from fleetid.store.dynamodb import TTL_ATTRIBUTE

RUNTIME = "aws:bedrock/agentcoreAgentRuntime:AgentcoreAgentRuntime"
GATEWAY = "aws:bedrock/agentcoreGateway:AgentcoreGateway"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
KMS_KEY = "aws:kms/key:Key"
ISSUER = FUNCTION_URL.rstrip("/")
# The one action that takes no resource but "*": a registry token, which reads nothing.
RESOURCELESS = {"ecr:GetAuthorizationToken"}


@pytest.fixture(scope="module")
def deployment(repo_root: Path, archive: Path, example_secrets: dict[str, str]) -> Deployment:
    return run_program(repo_root / "fleet.yaml", secrets=example_secrets, archive=archive)


def statements(policy: str) -> list[dict[str, Any]]:
    return list(json.loads(policy)["Statement"])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def generated_secrets(deployment: Deployment) -> set[str]:
    """Every secret value the run handled: generated passwords and config secrets."""
    passwords = {
        resource.outputs["result"]
        for resource in deployment.of_type("random:index/randomPassword:RandomPassword")
    }
    return passwords | {f"fis_{password}" for password in passwords}


# --- AgentCore trusts fleetid exactly as fleetid.authorizer says ------------------------------


def test_each_runtime_trusts_fleetid_as_inbound_authorizer_says(
    deployment: Deployment, example_revision: Revision
) -> None:
    (runtime,) = deployment.of_type(RUNTIME)
    authorizer = runtime.plain("authorizerConfiguration")["customJwtAuthorizer"]
    expected = inbound_authorizer(example_revision, "sales-assistant", ISSUER)

    assert authorizer["discoveryUrl"].endswith(DISCOVERY_PATH)
    assert authorizer["discoveryUrl"] == expected.discovery_url
    assert authorizer["allowedClients"] == list(expected.allowed_clients)
    assert authorizer["allowedAudiences"] == list(expected.allowed_audiences)
    (claim,) = authorizer["customClaims"]
    assert claim["inboundTokenClaimName"] == "azp"
    assert claim["authorizingClaimMatchValue"] == {
        "claimMatchOperator": "EQUALS",
        "claimMatchValue": {"matchValueString": expected.required_claims["azp"]},
    }


def test_the_runtime_runs_the_artifact_of_fleet_yaml(deployment: Deployment) -> None:
    (runtime,) = deployment.of_type(RUNTIME)

    assert runtime.plain("agentRuntimeArtifact") == {
        "containerConfiguration": {
            "containerUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sales-assistant:1.4.2"
        }
    }
    assert runtime.plain("networkConfiguration") == {"networkMode": "PUBLIC"}
    assert runtime.plain("agentRuntimeName").startswith("acme_agents_sales_assistant")


def test_the_runtime_finds_fleetid_and_its_secret_by_reference(deployment: Deployment) -> None:
    (runtime,) = deployment.of_type(RUNTIME)
    environment = runtime.plain("environmentVariables")

    assert environment["FLEETID_ISSUER"] == ISSUER
    assert environment["FLEETID_CLIENT_ID"] == "sales-assistant"
    assert environment["FLEETID_CLIENT_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert environment["LOG_LEVEL"] == "info"
    assert not set(environment.values()) & generated_secrets(deployment)


def test_the_gateway_trusts_its_agents_and_passes_fleet_tokens_on(
    deployment: Deployment, example_revision: Revision
) -> None:
    (gateway,) = deployment.of_type(GATEWAY)
    authorizer = gateway.plain("authorizerConfiguration")["customJwtAuthorizer"]
    expected = inbound_authorizer(example_revision, "sales-assistant", ISSUER)

    assert gateway.plain("protocolType") == "MCP"
    assert gateway.plain("authorizerType") == "CUSTOM_JWT"
    assert authorizer["discoveryUrl"] == expected.discovery_url
    assert authorizer["allowedClients"] == ["sales-assistant"]
    assert authorizer["allowedAudiences"] == [
        *expected.allowed_audiences,
        "https://tools.acme.example.com/mcp",
    ]
    assert [claim["inboundTokenClaimName"] for claim in authorizer["customClaims"]] == ["azp"]

    (target,) = deployment.of_type("aws:bedrock/agentcoreGatewayTarget:AgentcoreGatewayTarget")
    assert target.plain("targetConfiguration") == {
        "mcp": {"mcpServer": {"endpoint": "https://tools.acme.example.com/mcp"}}
    }
    assert target.plain("credentialProviderConfiguration") == {"jwtPassthrough": {}}


# --- secrets stay secret ----------------------------------------------------------------------


def test_every_secret_value_is_marked_secret_wherever_it_appears(
    deployment: Deployment, example_secrets: dict[str, str]
) -> None:
    secret_values = generated_secrets(deployment) | set(example_secrets.values())
    seen: set[str] = set()

    for resource in deployment.resources:
        for text, covered in exposed_strings(resource.inputs):
            leaked = {value for value in secret_values if value in text}
            seen |= leaked
            assert covered or not leaked, f"{resource.type} {resource.name} exposes a secret"

    assert set(example_secrets.values()) <= seen, "each config secret reached its ciphertext"


def test_client_secrets_reach_agentcore_only_through_secrets_manager(
    deployment: Deployment,
) -> None:
    (version,) = deployment.of_type("aws:secretsmanager/secretVersion:SecretVersion")
    (policy,) = deployment.of_type("aws:secretsmanager/secretPolicy:SecretPolicy")
    role = deployment.named("aws:iam/role:Role", "sales-assistant-role")

    assert is_secret(version.inputs["secretString"])
    allow, deny = statements(policy.plain("policy"))
    assert allow["Principal"] == {"AWS": role.outputs["arn"]}
    assert deny["Effect"] == "Deny"
    assert deny["Condition"]["StringNotEquals"]["aws:PrincipalArn"] == [
        role.outputs["arn"],
        DEPLOYER_ROLE,
    ]


def test_only_digests_of_client_secrets_reach_the_table(deployment: Deployment) -> None:
    digests = [
        resource
        for resource in deployment.of_type("aws:dynamodb/tableItem:TableItem")
        if resource.name.endswith("-digest")
    ]

    assert sorted(resource.name for resource in digests) == [
        "crm-digest",
        "crm-reconciler-digest",
        "finance-reporter-digest",
        "sales-assistant-client-digest",
        "support-triage-digest",
    ]
    for resource in digests:
        assert is_secret(resource.inputs["item"])
        value = json.loads(json.loads(resource.plain("item"))["value"]["S"])
        assert set(value) == {"sha256"} and len(value["sha256"]) == 64


def test_connection_secrets_are_stored_as_kms_ciphertext(
    deployment: Deployment, example_secrets: dict[str, str]
) -> None:
    ciphertexts = deployment.of_type("aws:kms/ciphertext:Ciphertext")
    vault_key = deployment.named(KMS_KEY, "vault-key")

    assert {resource.plain("plaintext") for resource in ciphertexts} == set(
        example_secrets.values()
    )
    for resource in ciphertexts:
        assert is_secret(resource.inputs["plaintext"])
        assert resource.plain("keyId") == vault_key.outputs["arn"]
        assert resource.plain("context")["fleetid:purpose"] == "provisioned-secret"


def test_the_function_environment_holds_no_secret(
    deployment: Deployment, example_secrets: dict[str, str]
) -> None:
    (function,) = deployment.of_type("aws:lambda/function:Function")
    variables = function.plain("environment")["variables"]
    values = set(generated_secrets(deployment)) | set(example_secrets.values())

    assert not any(value in text for text in variables.values() for value in values)
    assert set(variables) >= {"FLEETID_TABLE", "FLEETID_BUCKET", "FLEETID_WRAPPING_KEY"}


def test_agents_elsewhere_get_credentials_as_secret_outputs(deployment: Deployment) -> None:
    assert "clients" in deployment.secret_outputs
    assert sorted(deployment.outputs["clients"]) == [
        "crm-reconciler",
        "finance-reporter",
        "support-triage",
    ]
    assert deployment.outputs["clients"]["crm-reconciler"]["client_secret"].startswith("fis_")
    public = {name for name in deployment.outputs if name not in deployment.secret_outputs}
    for name in public:
        text = json.dumps(deployment.outputs[name], default=str)
        assert not any(value in text for value in generated_secrets(deployment)), name


def test_a_resource_that_introspects_gets_credentials_as_a_secret_output(
    deployment: Deployment,
) -> None:
    assert "resourceClients" in deployment.secret_outputs
    assert sorted(deployment.outputs["resourceClients"]) == ["crm"]
    crm = deployment.outputs["resourceClients"]["crm"]
    assert crm["client_id"] == "crm"
    assert crm["client_secret"].startswith("fis_")
    item = json.loads(
        deployment.named("aws:dynamodb/tableItem:TableItem", "crm-digest").plain("item")
    )
    # The record `StoredClientSecrets` reads for the client id `crm`.
    assert item["pk"] == {"S": "client_secret#crm"}
    value = json.loads(item["value"]["S"])
    assert value == {"sha256": hashlib.sha256(crm["client_secret"].encode()).hexdigest()}


# --- storage, keys and IAM --------------------------------------------------------------------


def test_symmetric_keys_rotate(deployment: Deployment) -> None:
    keys = deployment.of_type(KMS_KEY)

    assert sorted(key.name for key in keys) == ["identity-signing-wrap-key", "vault-key"]
    assert all(key.plain("enableKeyRotation") is True for key in keys)


def test_only_the_server_role_uses_the_keys(deployment: Deployment) -> None:
    server_role = deployment.named("aws:iam/role:Role", "identity-role").outputs["arn"]

    for key in deployment.of_type(KMS_KEY):
        for statement in statements(key.plain("policy")):
            uses = {
                action
                for action in as_list(statement["Action"])
                if action.split(":")[1].startswith(("Decrypt", "Encrypt", "Generate", "ReEncrypt"))
            }
            if statement["Principal"]["AWS"] != server_role:
                assert uses <= {"kms:Encrypt"}, f"{key.name}: only the server may decrypt"
            if uses:
                assert statement["Condition"]["StringEquals"][
                    "kms:EncryptionContext:fleetid:fleet"
                ] == ("acme-agents")

    wrap = deployment.named(KMS_KEY, "identity-signing-wrap-key")
    (_, server) = statements(wrap.plain("policy"))
    assert server["Condition"]["StringEquals"]["kms:EncryptionContext:fleetid:purpose"] == (
        "signing-key"
    )


def test_the_bucket_is_private_versioned_and_encrypted(deployment: Deployment) -> None:
    (block,) = deployment.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    (versioning,) = deployment.of_type("aws:s3/bucketVersioning:BucketVersioning")
    (encryption,) = deployment.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )

    assert all(
        block.plain(flag) is True
        for flag in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )
    assert versioning.plain("versioningConfiguration") == {"status": "Enabled"}
    (rule,) = encryption.plain("rules")
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"


def test_the_table_is_on_demand_with_recovery_and_ttl(deployment: Deployment) -> None:
    (table,) = deployment.of_type("aws:dynamodb/table:Table")

    assert table.plain("billingMode") == "PAY_PER_REQUEST"
    assert table.plain("pointInTimeRecovery") == {"enabled": True}
    assert table.plain("ttl") == {"attributeName": TTL_ATTRIBUTE, "enabled": True}
    assert (table.plain("hashKey"), table.plain("rangeKey")) == ("pk", "sk")


def test_no_data_action_is_granted_on_every_resource(deployment: Deployment) -> None:
    for policy in deployment.of_type(ROLE_POLICY):
        for statement in statements(policy.plain("policy")):
            actions = set(as_list(statement["Action"]))
            for resource in as_list(statement["Resource"]):
                assert resource != "*" or actions <= RESOURCELESS, policy.name
                assert not resource.endswith(":*:*"), policy.name


def test_the_server_may_touch_only_its_own_table_bucket_and_logs(deployment: Deployment) -> None:
    table = deployment.named("aws:dynamodb/table:Table", "identity-table").outputs["arn"]
    bucket = deployment.named("aws:s3/bucket:Bucket", "identity-revisions").outputs["arn"]
    logs = deployment.named("aws:cloudwatch/logGroup:LogGroup", "identity-logs").outputs["arn"]
    policy = deployment.named(ROLE_POLICY, "identity-policy").plain("policy")
    granted = {
        statement["Sid"]: statement for statement in statements(policy) if "Sid" in statement
    }

    assert granted["Store"]["Resource"] == [table, f"{table}/index/audit_by_time"]
    assert "dynamodb:Scan" not in granted["Store"]["Action"]
    assert granted["ReadRevisions"]["Resource"] == f"{bucket}/revisions/*"
    assert granted["ReadRevisions"]["Action"] == "s3:GetObject"
    assert granted["Logs"]["Resource"] == f"{logs}:*"


# --- the function and the revision ------------------------------------------------------------


def test_the_function_is_python_312_on_the_archives_architecture(deployment: Deployment) -> None:
    (function,) = deployment.of_type("aws:lambda/function:Function")

    assert function.plain("runtime") == "python3.12"
    assert function.plain("handler") == "fleetid.deploy.handler.handler"
    assert function.plain("architectures") == ["arm64"]
    (url,) = deployment.of_type("aws:lambda/functionUrl:FunctionUrl")
    assert url.plain("authorizationType") == "NONE"


def test_the_revision_goes_live_through_its_object_and_the_pointer(
    deployment: Deployment, example_revision: Revision
) -> None:
    objects = {
        resource.plain("key"): resource
        for resource in deployment.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    }

    assert set(objects) == {f"revisions/{example_revision.hash}.json", "revisions/live"}
    pointer = json.loads(objects["revisions/live"].plain("content"))
    assert pointer == {
        "format": "fleetid.pointer/1",
        "revision": example_revision.hash,
        "issuer": ISSUER,
    }
    assert deployment.outputs["revision"] == example_revision.hash
    assert deployment.outputs["issuer"] == ISSUER
    assert deployment.outputs["discoveryUrl"] == ISSUER + DISCOVERY_PATH
    assert deployment.outputs["jwksUrl"] == ISSUER + "/jwks.json"


def test_the_same_fleet_registers_the_same_inputs(
    deployment: Deployment, repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    again = run_program(repo_root / "fleet.yaml", secrets=example_secrets, archive=archive)

    def inputs(run: Deployment) -> dict[str, Any]:
        return {
            (resource.type, resource.name): json.dumps(
                plain(resource.inputs), default=str, sort_keys=True
            )
            for resource in run.custom
            if resource.type != "aws:lambda/function:Function"  # a FileArchive object
        }

    assert inputs(again) == inputs(deployment)
