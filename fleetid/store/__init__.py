"""Where the identity server keeps what it must remember between requests.

``Store`` is the contract: versioned JSON records that expire, under (namespace, key), with
atomic create, compare-and-set replace and single-use redeem, plus an append-only audit trail.
``SQLiteStore`` keeps them in one file for ``fleetid serve``; ``DynamoDBStore`` keeps them in
one DynamoDB table for the server on AWS Lambda. Both pass the same contract tests.
"""

from fleetid.store.base import Clock, Record, Store
from fleetid.store.dynamodb import DynamoDBStore
from fleetid.store.errors import StoreError, StoreUnavailableError
from fleetid.store.sqlite import SQLiteStore

__all__ = [
    "Clock",
    "DynamoDBStore",
    "Record",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreUnavailableError",
]
