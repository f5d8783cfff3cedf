"""Filters that select stored sentences by metadata and ingest fields.

The ``--where`` syntax: one condition per string, several conditions ANDed.

    field=value       equal (as text; a number also matches the same number, 4 matches 4.0 and "4")
    field!=value      not equal (rows without the field match too)
    field>=3  field>3  field<=3  field<3
                      ranges on numbers (JSON numbers and numeric strings) or on ISO dates
                      (``2024-06-01``, ``2024-06-01T12:00``; compared as ISO text)
    field in a,b,c    one of the values (CSV quoting: ``field in "a,b",c``)
    field not in a,b  none of the values (rows without the field match too)
    field~text        contains ``text``, case-insensitive

Ingest fields: ``id``, ``seq``, ``line`` (line in the source file), ``source`` (the source file as
ingested), ``text``, ``created`` (ingest time, UTC). Any other name is a key of the sentence's
JSON metadata; ``a.b`` is the key ``b`` inside the object ``a``, and ``meta.source`` forces the
metadata key ``source``. Field names are letters, digits, ``_`` and ``-`` (dot-separated); values
only ever travel as bound parameters.

:func:`parse_where` is pure (text in, :class:`Filter` out); :func:`compile_filter` turns a filter
into a SQLAlchemy expression for the session's dialect (SQLite ``json_extract``, PostgreSQL
``->>``/``#>>``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from sqlalchemy import Float, Text, and_, case, cast, func, not_, or_, select, true
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from storage.chunked import chunks
from storage.errors import StorageError
from storage.models import Sentence

WhereSpec = Union[None, str, Sequence[str], Mapping[str, Any], "Filter"]

INGEST_FIELDS = {"id": "int", "seq": "int", "line": "int", "source": "text", "text": "text", "created": "date"}
OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "~", "in", "not in")
RANGE_OPS = (">", ">=", "<", "<=")
_FIELD = re.compile(r"\w[\w\-]*(?:\.\w[\w\-]*)*")
_IN = re.compile(r"^\s*([\w.\-]+)\s+(not\s+in|in)\s+(.*)$", re.IGNORECASE | re.DOTALL)
_OP = re.compile(r"^\s*([^=!<>~]*?)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
NUMBER_PATTERN = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"


class InvalidFilterError(StorageError, ValueError):
    """A ``--where`` condition cannot be parsed, names an unknown field or has a bad value."""


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple[str, ...]

    @property
    def value(self) -> str:
        return self.values[0]

    @property
    def is_ingest_field(self) -> bool:
        return self.field in INGEST_FIELDS

    @property
    def path(self) -> tuple[str, ...]:
        """The JSON path of a metadata condition."""
        name = self.field.removeprefix("meta.")
        return tuple(name.split("."))

    def __str__(self) -> str:
        if self.op in ("in", "not in"):
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(self.values)
            return f"{self.field} {self.op} {buf.getvalue()}"
        return f"{self.field}{self.op}{self.value}"


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def to_strings(self) -> list[str]:
        """The canonical text of each condition; :func:`parse_where` reads it back unchanged."""
        return [str(c) for c in self.conditions]


def _bad(text: str, reason: str) -> InvalidFilterError:
    return InvalidFilterError(f"invalid --where {text!r}: {reason}")


def _is_number(value: str) -> bool:
    return bool(_NUMBER.fullmatch(value.strip())) and math.isfinite(float(value))


def _as_date(value: str) -> dt.datetime | None:
    if not re.match(DATE_PATTERN, value):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _check_values(cond: Condition, text: str) -> None:
    kind = INGEST_FIELDS.get(cond.field)
    if not _FIELD.fullmatch(cond.field) or cond.field == "meta":
        raise _bad(text, f"field name {cond.field!r} may hold only letters, digits, _ and - (dot-separated)")
    if cond.op in RANGE_OPS:
        if kind == "text":
            raise _bad(text, f"{cond.field} is text; ranges need a number or date field")
        if kind == "int" and not re.fullmatch(r"[-+]?\d+", cond.value):
            raise _bad(text, f"{cond.field} is a whole number, got {cond.value!r}")
        if kind == "date" and _as_date(cond.value) is None:
            raise _bad(text, f"{cond.value!r} is not an ISO date (e.g. 2024-06-01)")
        if kind is None and not _is_number(cond.value) and _as_date(cond.value) is None:
            raise _bad(text, f"a range needs a number or an ISO date (e.g. 2024-06-01), got {cond.value!r}")
        return
    if cond.op == "~":
        if kind in ("int", "date"):
            raise _bad(
                text, f"~ (contains) needs a text field; {cond.field} is a {'number' if kind == 'int' else 'date'}"
            )
        if not cond.value:
            raise _bad(text, "~ needs some text to look for")
        return
    for v in cond.values:
        if kind == "int" and not re.fullmatch(r"[-+]?\d+", v):
            raise _bad(text, f"{cond.field} is a whole number, got {v!r}")
        if kind == "date" and _as_date(v) is None:
            raise _bad(text, f"{v!r} is not an ISO date (e.g. 2024-06-01)")


def parse_condition(text: str) -> Condition:
    """One condition from its text, e.g. ``"stars>=4"`` or ``"lang in en,fr"``."""
    if not isinstance(text, str):
        raise InvalidFilterError(f"invalid --where {text!r}: expected a string like field=value")
    m = _IN.match(text)
    if m:
        field, op, rest = m.group(1), " ".join(m.group(2).lower().split()), m.group(3)
        try:
            values = next(csv.reader([rest.strip()], skipinitialspace=True), [])
        except csv.Error as exc:
            raise _bad(text, f"cannot read the list: {exc}") from None
        values = [v.strip() for v in values]
        if not values or any(v == "" for v in values):
            raise _bad(text, f"'{op}' needs a comma-separated list of values")
        cond = Condition(field, op, tuple(values))
    else:
        m = _OP.match(text)
        if not m or not m.group(1):
            raise _bad(
                text, "expected field=value, field!=value, field>=value, field<value, field in a,b or field~text"
            )
        cond = Condition(m.group(1), m.group(2), (m.group(3),))
    _check_values(cond, text)
    return cond


def _from_mapping(spec: Mapping[str, Any]) -> list[Condition]:
    out = []
    for field, value in spec.items():
        if isinstance(value, Mapping):
            for op, v in value.items():
                if op not in OPERATORS:
                    raise InvalidFilterError(
                        f"invalid where {{{field!r}: {{{op!r}: ...}}}}: operator must be one of {', '.join(OPERATORS)}"
                    )
                vals = tuple(_text(x) for x in v) if op in ("in", "not in") else (_text(v),)
                out.append(_checked(Condition(str(field), op, vals)))
        elif isinstance(value, (list, tuple, set)):
            out.append(_checked(Condition(str(field), "in", tuple(_text(x) for x in value))))
        else:
            out.append(_checked(Condition(str(field), "=", (_text(value),))))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _checked(cond: Condition) -> Condition:
    if cond.op in ("in", "not in") and not cond.values:
        raise _bad(str(cond), f"'{cond.op}' needs at least one value")
    _check_values(cond, str(cond))
    return cond


def parse_where(where: WhereSpec) -> Filter:
    """A :class:`Filter` from a string, a list of strings (ANDed) or a dict.

    A dict maps a field to a value (equality), a list (``in``) or ``{operator: value}``.
    """
    if where is None:
        return Filter()
    if isinstance(where, Filter):
        return where
    if isinstance(where, str):
        return Filter((parse_condition(where),)) if where.strip() else Filter()
    if isinstance(where, Mapping):
        return Filter(tuple(_from_mapping(where)))
    if isinstance(where, (list, tuple)):
        return Filter(tuple(parse_condition(w) for w in where if not (isinstance(w, str) and not w.strip())))
    raise InvalidFilterError(f"where must be a string, a list of strings or a dict, got {type(where).__name__}")


# -- SQL -----------------------------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _sqlite_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{p}"' for p in path)


def _meta_text(path: tuple[str, ...], dialect: str) -> ColumnElement:
    """The metadata value at ``path`` as text (booleans as 'true'/'false'; NULL when absent)."""
    if dialect == "sqlite":
        p = _sqlite_path(path)
        kind = func.json_type(Sentence.meta, p)
        return case(
            (kind == "true", "true"),
            (kind == "false", "false"),
            else_=cast(func.json_extract(Sentence.meta, p), Text),
        )
    key = path if len(path) > 1 else path[0]
    return Sentence.meta[key].as_string()


def _numeric(value: ColumnElement) -> ColumnElement:
    """``value`` as a float when it reads as a number, else NULL (never a cast error)."""
    return case((value.regexp_match(NUMBER_PATTERN), cast(value, Float)), else_=None)


def _equals(value: ColumnElement, wanted: str, numeric: ColumnElement | None) -> ColumnElement:
    cond = value == wanted
    if numeric is not None and _is_number(wanted):
        cond = or_(cond, numeric == float(wanted))
    return cond


def _ingest_column(field: str):
    return {
        "id": Sentence.id,
        "seq": Sentence.seq,
        "line": Sentence.source_line,
        "source": Sentence.source_file,
        "text": Sentence.text,
        "created": Sentence.created_at,
    }[field]


def _typed(field: str, value: str):
    kind = INGEST_FIELDS[field]
    if kind == "int":
        return int(value)
    if kind == "date":
        parsed = _as_date(value)
        assert parsed is not None  # checked by _check_values
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return parsed
    return value


def _compare(column: ColumnElement, op: str, value: Any) -> ColumnElement:
    return {">": column > value, ">=": column >= value, "<": column < value, "<=": column <= value}[op]


def _contains(column: ColumnElement, text: str) -> ColumnElement:
    return func.lower(column).contains(text.lower(), autoescape=True)


def _ingest_condition(cond: Condition) -> ColumnElement:
    column = _ingest_column(cond.field)
    values = [_typed(cond.field, v) for v in cond.values]
    if cond.op == "=":
        return column == values[0]
    if cond.op == "!=":
        return or_(column.is_(None), column != values[0])
    if cond.op == "in":
        return column.in_(values)
    if cond.op == "not in":
        return or_(column.is_(None), column.not_in(values))
    if cond.op == "~":
        return _contains(column, cond.value)
    return _compare(column, cond.op, values[0])


def _meta_condition(cond: Condition, dialect: str) -> ColumnElement:
    value = _meta_text(cond.path, dialect)
    numeric = _numeric(value)
    if cond.op == "=":
        return _equals(value, cond.value, numeric)
    if cond.op == "!=":
        return or_(value.is_(None), not_(_equals(value, cond.value, numeric)))
    if cond.op in ("in", "not in"):
        any_of = or_(*[_equals(value, v, numeric) for v in cond.values])
        return any_of if cond.op == "in" else or_(value.is_(None), not_(any_of))
    if cond.op == "~":
        return _contains(value, cond.value)
    if _is_number(cond.value):
        return _compare(numeric, cond.op, float(cond.value))
    dated = case((value.regexp_match(DATE_PATTERN), value), else_=None)
    return _compare(dated, cond.op, cond.value)


def compile_filter(flt: Filter, dialect: str) -> ColumnElement:
    """The SQL condition (over ``sentences``) of ``flt`` for ``dialect`` ("sqlite", "postgresql")."""
    if not flt:
        return true()
    parts = [_ingest_condition(c) if c.is_ingest_field else _meta_condition(c, dialect) for c in flt.conditions]
    return and_(*parts)


def condition(session: Session, where: WhereSpec) -> ColumnElement:
    return compile_filter(parse_where(where), _dialect(session))


def metadata_fields(session: Session, sample: int = 1000) -> list[str]:
    """Top-level metadata keys seen in the first ``sample`` rows that have metadata."""
    keys: set[str] = set()
    rows = session.scalars(select(Sentence.meta).where(Sentence.meta.isnot(None)).order_by(Sentence.seq).limit(sample))
    for meta in rows:
        if isinstance(meta, dict):
            keys.update(meta)
    return sorted(keys)


def check_fields(session: Session, where: WhereSpec) -> Filter:
    """Parse ``where`` and make sure each metadata field it names is held by some stored row.

    A metadata field is known when at least one stored sentence has a non-null value at its path;
    on an empty store every field is accepted (there is nothing to select yet).
    """
    flt = parse_where(where)
    dialect = _dialect(session)
    if not flt or session.scalar(select(Sentence.id).limit(1)) is None:
        return flt
    for cond in flt.conditions:
        if cond.is_ingest_field:
            continue
        found = session.scalar(select(Sentence.id).where(_meta_text(cond.path, dialect).isnot(None)).limit(1))
        if found is None:
            known = metadata_fields(session)
            hint = f"; metadata fields: {', '.join(known[:20])}" if known else "; no sentence has metadata"
            raise InvalidFilterError(
                f"unknown field {cond.field!r} in --where {str(cond)!r}: no stored sentence has it "
                f"(ingest fields: {', '.join(INGEST_FIELDS)}{hint})"
            )
    return flt


def matching_ids(session: Session, ids: Sequence[int], where: WhereSpec) -> list[int]:
    """The ids of ``ids`` whose rows match ``where``, ascending (all of them for an empty filter)."""
    flt = parse_where(where)
    ids = [int(i) for i in ids]
    if not flt:
        return sorted(ids)
    cond = compile_filter(flt, _dialect(session))
    out: list[int] = []
    for chunk in chunks(ids):
        out.extend(session.scalars(select(Sentence.id).where(Sentence.id.in_(chunk), cond)))
    return sorted(out)


def filtered_ids(session: Session, where: WhereSpec, up_to_seq: int | None = None) -> np.ndarray:
    """Ids of every sentence matching ``where`` (up to ``up_to_seq``), in sequence order."""
    query = select(Sentence.id).where(condition(session, where)).order_by(Sentence.seq)
    if up_to_seq is not None:
        query = query.where(Sentence.seq <= up_to_seq)
    return np.fromiter(session.scalars(query), dtype=np.int64)


def iter_filtered_embeddings(
    session: Session,
    where: WhereSpec,
    dimension: int,
    dtype: str = "float32",
    up_to_seq: int | None = None,
    batch_size: int = 20_000,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 matrix) batches of the sentences matching ``where``, in sequence order."""
    from storage.sentences import iter_embeddings

    cond = condition(session, where)
    for ids, matrix, _ in iter_embeddings(session, dimension, dtype, 0, up_to_seq, batch_size, cond):
        yield ids, matrix


def everything_matches(where: WhereSpec) -> bool:
    return not parse_where(where)


__all__ = [
    "Condition",
    "Filter",
    "InvalidFilterError",
    "check_fields",
    "compile_filter",
    "condition",
    "everything_matches",
    "filtered_ids",
    "iter_filtered_embeddings",
    "matching_ids",
    "parse_condition",
    "parse_where",
]
