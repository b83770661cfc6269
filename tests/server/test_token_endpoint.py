"""The token endpoint's request handling, before any grant logic (RFC 6749 §3.2, §5.2).

Parameters come in an `application/x-www-form-urlencoded` body of bounded size, each at most
once except `resource` and `audience`; every refusal is a JSON error with an RFC code, and
every response, success or error, carries `Cache-Control: no-store`.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverkit import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    CRM,
    RECONCILER,
    REFRESH_TOKEN,
    SALES,
    TOKEN_EXCHANGE,
    TOOLS,
    Server,
    claims_of,
    oauth_error,
)

from fleetid.server.app import form_pairs
from fleetid.server.context import MAX_BODY_BYTES
from fleetid.server.grants import token_exchange
from fleetid.server.grants.authorization_code import CODE_NAMESPACE
from fleetid.server.tokens import digest

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("form", "missing"),
    [
        ({}, "grant_type"),
        ({"grant_type": ""}, "grant_type"),
        (
            {"grant_type": AUTHORIZATION_CODE, "redirect_uri": "x", "code_verifier": "v" * 43},
            "code",
        ),
        (
            {"grant_type": AUTHORIZATION_CODE, "code": "c", "code_verifier": "v" * 43},
            "redirect_uri",
        ),
        ({"grant_type": AUTHORIZATION_CODE, "code": "c", "redirect_uri": "x"}, "code_verifier"),
        ({"grant_type": REFRESH_TOKEN}, "refresh_token"),
        (
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "resource": CRM,
            },
            "subject_token",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_missing_required_parameter_is_invalid_request(
    server: Server, form: dict[str, str], missing: str
) -> None:
    response = server.token(form, agent=SALES)

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"
    assert missing in response.json()["error_description"]


def test_token_exchange_without_subject_token_type_is_invalid_request(server: Server) -> None:
    subject = server.machine_token(RECONCILER)

    response = server.token(
        {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "resource": CRM},
        agent=RECONCILER,
    )

    assert oauth_error(response) == "invalid_request"


@pytest.mark.parametrize(
    "grant_type",
    [
        "password",
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "CLIENT_CREDENTIALS",
    ],
)
def test_an_unknown_grant_type_is_unsupported_grant_type(server: Server, grant_type: str) -> None:
    response = server.token({"grant_type": grant_type}, agent=SALES)

    assert response.status_code == 400
    assert oauth_error(response) == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"grant_type": "client_credentials"}'),
        ("text/plain", b"grant_type=client_credentials"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\n--x--"),
        (None, b"grant_type=client_credentials"),
    ],
)
def test_a_body_that_is_not_a_form_is_invalid_request(
    server: Server, content_type: str | None, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    response = server.client.post(
        "/token", content=body, headers=headers, auth=server.basic(RECONCILER)
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


def test_a_form_content_type_with_a_charset_is_accepted(server: Server) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS},
        agent=RECONCILER,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["grant_type", "scope", "client_id"])
def test_a_parameter_given_twice_is_invalid_request(server: Server, name: str) -> None:
    form = [("grant_type", CLIENT_CREDENTIALS), ("scope", "crm:read"), ("client_id", RECONCILER)]
    form.append((name, dict(form)[name]))

    response = server.token(form, agent=RECONCILER)

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"
    assert name in response.json()["error_description"]


def test_resource_repeated_with_two_resources_is_invalid_target(server: Server) -> None:
    response = server.token(
        [("grant_type", CLIENT_CREDENTIALS), ("resource", CRM), ("resource", TOOLS)], agent=SALES
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_target"


def test_resource_repeated_with_the_same_resource_names_one_resource(server: Server) -> None:
    response = server.token(
        [("grant_type", CLIENT_CREDENTIALS), ("resource", CRM), ("resource", CRM)],
        agent=RECONCILER,
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "resource",
    [
        "https://evil.example.com",
        "https://crm.acme.example.com/",
        "HTTPS://CRM.ACME.EXAMPLE.COM",
        "urn:fleetid:agent:nobody",
    ],
)
def test_an_unknown_resource_is_invalid_target(server: Server, resource: str) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "resource": resource}, agent=RECONCILER
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_target"


def _padded_form(size: int) -> bytes:
    """A valid client_credentials form of exactly `size` bytes."""
    head = b"grant_type=client_credentials&padding="
    return head + b"x" * (size - len(head))


def test_a_body_of_exactly_the_bound_is_read(server: Server) -> None:
    response = server.client.post(
        "/token",
        content=_padded_form(MAX_BODY_BYTES),
        headers=FORM,
        auth=server.basic(RECONCILER),
    )

    assert response.status_code == 200, response.text


def test_a_body_over_the_bound_is_invalid_request(server: Server) -> None:
    response = server.client.post(
        "/token",
        content=_padded_form(MAX_BODY_BYTES + 1),
        headers=FORM,
        auth=server.basic(RECONCILER),
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


def test_a_content_length_that_understates_the_body_does_not_lift_the_bound(
    server: Server,
) -> None:
    response = server.client.post(
        "/token",
        content=_padded_form(MAX_BODY_BYTES * 2),
        headers={**FORM, "Content-Length": "40"},
        auth=server.basic(RECONCILER),
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


@pytest.mark.parametrize("declared", [str(MAX_BODY_BYTES + 1), "99999999999999999999", "-1", "x"])
def test_a_content_length_over_the_bound_or_not_a_number_is_refused_unread(
    server: Server, declared: str
) -> None:
    response = server.client.post(
        "/token",
        content=b"grant_type=client_credentials",
        headers={**FORM, "Content-Length": declared},
        auth=server.basic(RECONCILER),
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


def test_a_body_that_is_not_utf8_is_invalid_request(server: Server) -> None:
    response = server.client.post(
        "/token",
        content=b"grant_type=client_credentials&scope=\xff\xfe",
        headers=FORM,
        auth=server.basic(RECONCILER),
    )

    assert oauth_error(response) == "invalid_request"


def test_more_than_a_hundred_parameters_is_invalid_request(server: Server) -> None:
    form = [("grant_type", CLIENT_CREDENTIALS)] + [(f"p{n}", "v") for n in range(120)]

    response = server.token(form, agent=RECONCILER)

    assert oauth_error(response) == "invalid_request"


def test_a_token_response_is_not_cached(server: Server) -> None:
    response = server.token({"grant_type": CLIENT_CREDENTIALS}, agent=RECONCILER)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int)
    assert "refresh_token" not in body


@pytest.mark.parametrize(
    "form",
    [{"grant_type": "password"}, {"grant_type": CLIENT_CREDENTIALS, "resource": "nowhere"}],
)
def test_a_token_error_is_not_cached(server: Server, form: dict[str, str]) -> None:
    response = server.token(form, agent=RECONCILER)

    assert response.status_code == 400
    assert response.headers["cache-control"] == "no-store"


def test_a_sign_in_token_response_is_not_cached(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert {"access_token", "refresh_token", "id_token"} <= set(response.json())


def test_the_token_endpoint_accepts_only_post(server: Server) -> None:
    response = server.client.get("/token", params={"grant_type": CLIENT_CREDENTIALS})

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_refused_client_gets_a_json_error_with_its_challenge(server: Server) -> None:
    response = server.client.post(
        "/token",
        data={"grant_type": CLIENT_CREDENTIALS},
        headers={"Authorization": "Basic bm9ib2R5Om5vdGhpbmc="},
    )

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.json()["error"] == "invalid_client"


_FORM_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]))


@given(st.lists(st.tuples(_FORM_TEXT, _FORM_TEXT), max_size=20))
def test_form_bodies_read_back_as_they_were_encoded(pairs: list[tuple[str, str]]) -> None:
    # An empty name and value encode to "=", which is not an empty field and reads back.
    assert form_pairs(urlencode(pairs)) == pairs


@given(st.text(alphabet="ab=&+%2Ce\u00e9", max_size=40))
def test_form_bodies_read_as_the_standard_library_reads_them(text: str) -> None:
    try:
        expected = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            form_pairs(text)
        return
    assert form_pairs(text) == expected


def test_a_connection_fetch_waits_off_the_event_loop(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fetching a connection may refresh it at a slow provider; other requests go on meanwhile.
    threads: dict[str, str] = {}
    resolve = token_exchange.resolve_target

    def resolve_target(revision: Any, targets: Any) -> Any:
        threads["loop"] = threading.current_thread().name
        return resolve(revision, targets)

    def fetch_connection(*_: Any) -> dict[str, Any]:
        threads["fetch"] = threading.current_thread().name
        return {"access_token": "x", "token_type": "Bearer"}

    monkeypatch.setattr(token_exchange, "resolve_target", resolve_target)
    monkeypatch.setattr(token_exchange, "fetch_connection", fetch_connection)
    signed_in = server.tokens_for(SALES, "alice", scope="openid")["access_token"]

    response = server.exchange(SALES, signed_in, "urn:fleetid:connection:google-calendar")

    assert response.status_code == 200, response.text
    assert threads["fetch"] != threads["loop"]


def test_a_stored_challenge_that_is_not_base64url_fails_the_code_not_the_server(
    server: Server,
) -> None:
    # The authorization endpoint accepts only base64url challenges; a code stored by an
    # older server, or a damaged record, must still be refused with an OAuth error.
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])
    store, key = server.context.store, digest(authorization.code)
    record = store.get(CODE_NAMESPACE, key)
    assert record is not None
    damaged = {**record.value, "code_challenge": "é" * 43}
    assert store.replace(
        CODE_NAMESPACE, key, damaged, version=record.version, expires_at=record.expires_at
    )

    response = server.redeem(authorization)

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_grant"


def test_parameters_sent_without_a_value_count_as_omitted(server: Server) -> None:
    # RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
    # omitted from the request": an empty client_secret beside Basic is not a second
    # authentication method, and an empty resource or scope leaves the defaults.
    form = {
        "grant_type": CLIENT_CREDENTIALS,
        "client_secret": "",
        "client_assertion": "",
        "client_id": "",
        "resource": "",
        "scope": "",
    }

    response = server.token(form, agent=RECONCILER)

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["aud"] == CRM


@pytest.mark.parametrize(
    "scope",
    [
        "crm:read\u00a0crm:write",
        "crm:read\tcrm:write",
        "crm:read\ncrm:write",
        "crm:read  crm:write",
        " ",
    ],
)
def test_a_scope_that_breaks_the_grammar_is_invalid_scope(server: Server, scope: str) -> None:
    # RFC 6749 §3.3: scope-tokens of printable ASCII, delimited by single spaces.
    form = {"grant_type": CLIENT_CREDENTIALS, "resource": CRM, "scope": scope}

    response = server.token(form, agent=RECONCILER)

    assert oauth_error(response) == "invalid_scope"


def test_a_credential_pasted_as_a_scope_is_not_repeated(server: Server) -> None:
    secret = server.secret(RECONCILER)
    server.machine_token(RECONCILER, CRM)
    form = {"grant_type": CLIENT_CREDENTIALS, "resource": CRM, "scope": f"crm:read {secret}"}

    response = server.token(form, agent=RECONCILER)

    assert oauth_error(response) == "invalid_scope"
    assert secret not in response.text
    assert secret not in server.audit_path.read_text()


def test_a_resource_the_agent_lists_no_scopes_on_says_so(server: Server) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "resource": TOOLS}, agent=RECONCILER
    )

    assert oauth_error(response) == "invalid_scope"
    description = response.json()["error_description"]
    assert "lists no scopes" in description
    assert not description.startswith(":")
