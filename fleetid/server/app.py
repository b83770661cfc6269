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

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetid.fleet.compile import Revision
from fleetid.keys import KeyCustodyError
from fleetid.server import authorize as authorization
from fleetid.server import connections
from fleetid.server.clients import AuthenticatedClient, authenticate
from fleetid.server.context import ServerContext
from fleetid.server.errors import (
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
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=dict(headers),
    )


def _error_response(error: OAuthError) -> Response:
    return _json(error.body(), error.status, {**_NO_STORE, **error.headers})


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (
        not (declared.isascii() and declared.isdigit()) or int(declared) > limit
    ):
        raise InvalidRequest(f"the request body must be at most {limit} bytes")
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
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    try:
        text = (await _body(request, limit)).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=100)
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the body is not UTF-8") from exc
    except ValueError as exc:
        raise InvalidRequest("the body has too many parameters") from exc

    form: Form = {}
    targets: list[str] = []
    for name, value in pairs:
        if name in _REPEATABLE:
            targets.append(value)
        elif name in form:
            raise InvalidRequest(f"{name} is given more than once")
        else:
            form[name] = value
    return form, targets


def _client(
    context: ServerContext, revision: Revision, request: Request, form: Form
) -> AuthenticatedClient:
    return authenticate(
        revision,
        context.secrets,
        context.store,
        form,
        request.headers.get("authorization"),
        audiences=context.endpoints.assertion_audiences,
        now=context.clock(),
    )


Handler = Callable[[ServerContext, Request], Awaitable[Response]]


def _guarded(context: ServerContext, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(context, request)
        except OAuthError as error:
            return _error_response(error)
        except StoreError:
            logger.exception("store failure on %s", request.url.path)
            return _error_response(TemporarilyUnavailable("storage is unavailable; retry"))
        except KeyCustodyError:
            logger.exception("key custody failure on %s", request.url.path)
            return _error_response(TemporarilyUnavailable("signing is unavailable; retry"))
        except Exception:
            # The traceback goes to the log, which holds no request bodies; the client
            # learns nothing but that it failed.
            logger.exception("unexpected failure on %s", request.url.path)
            return _error_response(ServerError("the server failed; the error is logged"))

    return endpoint


async def _token(context: ServerContext, request: Request) -> Response:
    form, targets = await read_form(request, context.max_body)
    revision = context.live.get()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("grant_type is required")
    grant = _GRANTS.get(grant_type)
    if grant is None:
        raise UnsupportedGrantType(f"grant_type {grant_type[:80]!r} is not supported")
    client = _client(context, revision, request, form)
    token_request = TokenRequest(revision, client, form, targets, int(context.clock()))
    return _json(grant(context, token_request))


async def _introspect(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    client = _client(context, context.live.get(), request, form)
    return _json(introspect(context, client, form))


async def _revoke(context: ServerContext, request: Request) -> Response:
    form, _ = await read_form(request, context.max_body)
    client = _client(context, context.live.get(), request, form)
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
    return _json(context.tokens.jwks(), headers={"Cache-Control": "public, max-age=300"})


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


class _RequestLog:
    """One line per request: method, path (never the query, which can hold a code or
    state), status and milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            logger.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
            )


def create_app(context: ServerContext) -> ASGIApp:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _guarded(context, handler), methods=methods)

    app = Starlette(
        routes=[
            route("/.well-known/openid-configuration", _discovery, ["GET"]),
            route("/.well-known/oauth-authorization-server", _discovery, ["GET"]),
            route("/jwks.json", _jwks, ["GET"]),
            route("/authorize", _authorize, ["GET"]),
            route("/authorize/sign-in", _sign_in, ["POST"]),
            route("/authorize/consent", _consent, ["POST"]),
            route("/token", _token, ["POST"]),
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
    return _RequestLog(app)
