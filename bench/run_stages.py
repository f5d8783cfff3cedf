"""Where a clustering run's time goes: loading embeddings, clustering, keywords, saving.

Ingests a labelled corpus (cached real-model embeddings, looked up by text so nothing is
re-embedded) or a synthetic mixture into a fresh store, then runs ``Store.cluster()`` with its
default (leiden) and the community method at its defaults, in one process on the same store, and
prints per-stage seconds (as the run stores them), wall time, ARI / NMI against the labels
(unassigned sentences count as singletons), coverage, clusters and peak RSS.

    python bench/run_stages.py banking77
    python bench/run_stages.py --synthetic 100000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _data

CORPORA = {
    "banking77": _data.DATA_ROOT / "banking77" / "banking77.csv",
    "clinc150": _data.DATA_ROOT / "clinc150" / "clinc150.csv",
    "stackoverflow": _data.STACKOVERFLOW,
}


class LookupEncoder:
    """Precomputed embeddings, looked up by the text the store hands over."""

    precision = "fp32"

    def __init__(self, texts: list[str], x: np.ndarray, name: str):
        self.dimension = x.shape[1]
        self.model_name = name
        self._of = dict(zip(texts, x))

    def encode(self, texts, show_progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self._of[t] for t in texts]).astype(np.float32)


def corpus(name: str) -> tuple[list[str], list[str], np.ndarray]:
    texts, labels = _data.read_csv(CORPORA[name])
    return texts, labels, _data.cached_embeddings(name, texts)


def synthetic(n: int, dim: int = 384, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """A mixture of clusters of varied sizes and spreads on the sphere, with texts made of a
    cluster word and filler words (so keywords have something to count)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, n // 500)
    weights = rng.pareto(1.5, n_clusters) + 1
    sizes = np.maximum(1, np.round(weights / weights.sum() * n)).astype(int)
    sizes[-1] += n - sizes.sum()
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    spreads = rng.uniform(0.5, 1.2, n_clusters).astype(np.float32)
    labels = np.repeat(np.arange(n_clusters), sizes)
    x = centres[labels] / np.sqrt(dim) * 4 + rng.standard_normal((n, dim)).astype(np.float32) * spreads[
        labels, None
    ] / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    texts = [f"topic{l} word{rng.integers(50)} item{i}" for i, l in enumerate(labels)]
    return texts, [str(l) for l in labels], x.astype(np.float32)


def scores(truth: list[str], found: list[int | None]) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = [f if f is not None else -1 - i for i, f in enumerate(found)]
    return adjusted_rand_score(truth, labels), normalized_mutual_info_score(truth, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", choices=sorted(CORPORA), default="banking77")
    parser.add_argument("--synthetic", type=int, default=None, help="a synthetic mixture of N sentences instead")
    parser.add_argument("--skip-community", action="store_true")
    args = parser.parse_args()

    from clusterer.api import Store
    from indexer.normalize import normalize_text

    if args.synthetic:
        texts, truth, x = synthetic(args.synthetic)
        name = f"synthetic{args.synthetic}"
    else:
        texts, truth, x = corpus(args.corpus)
        name = args.corpus
    keyed = [normalize_text(t) for t in texts]
    truth_of = dict(zip(keyed, truth))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "data", encoder=LookupEncoder(keyed, x, "bench-lookup"), device="cpu")
        started = time.perf_counter()
        store.ingest(keyed)
        print(
            f"{name}: {store.count():,} sentences ingested in {time.perf_counter() - started:.1f} s "
            f"(2-core machine shared with other jobs)"
        )
        runs = [("leiden (default)", None, {})]
        if not args.skip_community:
            runs.append(("community 0.75/10", "community", {}))
        for label, method, params in runs:
            started = time.perf_counter()
            run = store.cluster(method, **params)
            wall = time.perf_counter() - started
            rows = list(store.export(run.id))
            ari, nmi = scores([truth_of[r["text"]] for r in rows], [r["cluster"] for r in rows])
            stats = run.params["stats"]
            secs = ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items())
            extra = ""
            if "resolution" in stats:
                extra = (
                    f"; resolution {stats['resolution']:g}, {stats['coarse_clusters']} coarse, "
                    f"outliers {stats['outlier_share']:.1%}"
                )
            print(
                f"  {label:<18} ARI {ari:.3f} NMI {nmi:.3f} coverage {run.assigned / max(run.sentences, 1):.1%} "
                f"clusters {run.clusters}{extra}"
            )
            print(
                f"  {'':<18} wall {wall:.2f} s; stages: {secs}; "
                f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
            )
        store.close()


if __name__ == "__main__":
    main()
