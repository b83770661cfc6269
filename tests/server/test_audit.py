"""The audit trail: one line per decision, with when, which revision, which agent for whom
(subject, tenant, actor chain), on what resource, the scopes requested, granted and
refused with reasons, and the `jti` of the token issued."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from serverkit import (
    CLIENT_CREDENTIALS,
    CRM,
    RECONCILER,
    SALES,
    SUPPORT,
    Server,
    agent_urn,
    claims_of,
)

FIELDS = {
    "time",
    "revision",
    "agent",
    "subject",
    "tenant",
    "act",
    "resource",
    "requested",
    "granted",
    "refused",
    "jti",
}


def _events(server: Server, event: str) -> list[dict[str, Any]]:
    return [line for line in server.audit() if line["event"] == event]


def _delegated_exchange(server: Server, scope: str) -> Any:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    delegated = server.exchange(SALES, tokens["access_token"], agent_urn(SUPPORT))
    return server.exchange(SUPPORT, delegated.json()["access_token"], CRM, scope=scope)


def test_an_issued_token_has_its_whole_decision_on_one_line(server: Server) -> None:
    before = server.clock()

    response = _delegated_exchange(server, "crm:read crm:write")

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    [line] = [event for event in _events(server, "token_issued") if event["jti"] == claims["jti"]]
    assert set(line) >= FIELDS
    assert before <= line["time"] <= server.clock()
    assert line["revision"] == server.revision.hash == claims["revision"]
    assert line["agent"] == SUPPORT
    assert line["subject"] == "bob"
    assert line["tenant"] == "acme"
    assert line["act"] == [SUPPORT, SALES]
    assert line["resource"] == "crm"
    assert line["requested"] == ["crm:read", "crm:write"]
    assert line["granted"] == ["crm:read"]
    [refusal] = line["refused"]
    assert refusal["scope"] == "crm:write"
    assert refusal["code"] == "not_in_agent_list"
    assert SUPPORT in refusal["reason"]
    assert line["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert line["lifetime"] == claims["exp"] - claims["iat"]


def test_a_refusal_is_audited_with_its_reasons_and_no_jti(server: Server) -> None:
    response = _delegated_exchange(server, "crm:write")

    assert response.status_code == 400
    [line] = _events(server, "token_refused")
    assert set(line) >= FIELDS
    assert line["jti"] is None
    assert line["granted"] == []
    assert line["act"] == [SUPPORT, SALES]
    assert [(r["scope"], r["code"]) for r in line["refused"]] == [
        ("crm:write", "not_in_agent_list")
    ]


def test_a_machine_token_is_audited_with_no_subject(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    [line] = _events(server, "token_issued")
    assert line["jti"] == claims_of(token)["jti"]
    assert line["agent"] == RECONCILER
    assert line["subject"] is None
    assert line["tenant"] is None
    assert line["act"] == []
    assert line["granted"] == ["crm:read", "crm:write"]
    assert line["grant_type"] == CLIENT_CREDENTIALS


def test_consent_is_audited_per_resource_with_the_policys_reasons(server: Server) -> None:
    server.authorize(SALES, "alice", scope="openid crm:read crm:write", resources=[CRM])

    [line] = _events(server, "consent")
    assert line["subject"] == "alice"
    assert line["granted"] == ["crm:read"]
    [refusal] = line["refused"]
    assert refusal["code"] == "approval_required"
    assert "crm-write-needs-approval" in refusal["reason"]


def test_a_delegation_is_audited_with_its_act_chain_and_jti(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")

    delegated = server.exchange(SALES, tokens["access_token"], agent_urn(SUPPORT))

    [line] = _events(server, "delegation_issued")
    assert line["agent"] == SALES
    assert line["act"] == [SALES]
    assert line["jti"] == claims_of(delegated.json()["access_token"])["jti"]
    assert (line["subject"], line["tenant"]) == ("bob", "acme")
    assert line["revision"] == server.revision.hash


def test_a_sign_in_token_is_audited_with_its_person_and_revision(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid")

    [line] = _events(server, "sign_in_token_issued")
    assert (line["agent"], line["subject"], line["tenant"]) == (SALES, "bob", "acme")
    assert line["revision"] == server.revision.hash
    assert line["jti"] == claims_of(tokens["access_token"])["jti"]


def test_every_audit_line_also_goes_to_the_audit_logger(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fleetid.audit"):
        server.machine_token(RECONCILER)

    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetid.audit"]
    assert logged == server.audit()


def test_a_subject_token_of_another_agent_is_refused_on_the_trail(server: Server) -> None:
    sales_token = server.tokens_for(SALES, "alice", scope="openid crm:read")["access_token"]

    response = server.exchange(SUPPORT, sales_token, CRM, scope="crm:read")

    assert response.status_code == 400
    assert [e for e in _events(server, "token_issued") if e["agent"] == SUPPORT] == []
    [line] = _events(server, "request_refused")
    assert line["agent"] == SUPPORT
    assert line["revision"] == server.revision.hash
    assert line["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert line["outcome"] == "invalid_grant"
    assert line["reason"] == response.json()["error_description"]
    assert "another agent" in line["reason"]
    assert line["jti"] is None
    assert sales_token not in json.dumps(server.audit())


def test_a_refusal_with_its_own_line_gets_no_second_one(server: Server) -> None:
    policy = _delegated_exchange(server, "crm:write")
    tokens = server.tokens_for(SALES, "alice", scope="openid crm:read offline_access")
    server.refresh(SALES, tokens["refresh_token"])
    reuse = server.refresh(SALES, tokens["refresh_token"])

    assert policy.status_code == reuse.status_code == 400
    assert len(_events(server, "token_refused")) == 1
    assert len(_events(server, "refresh_token_reused")) == 1
    assert _events(server, "request_refused") == []
