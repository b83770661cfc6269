"""The ASGI application: routes, request parsing, and the one place errors become responses.

The same application runs under uvicorn (`fleetid serve`) and on AWS Lambda; everything
that differs (store, keys, secrets, sign-in, issuer) arrives in the `ServerContext`.

Bodies are bounded and parsed strictly (RFC 6749 §3.1: parameters "MUST NOT be included
more than once", except the repeatable `resource` and `audience`); every failure is an
OAuth error response, and an unexpected one is a `server_error` whose body says nothing
about the request, so no input can make the server answer 500 with details, and none can
make it log a secret.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetid.fleet.compile import Revision
from fleetid.keys import JWKS_MAX_AGE, KeyCustodyError
from fleetid.server import authorize as authorization
from fleetid.server import connections
from fleetid.server.audit import audit_event
from fleetid.server.clients import (
    AuthenticatedClient,
    AuthenticatedResource,
    authenticate,
    authenticate_introspection_caller,
)
from fleetid.server.context import ServerContext
from fleetid.server.errors import (
    InvalidClient,
    InvalidRequest,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from fleetid.server.grants import (
    authorization_code,
    client_credentials,
    refresh_token,
    token_exchange,
)
from fleetid.server.introspection import introspect
from fleetid.server.issuance import TokenRequest
from fleetid.server.metadata import metadata
from fleetid.server.revocation import revoke
from fleetid.server.userinfo import userinfo
from fleetid.store import StoreError

__all__ = ["create_app"]

logger = logging.getLogger("fleetid.server")

_REPEATABLE = frozenset({"resource", "audience"})
_TOKEN_HEADERS = frozenset({b"authorization", b"content-type", b"content-length"})
_MAX_FIELDS = 100
# The status logged for a request whose client disconnected before it was answered (nginx's
# convention; nothing is sent).
_CLIENT_GONE = 499
# The escaped values of token requests are few, short and repeat (grant and token type
# URNs, resource URLs, scopes), so their unquoting is memoised.
_SHORT = 200
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_GRANTS = {
    authorization_code.GRANT_TYPE: authorization_code.authorization_code,
    refresh_token.GRANT_TYPE: refresh_token.refresh_token,
    client_credentials.GRANT_TYPE: client_credentials.client_credentials,
    token_exchange.GRANT_TYPE: token_exchange.token_exchange,
}

Form = dict[str, str]


def _json(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] = _NO_STORE
) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=dict(headers),
    )


def _error_response(error: OAuthError) -> Response:
    return _json(error.body(), error.status, {**_NO_STORE, **error.headers})


def _check_length(declared: str | None, limit: int) -> None:
    if declared is not None and (
        not (declared.isascii() and declared.isdigit()) or int(declared) > limit
    ):
        raise InvalidRequest(f"the request body must be at most {limit} bytes")


async def _body(request: Request, limit: int) -> bytes:
    _check_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"the request body must be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, limit: int) -> tuple[Form, list[str]]:
    """The form's single-valued parameters, and the `resource`/`audience` values."""
    content_type = request.headers.get("content-type")
    _check_form_type(content_type)
    return parse_form(await _body(request, limit))


async def read_pairs(request: Request, limit: int) -> list[tuple[str, str]]:
    """Every name/value pair of the form, in order, as a query string's would be read."""
    _check_form_type(request.headers.get("content-type"))
    try:
        return form_pairs((await _body(request, limit)).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the body is not UTF-8") from exc


def _check_form_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")


def parse_form(body: bytes) -> tuple[Form, list[str]]:
    """RFC 6749 §3.1: parameters "MUST NOT be included more than once"; `resource` and
    `audience` may be (RFC 8707, RFC 8693), and come back as a list."""
    try:
        pairs = form_pairs(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the body is not UTF-8") from exc
    form: Form = {}
    targets: list[str] = []
    for name, value in pairs:
        if not value:
            # RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they
            # were omitted from the request."
            continue
        if name in _REPEATABLE:
            targets.append(value)
        elif name in form:
            raise InvalidRequest(f"{name} is given more than once")
        else:
            form[name] = value
    return form, targets


def form_pairs(text: str) -> list[tuple[str, str]]:
    """The name/value pairs of an application/x-www-form-urlencoded body, in order.

    Split here rather than by `urllib.parse.parse_qsl`, which unquotes every field: the
    long fields of token requests (JWTs, codes, secrets) are base64url and never escaped,
    and unquoting them is a cost on every request. A name without `=` has an empty value;
    empty fields are skipped; escapes must decode to UTF-8.
    """
    fields = text.split("&")
    if len(fields) > _MAX_FIELDS:
        raise InvalidRequest(f"the body has more than {_MAX_FIELDS} parameters")
    pairs = []
    for field in fields:
        if field:
            name, _, value = field.partition("=")
            pairs.append((_unquote(name), _unquote(value)))
    return pairs


def _unquote(part: str) -> str:
    if "%" in part or "+" in part:
        return _unquote_short(part) if len(part) <= _SHORT else unquote_plus(part, errors="strict")
    return part


@functools.lru_cache(maxsize=1024)
def _unquote_short(part: str) -> str:
    return unquote_plus(part, errors="strict")


# Who an endpoint accepts: an agent, or (at /introspect) an agent or a resource server.
_Caller = TypeVar("_Caller", AuthenticatedClient, AuthenticatedClient | AuthenticatedResource)


def _client(
    context: ServerContext,
    revision: Revision,
    authorization: str | None,
    form: Form,
    endpoint: str,
    *,
    authenticator: Callable[..., _Caller] = authenticate,
) -> _Caller:
    """The caller `authenticator` finds: an agent by default. A refused one that claimed a
    client of the fleet leaves an audit line."""
    try:
        return authenticator(
            revision,
            context.secrets,
            context.store,
            form,
            authorization,
            audiences=context.endpoints.assertion_audiences,
            now=context.clock(),
        )
    except InvalidClient as refused:
        if refused.agent is not None:
            # Someone claimed to be one of the fleet's clients and could not prove it: a
            # wrong or leaked secret, or a guess. A claim of no client is not recorded, as
            # nothing would say whose line it is.
            context.audit.record(
                audit_event(
                    time=context.clock(),
                    event="client_authentication_failed",
                    agent=refused.agent,
                    revision=revision.hash,
                    outcome=f"invalid_client on {endpoint}",
                    reason=refused.description or refused.error,
                )
            )
        raise


Handler = Callable[[ServerContext, Request], Awaitable[Response]]


def _as_oauth_error(error: Exception, path: str) -> OAuthError:
    """What the client learns of a failure: an OAuth error, never the details of ours."""
    if isinstance(error, OAuthError):
        return error
    if isinstance(error, StoreError):
        logger.exception("store failure on %s", path)
        return TemporarilyUnavailable("storage is unavailable; retry")
    if isinstance(error, KeyCustodyError):
        logger.exception("key custody failure on %s", path)
        return TemporarilyUnavailable("signing is unavailable; retry")
    # The traceback goes to the log, which holds no request bodies; the client learns
    # nothing but that it failed.
    logger.exception("unexpected failure on %s", path)
    return ServerError("the server failed; the error is logged")


def _guarded(context: ServerContext, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(context, request)
        except ClientDisconnect:
            # Nobody is left to read an answer; the log line records that the client left.
            return Response(status_code=_CLIENT_GONE)
        except Exception as error:
            return _error_response(_as_oauth_error(error, request.url.path))

    return endpoint


async def _issue(
    context: ServerContext, form: Form, targets: list[str], authorization: str | None
) -> dict[str, Any]:
    revision = context.live.get()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("grant_type is required")
    grant = _GRANTS.get(grant_type)
    if grant is None:
        # Not echoed: a client that put the wrong field there may have put a secret in it.
        raise UnsupportedGrantType(
            f"this grant_type is not supported; the supported ones are {', '.join(_GRANTS)}"
        )
    client = _client(context, revision, authorization, form, "/token")
    try:
        return await grant(
            context, TokenRequest(revision, client, form, targets, int(context.clock()))
        )
    except OAuthError as refused:
        if not refused.audited:
            # What an authenticated agent was refused before any policy decision (a subject
            # token that is not its own or not live, a resource nobody declared) belongs in
            # the trail too. The description is the one the client reads: it names no
            # token, code or secret.
            context.audit.record(
                audit_event(
                    time=context.clock(),
                    event="request_refused",
                    agent=client.client_id,
                    grant_type=grant_type,
                    revision=revision.hash,
                    outcome=refused.error,
                    reason=refused.description or refused.error,
                )
            )
        raise


async def _introspect(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    authorization = request.headers.get("authorization")
    client = _client(
        context,
        context.live.get(),
        authorization,
        form,
        "/introspect",
        authenticator=authenticate_introspection_caller,
    )
    return _json(introspect(context, client, form))


async def _revoke(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    authorization = request.headers.get("authorization")
    client = _client(context, context.live.get(), authorization, form, "/revoke")
    revoke(context, client, form)
    return Response(status_code=200, headers=_NO_STORE)


async def _userinfo(context: ServerContext, request: Request) -> Response:
    token = None
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        token = credentials.strip()
    elif request.method == "POST":
        form, _ = await read_form(request, context.max_body)
        token = form.get("access_token")
    return _json(userinfo(context, token))


async def _discovery(context: ServerContext, request: Request) -> Response:
    revision = context.live.get()
    algorithm = context.tokens.default_algorithm
    return _json(metadata(context.endpoints, revision, algorithm), headers={})


async def _jwks(context: ServerContext, request: Request) -> Response:
    # Short caching: a key published as `next` must reach verifiers before it signs.
    return _json(
        context.tokens.jwks(), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"}
    )


async def _authorize(context: ServerContext, request: Request) -> Response:
    return await authorization.authorize(context, request)


async def _sign_in(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    return await authorization.sign_in(context, request, form)


async def _consent(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    return await authorization.consent(context, request, form)


async def _link(context: ServerContext, request: Request) -> Response:
    return await connections.start(context, request, "link")


async def _unlink(context: ServerContext, request: Request) -> Response:
    return await connections.start(context, request, "unlink")


async def _connection_sign_in(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    return await connections.sign_in(context, request, form)


async def _connection_callback(context: ServerContext, request: Request) -> Response:
    return await connections.callback(context, request)


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Front:
    """The ASGI entry point: one log line per request, and the token endpoint.

    `POST /token` is what every agent calls for every token, so it is answered here,
    without the router, the request and response objects and the middleware stack that
    the other endpoints go through: the same parsing, grants and error choke point, fewer
    layers. The log line has the method, the path (never the query, which can hold a code
    or state), the status and the milliseconds.
    """

    def __init__(self, context: ServerContext, app: ASGIApp) -> None:
        self.context = context
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            if scope["path"] == "/token":
                status = await self._token(scope, receive, send)
            else:

                async def observe(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await self.app(scope, receive, observe)
        finally:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _token(self, scope: Scope, receive: Receive, send: Send) -> int:
        if scope["method"] != "POST":
            await _send(send, 405, b"", {"Allow": "POST"})
            return 405
        context = self.context
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _TOKEN_HEADERS and name not in found:
                found[name] = value.decode("latin-1")
        try:
            _check_form_type(found.get(b"content-type"))
            _check_length(found.get(b"content-length"), context.max_body)
            form, targets = parse_form(await _receive_body(receive, context.max_body))
            body = await _issue(context, form, targets, found.get(b"authorization"))
            status, headers = 200, _NO_STORE
        except _ClientGone:
            return _CLIENT_GONE
        except Exception as failure:
            error = _as_oauth_error(failure, "/token")
            status, body, headers = error.status, error.body(), {**_NO_STORE, **error.headers}
        await _send(send, status, orjson.dumps(body), headers)
        return status


async def _send(send: Send, status: int, content: bytes, headers: Mapping[str, str]) -> None:
    fields = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    if content:
        fields.append((b"content-type", b"application/json"))
    fields.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": content})


async def _receive_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"the request body must be at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(context: ServerContext) -> ASGIApp:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _guarded(context, handler), methods=methods)

    app = Starlette(
        routes=[
            route("/.well-known/openid-configuration", _discovery, ["GET"]),
            route("/.well-known/oauth-authorization-server", _discovery, ["GET"]),
            route("/jwks.json", _jwks, ["GET"]),
            route("/authorize", _authorize, ["GET", "POST"]),
            route("/authorize/sign-in", _sign_in, ["POST"]),
            route("/authorize/consent", _consent, ["POST"]),
            route("/introspect", _introspect, ["POST"]),
            route("/revoke", _revoke, ["POST"]),
            route("/userinfo", _userinfo, ["GET", "POST"]),
            route("/connections/{name}/link", _link, ["GET"]),
            route("/connections/{name}/unlink", _unlink, ["GET"]),
            route("/connections/sign-in", _connection_sign_in, ["POST"]),
            route("/connections/callback", _connection_callback, ["GET"]),
        ]
    )
    app.state.context = context
    return _Front(context, app)
