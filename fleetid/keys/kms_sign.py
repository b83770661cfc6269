"""`KmsSigner`: every token signed by AWS KMS `Sign`; the private key never leaves KMS.

For teams that require it, at a price: one KMS request per token, which adds latency and
counts against the KMS quota for asymmetric keys, shared by the account and region. The
public keys are fetched once with `GetPublicKey` and published as JWKs; `kid` is the RFC 7638
thumbprint, as for every custody, so KMS key ids and ARNs stay out of tokens and the JWKS.

KMS keys are created by provisioning, not by the server, so the ring is whatever key
references the server is started with, and rotation is a change to those references.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from fleetid.aws import AWS_ERRORS, aws_error_code
from fleetid.keys.algorithms import Algorithm, ecdsa_der_to_jws
from fleetid.keys.custody import Clock, KeyCustody, Signature
from fleetid.keys.errors import KmsFailure, RotationNotSupported, UnsupportedAlgorithm
from fleetid.keys.ring import JsonWebKeySet, KeyRecord, KeyRing, KeyState, check_rotation_states

__all__ = ["KmsKeyRef", "KmsSigner"]

# The KMS signing algorithm that produces each JWS algorithm's signature (RFC 7518 §3.1).
KMS_SIGNING_ALGORITHMS: Final[Mapping[Algorithm, str]] = {
    "RS256": "RSASSA_PKCS1_V1_5_SHA_256",
    "ES256": "ECDSA_SHA_256",
}


@dataclass(frozen=True, slots=True)
class KmsKeyRef:
    """An asymmetric SIGN_VERIFY KMS key and its place in the rotation.

    `retire_at` (unix seconds) is set on previous keys only: the JWKS lists them until then.
    """

    key_id: str
    state: KeyState
    retire_at: int | None = None


@dataclass(frozen=True, slots=True)
class _Published:
    ring: KeyRing
    key_ids: Mapping[str, str]


class KmsSigner(KeyCustody):
    """Signs through KMS with the active key of `keys`; `kms_client` is a boto3 KMS client.

    The public keys are fetched on first use, one `GetPublicKey` per key.
    """

    def __init__(
        self, kms_client: Any, keys: Sequence[KmsKeyRef], *, clock: Clock = time.time
    ) -> None:
        check_rotation_states([(ref.key_id, ref.state, ref.retire_at) for ref in keys])
        self._kms = kms_client
        self._refs = tuple(keys)
        self._clock = clock
        self._lock = threading.Lock()
        self._published: _Published | None = None

    def active_key(self) -> tuple[str, Algorithm]:
        """The kid and alg of the active KMS key."""
        active = self._current().ring.active

        return active.kid, active.alg

    async def sign_async(self, signing_input: bytes) -> Signature:
        """`sign` on a worker thread: the KMS call waits milliseconds on the network, which
        the event loop spends on other requests."""
        return await asyncio.to_thread(self.sign, signing_input)

    def sign(self, signing_input: bytes) -> Signature:
        """One KMS `Sign` call over the SHA-256 digest of `signing_input`."""
        published = self._current()
        active = published.ring.active
        key_id = published.key_ids[active.kid]

        # Sending the digest rather than the message keeps token claims out of the request,
        # and lifts the 4096-byte limit KMS puts on a RAW message.
        try:
            response = self._kms.sign(
                KeyId=key_id,
                Message=hashlib.sha256(signing_input).digest(),
                MessageType="DIGEST",
                SigningAlgorithm=KMS_SIGNING_ALGORITHMS[active.alg],
            )
        except AWS_ERRORS as exc:
            raise KmsFailure("Sign", key_id, aws_error_code(exc)) from exc

        signature: bytes = response["Signature"]
        if active.alg == "ES256":
            # KMS returns ECDSA signatures DER-encoded; JWS wants R || S.
            try:
                signature = ecdsa_der_to_jws(signature)
            except ValueError as exc:
                raise KmsFailure("Sign", key_id, "MalformedSignature") from exc

        return Signature(kid=active.kid, alg=active.alg, value=signature)

    def jwks(self) -> JsonWebKeySet:
        """The public keys of the next, active and unretired previous KMS keys."""
        return self._current().ring.jwks(now=int(self._clock()))

    def rotate(self, *, max_token_lifetime: int, force: bool = False) -> None:
        """Always raises `RotationNotSupported`: a new KMS key comes from provisioning."""
        raise RotationNotSupported(
            "KMS Sign keys are created by provisioning, not by the server: to rotate, "
            "provision a new KMS key, then start the server with it as next, the current "
            "next as active, and the current active as previous with retire_at at least "
            f"{max_token_lifetime} seconds from now"
        )

    def _current(self) -> _Published:
        published = self._published
        if published is not None:
            return published

        with self._lock:
            if self._published is None:
                self._published = self._fetch_public_keys()

            return self._published

    def _fetch_public_keys(self) -> _Published:
        records = []
        key_ids = {}
        for ref in self._refs:
            record = self._record(ref)
            records.append(record)
            key_ids[record.kid] = ref.key_id

        return _Published(ring=KeyRing(tuple(records)), key_ids=key_ids)

    def _record(self, ref: KmsKeyRef) -> KeyRecord:
        try:
            response = self._kms.get_public_key(KeyId=ref.key_id)
        except AWS_ERRORS as exc:
            raise KmsFailure("GetPublicKey", ref.key_id, aws_error_code(exc)) from exc

        if response.get("KeyUsage") != "SIGN_VERIFY":
            raise UnsupportedAlgorithm(f"KMS key {ref.key_id!r} is not a SIGN_VERIFY key")

        try:
            public_key = load_der_public_key(response["PublicKey"])
        except ValueError as exc:
            raise UnsupportedAlgorithm(f"KMS key {ref.key_id!r} has an unreadable key") from exc

        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise UnsupportedAlgorithm(f"KMS key {ref.key_id!r} is neither RSA nor EC")

        record = KeyRecord.for_key(
            public_key, state=ref.state, created_at=None, retire_at=ref.retire_at
        )
        if KMS_SIGNING_ALGORITHMS[record.alg] not in response.get("SigningAlgorithms", []):
            raise UnsupportedAlgorithm(
                f"KMS key {ref.key_id!r} does not offer {KMS_SIGNING_ALGORITHMS[record.alg]}"
            )

        return record
