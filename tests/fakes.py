"""Deterministic stand-in for the sentence-transformers encoder.

Each word is mapped to a fixed pseudo-random unit vector (seeded by a hash of the
word); a sentence is the L2-normalised sum of its words.  Sentences that share
words are therefore similar, which is enough structure for clustering tests,
and nothing is downloaded or loaded.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


class FakeEncoder:
    def __init__(self, dimension: int = 32, model_name: str = "fake-hashing-encoder"):
        self.dimension = dimension
        self.model_name = model_name
        self.precision = "fp32"
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, word: str) -> np.ndarray:
        vec = self._cache.get(word)
        if vec is None:
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            vec = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            vec /= np.linalg.norm(vec)
            self._cache[word] = vec
        return vec

    def encode(self, texts, show_progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower()) or [text]
            for w in words:
                out[i] += self._word(w)
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out


class LookupEncoder:
    """Precomputed embeddings (e.g. the real model's, cached), looked up by text."""

    precision = "fp32"

    def __init__(self, texts, x, model_name: str = "all-MiniLM-L6-v2"):
        self.model_name = model_name
        self.dimension = x.shape[1]
        self._of = dict(zip(texts, x))

    def encode(self, texts, show_progress=False):
        if not len(texts):
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self._of[t] for t in texts]).astype(np.float32)


# A small corpus for the fake encoder: three topics whose sentences share their core words, and
# noise sentences that share nothing.
TOPICS = {
    "card": "credit card payment declined",
    "flight": "flight booking cancel refund",
    "pin": "forgot pin code reset",
}
NOISE = [f"noise{i}a noise{i}b noise{i}c" for i in range(4)]


def topic_texts(per_topic=8, start=0):
    return [f"{core} {name}{i}" for name, core in TOPICS.items() for i in range(start, start + per_topic)]
