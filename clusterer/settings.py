"""Settings: command-line options over environment variables over defaults, in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLUSTERER_"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("clusterer-data")
    db: str | None = None
    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    lock_timeout: float = 30.0
    batch_size: int = 4096
    connect_timeout: float = 5.0
    ray_address: str | None = None
    """``--ray``: ``local`` or a Ray address; ingest and cluster then run on Ray (None: this process)."""
    ray_encoder: str | None = None
    """``module:callable`` that builds the encoder on Ray workers (None: the store's model)."""

    @classmethod
    def resolve(cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Options that are not None win; then ``CLUSTERER_<NAME>`` variables; then defaults."""
        options = options or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = options.get(f.name)
            if value is None:
                value = environ.get(ENV_PREFIX + f.name.upper()) or None
            if value is None:
                continue
            if f.name == "data_dir":
                value = Path(value)
            elif f.name in ("lock_timeout", "connect_timeout"):
                value = float(value)
            elif f.name == "batch_size":
                value = int(value)
            values[f.name] = value
        return cls(**values)

    def store_kwargs(self) -> dict[str, Any]:
        return {
            "db_url": self.db,
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "lock_timeout": self.lock_timeout,
            "batch_size": self.batch_size,
            "connect_timeout": self.connect_timeout,
        }


@dataclass(frozen=True)
class ServerSettings:
    """``clusterer serve``: options over ``CLUSTERER_<NAME>`` variables over defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 1000
    max_text: int = 10_000
    max_body: int = 8 << 20
    queue_size: int = 64
    coalesce: int = 4096
    map_sample: int = 5000
    lookup_batch: int = 32
    lookup_wait_ms: float = 1.0
    lookup_cache: int = 4096
    lookup_exact_max: int = 20_000
    freeze_gc: bool = True
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls, options: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        options = options or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = options.get(f.name)
            if value is None or value == ():
                value = environ.get(ENV_PREFIX + f.name.upper()) or None
            if value is None:
                continue
            if f.name == "cors_origins":
                value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
            elif f.type == "int":
                value = int(value)
            elif f.type == "float":
                value = float(value)
            elif f.type == "bool" and not isinstance(value, bool):
                value = str(value).strip().lower() in ("1", "true", "yes", "on")
            values[f.name] = value
        return cls(**values)
