"""The storage contract, run unchanged against every backend.

Each test receives a ``store`` built three ways: SQLite on a temporary file, DynamoDB on
in-process moto, and DynamoDB on a moto server over loopback. Tests that race many threads use
SQLite and the moto server only, because in-process moto is not safe under concurrent calls;
SQLite is raced across processes too. The clock is injected and moved by hand, so expiry is
tested without waiting.
"""

import math
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

import fleetid.store
import fleetid.store.dynamodb
import fleetid.store.sqlite
from fleetid.store import (
    DynamoDBStore,
    Record,
    SQLiteStore,
    Store,
    StoreError,
    StoreUnavailableError,
)

T = TypeVar("T")

REGION = "us-east-1"
CONTENDERS = 50
# A digest-like key, so that a test can check that no error message repeats it.
KEY = "k3Y-0f-a-c0de-d1gest"


class ManualClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server_client(moto_server_url: str) -> Iterator[Any]:
    # One pooled connection per contender, so that every thread's request is in flight at once.
    client = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=moto_server_url,
        config=Config(max_pool_connections=CONTENDERS + 4),
    )
    yield client
    client.close()


def table_name() -> str:
    return f"fleetid-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: ManualClock) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "fleetid.db", clock=clock) as store:
        yield store


@pytest.fixture
def mocked_client() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("dynamodb", region_name=REGION)


def open_store(kind: str, request: pytest.FixtureRequest, clock: ManualClock) -> Store:
    if kind == "sqlite":
        store: Store = request.getfixturevalue("sqlite_store")
        return store

    if kind == "dynamodb":
        client = request.getfixturevalue("mocked_client")
    else:
        client = request.getfixturevalue("server_client")

    name = table_name()
    DynamoDBStore.create_table(client, name)

    return DynamoDBStore(name, client=client, clock=clock)


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-server"])
def store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Store]:
    with open_store(request.param, request, clock) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "dynamodb-server"])
def threaded_store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Store]:
    with open_store(request.param, request, clock) as opened:
        yield opened


def run_together(count: int, contender: Callable[[int], T]) -> list[T]:
    """Run ``contender(i)`` on ``count`` threads released at the same instant."""
    # The timeout only keeps a broken test from hanging; nothing here measures time.
    barrier = threading.Barrier(count, timeout=120)

    def released(index: int) -> T:
        barrier.wait()
        return contender(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(released, range(count)))


# Records


def test_create_then_get(store: Store, clock: ManualClock) -> None:
    expires_at = int(clock.now) + 60

    assert store.create("auth_code", KEY, {"client": "agent-a"}, expires_at=expires_at)

    assert store.get("auth_code", KEY) == Record(
        value={"client": "agent-a"}, version=1, expires_at=expires_at
    )


def test_get_of_an_absent_key_is_none(store: Store) -> None:
    assert store.get("auth_code", KEY) is None


def test_get_many_returns_the_live_records_it_finds(store: Store, clock: ManualClock) -> None:
    now = int(clock.now)
    store.create("grant", "g1", {"n": 1}, expires_at=now + 60)
    store.create("revoked", "j1", {}, expires_at=now + 60)
    store.create("revoked", "j2", {}, expires_at=now + 1)
    store.create("grant", "g#2", {"n": 2}, expires_at=None)
    clock.advance(2)

    found = store.get_many(
        [("grant", "g1"), ("revoked", "j1"), ("revoked", "j2"), ("grant", "g#2"), ("grant", "x")]
    )

    assert found == {
        ("grant", "g1"): Record(value={"n": 1}, version=1, expires_at=now + 60),
        ("revoked", "j1"): Record(value={}, version=1, expires_at=now + 60),
        ("grant", "g#2"): Record(value={"n": 2}, version=1, expires_at=None),
    }


def test_get_many_of_nothing_or_of_one_address_twice(store: Store) -> None:
    store.create("grant", "g1", {"n": 1}, expires_at=None)

    assert store.get_many([]) == {}
    assert list(store.get_many([("grant", "g1"), ("grant", "g1")])) == [("grant", "g1")]


@pytest.mark.parametrize(
    "addresses",
    [[("Grant", "g1")], [("grant", "")], [("grant", f"k{n}") for n in range(101)]],
    ids=["bad namespace", "empty key", "too many"],
)
def test_get_many_refuses_bad_addresses(store: Store, addresses: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        store.get_many(addresses)


def test_create_does_not_overwrite_a_live_record(store: Store) -> None:
    assert store.create("auth_code", KEY, {"n": 1}, expires_at=None)

    assert not store.create("auth_code", KEY, {"n": 2}, expires_at=None)
    assert store.get("auth_code", KEY) == Record(value={"n": 1}, version=1, expires_at=None)


def test_namespaces_are_separate(store: Store) -> None:
    store.create("auth_code", KEY, {"kind": "code"}, expires_at=None)
    store.create("refresh_family", KEY, {"kind": "family"}, expires_at=None)

    code = store.get("auth_code", KEY)
    family = store.get("refresh_family", KEY)

    assert code is not None and code.value == {"kind": "code"}
    assert family is not None and family.value == {"kind": "family"}


def test_values_round_trip_as_json(store: Store) -> None:
    value = {
        "scopes": ["read", "write"],
        "act": {"sub": "agent-a", "act": {"sub": "agent-b"}},
        "count": 3,
        "ratio": 0.25,
        "enabled": True,
        "missing": None,
        "name": "Zoë — 代理",
    }
    store.create("approval", KEY, value, expires_at=None)

    record = store.get("approval", KEY)

    assert record is not None and record.value == value


def test_replace_with_the_current_version(store: Store, clock: ManualClock) -> None:
    store.create("refresh_family", KEY, {"generation": 1}, expires_at=None)
    expires_at = int(clock.now) + 600

    assert store.replace(
        "refresh_family", KEY, {"generation": 2}, version=1, expires_at=expires_at
    )
    assert store.replace("refresh_family", KEY, {"generation": 3}, version=2, expires_at=None)

    assert store.get("refresh_family", KEY) == Record(
        value={"generation": 3}, version=3, expires_at=None
    )


def test_replace_with_a_stale_version_changes_nothing(store: Store) -> None:
    store.create("refresh_family", KEY, {"generation": 1}, expires_at=None)
    store.replace("refresh_family", KEY, {"generation": 2}, version=1, expires_at=None)

    assert not store.replace("refresh_family", KEY, {"stale": True}, version=1, expires_at=None)
    assert not store.replace("refresh_family", KEY, {"ahead": True}, version=3, expires_at=None)

    assert store.get("refresh_family", KEY) == Record(
        value={"generation": 2}, version=2, expires_at=None
    )


def test_replace_of_an_absent_record_is_refused(store: Store) -> None:
    assert not store.replace("refresh_family", KEY, {"n": 1}, version=1, expires_at=None)

    assert store.get("refresh_family", KEY) is None


def test_redeem_returns_the_record_once(store: Store, clock: ManualClock) -> None:
    expires_at = int(clock.now) + 60
    store.create("auth_code", KEY, {"client": "agent-a"}, expires_at=expires_at)

    assert store.redeem("auth_code", KEY) == Record(
        value={"client": "agent-a"}, version=1, expires_at=expires_at
    )
    assert store.redeem("auth_code", KEY) is None
    assert store.get("auth_code", KEY) is None


def test_redeemed_key_can_be_created_again(store: Store) -> None:
    store.create("jti", KEY, {"n": 1}, expires_at=None)
    store.redeem("jti", KEY)

    assert store.create("jti", KEY, {"n": 2}, expires_at=None)


def test_delete(store: Store) -> None:
    store.create("revoked", KEY, {}, expires_at=None)

    store.delete("revoked", KEY)
    store.delete("revoked", KEY)

    assert store.get("revoked", KEY) is None


def test_scan_yields_the_live_records_of_one_namespace(store: Store, clock: ManualClock) -> None:
    store.create("grant", "g1", {"client_id": "agent-a"}, expires_at=None)
    store.create("grant", "g2", {"client_id": "agent-b"}, expires_at=int(clock.now) + 60)
    store.replace("grant", "g2", {"client_id": "agent-c"}, version=1, expires_at=None)
    store.create("grant", "g3", {"client_id": "agent-a"}, expires_at=int(clock.now) + 10)
    store.create("grants", "g4", {}, expires_at=None)
    store.create("refresh", "g1", {}, expires_at=None)
    store.append_audit({"time": clock.now, "agent": "agent-a"})
    clock.advance(10)

    scanned = dict(store.scan("grant"))

    assert scanned == {
        "g1": Record(value={"client_id": "agent-a"}, version=1, expires_at=None),
        "g2": Record(value={"client_id": "agent-c"}, version=2, expires_at=None),
    }
    assert list(store.scan("approval")) == []


def test_scan_reads_every_page_and_allows_writes_between_records(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, so that a handful of records spans several of them.
    monkeypatch.setattr(fleetid.store.sqlite, "_SCAN_PAGE", 3)
    monkeypatch.setattr(fleetid.store.dynamodb, "_SCAN_PAGE", 3)
    keys = {f"key-{index:02}" for index in range(10)}
    for key in keys:
        store.create("grant", key, {"revoked": False}, expires_at=None)
        store.create("refresh", key, {}, expires_at=None)

    seen = []
    for key, record in store.scan("grant"):
        seen.append(key)
        assert store.replace(
            "grant", key, {"revoked": True}, version=record.version, expires_at=None
        )
        store.delete("refresh", key)

    assert sorted(seen) == sorted(keys)
    assert all(record.value == {"revoked": True} for _, record in store.scan("grant"))
    assert list(store.scan("refresh")) == []


def test_scan_refuses_a_bad_namespace(store: Store) -> None:
    with pytest.raises(ValueError, match="namespace"):
        list(store.scan("auth#code"))


# Expiry


def test_a_record_is_live_until_its_expiry(store: Store, clock: ManualClock) -> None:
    clock.now = 1_000_000.0
    store.create("auth_code", KEY, {}, expires_at=1_000_010)

    clock.now = 1_000_009.999

    assert store.get("auth_code", KEY) is not None

    clock.now = 1_000_010.0

    assert store.get("auth_code", KEY) is None


def test_an_expired_record_is_absent_to_every_operation(store: Store, clock: ManualClock) -> None:
    store.create("auth_code", KEY, {"n": 1}, expires_at=int(clock.now) + 10)
    clock.advance(10)

    assert store.get("auth_code", KEY) is None
    assert store.redeem("auth_code", KEY) is None
    assert not store.replace("auth_code", KEY, {"n": 2}, version=1, expires_at=None)


def test_create_overwrites_an_expired_record(store: Store, clock: ManualClock) -> None:
    store.create("auth_code", KEY, {"n": 1}, expires_at=int(clock.now) + 10)
    store.replace("auth_code", KEY, {"n": 2}, version=1, expires_at=int(clock.now) + 10)
    clock.advance(11)

    assert store.create("auth_code", KEY, {"n": 3}, expires_at=None)
    assert store.get("auth_code", KEY) == Record(value={"n": 3}, version=1, expires_at=None)


def test_replace_can_extend_or_remove_an_expiry(store: Store, clock: ManualClock) -> None:
    store.create("device_code", KEY, {}, expires_at=int(clock.now) + 10)
    store.replace("device_code", KEY, {}, version=1, expires_at=int(clock.now) + 100)
    clock.advance(50)

    assert store.get("device_code", KEY) is not None

    store.replace("device_code", KEY, {}, version=2, expires_at=None)
    clock.advance(10**6)

    assert store.get("device_code", KEY) == Record(value={}, version=3, expires_at=None)


def test_a_record_without_expiry_stays(store: Store, clock: ManualClock) -> None:
    store.create("vault", KEY, {"sealed": True}, expires_at=None)
    clock.advance(10 * 365 * 86400)

    assert store.get("vault", KEY) is not None


# Model-based: random sequences of operations agree with a dictionary


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("create"),
            st.sampled_from("ab"),
            st.integers(0, 9),
            st.none() | st.integers(0, 4),
        ),
        st.tuples(
            st.just("replace"),
            st.sampled_from("ab"),
            st.integers(0, 9),
            st.none() | st.integers(0, 4),
            st.integers(-1, 1),
        ),
        st.tuples(st.just("redeem"), st.sampled_from("ab")),
        st.tuples(st.just("delete"), st.sampled_from("ab")),
        st.tuples(st.just("get"), st.sampled_from("ab")),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.0, 3.0])),
    ),
    max_size=30,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=operations)
def test_operations_agree_with_a_model(
    store: Store, clock: ManualClock, steps: list[tuple[Any, ...]]
) -> None:
    # Examples share the store, so each works in a namespace of its own.
    namespace = f"model_{uuid.uuid4().hex}"
    model: dict[str, Record] = {}

    def live(key: str) -> Record | None:
        record = model.get(key)
        if record is None or (
            record.expires_at is not None and record.expires_at <= math.floor(clock.now)
        ):
            return None

        return record

    def expiry(ttl: int | None) -> int | None:
        return None if ttl is None else math.floor(clock.now) + ttl

    for step in steps:
        match step:
            case ("create", key, n, ttl):
                expected = live(key) is None
                if expected:
                    model[key] = Record({"n": n}, 1, expiry(ttl))

                assert store.create(namespace, key, {"n": n}, expires_at=expiry(ttl)) == expected
            case ("replace", key, n, ttl, offset):
                current = live(key)
                version = max(1, (current.version if current else 1) + offset)
                expected = current is not None and current.version == version
                if expected:
                    model[key] = Record({"n": n}, version + 1, expiry(ttl))

                replaced = store.replace(
                    namespace, key, {"n": n}, version=version, expires_at=expiry(ttl)
                )
                assert replaced == expected
            case ("redeem", key):
                expected_record = live(key)
                model.pop(key, None)

                assert store.redeem(namespace, key) == expected_record
            case ("delete", key):
                model.pop(key, None)

                store.delete(namespace, key)
            case ("get", key):
                assert store.get(namespace, key) == live(key)
            case ("tick", seconds):
                clock.advance(seconds)


# Concurrency


def test_one_of_many_concurrent_redeems_wins(threaded_store: Store) -> None:
    threaded_store.create("auth_code", KEY, {"client": "agent-a"}, expires_at=None)

    results = run_together(CONTENDERS, lambda _: threaded_store.redeem("auth_code", KEY))

    winners = [result for result in results if result is not None]
    assert winners == [Record(value={"client": "agent-a"}, version=1, expires_at=None)]
    assert threaded_store.get("auth_code", KEY) is None


def test_one_of_many_concurrent_replaces_wins(threaded_store: Store) -> None:
    threaded_store.create("refresh_family", KEY, {"rotated_by": None}, expires_at=None)

    results = run_together(
        CONTENDERS,
        lambda index: threaded_store.replace(
            "refresh_family", KEY, {"rotated_by": index}, version=1, expires_at=None
        ),
    )

    assert results.count(True) == 1
    winner = results.index(True)
    assert threaded_store.get("refresh_family", KEY) == Record(
        value={"rotated_by": winner}, version=2, expires_at=None
    )


def test_one_of_many_concurrent_creates_wins(threaded_store: Store) -> None:
    results = run_together(
        CONTENDERS,
        lambda index: threaded_store.create("jti", KEY, {"first": index}, expires_at=None),
    )

    assert results.count(True) == 1
    record = threaded_store.get("jti", KEY)
    assert record is not None and record.value == {"first": results.index(True)}


# Run by each process of a race: it opens the store before or after the start signal,
# says it is ready, waits for the signal, and prints whether its operation won.
PROCESS_CONTENDER = """
import os
import sys
import time
from pathlib import Path

from fleetid.store import SQLiteStore

path, race, operation, key = sys.argv[1:]
ready = Path(race) / f"ready-{os.getpid()}"


def wait_for_start():
    ready.touch()
    while not (Path(race) / "start").exists():
        time.sleep(0.001)


if operation == "redeem":
    store = SQLiteStore(path)
    wait_for_start()
    print(store.redeem("auth_code", key) is not None)
else:
    wait_for_start()
    store = SQLiteStore(path)
    print(store.create("jti", key, {}, expires_at=None))
store.close()
"""


def race_processes(operation: str, path: Path, race: Path, processes: int = 6) -> list[bool]:
    """Run one operation in several processes released together; return who won, sorted."""
    race.mkdir()
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_CONTENDER, str(path), str(race), operation, KEY],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    while len(list(race.glob("ready-*"))) < processes:
        assert all(contender.poll() is None for contender in contenders)
        time.sleep(0.001)

    (race / "start").touch()
    # The timeout only keeps a broken test from hanging; nothing here measures time.
    outputs = [contender.communicate(timeout=120)[0] for contender in contenders]

    assert [contender.returncode for contender in contenders] == [0] * processes

    return sorted(output.strip() == "True" for output in outputs)


def test_one_of_many_processes_redeems_a_sqlite_record(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteStore(path) as store:
        store.create("auth_code", KEY, {}, expires_at=None)

    assert race_processes("redeem", path, tmp_path / "race") == [False] * 5 + [True]


def test_processes_opening_a_new_sqlite_file_together_agree(tmp_path: Path) -> None:
    path = tmp_path / "new.db"

    assert race_processes("create", path, tmp_path / "race") == [False] * 5 + [True]


# Audit


def audit_events() -> list[dict[str, Any]]:
    # Appended out of time order, to show that reads order by time and not by arrival.
    return [
        {"time": 1_000.5, "agent": "agent-a", "decision": "granted", "scopes": ["read"]},
        {"time": 1_000.0, "agent": "agent-b", "decision": "refused"},
        {"time": 1_002.0, "agent": "agent-a", "decision": "refused"},
        {"time": 1_001.0, "agent": "agent-b", "decision": "granted"},
        {"time": 1_003, "agent": "agent-a", "decision": "granted"},
    ]


def times(events: list[dict[str, Any]]) -> list[float]:
    return [event["time"] for event in events]


def test_audit_returns_every_event_oldest_first(store: Store) -> None:
    for event in audit_events():
        store.append_audit(event)

    assert times(store.audit()) == [1_000.0, 1_000.5, 1_001.0, 1_002.0, 1_003]
    assert store.audit()[1] == audit_events()[0]


def test_audit_of_one_agent(store: Store) -> None:
    for event in audit_events():
        store.append_audit(event)

    events = store.audit(agent="agent-a")

    assert times(events) == [1_000.5, 1_002.0, 1_003]
    assert {event["agent"] for event in events} == {"agent-a"}
    assert store.audit(agent="agent-c") == []


def test_audit_since_is_inclusive(store: Store) -> None:
    for event in audit_events():
        store.append_audit(event)

    assert times(store.audit(since=1_001.0)) == [1_001.0, 1_002.0, 1_003]
    assert times(store.audit(agent="agent-a", since=1_000.6)) == [1_002.0, 1_003]
    assert store.audit(since=1_003.0000001) == []
    assert len(store.audit(since=-5)) == 5


def test_audit_limit_keeps_the_oldest(store: Store) -> None:
    for second in range(30):
        store.append_audit({"time": 2_000 + second, "agent": f"agent-{second % 2}"})

    assert times(store.audit(limit=3)) == [2_000, 2_001, 2_002]
    assert times(store.audit(agent="agent-1", limit=2)) == [2_001, 2_003]
    assert times(store.audit(agent="agent-0", since=2_010, limit=2)) == [2_010, 2_012]
    assert len(store.audit(limit=100)) == 30


def test_audit_keeps_events_with_the_same_time(store: Store) -> None:
    for decision in ("granted", "refused", "granted"):
        store.append_audit({"time": 3_000.0, "agent": "agent-a", "decision": decision})

    assert sorted(event["decision"] for event in store.audit(agent="agent-a")) == [
        "granted",
        "granted",
        "refused",
    ]


# Arguments the contract refuses, identically on every backend


@pytest.mark.parametrize("namespace", ["", "Auth", "auth#code", "!audit", "1st", "a" * 64, 7])
def test_a_bad_namespace_is_refused(store: Store, namespace: Any) -> None:
    with pytest.raises(ValueError, match="namespace"):
        store.create(namespace, KEY, {}, expires_at=None)

    with pytest.raises(ValueError, match="namespace"):
        store.get(namespace, KEY)


@pytest.mark.parametrize("key", ["", "x" * 1025, "é" * 513, None])
def test_a_bad_key_is_refused(store: Store, key: Any) -> None:
    with pytest.raises(ValueError, match="key"):
        store.create("auth_code", key, {}, expires_at=None)

    with pytest.raises(ValueError, match="key"):
        store.redeem("auth_code", key)


def test_the_longest_key_is_accepted(store: Store) -> None:
    key = "é" * 512

    assert store.create("auth_code", key, {}, expires_at=None)
    assert store.get("auth_code", key) is not None


@pytest.mark.parametrize(
    "value",
    [{"when": object()}, {"ratio": math.nan}, {"big": "x" * 350_001}],
    ids=["not-json", "nan", "too-large"],
)
def test_a_value_that_is_not_storable_json_is_refused(store: Store, value: Any) -> None:
    with pytest.raises(ValueError, match="value"):
        store.create("auth_code", KEY, value, expires_at=None)

    assert store.get("auth_code", KEY) is None


def test_the_wrong_types_are_refused(store: Store) -> None:
    not_a_mapping: Any = ["read", "write"]
    not_whole_seconds: Any = 1.5

    with pytest.raises(TypeError):
        store.create("auth_code", KEY, not_a_mapping, expires_at=None)

    with pytest.raises(TypeError):
        store.create("auth_code", KEY, {}, expires_at=not_whole_seconds)

    with pytest.raises(TypeError):
        store.create("auth_code", KEY, {}, expires_at=True)

    with pytest.raises(ValueError, match="version"):
        store.replace("auth_code", KEY, {}, version=0, expires_at=None)


@pytest.mark.parametrize(
    "event",
    [
        {"agent": "agent-a"},
        {"time": "yesterday", "agent": "agent-a"},
        {"time": True, "agent": "agent-a"},
        {"time": -1.0, "agent": "agent-a"},
        {"time": math.inf, "agent": "agent-a"},
        {"time": 1.0},
        {"time": 1.0, "agent": ""},
    ],
)
def test_an_incomplete_audit_event_is_refused(store: Store, event: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit event"):
        store.append_audit(event)


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": True}, {"agent": ""}, {"since": math.nan}],
)
def test_a_bad_audit_query_is_refused(store: Store, query: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        store.audit(**query)


# Backend failures


def assert_key_not_echoed(error: pytest.ExceptionInfo[StoreError]) -> None:
    assert KEY not in str(error.value)


STORE_CALLS: list[tuple[str, Callable[[Store], object]]] = [
    ("create", lambda store: store.create("auth_code", KEY, {"x": 1}, expires_at=None)),
    ("get", lambda store: store.get("auth_code", KEY)),
    ("replace", lambda store: store.replace("auth_code", KEY, {}, version=1, expires_at=None)),
    ("redeem", lambda store: store.redeem("auth_code", KEY)),
    ("delete", lambda store: store.delete("auth_code", KEY)),
    ("append_audit", lambda store: store.append_audit({"time": 1.0, "agent": KEY})),
    ("audit", lambda store: store.audit(agent=KEY)),
    ("scan", lambda store: list(store.scan("auth_code"))),
]


@pytest.mark.parametrize(("name", "call"), STORE_CALLS, ids=[name for name, _ in STORE_CALLS])
def test_a_missing_dynamodb_table_is_a_store_error(
    mocked_client: Any, name: str, call: Callable[[Store], object]
) -> None:
    store = DynamoDBStore("no-such-table", client=mocked_client)

    with pytest.raises(StoreError, match="ResourceNotFoundException") as error:
        call(store)

    assert not isinstance(error.value, StoreUnavailableError)
    assert_key_not_echoed(error)


def test_an_unreachable_dynamodb_is_unavailable() -> None:
    # A port that was free a moment ago: nothing listens there, so connecting is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    client = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5),
    )
    store = DynamoDBStore("fleetid", client=client)

    with pytest.raises(StoreUnavailableError) as error:
        store.redeem("auth_code", KEY)

    assert_key_not_echoed(error)


def test_creating_a_dynamodb_table_twice_is_a_store_error(mocked_client: Any) -> None:
    DynamoDBStore.create_table(mocked_client, "fleetid")

    with pytest.raises(StoreError, match="ResourceInUseException"):
        DynamoDBStore.create_table(mocked_client, "fleetid")


def test_dynamodb_table_has_ttl_on_expires_at(mocked_client: Any) -> None:
    DynamoDBStore.create_table(mocked_client, "fleetid")

    ttl = mocked_client.describe_time_to_live(TableName="fleetid")["TimeToLiveDescription"]

    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_dynamodb_reads_filter_items_that_ttl_has_not_deleted(
    mocked_client: Any, clock: ManualClock
) -> None:
    DynamoDBStore.create_table(mocked_client, "fleetid")
    store = DynamoDBStore("fleetid", client=mocked_client, clock=clock)
    store.create("auth_code", KEY, {}, expires_at=int(clock.now) + 1)
    clock.advance(5)

    item = mocked_client.get_item(
        TableName="fleetid", Key={"pk": {"S": f"auth_code#{KEY}"}, "sk": {"S": "record"}}
    )

    assert "Item" in item
    assert store.get("auth_code", KEY) is None


def test_a_sqlite_path_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as error:
        SQLiteStore(tmp_path)

    assert not isinstance(error.value, StoreUnavailableError)


def test_memory_is_not_a_sqlite_store() -> None:
    with pytest.raises(ValueError, match="file"):
        SQLiteStore(":memory:")


def test_a_locked_sqlite_file_is_unavailable_for_writes(tmp_path: Path) -> None:
    path = tmp_path / "fleetid.db"
    store = SQLiteStore(path, busy_timeout=0)
    store.create("auth_code", KEY, {}, expires_at=None)
    other_writer = sqlite3.connect(path, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")

    try:
        with pytest.raises(StoreUnavailableError) as error:
            store.redeem("auth_code", KEY)

        # WAL: readers do not wait for the writer.
        assert store.get("auth_code", KEY) is not None
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
        store.close()

    assert_key_not_echoed(error)


def test_a_newer_sqlite_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleetid.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()

    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(path)


def test_a_corrupt_sqlite_record_is_a_store_error(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    sqlite_store.create("auth_code", KEY, {}, expires_at=None)
    with sqlite3.connect(tmp_path / "fleetid.db") as connection:
        connection.execute("UPDATE records SET value = '{not json'")
    connection.close()

    with pytest.raises(StoreError) as error:
        sqlite_store.get("auth_code", KEY)

    assert_key_not_echoed(error)


def test_a_closed_store_is_a_store_error(store: Store) -> None:
    store.get_many([("auth_code", KEY)])
    store.close()

    with pytest.raises(StoreError, match="closed"):
        store.get("auth_code", KEY)
    with pytest.raises(StoreError, match="closed"):
        store.get_many([("auth_code", KEY)])


# SQLite specifics


def test_get_many_reads_at_once_what_another_connection_changed(
    tmp_path: Path, clock: ManualClock
) -> None:
    # get_many remembers what it read; a second store on the file is another connection,
    # as another process would be.
    path = tmp_path / "fleetid.db"
    revoked, grant = ("revoked", "jti-1"), ("grant", KEY)
    with SQLiteStore(path, clock=clock) as server, SQLiteStore(path, clock=clock) as other:
        other.create("grant", KEY, {"user": "ana"}, expires_at=None)
        assert server.get_many([revoked, grant]) == {grant: Record({"user": "ana"}, 1, None)}
        assert server.get_many([revoked, grant]) == {grant: Record({"user": "ana"}, 1, None)}

        other.create("revoked", "jti-1", {}, expires_at=None)
        assert server.get_many([revoked, grant]).keys() == {revoked, grant}

        assert other.replace("grant", KEY, {"user": "bo"}, version=1, expires_at=None)
        assert server.get_many([grant]) == {grant: Record({"user": "bo"}, 2, None)}

        assert other.redeem("grant", KEY) is not None
        assert server.get_many([revoked, grant]).keys() == {revoked}

        other.delete("revoked", "jti-1")
        assert server.get_many([revoked, grant]) == {}


def test_get_many_reads_what_the_same_store_wrote_from_another_thread(
    sqlite_store: SQLiteStore,
) -> None:
    address = ("grant", KEY)
    assert sqlite_store.get_many([address]) == {}

    with ThreadPoolExecutor(1) as pool:
        pool.submit(sqlite_store.create, "grant", KEY, {"n": 1}, expires_at=None).result()

    assert sqlite_store.get_many([address]) == {address: Record({"n": 1}, 1, None)}


def test_a_record_get_many_remembers_still_expires_on_time(
    sqlite_store: SQLiteStore, clock: ManualClock
) -> None:
    clock.now = 1_000_000.0
    sqlite_store.create("auth_code", KEY, {}, expires_at=1_000_010)
    assert sqlite_store.get_many([("auth_code", KEY)]) != {}

    clock.now = 1_000_010.0

    assert sqlite_store.get_many([("auth_code", KEY)]) == {}


def test_what_get_many_returns_is_the_callers_own(sqlite_store: SQLiteStore) -> None:
    sqlite_store.create("grant", KEY, {"groups": ["sales"]}, expires_at=None)
    first = sqlite_store.get_many([("grant", KEY)])[("grant", KEY)]
    first.value["groups"].append("admin")  # type: ignore[index]

    again = sqlite_store.get_many([("grant", KEY)])[("grant", KEY)]

    assert again.value == {"groups": ["sales"]}


def test_sqlite_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "fleetid.db"
    previous = os.umask(0o022)
    try:
        with SQLiteStore(path) as store:
            store.create("grant", KEY, {"email": "ana@example.com"}, expires_at=None)
            files = sorted(tmp_path.iterdir())
            modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in files}
    finally:
        os.umask(previous)

    assert modes == {"fleetid.db": 0o600, "fleetid.db-shm": 0o600, "fleetid.db-wal": 0o600}


def test_a_sqlite_file_open_to_others_is_closed_to_them(tmp_path: Path) -> None:
    path = tmp_path / "fleetid.db"
    SQLiteStore(path).close()
    path.chmod(0o644)

    with SQLiteStore(path) as store:
        store.create("grant", KEY, {}, expires_at=None)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for companion in ("-wal", "-shm"):
            assert stat.S_IMODE(Path(f"{path}{companion}").stat().st_mode) == 0o600


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute("SELECT count(*) FROM records").fetchone()
    connection.close()

    return int(count)


def test_sqlite_purges_expired_rows(
    sqlite_store: SQLiteStore, tmp_path: Path, clock: ManualClock
) -> None:
    for index in range(3):
        sqlite_store.create("auth_code", f"code-{index}", {}, expires_at=int(clock.now) + 10)
    sqlite_store.create("vault", KEY, {}, expires_at=None)
    clock.advance(10)

    assert sqlite_store.purge_expired() == 3
    assert count_rows(tmp_path / "fleetid.db") == 1


def test_sqlite_purges_opportunistically_on_create(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "fleetid.db"
    with SQLiteStore(path, purge_interval=60, clock=clock) as store:
        store.create("auth_code", "first", {}, expires_at=int(clock.now) + 10)
        clock.advance(30)
        store.create("auth_code", "second", {}, expires_at=int(clock.now) + 10)

        assert count_rows(path) == 2

        clock.advance(31)
        store.create("auth_code", "third", {}, expires_at=None)

        assert count_rows(path) == 1


def test_sqlite_stores_on_one_file_share_records(tmp_path: Path) -> None:
    path = tmp_path / "fleetid.db"
    with SQLiteStore(path) as writer, SQLiteStore(path) as reader:
        writer.create("auth_code", KEY, {"n": 1}, expires_at=None)

        assert reader.redeem("auth_code", KEY) is not None
        assert writer.get("auth_code", KEY) is None


def test_sqlite_closed_under_threads_refuses_them(sqlite_store: SQLiteStore) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: sqlite_store.get("auth_code", KEY), range(8)))
        sqlite_store.close()

        with pytest.raises(StoreError, match="closed"):
            pool.submit(sqlite_store.get, "auth_code", KEY).result()


# Public API


def test_public_api_is_what_all_says() -> None:
    public = {
        name
        for name, member in vars(fleetid.store).items()
        if not name.startswith("_") and not isinstance(member, type(fleetid))
    }

    assert set(fleetid.store.__all__) == public
