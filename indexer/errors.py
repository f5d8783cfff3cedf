"""Exceptions raised by the indexer layer."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class for every error raised by the indexer package."""


class InputError(IndexerError):
    """Bad or unreadable input.

    ``path`` is the input's display name ("<stdin>" for standard input), ``line`` the 1-based
    physical line where the problem was found (None when the whole input is at fault, e.g. a
    missing file) and ``reason`` a short human-readable description.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}, line {self.line}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.reason))


class ModelLoadError(IndexerError):
    """The embedding model could not be resolved or loaded (e.g. not available offline)."""


class EncodingError(IndexerError):
    """Input to the encoder was invalid (non-str text) or encoding failed."""


class ReadOnlyStoreError(IndexerError):
    """The store can be read but its data folder cannot be written."""


class InvalidArgumentError(IndexerError, ValueError):
    """A value handed to the library is unusable (e.g. an empty query text)."""
