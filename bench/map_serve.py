"""The map of a large store served by `clusterer serve`: how long the layout takes in the
background, and how long one `/map` answer takes once it is cached (the page's every load).

A store of ``--n`` synthetic sentences (embeddings looked up by text, no model) with a k-means
run; times the background layout (UMAP on the project's kNN graph), then ``--repeat`` requests
of `GET /map` through FastAPI's test client (5,000 sampled points each, clusters read fresh),
and a curation edit followed by a map request.

    python bench/map_serve.py --n 100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import indexer.sentence_store as ss
    from bench.map_layout import synthetic
    from clusterer.api import Store
    from clusterer.server import create_app
    from clusterer.settings import ServerSettings
    from tests.fakes import LookupEncoder

    x, _ = synthetic(args.n, 50)
    texts = [f"sentence {i}" for i in range(args.n)]

    class Encoder(LookupEncoder):
        def encode(self, batch, show_progress=False):
            known = [t if t in self._of else texts[0] for t in batch]  # the server's warm-up text
            return super().encode(known, show_progress)

    ss.make_encoder = lambda *a, **k: Encoder(texts, x)  # type: ignore[assignment]
    from fastapi.testclient import TestClient

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        with Store.open(data, device="cpu") as store:
            store.ingest(texts)
            t_ingest = time.perf_counter() - t
            t = time.perf_counter()
            run = store.cluster("kmeans", k=50)
            t_cluster = time.perf_counter() - t
        print(f"n={args.n:,}: ingest {t_ingest:.1f}s, k-means run {t_cluster:.1f}s ({run.clusters} clusters)")
        with TestClient(create_app(Store.open(data, device="cpu"), ServerSettings())) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.2)
            t = time.perf_counter()
            first = client.get("/map")
            t_first = time.perf_counter() - t
            while first.status_code == 202:
                time.sleep(0.5)
                first = client.get("/map")
            t_layout = time.perf_counter() - t
            body = first.json()
            print(
                f"first /map answer {t_first * 1000:.0f} ms (202 while laying out); layout ready after {t_layout:.1f}s"
            )
            print(
                f"layout: {body['laid_out']:,} points, {body['seconds']:.1f}s in the background; {body['sampled']:,} shown"
            )
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                assert client.get("/map").status_code == 200
                times.append(time.perf_counter() - t)
            print(
                f"cached /map: median {statistics.median(times) * 1000:.0f} ms, "
                f"max {max(times) * 1000:.0f} ms over {args.repeat} requests"
            )
            ids = [c["id"] for c in client.get("/clusters").json()["clusters"][:2]]
            t = time.perf_counter()
            merged = client.post("/clusters/merge", json={"ids": ids})
            t_merge = time.perf_counter() - t
            t = time.perf_counter()
            after = client.get("/map").json()
            t_after = time.perf_counter() - t
            shown = {p["cluster"] for p in after["points"]}
            assert merged.status_code == 200 and merged.json()["related"][0] not in shown
            print(
                f"merge of two clusters ({merged.json()['size']:,} sentences) {t_merge * 1000:.0f} ms; map after it {t_after * 1000:.0f} ms"
            )
            print(f"peak RSS {_rss_mib():.0f} MiB")


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    np.random.seed(0)
    main()
