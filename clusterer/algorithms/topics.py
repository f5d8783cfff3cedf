"""Topic keywords (class-based TF-IDF), representative members and cohesion of clusters.

Keywords follow c-TF-IDF as BERTopic defines it. All documents of one cluster are treated as a
single class document; for term ``t`` and class ``c``::

    tf(t, c)  = count(t, c) / sum_t' count(t', c)      # term frequency, normalised by class size
    idf(t)    = log(1 + A / f(t))                      # A: mean number of terms per class
                                                       # f(t): count of t over all classes
    score     = tf(t, c) * idf(t)

The computation needs nothing but per-class term counts, so the counts are what gets stored:
:func:`count_terms` builds them from texts, :func:`add_counts`, :func:`merge_counts` and
:func:`subtract_counts` update them incrementally, and :func:`ctfidf_keywords` scores them.
Because counting is additive over texts (stop words are removed per text before n-grams are
formed, and no document-frequency cut-offs are used), counts updated incrementally are exactly
the counts recomputed from scratch, and so are the keywords.

Tokenisation gives exactly what scikit-learn's ``CountVectorizer(stop_words="english",
ngram_range=(1, 2))`` counts, without importing scikit-learn: texts are lower-cased, words are
runs of two or more word characters (``\\b\\w\\w+\\b``), words in scikit-learn's English
stop-word list (kept as data, ``clusterer/data/english_stop_words.txt``) are dropped, and the
terms are the words left plus the bigrams of adjacent words left (bigram terms contain one
space).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, pairwise
from pathlib import Path

import numpy as np

from clusterer.errors import InvalidParameterError
from indexer.normalize import l2_normalize

Counts = dict[str, int]
ClassCounts = dict[int, dict[str, int]]

NGRAM_RANGE = (1, 2)
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@functools.cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (the list ``CountVectorizer(stop_words="english")``
    uses), read from the package data."""
    text = (Path(__file__).resolve().parents[1] / "data" / "english_stop_words.txt").read_text(encoding="utf-8")
    return frozenset(w for w in text.split() if w)


def text_terms(text: str) -> list[str]:
    """The terms of one text, in order: its non-stop words, then the bigrams of adjacent ones."""
    stop = stop_words()
    words = [w for w in _TOKEN.findall(text.lower()) if w not in stop]
    return words + [f"{a} {b}" for a, b in pairwise(words)]


def term_counts(texts: Iterable[str]) -> Counts:
    """Term counts of ``texts`` taken together as one class (an empty dict when no terms)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text_terms(text))
    return dict(counts)


def count_terms(texts: Sequence[str], labels) -> ClassCounts:
    """Per-cluster term counts: ``{label: {term: count}}``.

    ``labels[i]`` is the cluster of ``texts[i]``; label -1 (unassigned) is ignored. Every other
    label present gets an entry, an empty dict when its texts have no terms.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(texts):
        raise InvalidParameterError(f"texts and labels differ in length ({len(texts)} != {len(labels)})")
    keep = np.flatnonzero(labels != -1)
    per_label: dict[int, Counter[str]] = {int(c): Counter() for c in np.unique(labels[keep])}
    for i in keep:
        per_label[int(labels[i])].update(text_terms(texts[int(i)]))
    return {label: dict(c) for label, c in per_label.items()}


def add_counts(counts: Mapping[str, int], texts: Iterable[str]) -> Counts:
    """One cluster's counts after adding ``texts`` to it (a new dict; ``counts`` is unchanged)."""
    result = dict(counts)
    for term, n in term_counts(texts).items():
        result[term] = result.get(term, 0) + n
    return result


def merge_counts(a: Mapping[int, Mapping[str, int]], b: Mapping[int, Mapping[str, int]]) -> ClassCounts:
    """Cluster-wise sum of two ``{label: {term: count}}`` mappings (new dicts, inputs unchanged)."""
    result: ClassCounts = {label: dict(terms) for label, terms in a.items()}
    for label, terms in b.items():
        target = result.setdefault(label, {})
        for term, n in terms.items():
            target[term] = target.get(term, 0) + n
    return result


def subtract_counts(counts: Mapping[str, int], removed: Mapping[str, int]) -> Counts:
    """One cluster's counts minus ``removed`` (e.g. ``term_counts`` of texts that left it).

    Terms whose count reaches zero are dropped. Raises :class:`InvalidParameterError` when a
    count would become negative, which means the stored counts and the texts disagree.
    """
    result = dict(counts)
    for term, n in removed.items():
        left = result.get(term, 0) - n
        if left < 0:
            raise InvalidParameterError(
                f"cannot remove {n} occurrence(s) of {term!r}: only {result.get(term, 0)} counted"
            )
        if left:
            result[term] = left
        else:
            result.pop(term, None)
    return result


def ctfidf_scores(
    counts: Mapping[int, Mapping[str, int]],
    term_totals: Mapping[str, int] | None = None,
    average: float | None = None,
):
    """c-TF-IDF of per-class counts as ``(labels, vocabulary, scores)``.

    ``scores`` is a ``len(labels) x len(vocabulary)`` SciPy CSR matrix (float64) whose row ``i``
    scores class ``labels[i]``. ``A``, the average number of terms per class, is taken over the
    classes with at least one term; classes without terms get an empty row. ``vocabulary`` is
    sorted, counts <= 0 are ignored, and the result does not depend on the order of the
    mappings.

    ``term_totals`` (``f(t)`` over all classes) and ``average`` (``A``) may be given when
    ``counts`` holds only some of the classes, e.g. the clusters an incremental update touched;
    otherwise both are computed from ``counts``.
    """
    from scipy import sparse

    labels = sorted(counts)
    rows = [counts[label] for label in labels]
    vocabulary_list = sorted(dict.fromkeys(chain.from_iterable(rows)))
    vocab_index = {term: j for j, term in enumerate(vocabulary_list)}
    vocabulary = np.empty(len(vocabulary_list), dtype=object)
    vocabulary[:] = vocabulary_list
    nnz = sum(len(row) for row in rows)
    cols = np.fromiter(map(vocab_index.__getitem__, chain.from_iterable(rows)), dtype=np.int64, count=nnz)
    data = np.fromiter(chain.from_iterable(row.values() for row in rows), dtype=np.int64, count=nnz)
    indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows], dtype=np.int64)])
    matrix = sparse.csr_matrix((data, cols, indptr), shape=(len(labels), len(vocabulary)))
    matrix.data[matrix.data < 0] = 0
    matrix.eliminate_zeros()
    matrix.sum_duplicates()
    if matrix.nnz == 0:
        return labels, vocabulary, matrix.astype(np.float64)

    class_sizes = np.asarray(matrix.sum(axis=1)).ravel()
    term_freq = np.asarray(matrix.sum(axis=0)).ravel()
    if term_totals is not None:
        given = np.array([term_totals.get(t, 0) for t in vocabulary_list], dtype=np.float64)
        term_freq = np.maximum(given, term_freq)
    if average is None:
        average = class_sizes[class_sizes > 0].sum() / np.count_nonzero(class_sizes)
    idf = np.log1p(average / term_freq)

    scores = matrix.astype(np.float64)
    row_of = np.repeat(np.arange(len(labels)), np.diff(scores.indptr))
    scores.data = scores.data / class_sizes[row_of] * idf[scores.indices]
    return labels, vocabulary, scores


def ctfidf_keywords(
    counts: Mapping[int, Mapping[str, int]],
    top_n: int = 10,
    dedupe: bool = True,
    term_totals: Mapping[str, int] | None = None,
    average: float | None = None,
) -> dict[int, list[tuple[str, float]]]:
    """Top ``top_n`` c-TF-IDF keywords per class: ``{label: [(term, score), ...]}``.

    Keywords are ordered by decreasing score; ties put bigrams before unigrams, then go by
    term. With ``dedupe``, a unigram is left out when a bigram containing it is already ranked
    higher, and the next term takes its place. A unigram that occurs only inside one bigram
    has exactly that bigram's score, so ``"credit card"`` then replaces ``"credit"`` instead of
    repeating it. Classes without terms map to ``[]``.
    Works from stored counts alone; the score of a term in one class depends on all classes
    through ``A`` and ``f(t)``, so pass the counts of every cluster of the clustering.
    """
    if top_n < 0:
        raise InvalidParameterError(f"top_n must be >= 0, got {top_n}")
    labels, vocabulary, scores = ctfidf_scores(counts, term_totals, average)
    n_words = np.fromiter((t.count(" ") + 1 for t in vocabulary), dtype=np.int64, count=len(vocabulary))
    result: dict[int, list[tuple[str, float]]] = {}
    for r, label in enumerate(labels):
        start, end = scores.indptr[r], scores.indptr[r + 1]
        cols, values = scores.indices[start:end], scores.data[start:end]
        order = np.lexsort((cols, -n_words[cols], -values))
        keywords: list[tuple[str, float]] = []
        covered: set[str] = set()
        for i in order:
            if len(keywords) >= top_n:
                break
            term = str(vocabulary[cols[i]])
            if dedupe:
                if n_words[cols[i]] == 1 and term in covered:
                    continue
                covered.update(term.split(" "))
            keywords.append((term, float(values[i])))
        result[label] = keywords
    return result


def normalized_centroid(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the L2-normalised ``vectors`` (float32)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InvalidParameterError("normalized_centroid needs a non-empty 2-D array of vectors")
    return l2_normalize(l2_normalize(vectors).mean(axis=0))


def representatives(
    embeddings: np.ndarray,
    members: Sequence[int] | np.ndarray,
    centroid: np.ndarray | None = None,
    n: int = 3,
) -> list[int]:
    """The (at most) ``n`` members closest to the cluster centroid by cosine similarity.

    ``members`` are row indices into ``embeddings``; the result is a list of those indices,
    most central first (ties keep the order of ``members``). ``centroid`` defaults to the
    normalised mean of the members' normalised embeddings.
    """
    rows = np.asarray(members, dtype=np.int64).reshape(-1)
    if len(rows) == 0 or n <= 0:
        return []
    vectors = l2_normalize(np.asarray(embeddings)[rows])
    center = l2_normalize(vectors.mean(axis=0) if centroid is None else np.asarray(centroid).reshape(-1))
    sims = vectors @ center
    order = np.argsort(-sims, kind="stable")[:n]
    return [int(rows[i]) for i in order]


def cohesion(embeddings: np.ndarray) -> float:
    """Mean cosine similarity of the given member embeddings to their normalised centroid.

    1.0 for a single member or identical directions; lower for looser clusters.
    """
    vectors = np.asarray(embeddings)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InvalidParameterError("cohesion needs a non-empty 2-D array of member embeddings")
    unit = l2_normalize(vectors)
    return float(np.mean(unit @ l2_normalize(unit.mean(axis=0))))
