"""Near-duplicate groups on the Quora duplicate-pairs file: quality, speed and search recall.

Data: ``../shared/data/quora/quora_pairs.csv`` (20,000 labelled question pairs, 10,000 duplicates).
The distinct questions (first-seen order) are embedded once with the bundled all-MiniLM-L6-v2
(cached as ``bench/.cache/quora_pairs_questions.npy``).

For each threshold:
- quality: a labelled pair is predicted duplicate when both questions land in the same group of
  ``clusterer.algorithms.duplicates`` (star groups); precision and recall over the labelled pairs.
  The same for the plain threshold graph (every pair >= t) and for sentence-transformers'
  ``util.paraphrase_mining_embeddings`` pairs >= t, for reference.
- speed: our exact grouping (FAISS flat range search + star groups) against
  ``paraphrase_mining_embeddings`` (brute force, torch, top_k per question) on the same
  embeddings, in one process; the agreement of our threshold pairs with its pairs >= t.
- recall of the approximate (IVF) search: the share of the exact threshold pairs it finds, and of
  the exact group pairs its groups reproduce, per ``nprobe``.

Run: ``PYTHONPATH=$PWD python bench/duplicates.py [--thresholds 0.85 0.95] [--limit N]``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._data import DATA_ROOT, cached_embeddings
from clusterer.algorithms.duplicates import (
    group_pairs,
    star_groups,
    threshold_neighbours,
    threshold_pairs,
)

PAIRS = DATA_ROOT / "quora" / "quora_pairs.csv"


def load_pairs() -> tuple[list[str], list[tuple[int, int, int]]]:
    texts: list[str] = []
    position: dict[str, int] = {}
    labelled = []
    with open(PAIRS, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            ends = []
            for q in (row["question1"], row["question2"]):
                if q not in position:
                    position[q] = len(texts)
                    texts.append(q)
                ends.append(position[q])
            a, b = sorted(ends)
            if a != b:
                labelled.append((a, b, int(row["is_duplicate"])))
    return texts, labelled


def precision_recall(predicted: set[tuple[int, int]], labelled: list[tuple[int, int, int]]) -> tuple[float, float, int]:
    tp = fp = fn = 0
    for a, b, dup in labelled:
        hit = (a, b) in predicted
        tp += hit and dup
        fp += hit and not dup
        fn += (not hit) and dup
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, tp + fp


def paraphrase_pairs(x: np.ndarray, top_k: int) -> tuple[list, float]:
    import torch
    from sentence_transformers import util

    emb = torch.from_numpy(x)
    started = time.perf_counter()
    found = util.paraphrase_mining_embeddings(emb, top_k=top_k, max_pairs=10_000_000)
    return found, time.perf_counter() - started


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.95])
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N distinct questions.")
    parser.add_argument("--top-k", type=int, default=100, help="paraphrase_mining top_k (its default).")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()

    import faiss
    import torch

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    texts, labelled = load_pairs()
    x = cached_embeddings("quora_pairs_questions", texts)
    if args.limit:
        x = x[: args.limit]
        labelled = [p for p in labelled if p[1] < args.limit]
    n = len(x)
    print(
        f"quora pairs: {n:,} distinct questions, {len(labelled):,} labelled pairs "
        f"({sum(p[2] for p in labelled):,} duplicates); {threads} threads (shared machine: times are noisy)"
    )

    mined, peer_seconds = paraphrase_pairs(x, args.top_k)
    print(f"paraphrase_mining_embeddings (top_k={args.top_k}): {len(mined):,} pairs in {peer_seconds:.2f} s")

    for t in args.thresholds:
        started = time.perf_counter()
        nb = threshold_neighbours(x, t, search="exact")
        search_s = time.perf_counter() - started
        groups = star_groups(nb)
        ours_seconds = time.perf_counter() - started
        in_groups = group_pairs(groups)
        graph = threshold_pairs(nb)
        peer = {(min(i, j), max(i, j)) for s, i, j in mined if s >= t}
        print(
            f"\nthreshold {t}: {len(groups):,} groups, {sum(len(g.members) for g in groups):,} questions in groups, "
            f"largest {max((len(g.members) for g in groups), default=0)}"
        )
        for name, predicted in (
            ("star groups (ours)", in_groups),
            ("threshold graph pairs", graph),
            ("paraphrase_mining pairs >= t", peer),
        ):
            p, r, k = precision_recall(predicted, labelled)
            print(f"  {name:<30} precision {p:.3f}  recall {r:.3f}  ({k:,} labelled pairs predicted)")
        print(
            f"  time: ours {ours_seconds:.2f} s (range search {search_s:.2f} s) vs paraphrase_mining "
            f"{peer_seconds:.2f} s: x{peer_seconds / ours_seconds:.1f}"
        )
        print(
            f"  agreement of threshold pairs with paraphrase_mining >= t: jaccard {jaccard(graph, peer):.4f} "
            f"({len(graph):,} ours, {len(peer):,} theirs, {len(graph & peer):,} common)"
        )
        for nprobe in args.nprobe:
            started = time.perf_counter()
            approx = threshold_neighbours(x, t, search="approximate", nprobe=nprobe)
            approx_groups = star_groups(approx)
            seconds = time.perf_counter() - started
            found = threshold_pairs(approx)
            pair_recall = len(found & graph) / len(graph) if graph else 1.0
            group_recall = len(group_pairs(approx_groups) & in_groups) / len(in_groups) if in_groups else 1.0
            print(
                f"  approximate IVF nprobe {nprobe:>3}: pair recall {pair_recall:.4f}, group-pair recall "
                f"{group_recall:.4f}, {seconds:.2f} s"
            )


if __name__ == "__main__":
    main()
