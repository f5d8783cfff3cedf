"""--where filters: parsing (pure) and every operator on SQLite and PostgreSQL for real."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from indexer.sentence_store import SentenceStore
from storage import filters
from storage.filters import (
    InvalidFilterError,
    check_fields,
    filtered_ids,
    matching_ids,
    parse_where,
)
from storage.models import Sentence

ROWS = [
    ("alpha card payment failed", {"stars": 5, "lang": "en", "date": "2024-05-30", "app": {"os": "ios"}, "ok": True}),
    ("beta refund request pending", {"stars": "3", "lang": "fr", "date": "2024-06-01", "app": {"os": "android"}}),
    ("gamma card declined abroad", {"stars": 1.5, "lang": "en", "date": "2024-06-02T10:00:00", "ok": False}),
    ("delta transfer 100% done_now", {"stars": "n/a", "lang": "de, ch", "date": "soon"}),
    ("epsilon no metadata here", None),
]


@pytest.fixture
def store(tmp_path, db_url):
    s = SentenceStore(tmp_path / "data", db_url=db_url)
    texts = [t for t, _ in ROWS]
    s.ingest(texts, [m for _, m in ROWS], source="reviews.csv")
    yield s
    s.close()


def texts_of(store, where) -> list[str]:
    with store.db.read() as session:
        ids = filtered_ids(session, where).tolist()
        rows = store.get(ids)
    return [rows[i].text.split()[0] for i in ids]


@pytest.mark.parametrize(
    "where, expected",
    [
        ("lang=en", ["alpha", "gamma"]),
        ("lang!=en", ["beta", "delta", "epsilon"]),
        ("stars=3", ["beta"]),
        ("stars=5.0", ["alpha"]),
        ("stars>=3", ["alpha", "beta"]),
        ("stars>3", ["alpha"]),
        ("stars<3", ["gamma"]),
        ("stars<=1.5", ["gamma"]),
        ("date<2024-06-01", ["alpha"]),
        ("date>=2024-06-01", ["beta", "gamma"]),
        ("date>2024-06-02", ["gamma"]),
        ("lang in en,fr", ["alpha", "beta", "gamma"]),
        ('lang in "de, ch"', ["delta"]),
        ("lang not in en,fr", ["delta", "epsilon"]),
        ("text~CARD", ["alpha", "gamma"]),
        ("text~100%", ["delta"]),
        ("text~done_", ["delta"]),
        ("text~a_c", []),
        ("lang~E", ["alpha", "delta", "gamma"]),
        ("app.os=ios", ["alpha"]),
        ("app.os in android", ["beta"]),
        ("ok=true", ["alpha"]),
        ("ok=false", ["gamma"]),
        ("source=reviews.csv", ["alpha", "beta", "gamma", "delta", "epsilon"]),
        ("source~REVIEWS", ["alpha", "beta", "gamma", "delta", "epsilon"]),
        ("source!=other.csv", ["alpha", "beta", "gamma", "delta", "epsilon"]),
        ("line>=4", ["delta", "epsilon"]),
        ("line in 1,3", ["alpha", "gamma"]),
        ("seq<=2", ["alpha", "beta"]),
        ("id!=1", ["beta", "gamma", "delta", "epsilon"]),
        ("text=beta refund request pending", ["beta"]),
        ("created>=2000-01-01", ["alpha", "beta", "gamma", "delta", "epsilon"]),
        ("created<2000-01-01", []),
        (["lang=en", "stars>=2"], ["alpha"]),
        ({"lang": ["en", "fr"], "stars": {">": 2}}, ["alpha", "beta"]),
        ({"ok": True}, ["alpha"]),
    ],
)
def test_every_operator(store, where, expected):
    assert sorted(texts_of(store, where)) == sorted(expected)


def test_results_in_sequence_order(store):
    assert texts_of(store, "lang in fr,en") == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    "bad",
    [
        "a'); DROP TABLE sentences;--=1",
        "lang=en' OR '1'='1",
        "lang in en'); DELETE FROM sentences;--",
        "text~%' OR 1=1 --",
        'a"]=1',
        "stars>=1; DROP TABLE sentences",
    ],
)
def test_injection_attempts_leave_database_intact(store, bad):
    try:
        assert texts_of(store, bad) == []
    except InvalidFilterError as exc:
        assert "\n" not in str(exc)
    with store.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Sentence)) == len(ROWS)


def test_unknown_field_is_a_clean_error(store):
    with store.db.read() as session:
        with pytest.raises(InvalidFilterError, match=r"unknown field 'colour'.*metadata fields: app, date, lang"):
            check_fields(session, "colour=red")
        assert check_fields(session, ["lang=en", "app.os=ios", "id>0"])


def test_matching_ids_keeps_only_matching(store):
    with store.db.read() as session:
        every = filtered_ids(session, None).tolist()
        assert matching_ids(session, every, "lang=en") == [every[0], every[2]]
        assert matching_ids(session, every[:2], None) == every[:2]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("stars>abc", "a range needs a number or an ISO date"),
        ("id=x", "whole number"),
        ("text>3", "ranges need a number or date field"),
        ("created<2024-13-45", "not an ISO date"),
        ("lang in ", "comma-separated list"),
        ("nothing here", "expected field=value"),
        ("id~1", "needs a text field"),
        ("meta=1", "field name"),
    ],
)
def test_bad_conditions(bad, message):
    with pytest.raises(InvalidFilterError, match=message):
        parse_where(bad)


def test_canonical_strings_round_trip():
    flt = parse_where(['lang in en,"a,b"', "stars >= 3", "x~y", {"k": {"not in": [1, 2]}}][:3])
    assert parse_where(flt.to_strings()) == flt
    assert flt.to_strings() == ['lang in en,"a,b"', "stars>=3", "x~y"]
    assert parse_where({"k": {"not in": [1, "2"]}}).to_strings() == ["k not in 1,2"]
    with pytest.raises(InvalidFilterError):
        parse_where({"k": {"like": "x"}})
    with pytest.raises(InvalidFilterError):
        parse_where(42)


def test_sql_uses_bound_parameters():
    from sqlalchemy.dialects import postgresql, sqlite

    flt = parse_where(["lang=evil'value", "stars>=3", "app.os~x"])
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(select(Sentence.id).where(filters.compile_filter(flt, dialect.name)).compile(dialect=dialect))
        assert "evil" not in sql and "app" not in sql and "os" not in sql.replace("cast", "")
