"""The storage contract on one DynamoDB table, for the server on AWS Lambda.

Every Lambda instance shares the table, so every rule of the contract that concerns concurrent
callers is enforced by DynamoDB itself, with a condition on each write. A failed condition
(``ConditionalCheckFailedException``) is the normal outcome of losing a race and comes back as
``False`` or ``None``, never as an error.

The table has a string partition key ``pk`` and a string sort key ``sk``:

=================  ==========================  ==========================  =================
item               ``pk``                      ``sk``                      other attributes
=================  ==========================  ==========================  =================
record             ``<namespace>#<key>``       ``record``                  ``value`` (JSON),
                                                                           ``version`` (N),
                                                                           ``expires_at`` (N)
audit event        ``!audit#<agent>``          ``<time>#<event id>``       ``event`` (JSON),
                                                                           ``audit_feed``
=================  ==========================  ==========================  =================

Namespaces cannot contain ``#`` or begin with ``!``, so no record shares a partition with
another record or with an audit trail. ``<time>`` is written with fixed width, so sort keys
order events by time.

``expires_at`` is the table's TTL attribute. DynamoDB deletes expired items lazily (typically
within days), so every read and every condition here also treats ``expires_at <= now`` as
absent. Records without an expiry have no ``expires_at`` and are never deleted by TTL.

Audit events are read with ``Query``, never ``Scan``. One agent's events are a range of its own
partition, read with strong consistency. Events of all agents are found through the global
secondary index ``audit_by_time``, keyed by ``audit_feed`` (the same value on every event) and
``sk``. What that costs:

- each event is one write to the table and one to the index: two write units up to 1 KB;
- an agent's trail is read at one read unit per 4 KB of events returned;
- the all-agents trail is read from the index at half that, being eventually consistent: an
  event appended a moment ago may be missing from it.

NOTE: every audit event shares one index partition. DynamoDB sustains about 1,000 write units
per second on a partition, and a throttled index throttles the table's writes in turn, so the
whole server can append about 1,000 events per second before ``append_audit`` raises
``StoreUnavailableError``. Spreading ``audit_feed`` over several values would lift that at the
price of one query per value for each all-agents read. Audit events have no expiry.

NOTE: ``scan`` of a namespace is a ``Scan`` of the whole table, filtered to that namespace's
partitions: it costs the read units of every item in the table, audit events included. It is
for rare sweeps (an agent removed from the fleet), not for requests; a namespace that needs
it often would call for an index of its own.

NOTE: botocore retries a request whose response was lost. A conditional write that had in
fact succeeded then fails its condition on the retry and reports a lost race. That errs on the
safe side: a code is never redeemed twice, at worst not at all.

The key schema is exported (``KEY_SCHEMA``, ``ATTRIBUTE_DEFINITIONS``,
``GLOBAL_SECONDARY_INDEXES``, ``TTL_ATTRIBUTE``) in the shape the DynamoDB API takes, so that
``create_table`` and the infrastructure code declare the same table.
"""

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, cast

import boto3
from botocore import exceptions as botocore_exceptions

from fleetid.store.base import (
    MAX_AUDIT_TIME,
    Clock,
    Record,
    Store,
    decode_object,
    encode_audit_event,
    encode_value,
    unix_now,
    validate_address,
    validate_audit_query,
    validate_batch,
    validate_expires_at,
    validate_namespace,
    validate_version,
)
from fleetid.store.errors import StoreError, StoreUnavailableError

__all__ = [
    "ATTRIBUTE_DEFINITIONS",
    "AUDIT_INDEX",
    "AUDIT_INDEX_HASH_KEY",
    "GLOBAL_SECONDARY_INDEXES",
    "HASH_KEY",
    "KEY_SCHEMA",
    "RANGE_KEY",
    "TTL_ATTRIBUTE",
    "DynamoDBStore",
]

HASH_KEY: Final = "pk"
RANGE_KEY: Final = "sk"
TTL_ATTRIBUTE: Final = "expires_at"
AUDIT_INDEX: Final = "audit_by_time"
AUDIT_INDEX_HASH_KEY: Final = "audit_feed"

KEY_SCHEMA: Final[tuple[Mapping[str, str], ...]] = (
    {"AttributeName": HASH_KEY, "KeyType": "HASH"},
    {"AttributeName": RANGE_KEY, "KeyType": "RANGE"},
)
ATTRIBUTE_DEFINITIONS: Final[tuple[Mapping[str, str], ...]] = (
    {"AttributeName": HASH_KEY, "AttributeType": "S"},
    {"AttributeName": RANGE_KEY, "AttributeType": "S"},
    {"AttributeName": AUDIT_INDEX_HASH_KEY, "AttributeType": "S"},
)
GLOBAL_SECONDARY_INDEXES: Final[tuple[Mapping[str, Any], ...]] = (
    {
        "IndexName": AUDIT_INDEX,
        "KeySchema": [
            {"AttributeName": AUDIT_INDEX_HASH_KEY, "KeyType": "HASH"},
            {"AttributeName": RANGE_KEY, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    },
)

_RECORD_SORT_KEY: Final = "record"
_AUDIT_PARTITION_PREFIX: Final = "!audit#"
_AUDIT_FEED: Final = "all"
# Items a Scan evaluates per request, before its filter; DynamoDB stops at 1 MB in any case.
_SCAN_PAGE: Final = 1000
# Rounds of a BatchGetItem that DynamoDB answers only in part, and the first pause between.
_BATCH_ATTEMPTS: Final = 5
_BATCH_BACKOFF: Final = 0.05

_LIVE: Final = "(attribute_not_exists(#expires_at) OR #expires_at > :now)"
_RECORD_NAMES: Final = {"#pk": HASH_KEY, "#expires_at": TTL_ATTRIBUTE}

_TRANSIENT_CODES: Final = frozenset(
    {
        "InternalServerError",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ThrottlingException",
    }
)


class DynamoDBStore(Store):
    """The storage contract on one DynamoDB table shared by every server instance."""

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        region: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        """Use the table through ``client``, or through a new client for ``region``.

        A client passed in stays the caller's to close; one created here is closed by
        ``close``.
        """
        if client is not None and region is not None:
            raise ValueError("pass a client or a region, not both")

        self._table_name = table_name
        self._clock = clock
        self._closed = False
        self._owns_client = client is None
        if client is None:
            try:
                client = boto3.client("dynamodb", region_name=region)
            except botocore_exceptions.BotoCoreError as exc:
                raise StoreError("DynamoDB client could not be created") from exc

        self._client = client

    @staticmethod
    def create_table(client: Any, name: str) -> None:
        """Create the table with on-demand billing and TTL on ``expires_at``; wait for it."""
        try:
            client.create_table(
                TableName=name,
                KeySchema=list(KEY_SCHEMA),
                AttributeDefinitions=list(ATTRIBUTE_DEFINITIONS),
                GlobalSecondaryIndexes=list(GLOBAL_SECONDARY_INDEXES),
                BillingMode="PAY_PER_REQUEST",
            )
            # TTL can be set only once the table is ACTIVE.
            client.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 90}
            )
            client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except botocore_exceptions.ClientError as exc:
            raise _client_error("create_table", exc) from exc
        except botocore_exceptions.BotoCoreError as exc:
            raise _transport_error("create_table", exc) from exc

    def create(
        self, namespace: str, key: str, value: Mapping[str, Any], *, expires_at: int | None
    ) -> bool:
        validate_address(namespace, key)
        validate_expires_at(expires_at)
        item = _record_item(namespace, key, encode_value(value), 1, expires_at)

        # A live record must survive: the put lands only where no item exists, or where the
        # item left behind has expired and merely awaits TTL deletion.
        response = self._write_if(
            "put_item",
            Item=item,
            ConditionExpression="attribute_not_exists(#pk) OR #expires_at <= :now",
            ExpressionAttributeNames=_RECORD_NAMES,
            ExpressionAttributeValues={":now": _number(unix_now(self._clock))},
        )

        return response is not None

    def get(self, namespace: str, key: str) -> Record | None:
        validate_address(namespace, key)

        # Strongly consistent: a reader must see a rotation or redemption that just finished.
        response = self._send("get_item", Key=_record_key(namespace, key), ConsistentRead=True)
        if "Item" not in response:
            return None

        record = _record(response["Item"])
        if not _live(record, unix_now(self._clock)):
            return None

        return record

    def get_many(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        distinct = validate_batch(addresses)
        if not distinct:
            return {}
        found: dict[tuple[str, str], Record] = {}
        pending: dict[str, Any] = {
            self._table_name: {
                "Keys": [_record_key(namespace, key) for namespace, key in distinct],
                "ConsistentRead": True,
            }
        }
        for attempt in range(_BATCH_ATTEMPTS):
            if attempt:
                # DynamoDB returns what it could not read under load; back off, then ask again.
                time.sleep(_BATCH_BACKOFF * 2 ** (attempt - 1))
            response = self._call("batch_get_item", RequestItems=pending)
            now = unix_now(self._clock)
            for item in response.get("Responses", {}).get(self._table_name, []):
                record = _record(item)
                if _live(record, now):
                    # Namespaces hold no "#", so the first one ends the namespace.
                    namespace, _, key = str(item[HASH_KEY]["S"]).partition("#")
                    found[(namespace, key)] = record
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                return found
        raise StoreUnavailableError("DynamoDB store left records unread during get_many")

    def replace(
        self,
        namespace: str,
        key: str,
        value: Mapping[str, Any],
        *,
        version: int,
        expires_at: int | None,
    ) -> bool:
        validate_address(namespace, key)
        validate_version(version)
        validate_expires_at(expires_at)
        item = _record_item(namespace, key, encode_value(value), version + 1, expires_at)

        # Compare-and-set: the put lands only on the version the caller read, and only while
        # that record is live. An expired item still holds a version, but it is gone to the
        # contract, and a replace must not bring it back.
        response = self._write_if(
            "put_item",
            Item=item,
            ConditionExpression=f"#version = :version AND {_LIVE}",
            ExpressionAttributeNames={"#version": "version", "#expires_at": TTL_ATTRIBUTE},
            ExpressionAttributeValues={
                ":version": _number(version),
                ":now": _number(unix_now(self._clock)),
            },
        )

        return response is not None

    def redeem(self, namespace: str, key: str) -> Record | None:
        validate_address(namespace, key)

        # A conditional delete is atomic on its item, so of concurrent redeemers only the first
        # finds the item live; the others fail the condition and get nothing. An expired item
        # fails it too, and is left for TTL to delete.
        response = self._write_if(
            "delete_item",
            Key=_record_key(namespace, key),
            ConditionExpression=f"attribute_exists(#pk) AND {_LIVE}",
            ExpressionAttributeNames=_RECORD_NAMES,
            ExpressionAttributeValues={":now": _number(unix_now(self._clock))},
            ReturnValues="ALL_OLD",
        )
        if response is None:
            return None

        return _record(response["Attributes"])

    def delete(self, namespace: str, key: str) -> None:
        validate_address(namespace, key)

        self._send("delete_item", Key=_record_key(namespace, key))

    def scan(self, namespace: str) -> Iterator[tuple[str, Record]]:
        validate_namespace(namespace)
        prefix = f"{namespace}#"
        request: dict[str, Any] = {
            # Strongly consistent, as every other read of records here.
            "ConsistentRead": True,
            "Limit": _SCAN_PAGE,
            "FilterExpression": "begins_with(#pk, :prefix) AND #sk = :record",
            "ExpressionAttributeNames": {"#pk": HASH_KEY, "#sk": RANGE_KEY},
            "ExpressionAttributeValues": {
                ":prefix": {"S": prefix},
                ":record": {"S": _RECORD_SORT_KEY},
            },
        }

        while True:
            page = self._send("scan", **request)
            now = unix_now(self._clock)
            for item in page.get("Items", []):
                record = _record(item)
                if _live(record, now):
                    yield str(item[HASH_KEY]["S"])[len(prefix) :], record

            if "LastEvaluatedKey" not in page:
                return

            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def append_audit(self, event: Mapping[str, Any]) -> None:
        event_time, agent, encoded = encode_audit_event(event)

        # The random event id keeps two events with the same time and agent apart.
        self._send(
            "put_item",
            Item={
                HASH_KEY: {"S": _AUDIT_PARTITION_PREFIX + agent},
                RANGE_KEY: {"S": f"{_time_key(event_time)}#{uuid.uuid4().hex}"},
                AUDIT_INDEX_HASH_KEY: {"S": _AUDIT_FEED},
                "event": {"S": encoded},
            },
        )

    def audit(
        self, *, agent: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        validate_audit_query(agent, since, limit)

        if agent is None:
            query: dict[str, Any] = {
                "IndexName": AUDIT_INDEX,
                "ExpressionAttributeNames": {"#partition": AUDIT_INDEX_HASH_KEY},
                "ExpressionAttributeValues": {":partition": {"S": _AUDIT_FEED}},
            }
        else:
            query = {
                "ConsistentRead": True,
                "ExpressionAttributeNames": {"#partition": HASH_KEY},
                "ExpressionAttributeValues": {
                    ":partition": {"S": _AUDIT_PARTITION_PREFIX + agent}
                },
            }

        query["KeyConditionExpression"] = "#partition = :partition"
        if since is not None:
            query["KeyConditionExpression"] += " AND #sk >= :since"
            query["ExpressionAttributeNames"]["#sk"] = RANGE_KEY
            query["ExpressionAttributeValues"][":since"] = {"S": _time_key(since)}

        events: list[dict[str, Any]] = []
        while len(events) < limit:
            page = self._send("query", Limit=limit - len(events), **query)
            for item in page.get("Items", []):
                event = decode_object(item["event"]["S"])
                # A sort key keeps microseconds; the event's own time decides at the edge.
                if since is None or event["time"] >= since:
                    events.append(event)

            if "LastEvaluatedKey" not in page:
                break

            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        return events[:limit]

    def close(self) -> None:
        self._closed = True
        if self._owns_client:
            self._client.close()

    def _write_if(self, operation: str, **params: Any) -> dict[str, Any] | None:
        """Send a conditional write; None when the condition failed, which is a lost race."""
        try:
            return self._send(operation, **params)
        except _ConditionFailedError:
            return None

    def _send(self, operation: str, **params: Any) -> dict[str, Any]:
        return self._call(operation, TableName=self._table_name, **params)

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        if self._closed:
            raise StoreError("DynamoDB store is closed")

        try:
            response = getattr(self._client, operation)(**params)
        except botocore_exceptions.ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise _ConditionFailedError from exc

            raise _client_error(operation, exc) from exc
        except botocore_exceptions.BotoCoreError as exc:
            raise _transport_error(operation, exc) from exc

        return cast(dict[str, Any], response)


class _ConditionFailedError(Exception):
    """A conditional write found the item in another state; never leaves this module."""


def _record_key(namespace: str, key: str) -> dict[str, Any]:
    return {HASH_KEY: {"S": f"{namespace}#{key}"}, RANGE_KEY: {"S": _RECORD_SORT_KEY}}


def _record_item(
    namespace: str, key: str, encoded: str, version: int, expires_at: int | None
) -> dict[str, Any]:
    item = _record_key(namespace, key)
    item["value"] = {"S": encoded}
    item["version"] = _number(version)
    if expires_at is not None:
        item[TTL_ATTRIBUTE] = _number(expires_at)

    return item


def _record(item: Mapping[str, Any]) -> Record:
    try:
        encoded = item["value"]["S"]
        version = int(item["version"]["N"])
        expires_at = int(item[TTL_ATTRIBUTE]["N"]) if TTL_ATTRIBUTE in item else None
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError("DynamoDB item is not a record") from exc

    return Record(value=decode_object(encoded), version=version, expires_at=expires_at)


def _live(record: Record, now: int) -> bool:
    # TTL deletes lazily: an item past its expiry may still be read, and is absent all the same.
    return record.expires_at is None or record.expires_at > now


def _number(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _time_key(seconds: float) -> str:
    # Clamped so that out-of-range query bounds still compare correctly with stored keys.
    return f"{min(max(seconds, 0.0), float(MAX_AUDIT_TIME)):018.6f}"


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _client_error(operation: str, exc: Any) -> StoreError:
    code = _error_code(exc)
    if code in _TRANSIENT_CODES:
        return StoreUnavailableError(f"DynamoDB {operation} was refused for now ({code})")

    return StoreError(f"DynamoDB {operation} failed ({code})")


def _transport_error(operation: str, exc: Exception) -> StoreError:
    unreachable = (botocore_exceptions.ConnectionError, botocore_exceptions.HTTPClientError)
    if isinstance(exc, unreachable):
        return StoreUnavailableError(f"DynamoDB was unreachable during {operation}")

    return StoreError(f"DynamoDB client failed during {operation} ({type(exc).__name__})")
