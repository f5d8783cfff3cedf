"""Exceptions raised by the clusterer package.

Every error meant for a user derives from :class:`ClustererError`, so callers (the CLI, later
the HTTP API) can catch one class and print its message.
"""

from __future__ import annotations


class ClustererError(Exception):
    """Base class of all errors the clusterer package raises on purpose."""


class InvalidParameterError(ClustererError, ValueError):
    """A parameter is out of range or inconsistent with the data (e.g. k larger than n)."""


class TooLargeError(ClustererError):
    """The input is too large for the requested method; the message names an alternative."""


def library_errors() -> tuple[type[Exception], ...]:
    """The base classes of every error the library (this package, the indexer and the storage
    layer) raises on purpose, for faces that turn them into messages."""
    from indexer.errors import IndexerError
    from storage.errors import StorageError

    return (ClustererError, IndexerError, StorageError)


class UnknownClusterError(ClustererError):
    """No cluster with that id in the run."""


class CurationError(InvalidParameterError):
    """A merge, split, label or unmerge the store cannot make (an id merged with itself, a
    coarse topic where a fine cluster is needed, a cluster that does not split, nothing to undo)."""
