"""Text normalisation and the deduplication key.

Two texts are duplicates when their normalised forms are equal: Unicode NFC, every run of
whitespace (ASCII and Unicode spaces, tabs, line breaks) collapsed to one ASCII space, and
leading/trailing whitespace removed. Case and punctuation are preserved, so only exact
duplicates (up to composition and spacing) collapse.
"""

from __future__ import annotations

import hashlib
import unicodedata

_INVISIBLE_SPACES = ("\u200b", "\u2060", "\ufeff")
_INVISIBLE_TO_SPACE = {ord(c): " " for c in _INVISIBLE_SPACES}

HASH_ALGORITHM = "blake2b-128"


def normalize_text(text: str) -> str:
    """Return ``text`` in NFC with whitespace runs collapsed to one space and ends stripped.

    Whitespace is anything ``str.isspace`` accepts (including NBSP, the Unicode space
    separators, line and paragraph separators) plus the zero-width space, word joiner and
    BOM, which are invisible and would otherwise defeat deduplication.
    """
    text = unicodedata.normalize("NFC", text)
    if "\u200b" in text or "\u2060" in text or "\ufeff" in text:
        text = text.translate(_INVISIBLE_TO_SPACE)
    return " ".join(text.split())


def text_hash(text: str) -> str:
    """Return the deduplication key of ``text``: 32 lowercase hex digits.

    The key is BLAKE2b with a 16-byte (128-bit) digest over the UTF-8 encoding of
    ``normalize_text(text)``; texts that normalise equally get equal keys.
    """
    data = normalize_text(text).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def l2_normalize(vectors, eps: float = 1e-12):
    """Rows of ``vectors`` scaled to unit L2 norm as float32 (the store's invariant: similarity
    is the inner product); an all-zero row stays zero instead of becoming NaN."""
    import numpy as np

    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(eps))
