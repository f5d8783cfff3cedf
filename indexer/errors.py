"""Exceptions raised by the indexer layer."""


class IndexerError(Exception):
    """Base class for every error raised by the indexer package."""


class ModelLoadError(IndexerError):
    """The embedding model could not be resolved or loaded (e.g. not available offline)."""


class EncodingError(IndexerError):
    """Input to the encoder was invalid (non-str text) or encoding failed."""
