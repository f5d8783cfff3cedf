import io
import json
import sys

import pytest

from indexer.errors import IndexerError, InputError
from indexer.readers import ReadStats, Record, detect_format, read_records


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def texts(records):
    return [r.text for r in records]


def test_text_format_basic(tmp_path):
    p = write(tmp_path / "q.txt", b"first  line\n\nsecond\tline\n   \nthird\n")
    stats = ReadStats()
    recs = list(read_records(p, stats=stats))
    assert texts(recs) == ["first line", "second line", "third"]
    assert [r.line for r in recs] == [1, 3, 5]
    assert all(r.metadata == {} and r.source == str(p) for r in recs)
    assert stats.records == 3 and stats.empty == 2 and stats.invalid == 0


def test_record_is_frozen(tmp_path):
    rec = next(read_records(write(tmp_path / "a.txt", b"x\n")))
    assert isinstance(rec, Record)
    with pytest.raises(Exception):
        rec.text = "y"


def test_text_no_trailing_newline_and_nfc(tmp_path):
    p = write(tmp_path / "a.text", "caf\u0065\u0301\nlast".encode())
    assert texts(read_records(p)) == ["caf\u00e9", "last"]


def test_bom_and_crlf(tmp_path):
    p = write(tmp_path / "a.txt", b"\xef\xbb\xbfhello\r\nworld\r\n\r\n")
    stats = ReadStats()
    recs = list(read_records(p, stats=stats))
    assert texts(recs) == ["hello", "world"]
    assert stats.empty == 1


def test_bom_only_stripped_at_start(tmp_path):
    p = write(tmp_path / "a.txt", b"a\n\xef\xbb\xbfb\n")
    assert texts(read_records(p)) == ["a", "b"]


def test_csv_metadata_roundtrip(tmp_path):
    p = write(
        tmp_path / "d.csv",
        b'\xef\xbb\xbfid,text,lang\r\n1,Hello there,en\r\n2,"multi\r\nline, quoted ""x""",de\r\n'
        b"\r\n3,  ,fr\r\n4,last,es\r\n",
    )
    stats = ReadStats()
    recs = list(read_records(p, stats=stats))
    assert texts(recs) == ["Hello there", 'multi line, quoted "x"', "last"]
    assert [r.metadata for r in recs] == [
        {"id": "1", "lang": "en"},
        {"id": "2", "lang": "de"},
        {"id": "4", "lang": "es"},
    ]
    assert [r.line for r in recs] == [2, 3, 7]
    assert stats.records == 3 and stats.empty == 2


def test_csv_custom_text_column(tmp_path):
    p = write(tmp_path / "d.csv", b"sentence,n\nabc,1\n")
    recs = list(read_records(p, text_column="sentence"))
    assert recs[0].text == "abc" and recs[0].metadata == {"n": "1"}


def test_csv_missing_column(tmp_path):
    p = write(tmp_path / "d.csv", b"id,body\n1,x\n")
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    err = ei.value
    assert err.path == str(p) and err.line == 1
    assert "d.csv" in str(err) and "line 1" in str(err)
    assert "'id'" in str(err) and "'body'" in str(err)


def test_csv_wrong_field_count(tmp_path):
    p = write(tmp_path / "d.csv", b"id,text\n1,a\n2,b,extra\n3,c\n")
    with pytest.raises(InputError, match="line 3"):
        list(read_records(p))
    stats = ReadStats()
    assert texts(read_records(p, skip_invalid=True, stats=stats)) == ["a", "c"]
    assert stats.invalid == 1


def test_csv_unterminated_quote(tmp_path):
    p = write(tmp_path / "d.csv", b'id,text\n1,a\n2,"never closed\n3,c\n')
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert ei.value.line == 3 and "unterminated" in ei.value.reason


def test_csv_invalid_utf8_inside_multiline_field(tmp_path):
    p = write(tmp_path / "d.csv", b'id,text\n1,"a\nb\xffc"\n2,ok\n')
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert ei.value.line == 3 and "0xff" in ei.value.reason
    stats = ReadStats()
    recs = list(read_records(p, skip_invalid=True, stats=stats))
    assert texts(recs) == ["ok"] and recs[0].line == 4
    assert stats.invalid == 1


def test_tsv(tmp_path):
    p = write(tmp_path / "d.tsv", b"text\tscore\nhello, world\t0.5\n")
    recs = list(read_records(p))
    assert recs[0].text == "hello, world" and recs[0].metadata == {"score": "0.5"}
    assert detect_format(p) == "tsv"
    assert next(iter(read_records(p, format="csv"))).metadata == {"score": "0.5"}


def test_jsonl_metadata_roundtrip(tmp_path):
    rows = [
        {"text": "one", "id": 1, "tags": ["a", "b"], "meta": {"nested": {"x": 1.5}}, "ok": True},
        {"id": 2, "text": "  two  ", "none": None},
    ]
    data = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    p = write(tmp_path / "d.jsonl", data.encode())
    stats = ReadStats()
    recs = list(read_records(p, stats=stats))
    assert texts(recs) == ["one", "two"]
    assert recs[0].metadata == {"id": 1, "tags": ["a", "b"], "meta": {"nested": {"x": 1.5}}, "ok": True}
    assert recs[1].metadata == {"id": 2, "none": None}
    assert [r.line for r in recs] == [1, 2]
    assert stats.empty == 1


def test_jsonl_custom_field_and_ndjson(tmp_path):
    p = write(tmp_path / "d.ndjson", b'{"body": "hi", "text": "meta"}\n')
    recs = list(read_records(p, text_field="body"))
    assert recs[0].text == "hi" and recs[0].metadata == {"text": "meta"}


def test_jsonl_malformed_line(tmp_path):
    p = write(tmp_path / "d.jsonl", b'{"text": "a"}\n{"text": "b"\n{"text": "c"}\n')
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert "d.jsonl" in str(ei.value) and "line 2" in str(ei.value)
    assert "malformed JSON" in ei.value.reason


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b'{"text": 5}', "is a number, expected a string"),
        (b'{"text": null}', "is null"),
        (b'{"text": ["a"]}', "is an array"),
        (b'{"other": "a"}', "missing text field"),
        (b'["text"]', "expected a JSON object, found an array"),
        (b'"just a string"', "expected a JSON object"),
        (b'{"text": "a", "x": NaN}', "malformed JSON"),
        (b'{"text": "a\\u0000b"}', "NUL character"),
        (b'{"text": "a\\ud800"}', "unpaired surrogate"),
    ],
)
def test_jsonl_invalid_records(tmp_path, line, fragment):
    p = write(tmp_path / "d.jsonl", b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert ei.value.line == 2 and fragment in ei.value.reason


def test_invalid_utf8_reports_line_and_column(tmp_path):
    p = write(tmp_path / "questions.txt", b"ok\nfine\nstill\nabcd\xffef\nafter\n")
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    err = ei.value
    assert isinstance(err, IndexerError)
    assert err.line == 4
    assert str(err) == f"{p}, line 4: invalid UTF-8 (byte 0xff at column 5)"


def test_invalid_utf8_error_is_lazy_but_records_before_are_yielded(tmp_path):
    p = write(tmp_path / "q.txt", b"a\nb\n\xc3\n")
    it = read_records(p)
    assert next(it).text == "a" and next(it).text == "b"
    with pytest.raises(InputError, match="line 3"):
        next(it)


def test_nul_byte(tmp_path):
    p = write(tmp_path / "n.txt", b"a\nb\x00c\n")
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert ei.value.line == 2 and "NUL byte" in str(ei.value) and "n.txt" in str(ei.value)


def test_skip_invalid_counts_and_keeps_first_messages(tmp_path):
    lines = [b"good %d" % i if i % 2 else b"bad \xff %d" % i for i in range(30)]
    p = write(tmp_path / "s.txt", b"\n".join(lines) + b"\n\n")
    stats = ReadStats()
    recs = list(read_records(p, skip_invalid=True, stats=stats))
    assert len(recs) == 15 and stats.records == 15
    assert stats.invalid == 15 and stats.empty == 1
    assert len(stats.errors) == 10
    assert stats.errors[0].endswith("line 1: invalid UTF-8 (byte 0xff at column 5)")


def test_skip_invalid_jsonl(tmp_path):
    p = write(tmp_path / "d.jsonl", b'{"text": "a"}\nnot json\n{"text": 3}\n{"text": "b"}\n')
    stats = ReadStats()
    assert texts(read_records(p, skip_invalid=True, stats=stats)) == ["a", "b"]
    assert stats.invalid == 2 and len(stats.errors) == 2 and "line 2" in stats.errors[0]


def _fake_stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_stdin_text(monkeypatch):
    _fake_stdin(monkeypatch, b"\xef\xbb\xbfone\r\n\ntwo\n")
    recs = list(read_records("-"))
    assert texts(recs) == ["one", "two"]
    assert [r.source for r in recs] == ["<stdin>", "<stdin>"]
    assert [r.line for r in recs] == [1, 3]


def test_stdin_invalid_utf8(monkeypatch):
    _fake_stdin(monkeypatch, b"one\n\xfe\n")
    with pytest.raises(InputError) as ei:
        list(read_records("-"))
    assert str(ei.value).startswith("<stdin>, line 2: invalid UTF-8")


def test_stdin_jsonl(monkeypatch):
    _fake_stdin(monkeypatch, b'{"text": "x", "k": 1}\n')
    assert next(iter(read_records("-", format="jsonl"))).metadata == {"k": 1}


def test_stdin_without_buffer(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\n b \n"))
    assert texts(read_records("-")) == ["a", "b"]


def test_missing_file(tmp_path):
    p = tmp_path / "nope.txt"
    with pytest.raises(InputError) as ei:
        read_records(p)
    assert ei.value.line is None and ei.value.path == str(p)
    assert str(ei.value) == f"{p}: no such file"


def test_directory(tmp_path):
    with pytest.raises(InputError, match="directory"):
        read_records(tmp_path)


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        read_records(write(tmp_path / "a.txt", b"x"), format="xml")


def test_detect_format():
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.jsonl") == "jsonl"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.tsv") == "tsv"
    assert detect_format("a.txt") == "text"
    assert detect_format("noext") == "text"
    assert detect_format("-") == "text"


def test_input_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(InputError("f.txt", 3, "bad")))
    assert (err.path, err.line, err.reason) == ("f.txt", 3, "bad")
    assert str(InputError("f.txt", None, "gone")) == "f.txt: gone"


def test_csv_malformed_quote_skipped_and_reader_resumes(tmp_path):
    p = write(tmp_path / "d.csv", b'id,text\n1,"a"b\n2,ok\n   \n3,"x\ny"\n')
    with pytest.raises(InputError) as ei:
        list(read_records(p))
    assert ei.value.line == 2 and "malformed CSV" in ei.value.reason
    stats = ReadStats()
    recs = list(read_records(p, skip_invalid=True, stats=stats))
    assert texts(recs) == ["ok", "x y"] and [r.line for r in recs] == [3, 5]
    assert stats.invalid == 1 and stats.empty == 1


def test_csv_empty_file_and_leading_blank_lines(tmp_path):
    assert list(read_records(write(tmp_path / "e.csv", b""))) == []
    recs = list(read_records(write(tmp_path / "b.csv", b"\n\ntext\nhi\n")))
    assert recs[0].text == "hi" and recs[0].line == 4


def test_csv_duplicate_header_column(tmp_path):
    with pytest.raises(InputError, match="duplicate column"):
        list(read_records(write(tmp_path / "d.csv", b"text,a,a\nx,1,2\n")))


def test_csv_invalid_header_raises_even_with_skip_invalid(tmp_path):
    p = write(tmp_path / "d.csv", b"te\xffxt\nhi\n")
    with pytest.raises(InputError, match="line 1: invalid UTF-8"):
        list(read_records(p, skip_invalid=True))


# -- issue 8, faults 7 and 14 -------------------------------------------------------------


def test_unterminated_json_string_message_says_at_once(tmp_path):
    p = write(tmp_path / "u.jsonl", b'{"text": "ok"}\n{"text": "never closed}')
    with pytest.raises(InputError) as err:
        list(read_records(p))
    assert err.value.line == 2
    assert "at at" not in str(err.value)
    assert "Unterminated string starting at column 10" in str(err.value)
    p = write(tmp_path / "c.jsonl", b'{"text": "never closed}\n')
    with pytest.raises(InputError) as err:
        list(read_records(p))
    assert "Invalid control character at column 24" in str(err.value)


def test_unpaired_surrogate_in_jsonl_metadata_is_rejected_with_its_line(tmp_path):
    p = write(tmp_path / "s.jsonl", b'{"text": "fine", "note": "ok"}\n{"text": "x", "note": "\\ud800"}\n')
    with pytest.raises(InputError) as err:
        list(read_records(p))
    assert err.value.line == 2 and "surrogate" in err.value.reason and "metadata" in err.value.reason
    stats = ReadStats()
    recs = list(read_records(p, skip_invalid=True, stats=stats))
    assert texts(recs) == ["fine"] and stats.invalid == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file_is_named_as_utf16(tmp_path, encoding):
    p = write(tmp_path / "w.txt", "first line\nsecond line\n".encode(encoding))
    with pytest.raises(InputError) as err:
        list(read_records(p))
    assert "UTF-16" in str(err.value) and err.value.line == 1
