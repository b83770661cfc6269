"""Contract tests for key custody, run against every custody and both algorithms.

Each custody must sign tokens that PyJWT verifies against the custody's own JWKS, publish its
next key before that key signs, and keep a rotated-out key published until its `retire_at`.
The custodies that generate their own keys must also share one ring between processes and
never store or log a private key in the clear.

AWS KMS runs in-process through moto. moto 5 hashes the Message of a `Sign` call even when
MessageType is DIGEST, where KMS signs the digest as given; `_sign_digests_like_kms` makes the
moto keys behave like KMS, and `test_kms_signer_sends_a_digest_per_token` checks that every
`Sign` the custody sends is a DIGEST, which is what makes that stand-in faithful.
"""

from __future__ import annotations

import base64
import copy
import inspect
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from joserfc.jwk import import_key
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.kms.models import kms_backends

import fleetid.keys
from fleetid.keys import (
    ALGORITHMS,
    InMemoryPersistence,
    JsonFilePersistence,
    KeyCustody,
    KeyCustodyError,
    KeyExposureRisk,
    KeyRingConflict,
    KeyRingInvalid,
    KeyUnwrapFailed,
    KmsFailure,
    KmsKeyRef,
    KmsSigner,
    KmsWrappedKeys,
    LocalKeyFile,
    RingCustody,
    RingPersistence,
    RotationNotSupported,
    Signature,
    SigningKeyChanged,
    StoredRing,
    UnsupportedAlgorithm,
    encode_jwt,
)
from fleetid.keys.algorithms import generate_private_key
from fleetid.keys.ring import JWKS_MAX_AGE, KeyRecord, KeyRing, RotationTooSoon

REGION = "us-east-1"
ISSUER = "https://id.example.test"
AUDIENCE = "https://api.example.test/invoices"
FLEET = "acme-agents"
TOKEN_LIFETIME = 600

KMS_KEY_SPECS = {"RS256": "RSA_2048", "ES256": "ECC_NIST_P256"}
SIGNATURE_LENGTHS = {"RS256": 256, "ES256": 64}


# --- the world the custodies run in --------------------------------------------------------


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def publish(self) -> None:
        """Let the next key stay published as long as verifiers cache the JWKS, which is
        when a rotation may make it active."""
        self.advance(JWKS_MAX_AGE)


class KmsCalls:
    """Every KMS operation a client makes, with the parameters it was called with."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("before-parameter-build.kms", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def count(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    def operations(self) -> set[str]:
        return {name for name, _ in self.calls}

    def plaintexts(self) -> list[bytes]:
        """The private keys handed to KMS Encrypt, which must appear nowhere else."""
        return [params["Plaintext"] for name, params in self.calls if name == "Encrypt"]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for name, value in fake.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def botocore_below_debug(caplog: pytest.LogCaptureFixture) -> None:
    """KMS-wrapped custody refuses to run while botocore logs bodies; a DEBUG run of pytest
    would otherwise fail every test of it. The one test of that refusal turns DEBUG back on."""
    caplog.set_level(logging.INFO, logger="botocore")


@pytest.fixture
def kms() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


@pytest.fixture
def kms_calls(kms: Any) -> KmsCalls:
    return KmsCalls(kms)


@pytest.fixture
def kms_key_id(kms: Any) -> str:
    """A symmetric KMS key, the kind that wraps private keys."""
    return str(kms.create_key()["KeyMetadata"]["KeyId"])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=ALGORITHMS)
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _DigestSigningKey:
    """Stands in for moto's private key of one KMS key, signing each Message as a digest."""

    def __init__(self, moto_key: Any) -> None:
        self._moto_key = moto_key
        self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = moto_key.private_key

    def sign(self, message: bytes, signing_algorithm: str) -> bytes:
        prehashed = Prehashed(hashes.SHA256())
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(message, padding.PKCS1v15(), prehashed)

        return self._key.sign(message, ec.ECDSA(prehashed))

    def public_key(self) -> bytes:
        return bytes(self._moto_key.public_key())


def _create_signing_key(kms: Any, algorithm: str) -> str:
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec=KMS_KEY_SPECS[algorithm])[
        "KeyMetadata"
    ]["KeyId"]
    _sign_digests_like_kms(key_id)

    return str(key_id)


def _sign_digests_like_kms(key_id: str) -> None:
    moto_key: Any = kms_backends[DEFAULT_ACCOUNT_ID][REGION].keys[key_id]
    moto_key.private_key = _DigestSigningKey(moto_key.private_key)


# --- the custodies under test ---------------------------------------------------------------


@dataclass
class Subject:
    """A custody under test, how its kind of custody rotates, and how to start it again."""

    custody: KeyCustody
    rotate: Callable[[int], KeyCustody]
    reopen: Callable[[], RingCustody] | None = None


class ProvisionedKmsKeys:
    """Does for KMS Sign what provisioning does: a new KMS key, every key one step along."""

    def __init__(self, kms: Any, algorithm: str, clock: FakeClock) -> None:
        self._kms = kms
        self._algorithm = algorithm
        self._clock = clock
        self.refs = [
            KmsKeyRef(_create_signing_key(kms, algorithm), "active"),
            KmsKeyRef(_create_signing_key(kms, algorithm), "next"),
        ]

    def signer(self) -> KmsSigner:
        return KmsSigner(self._kms, self.refs, clock=self._clock)

    def rotate(self, max_token_lifetime: int) -> KeyCustody:
        self._clock.publish()
        now = int(self._clock())
        refs = []
        for ref in self.refs:
            if ref.state == "active":
                refs.append(KmsKeyRef(ref.key_id, "previous", now + max_token_lifetime))
            elif ref.state == "next":
                refs.append(KmsKeyRef(ref.key_id, "active"))
            elif ref.retire_at is not None and ref.retire_at > now:
                refs.append(ref)

        refs.append(KmsKeyRef(_create_signing_key(self._kms, self._algorithm), "next"))
        self.refs = refs

        return self.signer()


def _ring_subject(make: Callable[[], RingCustody], clock: FakeClock) -> Subject:
    custody = make()

    def rotate(max_token_lifetime: int) -> KeyCustody:
        # Loaded first: a ring generated by the rotation itself would have a new next key.
        custody.active_key()
        clock.publish()
        custody.rotate(max_token_lifetime=max_token_lifetime)
        return custody

    return Subject(custody=custody, rotate=rotate, reopen=make)


def _local_file(tmp_path: Path, algorithm: Any, clock: FakeClock) -> Subject:
    path = tmp_path / "keys" / "ring.json"

    return _ring_subject(lambda: LocalKeyFile(path, algorithm=algorithm, clock=clock), clock)


def _kms_wrapped(
    kms: Any, kms_key_id: str, persistence: RingPersistence, algorithm: Any, clock: FakeClock
) -> Subject:
    def make() -> RingCustody:
        return KmsWrappedKeys(
            kms, kms_key_id, persistence, fleet=FLEET, algorithm=algorithm, clock=clock
        )

    return _ring_subject(make, clock)


def _subject(
    request: pytest.FixtureRequest, tmp_path: Path, algorithm: str, clock: FakeClock
) -> Subject:
    kind = request.param
    if kind == "local-file":
        return _local_file(tmp_path, algorithm, clock)

    # Only the KMS custodies pay for starting moto.
    kms = request.getfixturevalue("kms")
    if kind == "kms-sign":
        provisioned = ProvisionedKmsKeys(kms, algorithm, clock)
        return Subject(custody=provisioned.signer(), rotate=provisioned.rotate)

    kms_key_id = request.getfixturevalue("kms_key_id")
    if kind == "kms-wrapped-file":
        persistence: RingPersistence = JsonFilePersistence(tmp_path / "ring.json")
    else:
        persistence = InMemoryPersistence()

    return _kms_wrapped(kms, kms_key_id, persistence, algorithm, clock)


@pytest.fixture(params=["local-file", "kms-wrapped-file", "kms-wrapped-memory", "kms-sign"])
def subject(
    request: pytest.FixtureRequest, tmp_path: Path, algorithm: str, clock: FakeClock
) -> Subject:
    return _subject(request, tmp_path, algorithm, clock)


@pytest.fixture(params=["local-file", "kms-wrapped-file", "kms-wrapped-memory"])
def ring_subject(
    request: pytest.FixtureRequest, tmp_path: Path, algorithm: str, clock: FakeClock
) -> Subject:
    return _subject(request, tmp_path, algorithm, clock)


@pytest.fixture(params=["file", "memory"])
def wrapped_persistence(request: pytest.FixtureRequest, tmp_path: Path) -> RingPersistence:
    if request.param == "file":
        return JsonFilePersistence(tmp_path / "ring.json")

    return InMemoryPersistence()


def _wrapped(
    kms: Any,
    kms_key_id: str,
    persistence: RingPersistence,
    *,
    algorithm: Any = "RS256",
    fleet: str = FLEET,
    clock: FakeClock | None = None,
) -> KmsWrappedKeys:
    return KmsWrappedKeys(
        kms, kms_key_id, persistence, fleet=fleet, algorithm=algorithm, clock=clock or FakeClock()
    )


# --- helpers ---------------------------------------------------------------------------------


def _claims() -> dict[str, Any]:
    # exp is checked by PyJWT against the real clock, so it is set from the real clock too.
    issued_at = int(time.time())

    return {
        "iss": ISSUER,
        "sub": "user:ana",
        "aud": AUDIENCE,
        "client_id": "billing-agent",
        "azp": "billing-agent",
        "scope": "invoices:read",
        "iat": issued_at,
        "exp": issued_at + TOKEN_LIFETIME,
        "jti": secrets.token_urlsafe(16),
    }


def _verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    key_set = jwt.PyJWKSet.from_dict(jwks)

    # PyJWKSet skips members it can't use; every member of a fleetid JWKS must be usable.
    assert len(key_set.keys) == len(jwks["keys"])

    key = key_set[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[key.algorithm_name], audience=AUDIENCE, issuer=ISSUER
    )

    return claims


def _thumbprint_by_joserfc(member: dict[str, str]) -> str:
    """The RFC 7638 thumbprint of a JWKS member, as another JOSE library computes it."""
    jwk: dict[str, str | list[str]] = {**member}
    key = import_key(jwk, "RSA") if member["kty"] == "RSA" else import_key(jwk, "EC")

    return key.thumbprint()


def _kids(jwks: dict[str, Any]) -> list[str]:
    return [member["kid"] for member in jwks["keys"]]


def _tamper(persistence: RingPersistence, change: Callable[[dict[str, Any]], None]) -> None:
    stored = persistence.load()
    assert stored is not None

    document = copy.deepcopy(dict(stored.document))
    change(document)
    persistence.save(document, expected_version=stored.version)


def _entry(document: dict[str, Any], state: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(key for key in document["keys"] if key["state"] == state)
    return entry


def _renderings(plaintext: bytes) -> list[bytes]:
    """Ways a DER private key could show up in text, whole or as its base64 body."""
    return [
        plaintext,
        plaintext.hex().encode(),
        base64.b64encode(plaintext),
        base64.urlsafe_b64encode(plaintext).rstrip(b"="),
        # A PEM wraps lines at 64 characters; any one line is enough to betray the key.
        base64.b64encode(plaintext)[64:128],
    ]


def _assert_no_key_material(text: bytes, plaintexts: list[bytes]) -> None:
    assert plaintexts
    assert b"PRIVATE KEY" not in text

    for plaintext in plaintexts:
        for rendering in _renderings(plaintext):
            assert rendering not in text


# --- the contract: every custody, both algorithms --------------------------------------------


def test_token_verifies_with_pyjwt_against_the_jwks(subject: Subject, algorithm: str) -> None:
    claims = _claims()
    token = encode_jwt(subject.custody, claims)

    assert _verify(token, subject.custody.jwks()) == claims


def test_header_names_the_profile_and_the_active_key(subject: Subject, algorithm: str) -> None:
    token = encode_jwt(subject.custody, _claims())
    header = jwt.get_unverified_header(token)
    kid, alg = subject.custody.active_key()

    assert header == {"alg": algorithm, "kid": kid, "typ": "at+jwt"}
    assert alg == algorithm


def test_token_is_compact_json_with_a_jws_signature(subject: Subject, algorithm: str) -> None:
    header, payload, signature = encode_jwt(subject.custody, _claims()).split(".")

    assert b" " not in base64.urlsafe_b64decode(header + "==")
    assert b" " not in base64.urlsafe_b64decode(payload + "==")
    assert "=" not in header + payload + signature
    assert len(base64.urlsafe_b64decode(signature + "==")) == SIGNATURE_LENGTHS[algorithm]


def test_sign_returns_the_active_key_and_a_raw_signature(subject: Subject, algorithm: str) -> None:
    signature = subject.custody.sign(b"header.payload")
    kid, alg = subject.custody.active_key()

    assert isinstance(signature, Signature)
    assert (signature.kid, signature.alg) == (kid, alg)
    assert len(signature.value) == SIGNATURE_LENGTHS[algorithm]


def test_jwks_members_are_complete_signing_keys(subject: Subject, algorithm: str) -> None:
    jwks = subject.custody.jwks()
    kty = {"RS256": "RSA", "ES256": "EC"}[algorithm]

    assert len(jwks["keys"]) == 2
    for member in jwks["keys"]:
        assert member["kty"] == kty
        assert member["alg"] == algorithm
        assert member["use"] == "sig"
        assert member["kid"] == _thumbprint_by_joserfc(member)
        assert "d" not in member

    assert subject.custody.active_key()[0] in _kids(jwks)


def test_jwks_publishes_the_next_key_before_it_signs(subject: Subject, algorithm: str) -> None:
    before = subject.custody.jwks()
    active_before, _ = subject.custody.active_key()
    (upcoming,) = [kid for kid in _kids(before) if kid != active_before]

    custody = subject.rotate(TOKEN_LIFETIME)

    assert custody.active_key()[0] == upcoming
    assert jwt.get_unverified_header(encode_jwt(custody, _claims()))["kid"] == upcoming


def test_rotation_publishes_a_fresh_next_key(subject: Subject, algorithm: str) -> None:
    before = set(_kids(subject.custody.jwks()))

    custody = subject.rotate(TOKEN_LIFETIME)
    after = custody.jwks()

    assert len(after["keys"]) == 3
    assert len(set(_kids(after)) - before) == 1


def test_tokens_signed_before_rotation_verify_until_retire_at(
    subject: Subject, algorithm: str, clock: FakeClock
) -> None:
    claims = _claims()
    old_token = encode_jwt(subject.custody, claims)
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    custody = subject.rotate(TOKEN_LIFETIME)
    clock.advance(TOKEN_LIFETIME - 1)

    assert _verify(old_token, custody.jwks()) == claims

    clock.advance(2)

    assert old_kid not in _kids(custody.jwks())
    with pytest.raises(KeyError):
        jwt.PyJWKSet.from_dict(custody.jwks())[old_kid]


def test_a_second_rotation_drops_keys_already_retired(
    subject: Subject, algorithm: str, clock: FakeClock
) -> None:
    first_kid, _ = subject.custody.active_key()

    custody = subject.rotate(TOKEN_LIFETIME)
    clock.advance(TOKEN_LIFETIME + 1)
    second_kid, _ = custody.active_key()
    custody = subject.rotate(TOKEN_LIFETIME)

    kids = _kids(custody.jwks())
    assert first_kid not in kids
    assert second_kid in kids
    assert len(kids) == 3


# --- custodies that generate their own ring ---------------------------------------------------


def test_a_second_instance_loads_the_same_ring(ring_subject: Subject, algorithm: str) -> None:
    assert ring_subject.reopen is not None
    token = encode_jwt(ring_subject.custody, _claims())

    again = ring_subject.reopen()

    assert again.active_key() == ring_subject.custody.active_key()
    assert again.jwks() == ring_subject.custody.jwks()
    assert _verify(token, again.jwks())["aud"] == AUDIENCE


def test_a_rotation_is_stored(ring_subject: Subject, algorithm: str) -> None:
    assert ring_subject.reopen is not None

    custody = ring_subject.rotate(TOKEN_LIFETIME)
    again = ring_subject.reopen()

    assert again.active_key() == custody.active_key()
    assert again.jwks() == custody.jwks()


def test_reload_adopts_another_instances_rotation(ring_subject: Subject, algorithm: str) -> None:
    assert ring_subject.reopen is not None
    other = ring_subject.reopen()
    other.jwks()

    custody = ring_subject.rotate(TOKEN_LIFETIME)
    other.reload()

    assert other.active_key() == custody.active_key()
    assert _verify(encode_jwt(other, _claims()), custody.jwks())["aud"] == AUDIENCE


def test_rotating_a_stale_ring_conflicts_and_adopts_the_stored_one(
    ring_subject: Subject, algorithm: str
) -> None:
    assert ring_subject.reopen is not None
    stale = ring_subject.reopen()
    stale.jwks()
    custody = ring_subject.rotate(TOKEN_LIFETIME)

    with pytest.raises(KeyRingConflict):
        stale.rotate(max_token_lifetime=TOKEN_LIFETIME)

    assert stale.active_key() == custody.active_key()
    assert stale.jwks() == custody.jwks()


def test_a_stored_kid_that_is_not_the_thumbprint_is_refused(
    tmp_path: Path, kms: Any, kms_key_id: str, algorithm: str
) -> None:
    persistence = JsonFilePersistence(tmp_path / "ring.json")
    _wrapped(kms, kms_key_id, persistence, algorithm=algorithm).jwks()
    _tamper(persistence, lambda document: _entry(document, "active").update(kid="forged"))

    with pytest.raises(KeyRingInvalid):
        _wrapped(kms, kms_key_id, persistence, algorithm=algorithm).jwks()


def test_a_next_key_younger_than_a_cached_jwks_does_not_become_active(
    ring_subject: Subject, algorithm: str, clock: FakeClock
) -> None:
    assert ring_subject.reopen is not None
    custody = ring_subject.custody
    active, _ = custody.active_key()
    clock.advance(JWKS_MAX_AGE - 1)

    with pytest.raises(RotationTooSoon) as refused:
        custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    message = str(refused.value)
    assert f"published {JWKS_MAX_AGE - 1} seconds ago" in message
    assert "(in 1 seconds)" in message
    assert refused.value.rotatable_at == int(clock.now) + 1
    assert isinstance(refused.value, KeyCustodyError)
    assert custody.active_key()[0] == active
    assert ring_subject.reopen().active_key()[0] == active

    clock.advance(1)
    custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    assert custody.active_key()[0] != active


def test_two_rotations_in_a_row_are_refused(
    ring_subject: Subject, algorithm: str, clock: FakeClock
) -> None:
    custody = ring_subject.rotate(TOKEN_LIFETIME)
    activated, _ = custody.active_key()

    # The next key now is the one the rotation made: published zero seconds ago.
    with pytest.raises(RotationTooSoon, match="published 0 seconds ago"):
        custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    assert custody.active_key()[0] == activated


def _two_key_ring(created_at: int | None) -> KeyRing:
    """An active and a next key, both made at `created_at` (None: not made by fleetid)."""
    active, upcoming = generate_private_key("ES256"), generate_private_key("ES256")
    return KeyRing(
        (
            KeyRecord.for_key(active, state="active", created_at=created_at),
            KeyRecord.for_key(upcoming, state="next", created_at=created_at),
        )
    )


def test_a_forced_rotation_activates_a_next_key_of_any_age(clock: FakeClock) -> None:
    now = int(clock.now)
    ring = _two_key_ring(created_at=now)
    fresh = KeyRecord.for_key(generate_private_key("ES256"), state="next", created_at=now)
    assert ring.next is not None

    with pytest.raises(RotationTooSoon):
        ring.rotated(fresh, now=now, max_token_lifetime=TOKEN_LIFETIME)
    rotated = ring.rotated(fresh, now=now, max_token_lifetime=TOKEN_LIFETIME, force=True)

    assert rotated.active.kid == ring.next.kid


def test_a_next_key_of_unknown_age_may_become_active(clock: FakeClock) -> None:
    now = int(clock.now)
    ring = _two_key_ring(created_at=None)
    fresh = KeyRecord.for_key(generate_private_key("ES256"), state="next", created_at=now)
    assert ring.next is not None

    rotated = ring.rotated(fresh, now=now, max_token_lifetime=TOKEN_LIFETIME)

    assert rotated.active.kid == ring.next.kid


def test_new_keys_take_the_configured_algorithm(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "ring.json"
    LocalKeyFile(path, algorithm="RS256", clock=clock).jwks()

    migrating = LocalKeyFile(path, algorithm="ES256", clock=clock)
    clock.publish()
    migrating.rotate(max_token_lifetime=TOKEN_LIFETIME)

    assert migrating.active_key()[1] == "RS256"
    assert [member["alg"] for member in migrating.jwks()["keys"]] == ["RS256", "ES256", "RS256"]


def test_an_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        LocalKeyFile(tmp_path / "ring.json", algorithm="HS256")  # type: ignore[arg-type]


class _HoldFirstLoads:
    """Holds every thread in its first `load` until all have loaded, so all see the same store."""

    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties)
        self._waited = threading.local()

    def wrap(self, load: Callable[[], StoredRing | None]) -> Callable[[], StoredRing | None]:
        def held_load() -> StoredRing | None:
            stored = load()
            if not getattr(self._waited, "done", False):
                self._waited.done = True
                # The timeout only turns a broken test into a failure instead of a hang.
                self._barrier.wait(timeout=30)

            return stored

        return held_load


def _race(custodies: list[KeyCustody]) -> list[tuple[str, str]]:
    with ThreadPoolExecutor(max_workers=len(custodies)) as pool:
        return list(pool.map(lambda custody: custody.active_key(), custodies))


class _HeldPersistence(RingPersistence):
    """`inner`, with each thread's first load held by `hold`."""

    def __init__(self, inner: RingPersistence, hold: _HoldFirstLoads) -> None:
        self._inner = inner
        self._held_load = hold.wrap(inner.load)

    def load(self) -> StoredRing | None:
        return self._held_load()

    def save(self, document: Any, *, expected_version: str | None) -> str:
        return self._inner.save(document, expected_version=expected_version)


class _OneCallAtATime:
    """A KMS client that makes one call at a time.

    In-process moto is not safe under concurrent calls, and the race under test is on the
    ring's storage, not on KMS, which serves concurrent callers on its own.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        call = getattr(self._client, operation)

        def one_at_a_time(**params: Any) -> Any:
            with self._lock:
                return call(**params)

        return one_at_a_time


def test_kms_wrapped_instances_racing_on_an_empty_store_share_one_ring(
    kms: Any, kms_key_id: str, kms_calls: KmsCalls, wrapped_persistence: RingPersistence
) -> None:
    racing = _HeldPersistence(wrapped_persistence, _HoldFirstLoads(parties=2))
    serial_kms = _OneCallAtATime(kms)
    racers: list[KeyCustody] = [_wrapped(serial_kms, kms_key_id, racing) for _ in range(2)]

    first, second = _race(racers)

    assert first == second
    assert kms_calls.count("Encrypt") == 4  # both generated a ring; one was stored
    assert racers[0].jwks() == racers[1].jwks()
    assert _wrapped(kms, kms_key_id, wrapped_persistence).active_key() == first


def test_local_key_files_racing_on_first_use_share_one_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = _HoldFirstLoads(parties=2)
    monkeypatch.setattr(JsonFilePersistence, "load", _held_method(hold, JsonFilePersistence.load))
    path = tmp_path / "ring.json"
    racers: list[KeyCustody] = [LocalKeyFile(path, algorithm="ES256") for _ in range(2)]

    first, second = _race(racers)

    assert first == second
    assert racers[0].jwks() == racers[1].jwks()


def _held_method(
    hold: _HoldFirstLoads, method: Callable[[JsonFilePersistence], StoredRing | None]
) -> Callable[[JsonFilePersistence], StoredRing | None]:
    def held(self: JsonFilePersistence) -> StoredRing | None:
        return hold.wrap(lambda: method(self))()

    return held


# --- LocalKeyFile -----------------------------------------------------------------------------


def test_local_key_file_is_owner_only(tmp_path: Path, clock: FakeClock) -> None:
    custody = LocalKeyFile(tmp_path / "keys" / "ring.json", clock=clock)
    custody.jwks()

    assert stat.S_IMODE(custody.path.stat().st_mode) == 0o600

    clock.publish()
    custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    assert stat.S_IMODE(custody.path.stat().st_mode) == 0o600
    assert sorted(path.name for path in custody.path.parent.iterdir()) == [
        "ring.json",
        "ring.json.lock",
    ]


def test_local_key_file_keeps_pem_keys_only_for_keys_that_sign(
    tmp_path: Path, clock: FakeClock
) -> None:
    custody = LocalKeyFile(tmp_path / "ring.json", clock=clock)
    custody.jwks()
    clock.publish()
    custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    document = json.loads(custody.path.read_text())
    slots = {entry["state"]: entry.get("private_key") for entry in document["keys"]}

    assert slots["active"]["pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert slots["next"]["pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert slots["previous"] is None


def test_local_key_file_open_to_others_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "ring.json"
    LocalKeyFile(path, clock=clock).jwks()
    path.chmod(0o644)

    with pytest.raises(KeyExposureRisk, match="0644"):
        LocalKeyFile(path, clock=clock).jwks()


def test_local_key_file_refuses_a_kms_wrapped_ring(
    tmp_path: Path, kms: Any, kms_key_id: str
) -> None:
    path = tmp_path / "ring.json"
    _wrapped(kms, kms_key_id, JsonFilePersistence(path)).jwks()

    with pytest.raises(KeyRingInvalid, match="another kind of key custody"):
        LocalKeyFile(path).jwks()


def test_local_key_file_private_key_must_match_its_kid(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "ring.json"
    LocalKeyFile(path, clock=clock).jwks()

    def swap_private_keys(document: dict[str, Any]) -> None:
        active, upcoming = _entry(document, "active"), _entry(document, "next")
        active["private_key"], upcoming["private_key"] = (
            upcoming["private_key"],
            active["private_key"],
        )

    _tamper(JsonFilePersistence(path), swap_private_keys)

    with pytest.raises(KeyRingInvalid, match="does not match its public key"):
        LocalKeyFile(path, clock=clock).jwks()


# --- KmsWrappedKeys ----------------------------------------------------------------------------


def test_kms_wrapped_store_holds_no_plaintext_key(
    kms: Any,
    kms_key_id: str,
    kms_calls: KmsCalls,
    wrapped_persistence: RingPersistence,
    algorithm: str,
    clock: FakeClock,
) -> None:
    custody = _wrapped(kms, kms_key_id, wrapped_persistence, algorithm=algorithm, clock=clock)
    custody.jwks()
    clock.publish()
    custody.rotate(max_token_lifetime=TOKEN_LIFETIME)

    stored = wrapped_persistence.load()
    assert stored is not None
    text = json.dumps(dict(stored.document)).encode()
    if isinstance(wrapped_persistence, JsonFilePersistence):
        text += wrapped_persistence.path.read_bytes()

    assert kms_calls.count("Encrypt") == 3
    _assert_no_key_material(text, kms_calls.plaintexts())


def test_kms_wrapped_keys_are_bound_to_fleet_and_kid(
    kms: Any, kms_key_id: str, kms_calls: KmsCalls, wrapped_persistence: RingPersistence
) -> None:
    custody = _wrapped(kms, kms_key_id, wrapped_persistence)
    custody.jwks()

    stored = wrapped_persistence.load()
    assert stored is not None
    for entry in stored.document["keys"]:
        assert entry["private_key"]["encryption_context"] == {
            "fleetid:purpose": "signing-key",
            "fleetid:fleet": FLEET,
            "fleetid:kid": entry["kid"],
        }

    contexts = [
        params["EncryptionContext"] for name, params in kms_calls.calls if name == "Encrypt"
    ]
    assert [context["fleetid:kid"] for context in contexts] == _kids(custody.jwks())


def test_kms_wrapped_load_costs_one_decrypt_per_signing_key(
    kms: Any,
    kms_key_id: str,
    kms_calls: KmsCalls,
    wrapped_persistence: RingPersistence,
    clock: FakeClock,
) -> None:
    rotating = _wrapped(kms, kms_key_id, wrapped_persistence, clock=clock)
    rotating.jwks()
    clock.publish()
    rotating.rotate(max_token_lifetime=TOKEN_LIFETIME)
    kms_calls.clear()

    cold_start = _wrapped(kms, kms_key_id, wrapped_persistence, clock=clock)
    for _ in range(20):
        encode_jwt(cold_start, _claims())
    cold_start.jwks()

    # Active and next are decrypted; the previous key never signs again and has no private key.
    assert kms_calls.operations() == {"Decrypt"}
    assert kms_calls.count("Decrypt") == 2
    assert len(cold_start.jwks()["keys"]) == 3


def test_kms_wrapped_reload_decrypts_only_new_keys(
    kms: Any,
    kms_key_id: str,
    kms_calls: KmsCalls,
    wrapped_persistence: RingPersistence,
    clock: FakeClock,
) -> None:
    rotating = _wrapped(kms, kms_key_id, wrapped_persistence, clock=clock)
    warm = _wrapped(kms, kms_key_id, wrapped_persistence, clock=clock)
    warm.jwks()
    clock.publish()
    rotating.rotate(max_token_lifetime=TOKEN_LIFETIME)
    kms_calls.clear()

    warm.reload()

    assert kms_calls.count("Decrypt") == 1
    assert warm.active_key() == rotating.active_key()


def test_kms_wrapped_refuses_a_tampered_encryption_context(
    kms: Any, kms_key_id: str, kms_calls: KmsCalls, wrapped_persistence: RingPersistence
) -> None:
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()
    plaintexts = kms_calls.plaintexts()

    def retarget(document: dict[str, Any]) -> None:
        _entry(document, "active")["private_key"]["encryption_context"]["fleetid:fleet"] = "other"

    _tamper(wrapped_persistence, retarget)

    with pytest.raises(KeyRingInvalid) as raised:
        _wrapped(kms, kms_key_id, wrapped_persistence).jwks()

    _assert_no_key_material(str(raised.value).encode(), plaintexts)


def test_kms_wrapped_refuses_a_key_moved_to_another_kid(
    kms: Any, kms_key_id: str, kms_calls: KmsCalls, wrapped_persistence: RingPersistence
) -> None:
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()
    plaintexts = kms_calls.plaintexts()

    def swap_ciphertexts(document: dict[str, Any]) -> None:
        active, upcoming = _entry(document, "active"), _entry(document, "next")
        active["private_key"]["ciphertext"], upcoming["private_key"]["ciphertext"] = (
            upcoming["private_key"]["ciphertext"],
            active["private_key"]["ciphertext"],
        )

    _tamper(wrapped_persistence, swap_ciphertexts)

    # Each stored context is still the right one for its kid, so only KMS can tell: the
    # ciphertext was sealed under the other kid's context.
    with pytest.raises(KeyUnwrapFailed) as raised:
        _wrapped(kms, kms_key_id, wrapped_persistence).jwks()

    assert isinstance(raised.value, KeyCustodyError)
    assert raised.value.code == "InvalidCiphertextException"
    _assert_no_key_material(str(raised.value).encode(), plaintexts)


def test_kms_wrapped_ring_of_another_fleet_is_refused(
    kms: Any, kms_key_id: str, wrapped_persistence: RingPersistence
) -> None:
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()

    with pytest.raises(KeyRingInvalid, match="another fleet"):
        _wrapped(kms, kms_key_id, wrapped_persistence, fleet="someone-else").jwks()


def test_kms_wrapped_ring_under_another_kms_key_is_refused(
    kms: Any, kms_key_id: str, wrapped_persistence: RingPersistence
) -> None:
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()
    other_kms_key = kms.create_key()["KeyMetadata"]["KeyId"]

    with pytest.raises(KmsFailure) as raised:
        _wrapped(kms, other_kms_key, wrapped_persistence).jwks()

    assert raised.value.operation == "Decrypt"


def test_kms_wrapped_turns_aws_errors_into_custody_errors(
    kms: Any, wrapped_persistence: RingPersistence
) -> None:
    custody = _wrapped(kms, "alias/not-provisioned", wrapped_persistence)

    with pytest.raises(KmsFailure) as raised:
        custody.jwks()

    assert raised.value.operation == "Encrypt"
    assert raised.value.code == "NotFoundException"
    assert raised.value.__cause__ is not None
    assert wrapped_persistence.load() is None


def test_kms_wrapped_refuses_while_botocore_logs_bodies(
    kms: Any,
    kms_key_id: str,
    kms_calls: KmsCalls,
    wrapped_persistence: RingPersistence,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()
    kms_calls.clear()
    caplog.set_level(logging.DEBUG, logger="botocore")

    with pytest.raises(KeyExposureRisk, match="botocore"):
        _wrapped(kms, kms_key_id, wrapped_persistence).jwks()

    assert kms_calls.count("Decrypt") == 0


def test_kms_wrapped_logs_no_key_material(
    kms: Any,
    kms_key_id: str,
    kms_calls: KmsCalls,
    wrapped_persistence: RingPersistence,
    caplog: pytest.LogCaptureFixture,
    clock: FakeClock,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetid")

    custody = _wrapped(kms, kms_key_id, wrapped_persistence, clock=clock)
    custody.jwks()
    clock.publish()
    custody.rotate(max_token_lifetime=TOKEN_LIFETIME)
    _wrapped(kms, kms_key_id, wrapped_persistence).jwks()

    assert custody.active_key()[0] in caplog.text
    _assert_no_key_material(caplog.text.encode(), kms_calls.plaintexts())


# --- KmsSigner ---------------------------------------------------------------------------------


def test_kms_signer_cannot_rotate(kms: Any, clock: FakeClock) -> None:
    signer = ProvisionedKmsKeys(kms, "RS256", clock).signer()

    with pytest.raises(RotationNotSupported, match="provision a new KMS key"):
        signer.rotate(max_token_lifetime=TOKEN_LIFETIME)


def test_kms_signer_sends_a_digest_per_token(
    kms: Any, kms_calls: KmsCalls, algorithm: str, clock: FakeClock
) -> None:
    signer = ProvisionedKmsKeys(kms, algorithm, clock).signer()
    kms_calls.clear()

    for _ in range(3):
        encode_jwt(signer, _claims())
    signer.jwks()

    signs = [params for name, params in kms_calls.calls if name == "Sign"]
    expected_algorithm = {"RS256": "RSASSA_PKCS1_V1_5_SHA_256", "ES256": "ECDSA_SHA_256"}
    assert kms_calls.count("GetPublicKey") == 2
    assert len(signs) == 3
    for params in signs:
        assert params["MessageType"] == "DIGEST"
        assert len(params["Message"]) == 32
        assert params["SigningAlgorithm"] == expected_algorithm[algorithm]


def test_kms_signer_kid_is_not_the_kms_key_id(kms: Any, clock: FakeClock) -> None:
    provisioned = ProvisionedKmsKeys(kms, "ES256", clock)
    jwks_text = json.dumps(provisioned.signer().jwks())

    for ref in provisioned.refs:
        assert ref.key_id not in jwks_text


def test_kms_signer_refuses_a_ring_with_two_active_keys(kms: Any) -> None:
    refs = [KmsKeyRef("one", "active"), KmsKeyRef("two", "active")]

    with pytest.raises(KeyRingInvalid):
        KmsSigner(kms, refs)


def test_kms_signer_refuses_a_previous_key_without_retire_at(kms: Any) -> None:
    refs = [KmsKeyRef("one", "active"), KmsKeyRef("two", "previous")]

    with pytest.raises(KeyRingInvalid):
        KmsSigner(kms, refs)


def test_kms_signer_refuses_a_key_that_does_not_sign(kms: Any, kms_key_id: str) -> None:
    signer = KmsSigner(kms, [KmsKeyRef(kms_key_id, "active")])

    with pytest.raises(UnsupportedAlgorithm):
        signer.jwks()


def test_kms_signer_refuses_a_curve_other_than_p256(kms: Any) -> None:
    key_id = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P384")["KeyMetadata"][
        "KeyId"
    ]

    with pytest.raises(UnsupportedAlgorithm):
        KmsSigner(kms, [KmsKeyRef(key_id, "active")]).jwks()


def test_kms_signer_turns_aws_errors_into_custody_errors(kms: Any) -> None:
    signer = KmsSigner(kms, [KmsKeyRef("alias/not-provisioned", "active")])

    with pytest.raises(KmsFailure) as raised:
        encode_jwt(signer, _claims())

    assert raised.value.operation == "GetPublicKey"
    assert raised.value.__cause__ is not None


# --- encode_jwt --------------------------------------------------------------------------------


class _RotatesWhileSigning(KeyCustody):
    """A custody whose active key changes between encode_jwt reading it and signing."""

    def __init__(self, inner: RingCustody, rotations: int, clock: FakeClock) -> None:
        self._inner = inner
        self._rotations = rotations
        self._clock = clock

    def active_key(self) -> tuple[str, Any]:
        return self._inner.active_key()

    def sign(self, signing_input: bytes) -> Signature:
        if self._rotations:
            self._rotations -= 1
            self._clock.publish()
            self._inner.rotate(max_token_lifetime=TOKEN_LIFETIME)

        return self._inner.sign(signing_input)

    def jwks(self) -> Any:
        return self._inner.jwks()

    def rotate(self, *, max_token_lifetime: int) -> None:
        self._inner.rotate(max_token_lifetime=max_token_lifetime)


def test_encode_jwt_signs_again_when_a_rotation_intervenes(
    tmp_path: Path, clock: FakeClock
) -> None:
    inner = LocalKeyFile(tmp_path / "ring.json", algorithm="ES256", clock=clock)
    custody = _RotatesWhileSigning(inner, rotations=1, clock=clock)

    token = encode_jwt(custody, _claims())

    assert jwt.get_unverified_header(token)["kid"] == inner.active_key()[0]
    assert _verify(token, inner.jwks())["aud"] == AUDIENCE


def test_encode_jwt_gives_up_when_the_key_keeps_changing(tmp_path: Path, clock: FakeClock) -> None:
    inner = LocalKeyFile(tmp_path / "ring.json", algorithm="ES256", clock=clock)

    with pytest.raises(SigningKeyChanged):
        encode_jwt(_RotatesWhileSigning(inner, rotations=2, clock=clock), _claims())


def test_encode_jwt_takes_another_typ(tmp_path: Path) -> None:
    custody = LocalKeyFile(tmp_path / "ring.json", algorithm="ES256")
    claims = {**_claims(), "name": "Ana Lúcia"}

    token = encode_jwt(custody, claims, typ="JWT")

    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    assert _verify(token, custody.jwks()) == claims


# --- the package ---------------------------------------------------------------------------------


def test_public_api_is_what_all_says() -> None:
    public = {
        name
        for name, value in vars(fleetid.keys).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }

    assert public == set(fleetid.keys.__all__)
