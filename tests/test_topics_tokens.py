"""Term counting without scikit-learn gives exactly CountVectorizer's counts and keywords."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clusterer.algorithms.topics import (
    count_terms,
    ctfidf_keywords,
    stop_words,
    term_counts,
    text_terms,
)

SAMPLE = Path(__file__).resolve().parents[1] / "clusterer" / "data" / "banking77_sample.csv"
TRICKY = [
    "Café au lait — naïve résumé, São Paulo!",
    "snake_case_name and CamelCase and x2 y 42 3.14",
    "don't won't can't it's I'm",
    "Wie spät ist es in Berlin? Это предложение написано по-русски. 東京の天気はどうですか",
    "the and of a",  # stop words only
    "",
    "a b c d",  # single characters only
    "ÉCOLE École école",
    "https://example.com/path?q=1 user@example.org",
]


def _sample(limit: int = 1200) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    names: list[str] = []
    with open(SAMPLE, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            names.append(row["label"])
            if len(texts) >= limit:
                break
    codes = {name: i for i, name in enumerate(sorted(set(names)))}
    return texts, [codes[n] for n in names]


def _sklearn_counts(texts: list[str], labels: list[int]) -> dict[int, dict[str, int]]:
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(stop_words="english", ngram_range=(1, 2))
    matrix = vec.fit_transform(texts).tocsr()
    vocab = vec.get_feature_names_out()
    out: dict[int, dict[str, int]] = {label: {} for label in set(labels) if label != -1}
    for i, label in enumerate(labels):
        if label == -1:
            continue
        row = out[label]
        for j, v in zip(
            matrix.indices[matrix.indptr[i] : matrix.indptr[i + 1]],
            matrix.data[matrix.indptr[i] : matrix.indptr[i + 1]],
        ):
            row[str(vocab[j])] = row.get(str(vocab[j]), 0) + int(v)
    return out


def test_stop_words_are_sklearns():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert stop_words() == ENGLISH_STOP_WORDS


def test_text_terms():
    assert text_terms("The credit card payment FAILED at checkout") == [
        "credit",
        "card",
        "payment",
        "failed",
        "checkout",
        "credit card",
        "card payment",
        "payment failed",
        "failed checkout",
    ]
    assert text_terms("the and of a x") == []


def test_counts_and_keywords_equal_countvectorizer_on_real_texts():
    texts, labels = _sample()
    texts = texts + TRICKY
    labels = labels + [i % 5 for i in range(len(TRICKY) - 1)] + [-1]
    ours = count_terms(texts, labels)
    ref = _sklearn_counts(texts, labels)
    assert ours == ref
    assert sum(len(c) for c in ours.values()) > 3000  # a real vocabulary, not a trivial one
    assert ctfidf_keywords(ours, top_n=10) == ctfidf_keywords(ref, top_n=10)


def test_term_counts_equal_countvectorizer_totals():
    from sklearn.feature_extraction.text import CountVectorizer

    texts, _ = _sample(400)
    texts = texts + TRICKY
    vec = CountVectorizer(stop_words="english", ngram_range=(1, 2))
    totals = np.asarray(vec.fit_transform(texts).sum(axis=0)).ravel()
    ref = {str(t): int(n) for t, n in zip(vec.get_feature_names_out(), totals) if n}
    assert term_counts(texts) == ref


@pytest.mark.parametrize("texts", [[], ["the of and"], [""]])
def test_no_terms(texts):
    assert term_counts(texts) == {}
    assert count_terms(texts, [0] * len(texts)) == ({0: {}} if texts else {})


def test_counting_does_not_import_sklearn():
    code = (
        "import sys\n"
        "from clusterer.algorithms.topics import count_terms, ctfidf_keywords\n"
        "c = count_terms(['credit card payment failed', 'card payment declined'], [0, 0])\n"
        "assert ctfidf_keywords(c)[0]\n"
        "print('sklearn' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
