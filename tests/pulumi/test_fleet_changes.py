"""The program on other fleets: agents added and removed, a gateway shared by several agents,
a fleet with no AgentCore agent, missing secrets, custom domains, KMS Sign custody, and the
policy change `pulumi preview` reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components import MissingConnectionSecret
from components.mocks import Deployment, FleetMocks, run_program
from fleetid.deploy.revision import pack_document, revision_document
from fleetid.fleet.compile import compile_sources
from fleetid.fleet.load import read_sources
from fleetid.server.tokens import agent_audience

RUNTIME = "aws:bedrock/agentcoreAgentRuntime:AgentcoreAgentRuntime"
GATEWAY = "aws:bedrock/agentcoreGateway:AgentcoreGateway"

TICKET_BOT = """\
  ticket-bot:
    runtime: agentcore
    description: Opens support tickets from chat
    scopes:
      tools: [tools:tickets]
    roles: [support]
    agentcore:
      artifact:
        code:
          bucket: acme-agent-code
          prefix: ticket-bot/v1.zip
          entry_point: [main.py]
      network:
        mode: VPC
        subnets: [subnet-0abc123]
        security_groups: [sg-0abc123]
"""

TINY = """\
version: 1
identity:
  name: tiny
roles:
  reader:
    description: Reads
resources:
  api:
    kind: api
    identifier: https://api.tiny.example
    scopes:
      api:read:
        description: Read
        roles: [reader]
agents:
  batch:
    runtime: langgraph
    description: A batch job
    scopes:
      api: [api:read]
    roles: [reader]
"""

Edit = Callable[[str], str]


@pytest.fixture
def fleet_copy(
    tmp_path: Path, example_fleet_text: str, example_policy_texts: dict[str, str]
) -> Callable[[Edit], Path]:
    """The example fleet, edited, in a folder of its own with the example's policies."""

    def write(edit: Edit) -> Path:
        folder = tmp_path / "fleet"
        (folder / "policies").mkdir(parents=True, exist_ok=True)
        for name, text in example_policy_texts.items():
            (folder / "policies" / name).write_text(text)
        path = folder / "fleet.yaml"
        path.write_text(edit(example_fleet_text))
        compile_sources(read_sources(path))  # the edit keeps the fleet valid
        return path

    return write


def add_ticket_bot(text: str) -> str:
    return text.replace("\ngateways:", f"{TICKET_BOT}\ngateways:")


def remove_crm_reconciler(text: str) -> str:
    start = text.index("  crm-reconciler:")
    return text[:start] + text[text.index("\ngateways:") :]


def names(deployment: Deployment, token: str) -> list[str]:
    return sorted(resource.name for resource in deployment.of_type(token))


def authorizer(resource: Any) -> dict[str, Any]:
    return dict(resource.plain("authorizerConfiguration")["customJwtAuthorizer"])


def test_an_added_agentcore_agent_gets_its_own_runtime(
    fleet_copy: Callable[[Edit], Path], archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(fleet_copy(add_ticket_bot), secrets=example_secrets, archive=archive)

    assert names(deployment, RUNTIME) == ["sales-assistant-runtime", "ticket-bot-runtime"]
    runtime = deployment.named(RUNTIME, "ticket-bot-runtime")
    assert authorizer(runtime)["allowedClients"] == ["ticket-bot"]
    assert runtime.plain("agentRuntimeArtifact")["codeConfiguration"] == {
        "entryPoints": ["main.py"],
        "runtime": "PYTHON_3_12",
        "code": {"s3": {"bucket": "acme-agent-code", "prefix": "ticket-bot/v1.zip"}},
    }
    assert runtime.plain("networkConfiguration") == {
        "networkMode": "VPC",
        "networkModeConfig": {"subnets": ["subnet-0abc123"], "securityGroups": ["sg-0abc123"]},
    }
    policy = json.loads(
        deployment.named("aws:iam/rolePolicy:RolePolicy", "ticket-bot-policy").plain("policy")
    )
    code = [statement for statement in policy["Statement"] if statement["Sid"] == "ReadCode"]
    assert code[0]["Resource"] == "arn:aws:s3:::acme-agent-code/ticket-bot/v1.zip"
    assert "ticket-bot" not in deployment.outputs["clients"]


def test_a_removed_agent_leaves_no_credentials_behind(
    fleet_copy: Callable[[Edit], Path], archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        fleet_copy(remove_crm_reconciler), secrets=example_secrets, archive=archive
    )

    assert "crm-reconciler-digest" not in names(deployment, "aws:dynamodb/tableItem:TableItem")
    assert sorted(deployment.outputs["clients"]) == ["finance-reporter", "support-triage"]


def test_a_gateway_shared_by_several_agents_admits_each_of_them(
    fleet_copy: Callable[[Edit], Path], archive: Path, example_secrets: dict[str, str]
) -> None:
    shared = fleet_copy(
        lambda text: text.replace(
            "    agents: [sales-assistant]\n", "    agents: [sales-assistant, support-triage]\n"
        )
    )
    deployment = run_program(shared, secrets=example_secrets, archive=archive)

    (gateway,) = deployment.of_type(GATEWAY)
    trusted = authorizer(gateway)
    assert trusted["allowedClients"] == ["sales-assistant", "support-triage"]
    assert trusted["allowedAudiences"] == [
        agent_audience("sales-assistant"),
        agent_audience("support-triage"),
        "https://tools.acme.example.com/mcp",
    ]
    # One string claim matches one value: allowed_clients is what admits both agents.
    assert trusted.get("customClaims", []) == []


def test_a_fleet_without_agentcore_agents_is_a_directory(tmp_path: Path, archive: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(TINY)

    deployment = run_program(path, archive=archive)

    assert deployment.of_type(RUNTIME) == []
    assert deployment.of_type(GATEWAY) == []
    assert deployment.of_type("aws:secretsmanager/secret:Secret") == []
    assert deployment.of_type("aws:kms/ciphertext:Ciphertext") == []
    assert list(deployment.outputs["clients"]) == ["batch"]
    assert "clients" in deployment.secret_outputs
    assert deployment.outputs["runtimes"] == {}


def test_a_missing_connection_secret_stops_the_program_before_anything_exists(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    mocks = FleetMocks()
    only_calendar = {"fleetid:google-calendar-client-secret": "GOCSPX-example"}

    with pytest.raises(MissingConnectionSecret) as raised:
        run_program(repo_root / "fleet.yaml", secrets=only_calendar, archive=archive, mocks=mocks)

    (problem,) = raised.value.problems
    assert "connection reporting" in problem
    assert "pulumi config set --secret reporting-api-key" in problem
    assert [resource for resource in mocks.resources if resource.custom] == []


def test_a_connection_secret_set_in_plain_text_is_refused(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    plain_key = {"fleetid:reporting-api-key": example_secrets["fleetid:reporting-api-key"]}
    calendar = {"fleetid:google-calendar-client-secret": "GOCSPX-example"}

    with pytest.raises(
        MissingConnectionSecret, match="fleetid:reporting-api-key is not encrypted"
    ):
        run_program(repo_root / "fleet.yaml", config=plain_key, secrets=calendar, archive=archive)


def test_a_custom_domain_is_the_issuer_from_the_start(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        repo_root / "fleet.yaml",
        config={
            "fleetid:domain": "id.acme.example.com",
            "fleetid:certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc",
        },
        secrets=example_secrets,
        archive=archive,
    )

    assert deployment.outputs["issuer"] == "https://id.acme.example.com"
    (function,) = deployment.of_type("aws:lambda/function:Function")
    assert function.plain("environment")["variables"]["FLEETID_ISSUER"] == (
        "https://id.acme.example.com"
    )
    (distribution,) = deployment.of_type("aws:cloudfront/distribution:Distribution")
    assert distribution.plain("aliases") == ["id.acme.example.com"]
    (origin,) = distribution.plain("origins")
    assert origin["domainName"] == "abcdefghijklmnop.lambda-url.us-east-1.on.aws"
    assert deployment.outputs["dnsTarget"] == "d111111abcdef8.cloudfront.net"
    runtime = deployment.named(RUNTIME, "sales-assistant-runtime")
    assert authorizer(runtime)["discoveryUrl"] == (
        "https://id.acme.example.com/.well-known/openid-configuration"
    )


def test_kms_sign_custody_provisions_an_rsa_signing_key(
    fleet_copy: Callable[[Edit], Path], archive: Path, example_secrets: dict[str, str]
) -> None:
    signed = fleet_copy(lambda text: text.replace("custody: kms-wrapped", "custody: kms-sign"))
    deployment = run_program(signed, secrets=example_secrets, archive=archive)

    key = deployment.named("aws:kms/key:Key", "identity-signing-rs256")
    assert key.plain("keyUsage") == "SIGN_VERIFY"
    assert key.plain("customerMasterKeySpec") == "RSA_2048"
    (function,) = deployment.of_type("aws:lambda/function:Function")
    variables = function.plain("environment")["variables"]
    assert json.loads(variables["FLEETID_SIGNING_KEYS"]) == {"RS256": key.outputs["arn"]}
    assert variables["FLEETID_KEY_CUSTODY"] == "kms-sign"
    policy = json.loads(
        deployment.named("aws:iam/rolePolicy:RolePolicy", "identity-policy").plain("policy")
    )
    (signing,) = [s for s in policy["Statement"] if "kms:Sign" in s["Action"]]
    assert signing["Resource"] == [key.outputs["arn"]]


# --- what `pulumi preview` says ---------------------------------------------------------------


def deployed_archive(path: Path) -> dict[str, str]:
    sources = read_sources(path)
    revision = compile_sources(sources)
    return {"revisionArchive": pack_document(revision_document(sources, revision.hash))}


def test_preview_says_in_words_who_gains_access(
    fleet_copy: Callable[[Edit], Path],
    repo_root: Path,
    archive: Path,
    example_secrets: dict[str, str],
) -> None:
    widened = fleet_copy(
        lambda text: text.replace(
            "      tools: [tools:search]\n    connections: [reporting]",
            "      tools: [tools:search, tools:tickets]\n    connections: [reporting]",
        )
    )
    deployment = run_program(
        widened,
        secrets=example_secrets,
        archive=archive,
        preview=True,
        deployed_outputs=deployed_archive(repo_root / "fleet.yaml"),
    )

    change = deployment.outputs["policyChange"]
    assert change.startswith("fleet diff ")
    assert "finance-reporter" in change and "tools:tickets" in change
    assert any(message.startswith("fleet diff ") for message in deployment.messages)


def test_preview_of_an_unchanged_fleet_says_so(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        repo_root / "fleet.yaml",
        secrets=example_secrets,
        archive=archive,
        preview=True,
        deployed_outputs=deployed_archive(repo_root / "fleet.yaml"),
    )

    assert deployment.outputs["policyChange"].startswith("Policy unchanged")


def test_preview_of_a_first_deployment_has_nothing_to_compare(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        repo_root / "fleet.yaml", secrets=example_secrets, archive=archive, preview=True
    )

    assert deployment.outputs["policyChange"].startswith("No revision of this stack")
    assert any("will be the first" in message for message in deployment.messages)


def test_preview_survives_an_unreadable_deployed_revision(
    repo_root: Path, archive: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        repo_root / "fleet.yaml",
        secrets=example_secrets,
        archive=archive,
        preview=True,
        deployed_outputs={"revisionArchive": "not-base64-gzip"},
    )

    assert "could not be read" in deployment.outputs["policyChange"]


def test_preview_without_a_built_archive_warns_and_goes_on(
    repo_root: Path, tmp_path: Path, example_secrets: dict[str, str]
) -> None:
    deployment = run_program(
        repo_root / "fleet.yaml",
        secrets=example_secrets,
        archive=tmp_path / "missing.zip",
        preview=True,
    )

    assert any("does not exist" in message for message in deployment.messages)
    assert deployment.of_type("aws:lambda/function:Function")


def test_a_deployment_without_a_built_archive_stops(
    repo_root: Path, tmp_path: Path, example_secrets: dict[str, str]
) -> None:
    with pytest.raises(FileNotFoundError, match=r"fleetid\.deploy\.package"):
        run_program(
            repo_root / "fleet.yaml", secrets=example_secrets, archive=tmp_path / "missing.zip"
        )
