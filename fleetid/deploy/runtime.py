"""The identity server on AWS Lambda, assembled from the function's environment.

One `DeployedServer` per execution environment (that is, per cold start) holds:

- the store on the DynamoDB table, which also keeps the client secrets' digests, the audit
  trail and, with kms-wrapped custody, the signing key ring;
- the key custody: `KmsWrappedKeys` (keys generated here, wrapped by KMS, unwrapped once per
  cold start) or `KmsSigner` (one KMS `Sign` per token);
- the live revision, read from S3 through the pointer, and a `RevisionPoller` that looks at
  the pointer again at most every few seconds, so that a deployment or a rollback takes effect
  within that time on every instance, without a redeploy of the function; an instance that
  switches ends the sign-ins of the agents the revision removed or brought back, as
  `fleetid serve` does (`fleetid.server.removals`);
- the connections vault, its records sealed under the vault's KMS key (`KmsEnvelope`), its
  API keys read at start from what provisioning stored (`ProvisionedSecrets`);
- the ASGI application of `fleetid.server.app`, served through Mangum.

A revision that cannot be read or does not verify never replaces the one being served: the
failure is logged and the pointer is looked at again at the next interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from mangum import Mangum
from starlette.types import ASGIApp

from fleetid.deploy.revision import (
    POINTER_KEY,
    Pointer,
    RevisionDeliveryError,
    read_pointer,
    read_revision_document,
    revision_key,
)
from fleetid.deploy.ring import StoreRingPersistence
from fleetid.deploy.secrets import ProvisionedSecretError, ProvisionedSecrets
from fleetid.deploy.settings import SIGNING_KEYS, LambdaSettings, SettingsError
from fleetid.fleet.compile import Revision
from fleetid.keys import (
    Algorithm,
    KeyCustody,
    KmsKeyRef,
    KmsSigner,
    KmsWrappedKeys,
    UnsupportedAlgorithm,
)
from fleetid.server.app import create_app
from fleetid.server.audit import StoreAudit
from fleetid.server.clients import StoredClientSecrets
from fleetid.server.context import Endpoints, LiveRevision, ServerContext
from fleetid.server.removals import end_sign_ins, sign_ins_ending
from fleetid.server.signin import SignedInUser, SignIn, SignInFailed, SignInPage, render_page
from fleetid.server.tokens import TokenService, signing_algorithms
from fleetid.store import DynamoDBStore, Store, StoreError
from fleetid.vault import KmsEnvelope, Vault, VaultError

__all__ = [
    "AwsClients",
    "DeployedServer",
    "RevisionPoller",
    "S3Revisions",
    "SignInUnavailable",
    "build_server",
]

logger = logging.getLogger("fleetid.deploy")

# Short timeouts: a Lambda invocation waiting on a stalled connection is billed and holds a
# client's request; botocore's standard retry mode retries throttling with backoff.
_BOTO_CONFIG = Config(
    connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}
)


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients the server uses; tests pass clients bound to moto."""

    dynamodb: Any
    s3: Any
    kms: Any

    @classmethod
    def create(cls) -> AwsClients:
        # The region comes from AWS_REGION, which Lambda sets.
        session = boto3.session.Session()

        return cls(
            dynamodb=session.client("dynamodb", config=_BOTO_CONFIG),
            s3=session.client("s3", config=_BOTO_CONFIG),
            kms=session.client("kms", config=_BOTO_CONFIG),
        )


class SignInUnavailable(SignIn):
    """People's sign-in on AWS until a tenant's SSO federation is configured.

    The dev-user picker of `fleetid serve` would let anyone sign in as anyone, so a deployed
    server never offers it. Agents acting as themselves and token exchange are unaffected.
    """

    def begin(
        self,
        revision: Revision,
        agent: str | None,
        interaction: str,
        *,
        action: str = "/authorize/sign-in",
    ) -> SignInPage:
        return SignInPage(
            render_page(
                "Sign-in is not available",
                "<p>This fleetid deployment does not sign people in: no sign-in method "
                "for people is configured on AWS.</p>",
            )
        )

    def complete(
        self, revision: Revision, agent: str | None, form: Mapping[str, str]
    ) -> SignedInUser:
        raise SignInFailed("no sign-in method for people is configured on this deployment")


class S3Revisions:
    """The revisions bucket: the pointer, and the objects it names."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def pointer(self) -> Pointer:
        return read_pointer(self._get(POINTER_KEY))

    def load(self, revision_hash: str) -> Revision:
        """The revision `revision_hash`, compiled and checked against its hash."""
        return read_revision_document(self._get(revision_key(revision_hash)), revision_hash)

    def _get(self, key: str) -> bytes:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
            body: bytes = response["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise RevisionDeliveryError(
                f"s3://{self._bucket}/{key} could not be read ({code})"
            ) from exc
        except BotoCoreError as exc:
            raise RevisionDeliveryError(
                f"s3://{self._bucket}/{key} could not be read ({type(exc).__name__})"
            ) from exc

        return body


class RevisionPoller:
    """Follows the pointer: at most once every `interval` seconds, on a request's way in.

    Checking on the request path, not on a timer, suits Lambda, where nothing runs between
    invocations; an idle instance checks again when it next serves.
    """

    def __init__(
        self,
        revisions: S3Revisions,
        context: ServerContext,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._revisions = revisions
        self._context = context
        self._interval = interval
        self._clock = clock
        self._checked_at = clock()
        self._lock = threading.Lock()

    def check_if_due(self) -> bool:
        """Check the pointer if `interval` has passed; True when a new revision went live."""
        if self._clock() - self._checked_at < self._interval:
            return False

        # Another thread already checking is enough; this request serves what is live.
        if not self._lock.acquire(blocking=False):
            return False

        try:
            self._checked_at = self._clock()
            return self._check()
        finally:
            self._lock.release()

    def _check(self) -> bool:
        live = self._context.live.get()
        try:
            pointer = self._revisions.pointer()
            if pointer.revision == live.hash:
                return False

            revision = self._revisions.load(pointer.revision)
            # A resource newly asking for another algorithm gets its key in the JWKS first.
            self._context.tokens.prepare(signing_algorithms(revision))
        except (RevisionDeliveryError, UnsupportedAlgorithm) as failure:
            logger.error(
                "the pointer's revision was refused; %s keeps serving: %s", live.short, failure
            )
            return False

        switched = self._context.live.switch(revision)
        if switched:
            logger.info("revision %s is live (was %s)", revision.short, live.short)
            # A connection new in this revision has its key provisioned before the pointer.
            if self._context.vault is not None:
                _load_api_keys(self._context.vault)
            self._end_sign_ins(live, revision)

        return switched

    def _end_sign_ins(self, live: Revision, revision: Revision) -> None:
        """End the sign-ins of the agents the switch removed or brought back.

        Other instances may be serving the revision already: the pointer moved before any
        of them saw it. So the switch stands whatever happens here, and every instance that
        makes it ends the sign-ins again; a sign-in already revoked is passed over.
        """
        before, after = set(live.fleet.agents), set(revision.fleet.agents)
        reasons = sign_ins_ending(before - after, after - before, revision)
        if not reasons:
            return
        try:
            ended = end_sign_ins(self._context, reasons)
        except StoreError as failure:
            logger.error("the sign-ins of %s could not be ended: %s", ", ".join(reasons), failure)
            return
        logger.info(
            "sign-ins ended as revision %s went live: %s",
            revision.short,
            ", ".join(f"{agent} ({count})" for agent, count in ended.items()),
        )


@dataclass
class DeployedServer:
    """The server of one execution environment: call it with each Lambda event."""

    context: ServerContext
    poller: RevisionPoller
    app: ASGIApp
    adapter: Mangum

    def __call__(self, event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
        self.poller.check_if_due()
        response: dict[str, Any] = self.adapter(event, lambda_context)

        return response


def build_server(
    settings: LambdaSettings,
    clients: AwsClients | None = None,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> DeployedServer:
    """Assemble the server: read the live revision, open the store, set up key custody."""
    clients = clients or AwsClients.create()
    revisions = S3Revisions(clients.s3, settings.bucket)
    pointer = revisions.pointer()
    revision = revisions.load(pointer.revision)

    issuer = settings.issuer or pointer.issuer
    if not issuer:
        raise SettingsError("no issuer: FLEETID_ISSUER is not set and the pointer names none")

    store = DynamoDBStore(settings.table, client=clients.dynamodb, clock=clock)
    tokens = TokenService(
        issuer,
        _custody_for(settings, clients, store),
        default_algorithm=revision.fleet.identity.signing.algorithm,
    )
    tokens.prepare(signing_algorithms(revision))

    live = LiveRevision(revision)
    endpoints = Endpoints(issuer)
    vault = None
    if settings.vault_key is not None:
        vault = Vault(
            store,
            KmsEnvelope(clients.kms, settings.vault_key),
            fleet=settings.fleet,
            connections=lambda: live.get().fleet.connections,
            redirect_uri=endpoints.connection_callback,
            link_url=endpoints.connection_link("{connection}"),
            secrets=ProvisionedSecrets(store, clients.kms, fleet=settings.fleet),
            clock=clock,
        )
        _load_api_keys(vault)

    context = ServerContext(
        endpoints=endpoints,
        live=live,
        store=store,
        tokens=tokens,
        secrets=StoredClientSecrets(store),
        audit=StoreAudit(store),
        signin=SignInUnavailable(),
        clock=clock,
        vault=vault,
    )
    poller = RevisionPoller(
        revisions, context, interval=settings.revision_check_seconds, clock=monotonic
    )
    app = create_app(context)
    logger.info("revision %s is live; issuer %s", revision.short, issuer)

    # Lambda has no ASGI lifespan to run: the app needs no start-up or shutdown step.
    # Starlette's ASGI type and Mangum's are the same protocol, spelled differently.
    adapter = Mangum(cast(Any, app), lifespan="off")

    return DeployedServer(context, poller, app, adapter)


def _load_api_keys(vault: Vault) -> None:
    """Seal each API-key connection's provisioned key into the vault; log what is missing.

    A failure leaves the keys stored earlier in place and the server serving: only the
    connections whose key could not be read answer that it is unavailable.
    """
    try:
        loaded = vault.load_api_keys()
    except (VaultError, ProvisionedSecretError) as failure:
        logger.error("API keys of connections could not be loaded: %s", failure)
        return

    for name in loaded.missing:
        logger.warning("connection %s has no provisioned key: set its config secret", name)


def _custody_for(
    settings: LambdaSettings, clients: AwsClients, store: Store
) -> Callable[[Algorithm], KeyCustody]:
    if settings.custody == "kms-sign":

        def kms_signer(algorithm: Algorithm) -> KeyCustody:
            key_id = settings.signing_keys.get(algorithm)
            if key_id is None:
                raise UnsupportedAlgorithm(
                    f"no KMS signing key for {algorithm} is provisioned ({SIGNING_KEYS})"
                )

            return KmsSigner(clients.kms, [KmsKeyRef(key_id, "active")])

        return kms_signer

    wrapping_key = settings.wrapping_key
    assert wrapping_key is not None, "LambdaSettings requires a wrapping key for kms-wrapped"

    def wrapped_keys(algorithm: Algorithm) -> KeyCustody:
        # One ring per algorithm and fleet; the fleet is also bound into every KMS context.
        persistence = StoreRingPersistence(store, f"{settings.fleet}/{algorithm}")

        return KmsWrappedKeys(
            clients.kms, wrapping_key, persistence, fleet=settings.fleet, algorithm=algorithm
        )

    return wrapped_keys
