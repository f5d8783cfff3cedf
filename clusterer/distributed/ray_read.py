"""Reading the inputs on Ray workers, with the project's parsing rules.

Each input file is read by one task: text, CSV/TSV and JSON Lines through
:func:`indexer.readers.read_records` (so a bad line is the same ``InputError`` naming the file
and line as on one machine), Parquet here (a string text column; the other columns become
metadata; ``line`` is the 1-based row). A task yields column batches of records and, last, one
``stats`` row with the file's counts of empty and invalid records, which the driver's ingest
report takes over.

The files must be readable where the tasks run: on one machine, or a folder every node mounts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from indexer import readers
from indexer.errors import InputError
from indexer.normalize import normalize_text

RECORD = "record"
STATS = "stats"
READ_BATCH = 2048
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class ReadOptions:
    format: str = "auto"
    text_column: str = "text"
    text_field: str = "text"
    skip_invalid: bool = False


def is_parquet(path: str, format: str = "auto") -> bool:
    return format == "parquet" or (format == "auto" and os.path.splitext(path)[1].lower() in PARQUET_SUFFIXES)


def _json_value(value: Any) -> Any:
    """A Parquet cell as JSON: numbers, strings, lists and maps as they are, the rest as text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def parquet_records(
    path: str, source: str, text_column: str, stats: readers.ReadStats, skip_invalid: bool = False
) -> Iterator[readers.Record]:
    """Records of a Parquet file, streamed by row group."""
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(source, None, "no such file") from None
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
        raise InputError(source, None, f"not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    if text_column not in names:
        available = ", ".join(repr(n) for n in names)
        raise InputError(source, None, f"no column {text_column!r} in the Parquet file; available columns: {available}")
    row = 0
    for batch in pf.iter_batches(batch_size=READ_BATCH):
        columns = batch.to_pydict()
        texts = columns.pop(text_column)
        for i, value in enumerate(texts):
            row += 1
            if value is not None and not isinstance(value, str):
                error = InputError(source, row, f"text column {text_column!r} holds {type(value).__name__}, not text")
                if not skip_invalid:
                    raise error
                stats.invalid += 1
                if len(stats.errors) < readers.MAX_KEPT_ERRORS:
                    stats.errors.append(str(error))
                continue
            text = normalize_text(value or "")
            if not text:
                stats.empty += 1
                continue
            stats.records += 1
            yield readers.Record(text, {k: _json_value(v[i]) for k, v in columns.items()}, source, row)


def _columns(records: list[readers.Record]) -> dict[str, list]:
    return {
        "kind": [RECORD] * len(records),
        "text": [r.text for r in records],
        "meta": [json.dumps(r.metadata, ensure_ascii=False) if r.metadata else "" for r in records],
        "source": [r.source for r in records],
        "line": [r.line for r in records],
    }


def read_file(batch: dict[str, Any], options: ReadOptions) -> Iterator[dict[str, list]]:
    """Ray Data map over ``{"path": [...], "source": [...]}`` (one file per batch): the file's
    records in column batches, then its ``stats`` row."""
    for path, source in zip(batch["path"], batch["source"]):
        path, source = str(path), str(source)
        stats = readers.ReadStats()
        if is_parquet(path, options.format):
            records: Iterator[readers.Record] = parquet_records(
                path, source, options.text_column, stats, options.skip_invalid
            )
        else:
            records = _text_records(path, source, options, stats)
        chunk: list[readers.Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= READ_BATCH:
                yield _columns(chunk)
                chunk = []
        if chunk:
            yield _columns(chunk)
        stats.errors = [source + e[len(path) :] if e.startswith(path) else e for e in stats.errors]
        yield {"kind": [STATS], "text": [""], "meta": [json.dumps(asdict(stats))], "source": [source], "line": [0]}


def _text_records(path: str, source: str, options: ReadOptions, stats: readers.ReadStats) -> Iterator[readers.Record]:
    fmt = "auto" if options.format == "parquet" else options.format
    if fmt == "csv" and os.path.splitext(source)[1].lower() == ".tsv":
        fmt = "tsv"
    elif fmt == "auto":
        fmt = readers.detect_format(source)
    # the reader names the file by the path it opened (absolute here); errors and records
    # carry the name the user gave instead
    try:
        for record in readers.read_records(
            path,
            format=fmt,
            text_column=options.text_column,
            text_field=options.text_field,
            skip_invalid=options.skip_invalid,
            stats=stats,
        ):
            yield readers.Record(record.text, record.metadata, source, record.line)
    except InputError as exc:
        raise InputError(source, exc.line, exc.reason) from None
