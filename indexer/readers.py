"""Streaming input readers: plain text, CSV/TSV and JSON Lines.

Inputs are read as bytes one physical line at a time and decoded as strict UTF-8 by us, so a
decoding error or a NUL byte is reported with its exact file, line and byte column. A UTF-8 BOM
at the very start of an input is accepted and dropped. Nothing is loaded whole into memory.

Every yielded ``Record`` carries its text already passed through ``normalize_text``. Records
whose normalised text is empty are skipped and counted, never an error. Records that are
invalid (bad bytes, malformed JSON, wrong field count, ...) raise ``InputError``, or with
``skip_invalid=True`` are skipped and counted, the first few messages being kept in
``ReadStats.errors``. Errors that concern the input as a whole (missing file, CSV header
without the text column) always raise.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Union

from indexer.errors import InputError
from indexer.normalize import normalize_text

__all__ = ["FORMATS", "ReadStats", "Record", "detect_format", "read_records"]

STDIN_NAME = "<stdin>"
FORMATS = ("auto", "text", "csv", "tsv", "jsonl")
MAX_KEPT_ERRORS = 10

_BOM = b"\xef\xbb\xbf"
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True, slots=True)
class Record:
    """One input sentence.

    ``text`` is normalised (see ``indexer.normalize``) and never empty; ``metadata`` holds the
    other CSV columns (as strings) or JSON fields (any JSON value); ``source`` is the input's
    name as given, or "<stdin>"; ``line`` is the 1-based physical line where the record starts.
    """

    text: str
    metadata: dict
    source: str
    line: int


@dataclass
class ReadStats:
    """Counts kept up to date while a ``read_records`` iterator is consumed.

    ``records`` counts yielded records, ``empty`` skipped empty or whitespace-only records,
    ``invalid`` records skipped under ``skip_invalid``; ``errors`` keeps the messages of the
    first ``MAX_KEPT_ERRORS`` skipped invalid records.
    """

    records: int = 0
    empty: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)


def detect_format(path: PathLike) -> str:
    """Return the concrete format ("text", "csv", "tsv" or "jsonl") implied by a path's suffix.

    ".csv" -> csv, ".tsv" -> tsv, ".jsonl"/".ndjson" -> jsonl, anything else (and stdin "-")
    -> text. The suffix is matched case-insensitively.
    """
    name = os.fspath(path)
    if name == "-":
        return "text"
    return _SUFFIX_FORMATS.get(os.path.splitext(name)[1].lower(), "text")


def read_records(
    path: PathLike,
    format: str = "auto",
    text_column: str = "text",
    text_field: str = "text",
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Record]:
    """Stream the records of one input.

    ``path`` is a file path, or "-" for standard input (read as bytes). ``format`` is "auto"
    (chosen by ``detect_format``; stdin defaults to text), "text" (one sentence per line, no
    metadata), "csv" (comma-separated, or tab-separated when the path ends in ".tsv"), "tsv"
    (tab-separated) or "jsonl" (one JSON object per line).

    CSV/TSV: the first non-blank row is the header and must contain ``text_column``; the other
    columns become metadata; every row must have as many fields as the header; quoted fields
    may span lines. JSONL: the value at ``text_field`` must be a string; the other fields
    become metadata.

    The file is opened, and the arguments checked, when this function is called: a missing
    or unreadable file or an unknown format raises ``InputError``/``ValueError`` at once.
    Problems in the content are raised (or skipped and counted) as the iterator advances.
    ``stats``, when given, is updated in place as records are produced.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown input format {format!r}; expected one of {', '.join(FORMATS)}")
    if stats is None:
        stats = ReadStats()
    name = os.fspath(path)
    if format == "auto":
        format = detect_format(name)
    elif format == "csv" and name != "-" and os.path.splitext(name)[1].lower() == ".tsv":
        format = "tsv"
    stream, source, owned = _open(name)
    return _generate(stream, source, owned, format, text_column, text_field, skip_invalid, stats)


def _open(name: str) -> tuple[IO[bytes], str, bool]:
    if name == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is None:
            return _EncodedLines(sys.stdin), STDIN_NAME, False  # type: ignore[return-value]
        return buffer, STDIN_NAME, False
    try:
        return open(name, "rb"), name, True
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except PermissionError:
        reason = "permission denied"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise InputError(name, None, reason)


class _EncodedLines:
    """Binary line iterator over a text stream that has no ``buffer`` (e.g. ``io.StringIO``)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield line.encode("utf-8", "surrogateescape")


def _generate(
    stream: IO[bytes],
    source: str,
    owned: bool,
    format: str,
    text_column: str,
    text_field: str,
    skip_invalid: bool,
    stats: ReadStats,
) -> Iterator[Record]:
    try:
        lines = _numbered_lines(stream, source)
        if format == "text":
            yield from _read_text(lines, source, skip_invalid, stats)
        elif format == "jsonl":
            yield from _read_jsonl(lines, source, text_field, skip_invalid, stats)
        else:
            delimiter = "\t" if format == "tsv" else ","
            yield from _read_csv(lines, source, delimiter, text_column, skip_invalid, stats)
    except OSError as exc:
        raise InputError(source, None, f"read error: {exc.strerror or exc}") from exc
    finally:
        if owned:
            stream.close()


def metadata_problem(meta: Any) -> str | None:
    """Why ``meta`` cannot be stored (not a dict, not JSON, an unpaired surrogate), or None."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"metadata must be a dict or None, not {type(meta).__name__}"
    try:
        json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "unpaired surrogate in metadata (not valid Unicode)"
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON: {exc}"
    return None


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF16_HINT = "the input is UTF-16, not UTF-8: convert it first (e.g. iconv -f UTF-16 -t UTF-8)"


def _numbered_lines(stream: IO[bytes], source: str = STDIN_NAME) -> Iterator[tuple[int, bytes]]:
    """Pair each raw byte line with its 1-based number, removing a UTF-8 BOM that starts line 1."""
    it = iter(stream)
    first = next(it, None)
    if first is None:
        return iter(())
    if first.startswith(_UTF16_BOMS):
        raise InputError(source, 1, UTF16_HINT)
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    return enumerate(itertools.chain((first,), it), 1)


def _bad_line(raw: bytes) -> str | None:
    """Describe why ``raw`` is not an acceptable line (NUL byte, invalid UTF-8), or None.

    Columns are 1-based byte offsets within the line as read (after BOM removal on line 1).
    """
    if b"\0" in raw:
        body = raw.rstrip(b"\r\n")
        if len(body) >= 2 and (body[1::2].count(0) * 2 >= len(body) - 1 or body[0::2].count(0) * 2 >= len(body) - 1):
            return f"NUL bytes between characters: {UTF16_HINT}"
        return f"NUL byte at column {raw.index(0) + 1}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    return None


def _rejecter(skip_invalid: bool, stats: ReadStats):
    def reject(error: InputError) -> None:
        if not skip_invalid:
            raise error
        stats.invalid += 1
        if len(stats.errors) < MAX_KEPT_ERRORS:
            stats.errors.append(str(error))

    return reject


def _read_text(
    lines: Iterator[tuple[int, bytes]], source: str, skip_invalid: bool, stats: ReadStats
) -> Iterator[Record]:
    reject = _rejecter(skip_invalid, stats)
    for lineno, raw in lines:
        try:
            if b"\0" in raw:
                raise ValueError
            line = raw.decode("utf-8")
        except ValueError:
            reject(InputError(source, lineno, _bad_line(raw) or "unreadable line"))
            continue
        text = normalize_text(line)
        if not text:
            stats.empty += 1
            continue
        stats.records += 1
        yield Record(text, {}, source, lineno)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_jsonl(
    lines: Iterator[tuple[int, bytes]],
    source: str,
    text_field: str,
    skip_invalid: bool,
    stats: ReadStats,
) -> Iterator[Record]:
    reject = _rejecter(skip_invalid, stats)
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    for lineno, raw in lines:
        try:
            if b"\0" in raw:
                raise ValueError
            line = raw.decode("utf-8")
        except ValueError:
            reject(InputError(source, lineno, _bad_line(raw) or "unreadable line"))
            continue
        if not line.strip():
            stats.empty += 1
            continue
        try:
            obj = decoder.decode(line)
        except json.JSONDecodeError as exc:
            reject(InputError(source, lineno, f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"))
            continue
        except ValueError as exc:
            reject(InputError(source, lineno, f"malformed JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            reject(InputError(source, lineno, f"expected a JSON object, found {_json_kind(obj)}"))
            continue
        if text_field not in obj:
            reject(InputError(source, lineno, f"missing text field {text_field!r}"))
            continue
        value = obj.pop(text_field)
        if not isinstance(value, str):
            reject(
                InputError(
                    source,
                    lineno,
                    f"text field {text_field!r} is {_json_kind(value)}, expected a string",
                )
            )
            continue
        if "\0" in value:
            reject(InputError(source, lineno, f"NUL character in text field {text_field!r}"))
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            reject(InputError(source, lineno, f"unpaired surrogate in text field {text_field!r}"))
            continue
        problem = metadata_problem(obj)
        if problem:
            reject(InputError(source, lineno, problem))
            continue
        text = normalize_text(value)
        if not text:
            stats.empty += 1
            continue
        stats.records += 1
        yield Record(text, obj, source, lineno)


def _read_csv(
    lines: Iterator[tuple[int, bytes]],
    source: str,
    delimiter: str,
    text_column: str,
    skip_invalid: bool,
    stats: ReadStats,
) -> Iterator[Record]:
    reject = _rejecter(skip_invalid, stats)
    pending: list[InputError] = []
    position = [0]

    def decoded() -> Iterable[str]:
        for lineno, raw in lines:
            position[0] = lineno
            try:
                if b"\0" in raw:
                    raise ValueError
                yield raw.decode("utf-8")
            except ValueError:
                if not pending:
                    pending.append(InputError(source, lineno, _bad_line(raw) or "unreadable"))
                yield raw.decode("utf-8", "replace").replace("\0", "")

    reader = csv.reader(decoded(), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = end = 0
    try:
        for row in reader:
            start, end = end + 1, position[0]
            if pending:
                raise pending[0]
            if row and (len(row) > 1 or row[0].strip()):
                header, header_line = row, start
                break
    except csv.Error as exc:
        raise (pending[0] if pending else _csv_error(source, end + 1, position[0], exc)) from None
    if header is None:
        return
    _check_header(header, header_line, source, text_column)
    width = len(header)
    text_index = header.index(text_column)
    meta_columns = [(i, name) for i, name in enumerate(header) if i != text_index]

    while True:
        try:
            for row in reader:
                start, end = end + 1, position[0]
                if pending:
                    error = pending[0]
                    pending.clear()
                    reject(error)
                    continue
                if len(row) != width:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        stats.empty += 1
                        continue
                    reject(
                        InputError(
                            source,
                            start,
                            f"expected {width} field{'s' if width != 1 else ''} "
                            f"(as in the header on line {header_line}), found {len(row)}",
                        )
                    )
                    continue
                text = normalize_text(row[text_index])
                if not text:
                    stats.empty += 1
                    continue
                stats.records += 1
                yield Record(text, {name: row[i] for i, name in meta_columns}, source, start)
            return
        except csv.Error as exc:
            start, end = end + 1, position[0]
            error = pending[0] if pending else _csv_error(source, start, end, exc)
            pending.clear()
            reject(error)


def _csv_error(source: str, start: int, end: int, exc: csv.Error) -> InputError:
    message = str(exc)
    if "unexpected end of data" in message:
        return InputError(source, start, "unterminated quoted field (reaches end of input)")
    return InputError(source, end, f"malformed CSV: {message}")


def _check_header(header: list[str], line: int, source: str, text_column: str) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(source, line, f"duplicate column {name!r} in header")
        seen.add(name)
    if text_column not in seen:
        available = ", ".join(repr(name) for name in header)
        raise InputError(source, line, f"no column {text_column!r} in header; available columns: {available}")
