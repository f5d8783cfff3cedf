"""Exceptions to HTTP answers: a status and a one-line JSON message, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("clusterer.server")

RETRY_AFTER_S = 1

_BY_NAME = {  # the most specific class in an exception's MRO wins
    "UnknownClusterError": 404,
    "UnknownSentenceError": 404,
    "NoRunError": 404,
    "NotFoundError": 404,
    "StoreNotFoundError": 404,
    "InvalidParameterError": 422,
    "InvalidFilterError": 422,
    "InvalidArgumentError": 422,
    "InvalidIdError": 404,
    "ReadOnlyStoreError": 409,
    "ReadOnlyDatabaseError": 409,
    "GuardRailError": 422,
    "TooLargeError": 422,
    "InputError": 422,
    "LockTimeoutError": 503,
    "DatabaseUnavailableError": 503,
    "QueueFull": 503,
    "ShuttingDown": 503,
    "BatcherFull": 503,
    "BatcherClosed": 503,
    "NotReady": 503,
    "ModelLoadError": 503,
    "ModelMismatchError": 409,
    "ClustererError": 400,
    "IndexerError": 500,
    "StorageError": 500,
}


class NotReady(Exception):
    """The model or index is still loading."""


class ApiError(Exception):
    """A 4xx the routes raise themselves, with the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def classify(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for an exception raised by a route or the writer."""
    if isinstance(exc, ApiError):
        body = {"error": str(exc)}
        if exc.field:
            body["field"] = exc.field
        return exc.status, body, {}
    status = None
    for cls in type(exc).__mro__:
        status = _BY_NAME.get(cls.__name__)
        if status is not None:
            break
    if status is None:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            orig = getattr(exc, "orig", None)
            return 503, {"error": f"database error: {_first_line(orig or exc)}"}, {"Retry-After": str(RETRY_AFTER_S)}
        log.error("unexpected error", exc_info=exc)
        return 500, {"error": f"internal error ({type(exc).__name__}); see the server log"}, {}
    if status >= 500 and status != 503:
        log.error("store error", exc_info=exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
    return status, {"error": _first_line(exc)}, headers
