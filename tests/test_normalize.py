from indexer.normalize import normalize_text, text_hash


def test_nfc_composition():
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("caf\u0065\u0301 au lait") == "caf\u00e9 au lait"


def test_whitespace_collapse():
    assert normalize_text("  a\t\tb\u00a0\u00a0c\n d\r\n\u2003e\u3000 ") == "a b c d e"
    assert normalize_text("x\u200by\ufeffz") == "x y z"


def test_empty_and_blank():
    assert normalize_text("") == ""
    assert normalize_text(" \t\n\u00a0\u2028") == ""


def test_case_preserved():
    assert normalize_text("Hello World") == "Hello World"
    assert text_hash("Hello") != text_hash("hello")


def test_hash_equal_for_equivalent_texts():
    assert text_hash("caf\u00e9  ole") == text_hash(" cafe\u0301\tole\n")
    assert text_hash("a b") != text_hash("ab")


def test_hash_format():
    h = text_hash("anything")
    assert len(h) == 32
    int(h, 16)
    assert h == h.lower()


def test_l2_normalize_rows_and_zero_rows():
    import numpy as np

    from indexer.normalize import l2_normalize

    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float64)
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(np.array([0.0, 2.0])), [0.0, 1.0])
