"""Exceptions raised by the storage layer."""


class StorageError(Exception):
    """Base class for database problems the caller can act on."""


class DatabaseUnavailableError(StorageError):
    """The database could not be opened or reached."""


class ModelMismatchError(StorageError):
    """The store was created with another embedding model or dimension."""


class ReadOnlyDatabaseError(DatabaseUnavailableError):
    """The database can be read but not written (a read-only file or folder)."""
