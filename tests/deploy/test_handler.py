"""The Lambda handler, driven with Function URL events (HTTP API payload 2.0) against moto.

One moto account serves the whole module: the table created with the store's own schema, the
revisions bucket holding the example fleet's revision object and pointer, a symmetric KMS key
for kms-wrapped custody, and the agents' client secret digests, written as the Pulumi program
writes them. Each test then goes through `fleetid.deploy.handler.handler`, as Lambda would.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import boto3
import httpx
import jwt
import pytest
from moto import mock_aws

from fleetid.authorizer import check_token, inbound_authorizer
from fleetid.deploy import handler, settings
from fleetid.deploy.records import (
    CLIENT_SECRET_NAMESPACE,
    PROVISIONED_SECRET_NAMESPACE,
    provisioned_secret_context,
    record_item,
)
from fleetid.deploy.revision import (
    POINTER_KEY,
    RevisionIntegrityError,
    pointer_document,
    revision_document,
    revision_key,
)
from fleetid.deploy.ring import RING_NAMESPACE
from fleetid.deploy.runtime import AwsClients, build_server
from fleetid.deploy.secrets import CIPHERTEXT_FORMAT
from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetSources
from fleetid.server.clients import confidential_clients
from fleetid.server.grants.authorization_code import CODE_NAMESPACE, s256
from fleetid.server.issuance import GRANT_NAMESPACE, Grant
from fleetid.server.tokens import digest, new_secret
from fleetid.store import DynamoDBStore

TABLE = "fleetid-test"
BUCKET = "fleetid-test-revisions"
ISSUER = "https://id.acme.example.test"
HOST = "abcdefghijklmnop.lambda-url.us-east-1.on.aws"
CRM = "https://crm.acme.example.com"
REDIRECT = "https://sales.acme.example.com/oauth/callback"
VAULT_ALIAS = "alias/fleetid/test/vault"
REPORTING_KEY = "rk_live_provisioned_at_deploy"


@dataclass
class Deployed:
    dynamodb: Any
    s3: Any
    kms: Any
    key_arn: str
    sources: FleetSources
    revision: Revision
    secrets: dict[str, str]
    store: DynamoDBStore


def url_event(
    method: str,
    path: str,
    *,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    """A Function URL event, shaped as AWS delivers one."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": HOST, "user-agent": "pytest", **(headers or {})},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": HOST.split(".", maxsplit=1)[0],
            "domainName": HOST,
            "domainPrefix": HOST.split(".", maxsplit=1)[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.7",
                "userAgent": "pytest",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "03/Dec/2025:12:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = handler.handler(event, None)
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()

    return int(response["statusCode"]), json.loads(body) if body else {}


def token_request(client: str, secret: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    return form_request("/token", client, secret, form)


def form_request(
    path: str, client: str, secret: str, form: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """A form POSTed to `path`, authenticated with Basic as `client`."""
    credentials = base64.b64encode(f"{client}:{secret}".encode()).decode()
    return call(
        url_event(
            "POST",
            path,
            headers={
                "authorization": f"Basic {credentials}",
                "content-type": "application/x-www-form-urlencoded",
            },
            body=urlencode(form),
        )
    )


def publish(s3: Any, sources: FleetSources, issuer: str | None = ISSUER) -> Revision:
    """Upload a revision object and point at it, as `RevisionRelease` does."""
    revision = compile_sources(sources)
    s3.put_object(
        Bucket=BUCKET,
        Key=revision_key(revision.hash),
        Body=revision_document(sources, revision.hash),
    )
    s3.put_object(Bucket=BUCKET, Key=POINTER_KEY, Body=pointer_document(revision.hash, issuer))

    return revision


def environment(key_arn: str, **overrides: str) -> dict[str, str]:
    return {
        settings.TABLE: TABLE,
        settings.BUCKET: BUCKET,
        settings.FLEET: "acme-agents",
        settings.WRAPPING_KEY: key_arn,
        settings.VAULT_KEY: VAULT_ALIAS,
        settings.REVISION_CHECK_SECONDS: "0",
        **overrides,
    }


@pytest.fixture(scope="module")
def example_sources(example_fleet_text: str, example_policy_texts: dict[str, str]) -> FleetSources:
    return FleetSources(
        "fleet.yaml",
        example_fleet_text.encode(),
        {f"policies/{name}": text.encode() for name, text in example_policy_texts.items()},
    )


@pytest.fixture(scope="module")
def deployed(example_sources: FleetSources) -> Iterator[Deployed]:
    with mock_aws():
        dynamodb, s3, kms = (boto3.client(name) for name in ("dynamodb", "s3", "kms"))
        DynamoDBStore.create_table(dynamodb, TABLE)
        s3.create_bucket(Bucket=BUCKET)
        key_arn = kms.create_key(Description="wraps signing keys")["KeyMetadata"]["Arn"]
        revision = publish(s3, example_sources)

        # The vault's key and the reporting API key, as the Vault component provisions them.
        vault_key = kms.create_key(Description="vault")["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName=VAULT_ALIAS, TargetKeyId=vault_key)
        ciphertext = kms.encrypt(
            KeyId=vault_key,
            Plaintext=REPORTING_KEY.encode(),
            EncryptionContext=provisioned_secret_context("acme-agents", "reporting-api-key"),
        )["CiphertextBlob"]
        provisioned = {
            "format": CIPHERTEXT_FORMAT,
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "key_id": vault_key,
        }
        dynamodb.put_item(
            TableName=TABLE,
            Item=record_item(PROVISIONED_SECRET_NAMESPACE, "reporting-api-key", provisioned),
        )

        # The digests, as each AgentClient's and ResourceClient's TableItem writes them.
        agent_secrets = {
            client_id: new_secret("fis") for client_id in confidential_clients(revision.fleet)
        }
        for agent, secret in agent_secrets.items():
            item = record_item(CLIENT_SECRET_NAMESPACE, agent, {"sha256": digest(secret)})
            dynamodb.put_item(TableName=TABLE, Item=item)

        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment(key_arn).items():
                patch.setenv(name, value)
            handler.reset()
            yield Deployed(
                dynamodb,
                s3,
                kms,
                key_arn,
                example_sources,
                revision,
                agent_secrets,
                DynamoDBStore(TABLE, client=dynamodb),
            )
            handler.reset()


def test_discovery_names_the_issuer_from_the_pointer(deployed: Deployed) -> None:
    status, document = call(url_event("GET", "/.well-known/openid-configuration"))

    assert status == 200
    assert document["issuer"] == ISSUER
    assert document["jwks_uri"] == f"{ISSUER}/jwks.json"
    assert document["token_endpoint"] == f"{ISSUER}/token"


def test_jwks_comes_from_a_ring_stored_only_wrapped(deployed: Deployed) -> None:
    status, jwks = call(url_event("GET", "/jwks.json"))

    assert status == 200
    assert {key["alg"] for key in jwks["keys"]} == {"RS256"}
    assert len(jwks["keys"]) == 2, "the active key and the next one"

    ring = deployed.store.get(RING_NAMESPACE, "acme-agents/RS256")
    assert ring is not None
    stored = json.dumps(ring.value)
    assert "kms-encrypted-pkcs8-der" in stored
    assert "PRIVATE KEY" not in stored
    assert {key["kid"] for key in ring.value["keys"]} == {key["kid"] for key in jwks["keys"]}


def test_client_credentials_on_the_dynamodb_store(deployed: Deployed) -> None:
    status, body = token_request(
        "crm-reconciler",
        deployed.secrets["crm-reconciler"],
        {"grant_type": "client_credentials", "resource": CRM, "scope": "crm:read"},
    )

    assert status == 200, body
    claims = verify(body["access_token"], audience=CRM)
    assert claims["client_id"] == claims["azp"] == "crm-reconciler"
    assert claims["scope"] == "crm:read"
    assert claims["revision"] == deployed.revision.hash

    events = deployed.store.audit(agent="crm-reconciler")
    assert any(event.get("jti") == claims["jti"] for event in events)


def test_the_crms_server_introspects_on_the_dynamodb_store(deployed: Deployed) -> None:
    _, issued = token_request(
        "crm-reconciler",
        deployed.secrets["crm-reconciler"],
        {"grant_type": "client_credentials", "resource": CRM, "scope": "crm:read"},
    )
    token = issued["access_token"]

    status, description = form_request(
        "/introspect", "crm", deployed.secrets["crm"], {"token": token}
    )
    wrong, refused = form_request("/introspect", "crm", "fis_wrong", {"token": token})

    assert status == 200, description
    assert description["active"] is True
    assert description["aud"] == CRM
    assert description["client_id"] == "crm-reconciler"
    assert wrong == 401
    assert refused["error"] == "invalid_client"


def test_a_wrong_secret_is_refused(deployed: Deployed) -> None:
    status, body = token_request(
        "crm-reconciler", "fis_wrong", {"grant_type": "client_credentials", "resource": CRM}
    )

    assert status == 401
    assert body["error"] == "invalid_client"


def test_token_exchange_for_a_signed_in_user(deployed: Deployed) -> None:
    secret = deployed.secrets["sales-assistant"]
    verifier = secrets.token_urlsafe(48)
    code = sign_in(deployed, "sales-assistant", "alice", verifier)

    status, signed_in = token_request(
        "sales-assistant",
        secret,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
    )
    assert status == 200, signed_in
    # What the agent's runtime on AgentCore receives, checked as its authorizer would.
    verdict = check_token(
        signed_in["access_token"],
        inbound_authorizer(deployed.revision, "sales-assistant", ISSUER),
        client=httpx.Client(transport=httpx.MockTransport(through_handler)),
    )
    assert verdict.accepted, verdict.reason

    status, exchanged = token_request(
        "sales-assistant",
        secret,
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": signed_in["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": CRM,
            "scope": "crm:read",
        },
    )
    assert status == 200, exchanged
    claims = verify(exchanged["access_token"], audience=CRM)
    assert claims["sub"] == "acme:alice"
    assert claims["scope"] == "crm:read"
    assert claims["act"]["sub"] == "sales-assistant"


def test_a_provisioned_api_key_reaches_its_agent_by_token_exchange(deployed: Deployed) -> None:
    secret = deployed.secrets["finance-reporter"]
    verifier = secrets.token_urlsafe(48)
    finance = "https://finance.acme.example.com/callback"
    code = sign_in(deployed, "finance-reporter", "dan", verifier, consent={}, redirect_uri=finance)
    status, signed_in = token_request(
        "finance-reporter",
        secret,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": finance,
            "code_verifier": verifier,
        },
    )
    assert status == 200, signed_in

    status, fetched = token_request(
        "finance-reporter",
        secret,
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": signed_in["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": "urn:fleetid:connection:reporting",
        },
    )

    assert status == 200, fetched
    assert REPORTING_KEY in json.dumps(fetched)
    # Sealed again under the vault's own envelope: the table never holds it in the clear.
    items = deployed.dynamodb.scan(TableName=TABLE)["Items"]
    assert REPORTING_KEY not in json.dumps(items)


def test_sign_in_for_people_is_not_offered(deployed: Deployed) -> None:
    challenge = s256(secrets.token_urlsafe(48))
    query = urlencode(
        {
            "response_type": "code",
            "client_id": "sales-assistant",
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": CRM,
            "scope": "crm:read",
        }
    )
    response = handler.handler(url_event("GET", "/authorize", query=query), None)

    assert "not available" in response["body"]
    assert "alice" not in response["body"], "no dev user is ever listed on AWS"


def test_a_pointer_switch_takes_effect_without_a_redeploy(
    deployed: Deployed, caplog: pytest.LogCaptureFixture
) -> None:
    edited = FleetSources(
        deployed.sources.fleet_name,
        deployed.sources.fleet.replace(
            b"Nightly LangGraph job that merges duplicate CRM accounts",
            b"Nightly job that merges duplicate CRM accounts and contacts",
        ),
        deployed.sources.policies,
    )
    before = issued_revision(deployed)

    try:
        second = publish(deployed.s3, edited)
        assert second.hash != before
        assert issued_revision(deployed) == second.hash

        # A pointer to an object that does not verify is refused; the live revision stays.
        forged = compile_sources(deployed.sources).hash
        deployed.s3.put_object(
            Bucket=BUCKET, Key=revision_key(forged), Body=revision_document(edited, second.hash)
        )
        deployed.s3.put_object(
            Bucket=BUCKET, Key=POINTER_KEY, Body=pointer_document(forged, ISSUER)
        )
        with caplog.at_level(logging.ERROR, logger="fleetid.deploy"):
            assert issued_revision(deployed) == second.hash
        assert "refused" in caplog.text
    finally:
        publish(deployed.s3, deployed.sources)

    assert issued_revision(deployed) == before


def _without_support_triage(sources: FleetSources) -> FleetSources:
    text = sources.fleet.decode()
    start, end = text.index("  support-triage:\n"), text.index("  finance-reporter:\n")
    return FleetSources(sources.fleet_name, (text[:start] + text[end:]).encode(), sources.policies)


def _grant_stands(deployed: Deployed, grant_id: str) -> bool:
    record = deployed.store.get(GRANT_NAMESPACE, grant_id)
    return record is not None and not record.value.get("revoked")


def test_a_pointer_switch_that_removes_an_agent_ends_its_sign_ins(deployed: Deployed) -> None:
    verifier = secrets.token_urlsafe(48)
    sign_in(
        deployed,
        "support-triage",
        "alice",
        verifier,
        redirect_uri="https://support.acme.example.com/callback",
    )
    sign_in(deployed, "sales-assistant", "alice", verifier)
    grants = {
        grant_id: record.value["client_id"]
        for grant_id, record in deployed.store.scan(GRANT_NAMESPACE)
        if _grant_stands(deployed, grant_id)
    }
    assert {"support-triage", "sales-assistant"} <= set(grants.values())
    assert issued_revision(deployed) == deployed.revision.hash

    try:
        without = publish(deployed.s3, _without_support_triage(deployed.sources))
        assert "support-triage" not in without.fleet.agents
        assert issued_revision(deployed) == without.hash

        for grant_id, agent in grants.items():
            assert _grant_stands(deployed, grant_id) is (agent != "support-triage"), agent
    finally:
        publish(deployed.s3, deployed.sources)

    # Back in the fleet, the agent gets none of its sign-ins back.
    assert issued_revision(deployed) == deployed.revision.hash
    for grant_id, agent in grants.items():
        assert _grant_stands(deployed, grant_id) is (agent != "support-triage"), agent


def test_a_cold_start_refuses_an_object_that_is_not_its_revision(deployed: Deployed) -> None:
    fleet = compile_sources(deployed.sources)
    other = b"version: 1\nidentity:\n  name: acme-agents\n"
    deployed.s3.put_object(
        Bucket=BUCKET,
        Key=revision_key(fleet.hash),
        Body=revision_document(FleetSources("fleet.yaml", other, {}), fleet.hash),
    )
    try:
        with pytest.raises(RevisionIntegrityError):
            build_server(
                settings.LambdaSettings.from_environment(environment(deployed.key_arn)),
                AwsClients(deployed.dynamodb, deployed.s3, deployed.kms),
            )
    finally:
        publish(deployed.s3, deployed.sources)


def test_kms_sign_custody_publishes_the_kms_public_key(deployed: Deployed) -> None:
    key = deployed.kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]
    chosen = settings.LambdaSettings.from_environment(
        environment(
            "",
            **{
                settings.KEY_CUSTODY: "kms-sign",
                settings.WRAPPING_KEY: "",
                settings.SIGNING_KEYS: json.dumps({"RS256": key["Arn"]}),
            },
        )
    )
    server = build_server(chosen, AwsClients(deployed.dynamodb, deployed.s3, deployed.kms))

    (published,) = server.context.tokens.jwks()["keys"]
    public = deployed.kms.get_public_key(KeyId=key["Arn"])["PublicKey"]
    assert jwt.algorithms.RSAAlgorithm.from_jwk(published).public_numbers() == (
        serialization_load(public).public_numbers()
    )


def test_the_handler_module_imports_in_under_300_ms() -> None:
    probe = (
        "import sys, time; started = time.perf_counter(); import fleetid.deploy.handler; "
        "elapsed = time.perf_counter() - started; "
        "heavy = sorted(m for m in ('boto3', 'pydantic', 'starlette', 'mangum') "
        "if m in sys.modules); print(elapsed, ','.join(heavy))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(3)
    ]

    assert min(float(run[0]) for run in runs) < 0.3
    assert all(len(run) == 1 for run in runs), "nothing heavy is imported with the handler"


# --- helpers ---------------------------------------------------------------------------------


def verify(token: str, *, audience: str) -> dict[str, Any]:
    _, jwks = call(url_event("GET", "/jwks.json"))
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [key for key in jwt.PyJWKSet.from_dict(jwks).keys if key.key_id == kid]
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=ISSUER
    )
    return claims


def issued_revision(deployed: Deployed) -> str:
    status, body = token_request(
        "crm-reconciler",
        deployed.secrets["crm-reconciler"],
        {"grant_type": "client_credentials", "resource": CRM, "scope": "crm:read"},
    )
    assert status == 200, body
    return str(jwt.decode(body["access_token"], options={"verify_signature": False})["revision"])


def sign_in(
    deployed: Deployed,
    agent: str,
    user: str,
    verifier: str,
    *,
    consent: Mapping[str, tuple[str, ...]] | None = None,
    redirect_uri: str = REDIRECT,
) -> str:
    """A consented sign-in grant and its code, as the authorization endpoint leaves them.

    With consent to several resources, or to none, the code redeems for a sign-in token
    addressed to the agent itself.
    """
    revision = deployed.revision
    person = revision.fleet.dev_users[user]
    now = int(time.time())
    grant = Grant(
        id=secrets.token_urlsafe(24),
        client_id=agent,
        user=user,
        tenant=person.tenant,
        groups=tuple(person.groups),
        consent={"crm": ("crm:read",), "tools": ("tools:search",)} if consent is None else consent,
        oidc_scopes=("openid",),
        name=person.name,
        email=person.email,
        auth_time=now,
        expires_at=now + 3600,
    )
    deployed.store.create(
        GRANT_NAMESPACE, grant.id, grant.as_record(), expires_at=grant.expires_at
    )
    code = new_secret("fic")
    deployed.store.create(
        CODE_NAMESPACE,
        digest(code),
        {
            "client_id": agent,
            "redirect_uri": redirect_uri,
            "code_challenge": s256(verifier),
            "grant": grant.id,
            "nonce": None,
            "resources": [],
        },
        expires_at=now + 60,
    )
    return code


def through_handler(request: httpx.Request) -> httpx.Response:
    """What AgentCore's authorizer fetches (discovery, then the JWKS), served by the handler."""
    assert request.url.host == "id.acme.example.test"
    response = handler.handler(url_event(request.method, request.url.path), None)
    return httpx.Response(response["statusCode"], content=response["body"].encode())


def serialization_load(der: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return load_der_public_key(der)
