import numpy as np
import pytest

from clusterer.algorithms.topics import (
    add_counts,
    cohesion,
    count_terms,
    ctfidf_keywords,
    merge_counts,
    representatives,
    subtract_counts,
    term_counts,
)
from clusterer.errors import InvalidParameterError

PAYMENTS = [
    "I paid with my credit card yesterday",
    "The credit card payment failed at checkout",
    "Please refund the charge to my credit card",
    "My card payment was declined twice",
    "Credit card payment is not accepted here",
]
FLIGHTS = [
    "Booking a flight to Paris next week",
    "My flight booking was cancelled by the airline",
    "How do I change the date of my flight booking",
    "Cheap flights to Rome for the holidays",
    "The airline lost my flight reservation",
]
WEATHER = [
    "Heavy rain and wind are expected tomorrow",
    "The weather forecast says sunny skies",
    "Snow storm warning for the weekend weather",
]


def _corpus():
    texts = PAYMENTS + FLIGHTS + WEATHER + ["totally unrelated noise sentence"]
    labels = [0] * len(PAYMENTS) + [1] * len(FLIGHTS) + [2] * len(WEATHER) + [-1]
    return texts, labels


def _terms(keywords):
    return {term for term, _ in keywords}


def test_keywords_contain_expected_words():
    texts, labels = _corpus()
    keywords = ctfidf_keywords(count_terms(texts, labels), top_n=5)
    assert set(keywords) == {0, 1, 2}
    assert "credit card" in _terms(keywords[0])
    assert "card payment" in _terms(keywords[0]) or "payment" in _terms(keywords[0])
    assert "flight booking" in _terms(keywords[1])
    assert "airline" in _terms(keywords[1])
    assert "weather" in _terms(keywords[2])
    assert not _terms(keywords[0]) & _terms(keywords[1])
    for kws in keywords.values():
        scores = [s for _, s in kws]
        assert scores == sorted(scores, reverse=True)
        assert all(s > 0 for s in scores)


def test_unassigned_ignored_and_stop_words_removed():
    counts = count_terms(["the and of", "noise words here"], [5, -1])
    assert counts == {5: {}}
    assert ctfidf_keywords(counts) == {5: []}
    assert count_terms([], []) == {}
    assert term_counts(["The cat"]) == {"cat": 1}


def test_bigrams_formed_after_stop_word_removal():
    counts = term_counts(["credit card and the credit card"])
    assert counts["credit card"] == 2
    assert counts["card credit"] == 1
    assert counts["credit"] == 2


def test_incremental_counts_equal_recount():
    texts, labels = _corpus()
    full = count_terms(texts, labels)
    first = count_terms(texts[:7], labels[:7])
    rest = count_terms(texts[7:], labels[7:])
    assert merge_counts(first, rest) == full

    grown = dict(first)
    for text, label in zip(texts[7:], labels[7:]):
        if label != -1:
            grown[label] = add_counts(grown.get(label, {}), [text])
    assert grown == full

    shrunk = subtract_counts(full[0], term_counts(PAYMENTS[3:]))
    assert shrunk == count_terms(PAYMENTS[:3], [0, 0, 0])[0]
    with pytest.raises(InvalidParameterError):
        subtract_counts({"card": 1}, {"card": 2})


def test_ctfidf_from_stored_counts_equals_recount():
    texts, labels = _corpus()
    recount = ctfidf_keywords(count_terms(texts, labels), top_n=8)
    first = count_terms(texts[:9], labels[:9])
    stored = {label: dict(reversed(list(terms.items()))) for label, terms in first.items()}
    stored = merge_counts(count_terms(texts[9:], labels[9:]), stored)
    assert ctfidf_keywords(stored, top_n=8) == recount


def test_ctfidf_matches_definition():
    counts = {0: {"a": 3, "b": 1}, 1: {"b": 2, "c": 2}}
    average = (4 + 4) / 2
    result = ctfidf_keywords(counts, top_n=3, dedupe=False)
    expected_a = 3 / 4 * np.log(1 + average / 3)
    expected_b0 = 1 / 4 * np.log(1 + average / 3)
    assert result[0] == [("a", pytest.approx(expected_a)), ("b", pytest.approx(expected_b0))]
    assert result[1][0][0] == "c"


def test_dedupe_drops_unigram_covered_by_bigram():
    counts = term_counts(["credit card", "credit card", "card payment"])
    keywords = ctfidf_keywords({0: counts, 1: {"other": 5}}, top_n=10)
    terms = [t for t, _ in keywords[0]]
    assert "credit card" in terms and "credit" not in terms
    plain = [t for t, _ in ctfidf_keywords({0: counts, 1: {"other": 5}}, dedupe=False)[0]]
    assert "credit" in plain


def test_representatives_and_cohesion():
    rng = np.random.default_rng(0)
    center = rng.standard_normal(16).astype(np.float32)
    center /= np.linalg.norm(center)
    noise = rng.standard_normal((6, 16)).astype(np.float32)
    noise -= np.outer(noise @ center, center)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    scales = np.array([0.05, 0.5, 1.0, 0.1, 2.0, 0.2], dtype=np.float32)[:, None]
    embeddings = center + scales * noise
    members = [0, 1, 2, 3, 4, 5]
    assert representatives(embeddings, members, centroid=center, n=3) == [0, 3, 5]
    assert representatives(embeddings, [4, 2], centroid=center, n=5) == [2, 4]
    assert representatives(embeddings, [], n=3) == []
    assert cohesion(embeddings[[0]]) == pytest.approx(1.0)
    assert cohesion(embeddings[[0, 3, 5]]) > cohesion(embeddings) > 0
    with pytest.raises(InvalidParameterError):
        cohesion(np.empty((0, 16), dtype=np.float32))
