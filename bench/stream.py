"""Streaming upkeep against a full run: does a store clustered early stay as right as one
clustered at the end?

For each corpus (real embeddings of the bundled model, cached by bench/_data.py), order
(``random``: shuffled; ``label``: sorted by label, so whole topics arrive late) and growth
(``10x``: the first run on 10 % of the corpus; ``100x``: on 1 %), the corpus is ingested into a
fresh store through ``Store.ingest`` (default leiden), clustered once after the first part, and
the rest arrives in ``--batches`` equal batches with upkeep only. At the end the streamed run is
compared with a full ``cluster`` run on the same store: ARI and NMI against the true labels
(unassigned sentences count as singletons), the share of sentences whose cluster id changed at
some point of the stream (assigned to one id, later to another or to none), upkeep seconds
(time in the store listener for every batch, plus every automatic re-optimisation; embedding
is a table lookup and not counted) against the full run's seconds, and the number of
re-optimisations. ``--frozen`` also runs the stream with re-optimisation off (the behaviour
before it existed) for comparison.

    flock /tmp/heavy.lock python bench/stream.py [--corpora banking77,clinc150] [--batches 9] [--frozen]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._data import labelled
from clusterer.api import Store
from clusterer.service import reoptimise
from indexer.normalize import normalize_text


class TableEncoder:
    def __init__(self, texts: list[str], x: np.ndarray):
        self.table = dict(zip(texts, x))
        self.dimension = x.shape[1]
        self.model_name = "all-MiniLM-L6-v2"
        self.precision = "fp32"

    def encode(self, texts, show_progress=False):
        if not len(texts):
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _singletons(labels: list[int | None]) -> np.ndarray:
    out = np.array([-1 if v is None else v for v in labels], dtype=np.int64)
    free = out < 0
    out[free] = out.max(initial=0) + 1 + np.arange(int(free.sum()))
    return out


def _snapshot(store) -> dict[int, int | None]:
    return {r["id"]: r["cluster"] for r in store.export()}


def stream(name: str, x: np.ndarray, labels: np.ndarray, texts: list[str], order: str, first: float, batches: int):
    texts = [normalize_text(t) for t in texts]
    idx = np.arange(len(texts))
    if order == "random":
        idx = np.random.default_rng(0).permutation(len(texts))
    else:
        idx = np.argsort(labels, kind="stable")
    truth = {}
    for i in idx:
        truth.setdefault(texts[i], int(labels[i]))
    n0 = max(1, round(first * len(idx)))
    upkeep_s = 0.0
    reopts = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "data", encoder=TableEncoder(texts, x), device="cpu")
        listener = store.upkeep
        inner = listener.on_insert

        def timed(*args, **kwargs):
            nonlocal upkeep_s
            t = time.perf_counter()
            done = inner(*args, **kwargs)
            upkeep_s += time.perf_counter() - t
            if done is None:
                return None

            def after():
                nonlocal upkeep_s
                t2 = time.perf_counter()
                out = done()
                upkeep_s += time.perf_counter() - t2
                return out

            return after

        listener.on_insert = timed
        store.ingest([texts[i] for i in idx[:n0]])
        store.cluster(device="cpu")
        first_clusters = store.run().clusters
        seen: dict[int, int] = {}
        changed: set[int] = set()
        for part in np.array_split(idx[n0:], batches):
            t = time.perf_counter()
            report = store.ingest([texts[i] for i in part])
            reopt_s = report.upkeep.get("seconds", 0.0) if report.upkeep else 0.0
            if report.upkeep:
                reopts += 1
                upkeep_s += reopt_s
            del t
            for sid, label in _snapshot(store).items():
                before = seen.get(sid)
                if before is not None and label != before:
                    changed.add(sid)
                if label is not None:
                    seen[sid] = label
        streamed = store.export()
        rows = list(streamed)
        ids = [r["id"] for r in rows]
        truth_l = [truth[r["text"]] for r in rows]
        s_lab = _singletons([r["cluster"] for r in rows])
        s_clusters = store.run().clusters
        t = time.perf_counter()
        full = store.cluster(device="cpu")
        full_s = time.perf_counter() - t
        f_map = {r["id"]: r["cluster"] for r in store.export(full.id)}
        f_lab = _singletons([f_map[i] for i in ids])
        store.close()
    return {
        "corpus": name,
        "order": order,
        "growth": f"{round(1 / first)}x",
        "n": len(ids),
        "first_clusters": first_clusters,
        "streamed_clusters": s_clusters,
        "full_clusters": full.clusters,
        "ari_stream": adjusted_rand_score(truth_l, s_lab),
        "ari_full": adjusted_rand_score(truth_l, f_lab),
        "nmi_stream": normalized_mutual_info_score(truth_l, s_lab),
        "nmi_full": normalized_mutual_info_score(truth_l, f_lab),
        "id_changed": len(changed) / max(1, len(ids)),
        "reopts": reopts,
        "upkeep_s": upkeep_s,
        "full_s": full_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="banking77,clinc150,stackoverflow,20newsgroups")
    parser.add_argument("--orders", default="random,label")
    parser.add_argument("--growth", default="10,100", help="comma-separated growth factors after the first run")
    parser.add_argument("--batches", type=int, default=0, help="batches after the first run (default: growth - 1)")
    parser.add_argument("--frozen", action="store_true", help="also stream with re-optimisation off")
    parser.add_argument("--modes", choices=["upkeep", "frozen", "both"], default="upkeep", help="which streams to run")
    args = parser.parse_args()
    rows = []
    for name in args.corpora.split(","):
        x, labels, texts = labelled(name)
        for order in args.orders.split(","):
            for growth in (int(g) for g in args.growth.split(",")):
                batches = args.batches or growth - 1
                modes = {"upkeep": [False], "frozen": [True], "both": [False, True]}[args.modes]
                if args.frozen and args.modes == "upkeep":
                    modes = [False, True]
                for frozen in modes:
                    saved = reoptimise.GROWTH, reoptimise.BORN_SHARE
                    if frozen:
                        reoptimise.GROWTH = reoptimise.BORN_SHARE = float("inf")
                    try:
                        r = stream(name, x, labels, texts, order, 1 / growth, batches)
                    finally:
                        reoptimise.GROWTH, reoptimise.BORN_SHARE = saved
                    r["mode"] = "frozen" if frozen else "upkeep"
                    r["batches"] = batches
                    rows.append(r)
                    print(_line(r), flush=True)
    print()
    print(
        "| corpus | order | growth | batches | mode | n | clusters first/stream/full | ARI stream | ARI full "
        "| ratio | NMI stream | NMI full | id changed | re-opts | upkeep s | full s | upkeep/full |"
    )
    print("|" + " --- |" * 17)
    for r in rows:
        print(_line(r))


def _line(r) -> str:
    return (
        f"| {r['corpus']} | {r['order']} | {r['growth']} | {r['batches']} | {r['mode']} | {r['n']:,} | "
        f"{r['first_clusters']}/{r['streamed_clusters']}/{r['full_clusters']} | {r['ari_stream']:.3f} | "
        f"{r['ari_full']:.3f} | {r['ari_stream'] / r['ari_full']:.2f} | {r['nmi_stream']:.3f} | {r['nmi_full']:.3f} | "
        f"{r['id_changed']:.1%} | {r['reopts']} | {r['upkeep_s']:.1f} | {r['full_s']:.1f} | "
        f"{r['upkeep_s'] / r['full_s']:.2f} |"
    )


if __name__ == "__main__":
    main()
