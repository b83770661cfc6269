"""RS256 and ES256 signatures made on native threads: the compiled pool, and a custody
using it."""

from __future__ import annotations

import asyncio
import gc
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fleetid.keys import Algorithm, KeyCustody, LocalKeyFile, encode_jwt_async
from fleetid.keys.errors import KeyCustodyError
from fleetid.keys.offload import SIGNING_NICENESS, SigningThreads, native_signing_available
from fleetid.server.tokens import TokenService

AUDIENCE = "https://api.example.test/invoices"

T = TypeVar("T")


def _der(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _workers_niceness() -> list[int]:
    """The nice value of each pool worker alive now, told apart by name from other tests'
    threads."""
    values = []
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended while the folder was read
            continue
        name, _, fields = stat.partition("(")[2].rpartition(")")
        if name == "fleetid-sign":
            # proc(5): the nice value is the stat line's 19th field; 3rd is the first after ")".
            values.append(int(fields.split()[19 - 3]))
    return values


def _settles(read: Callable[[], T], expected: T) -> T:
    """What `read` returns once it is `expected`, or after five seconds, whichever comes first."""
    deadline = time.monotonic() + 5
    found = read()
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.01)
        found = read()
    return found


def _signing_threads_settle_at(expected: int) -> int:
    """The workers alive, once `expected` are or after five seconds.

    A joined thread can still be listed under /proc for a moment after pthread_join returns,
    and a pool an earlier test left unreferenced stops only when the collector frees it.
    """
    gc.collect()
    return _settles(lambda: len(_workers_niceness()), expected)


def _niceness_settles_at(expected: list[int]) -> list[int]:
    """The workers' nice values, once they are `expected` or after five seconds: each worker
    lowers its priority as it starts, which may be a moment after its pool was made."""
    return _settles(_workers_niceness, expected)


def _verifies(key: rsa.RSAPrivateKey, data: bytes, signature: bytes) -> bool:
    try:
        key.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return False
    return True


def _verifies_es256(key: ec.EllipticCurvePrivateKey, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is R || S as RFC 7518 §3.4 has it, 32 octets each, by `key`."""
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.public_key().verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_the_compiled_pool_is_built_with_the_package() -> None:
    # The install compiles it wherever a C compiler and OpenSSL's headers exist, as here;
    # without it `fleetid serve` would quietly sign RS256 on the event loop's thread.
    assert native_signing_available()


def _signed_by_a_pool(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, count: int
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """`count` random inputs, and the signature a pool of two threads with `key` made of
    each, by ticket."""
    from fleetid.keys._signpool import Pool

    pool = Pool(_der(key), 2)
    inputs = {ticket: os.urandom(ticket % 300 + 1) for ticket in range(count)}
    for ticket, data in inputs.items():
        pool.submit(ticket, data)
    # close() lets the threads sign everything queued before they stop.
    pool.close()

    results = dict(pool.collect())

    assert pool.collect() == []
    signatures = {ticket: value for ticket, value in results.items() if value is not None}
    assert len(signatures) == len(results), "OpenSSL failed to make some signatures"
    return inputs, signatures


def test_every_submitted_input_comes_back_signed_under_its_ticket(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    inputs, results = _signed_by_a_pool(rsa_key, 200)

    assert results.keys() == inputs.keys()
    assert all(_verifies(rsa_key, inputs[t], signature) for t, signature in results.items())


def test_a_p256_key_signs_es256_as_r_and_s() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # Enough signatures that some R or S begins with a zero octet, which must be kept: about
    # one signature in 128 has one, so 3,000 miss it with a chance of about 1 in 10^10.
    inputs, results = _signed_by_a_pool(key, 3000)

    assert results.keys() == inputs.keys()
    assert all(_verifies_es256(key, inputs[t], signature) for t, signature in results.items())
    assert any(signature[0] == 0 or signature[32] == 0 for signature in results.values())


def test_the_pool_refuses_what_it_cannot_sign_with(rsa_key: rsa.RSAPrivateKey) -> None:
    from fleetid.keys._signpool import Pool

    with pytest.raises(ValueError, match="not a DER-encoded private key"):
        Pool(b"not a key", 1)
    for curve in (ec.SECP384R1(), ec.SECP256K1()):
        with pytest.raises(ValueError, match="must be an RSA or a P-256 private key"):
            Pool(_der(ec.generate_private_key(curve)), 1)
    with pytest.raises(ValueError, match="must be an RSA or a P-256 private key"):
        Pool(_der(ed25519.Ed25519PrivateKey.generate()), 1)
    with pytest.raises(ValueError, match="threads must be between 1 and 64"):
        Pool(_der(rsa_key), 0)

    with pytest.raises(ValueError, match="niceness must be between 0 and 19"):
        Pool(_der(rsa_key), 1, niceness=-1)
    with pytest.raises(ValueError, match="niceness must be between 0 and 19"):
        Pool(_der(rsa_key), 1, niceness=20)

    pool = Pool(_der(rsa_key), 1)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.submit(1, b"late")


def test_the_workers_run_below_the_priority_of_the_thread_that_made_them(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    from fleetid.keys._signpool import Pool

    assert _signing_threads_settle_at(0) == 0
    expected = min(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + 3, 19)
    pool = Pool(_der(rsa_key), 2, niceness=3)
    pool.submit(1, b"data")
    select.select([pool.fileno()], [], [], 5)

    assert _niceness_settles_at([expected] * 2) == [expected] * 2
    pool.close()
    assert [signature is not None for _, signature in pool.collect()] == [True]


def test_the_threads_stop_when_the_pool_is_closed(rsa_key: rsa.RSAPrivateKey) -> None:
    from fleetid.keys._signpool import Pool

    before = _signing_threads_settle_at(0)
    pool = Pool(_der(rsa_key), 3)
    assert _signing_threads_settle_at(before + 3) == before + 3

    pool.close()

    assert _signing_threads_settle_at(before) == before


def test_signing_threads_answer_each_waiter_on_the_loop(rsa_key: rsa.RSAPrivateKey) -> None:
    threads = SigningThreads(2)

    async def sign_many() -> list[tuple[bytes, bytes]]:
        inputs = [os.urandom(64) for _ in range(100)]
        signatures = await asyncio.gather(*(threads.sign("k1", rsa_key, i) for i in inputs))
        return list(zip(inputs, signatures, strict=True))

    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    below_this_thread = min(own + SIGNING_NICENESS, 19)
    signed = asyncio.run(sign_many())
    niceness = _niceness_settles_at([below_this_thread] * 2)
    threads.close()

    assert all(_verifies(rsa_key, data, signature) for data, signature in signed)
    assert niceness == [below_this_thread] * 2


def test_a_new_key_stops_the_threads_of_the_key_before(rsa_key: rsa.RSAPrivateKey) -> None:
    newer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    threads = SigningThreads(1)
    before = _signing_threads_settle_at(0)

    async def rotate_while_signing() -> tuple[list[bytes], bytes, int]:
        in_flight = [asyncio.ensure_future(threads.sign("old", rsa_key, b"x")) for _ in range(20)]
        await asyncio.sleep(0)
        signature = await threads.sign("new", newer, b"after rotation")
        during = _signing_threads_settle_at(before + 1)
        return await asyncio.gather(*in_flight), signature, during

    old_signatures, new_signature, during = asyncio.run(rotate_while_signing())

    # The old key's threads finished what they held before stopping: nothing is left waiting.
    assert all(_verifies(rsa_key, b"x", signature) for signature in old_signatures)
    assert _verifies(newer, b"after rotation", new_signature)
    assert during == before + 1
    threads.close()
    assert _signing_threads_settle_at(before) == before


def test_a_cancelled_waiter_does_not_disturb_the_others(rsa_key: rsa.RSAPrivateKey) -> None:
    threads = SigningThreads(1)

    async def cancel_one() -> bytes:
        doomed = asyncio.ensure_future(threads.sign("k1", rsa_key, b"cancelled"))
        await asyncio.sleep(0)
        doomed.cancel()
        return await threads.sign("k1", rsa_key, b"kept")

    assert _verifies(rsa_key, b"kept", asyncio.run(cancel_one()))
    threads.close()


def test_threads_first_used_on_one_loop_refuse_another(rsa_key: rsa.RSAPrivateKey) -> None:
    threads = SigningThreads(1)

    async def usable_then_sign() -> bool:
        usable = threads.usable()
        await threads.sign("k1", rsa_key, b"first loop")
        return usable

    assert asyncio.run(usable_then_sign())

    async def on_another_loop() -> None:
        assert not threads.usable()
        await threads.sign("k1", rsa_key, b"second loop")

    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(on_another_loop())
    threads.close()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_local_key_file_signs_on_its_threads(tmp_path: Path, algorithm: Algorithm) -> None:
    custody = LocalKeyFile(tmp_path / "keys.json", algorithm=algorithm)
    custody.sign_on_threads(1)
    before = _signing_threads_settle_at(0)
    claims = {"iss": "https://id.example.test", "aud": AUDIENCE, "sub": "agent", "exp": 2**40}

    async def sign_concurrently() -> tuple[list[str], int]:
        tokens = await asyncio.gather(*(encode_jwt_async(custody, claims) for _ in range(50)))
        return tokens, _signing_threads_settle_at(before + 1)

    tokens, during = asyncio.run(sign_concurrently())

    assert during == before + 1
    keys = jwt.PyJWKSet.from_dict(dict(custody.jwks()))
    for token in tokens:
        kid = jwt.get_unverified_header(token)["kid"]
        key = next(k for k in keys.keys if k.key_id == kid)
        decoded = jwt.decode(token, key.key, algorithms=[algorithm], audience=AUDIENCE)
        assert decoded["sub"] == "agent"


def test_signing_off_any_loop_stays_in_place(tmp_path: Path) -> None:
    es256 = LocalKeyFile(tmp_path / "es.json", algorithm="ES256")
    es256.sign_on_threads(1)
    rs256 = LocalKeyFile(tmp_path / "rs.json", algorithm="RS256")
    rs256.sign_on_threads(1)
    before = _signing_threads_settle_at(0)

    # The synchronous contract is untouched: no loop, no threads.
    assert len(rs256.sign(b"header.payload").value) == 256
    assert len(es256.sign(b"header.payload").value) == 64
    assert _signing_threads_settle_at(before) == before


def test_a_failed_signature_is_a_custody_error(rsa_key: rsa.RSAPrivateKey) -> None:
    threads = SigningThreads(1)

    async def answer_with_failure() -> None:
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[bytes] = loop.create_future()
        threads._waiting[7] = waiting

        class FailedPool:
            def collect(self) -> list[tuple[int, bytes | None]]:
                return [(7, None)]

        threads._answer(FailedPool())  # type: ignore[arg-type]
        await waiting

    with pytest.raises(KeyCustodyError, match="OpenSSL failed to make a signature"):
        asyncio.run(answer_with_failure())


def test_the_token_service_gives_threads_to_custodies_present_and_to_come(
    tmp_path: Path,
) -> None:
    def custody_for(algorithm: Algorithm) -> KeyCustody:
        return LocalKeyFile(tmp_path / f"keys-{algorithm}.json", algorithm=algorithm)

    # The default custody exists before threads are asked for; an RS256 one made later
    # for a resource's own key gets them as well.
    tokens = TokenService("https://id.example.test", custody_for, default_algorithm="ES256")
    tokens.sign_on_threads(1)
    before = _signing_threads_settle_at(0)
    claims = {"sub": "agent", "aud": AUDIENCE, "exp": 2**40}

    async def sign_both() -> tuple[int, int]:
        await tokens.sign(claims)
        after_es256 = _signing_threads_settle_at(before + 1)
        await tokens.sign(claims, algorithm="RS256")
        return after_es256, _signing_threads_settle_at(before + 2)

    after_es256, after_rs256 = asyncio.run(sign_both())

    assert (after_es256, after_rs256) == (before + 1, before + 2)
