"""Errors raised by the storage layer.

A store turns every failure of its backend into one of these, chained with ``from`` so that the
backend's own exception stays in the traceback. Their messages are fixed phrases naming the
operation and at most the backend's error code, never a record's key or value: keys are digests
of live codes and tokens, and values may describe a user.

The tree::

    StoreError                  the backend failed or refused the operation
    └── StoreUnavailableError   the backend is busy, throttled or unreachable; a retry may work

Losing a race is not an error. ``create``, ``replace`` and ``redeem`` report it through their
return values, because it is how a replayed code or a concurrent rotation is detected.

Arguments the contract does not allow (a namespace with forbidden characters, a value that is
not JSON) are mistakes in the caller and raise ``ValueError`` or ``TypeError`` before the
backend is touched.
"""

__all__ = ["StoreError", "StoreUnavailableError"]


class StoreError(Exception):
    """The storage backend failed or refused an operation."""


class StoreUnavailableError(StoreError):
    """The storage backend is busy, throttled or unreachable for now."""
