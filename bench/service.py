"""`clusterer serve` against the other ways to ask a store: lookups and ingestion over HTTP.

On a store of ``--size`` (default 100,000) sentences, with the real bundled model in the server:

- lookup latency (p50, p99) and throughput over HTTP at 1, 8 and 32 concurrent clients;
- the same lookups in-process (``Store.lookup``, one thread) and through the CLI
  (``clusterer lookup ... --json``, a new process per call, a few calls);
- ingestion throughput over HTTP (batches of ``--batch`` texts) against in-process
  ``Store.ingest`` with the same batches and, as a second reference, in one call.

The store is built quickly without the model: its sentences are synthetic 384-d vectors in
clusters of 50, stored under the bundled model's name so the server opens it with the real
model (lookups and HTTP ingests embed real text, as a user's would). Query and ingest texts
are CLINC150 and BANKING77 sentences from the shared data folder.

    python bench/service.py [--size 100000] [--keep DIR] [--method community]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 384
DATA = Path(os.environ.get("CLUSTERER_SHARED_DATA", ROOT.parent / "shared" / "data"))


class SyntheticEncoder:
    """Vectors for ``synthetic {i} ...`` texts: unit vectors scattered around one centre per 50 ids."""

    def __init__(self, model_name: str, seed: int = 0, per_cluster: int = 50, spread: float = 0.45):
        self.model_name, self.dimension, self.precision = model_name, DIM, "synthetic"
        self.per_cluster, self.spread, self.seed = per_cluster, spread, seed
        self._centres: dict[int, np.ndarray] = {}

    def _centre(self, c: int) -> np.ndarray:
        if c not in self._centres:
            v = np.random.default_rng((self.seed, c)).standard_normal(DIM).astype(np.float32)
            self._centres[c] = v / np.linalg.norm(v)
        return self._centres[c]

    def encode(self, texts, show_progress=False):
        out = np.empty((len(texts), DIM), np.float32)
        for r, text in enumerate(texts):
            i = int(text.split()[1])
            noise = np.random.default_rng((self.seed, 1, i)).standard_normal(DIM).astype(np.float32)
            v = self._centre(i // self.per_cluster) + self.spread * noise / np.sqrt(DIM)
            out[r] = v / np.linalg.norm(v)
        return out


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r["text"] for r in csv.DictReader(fh)]
    return rows[:limit] if limit else rows


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def build(path: Path, size: int, method: str) -> None:
    from clusterer.api import Store
    from indexer.encoder import DEFAULT_MODEL

    started = time.perf_counter()
    with Store.open(path, encoder=SyntheticEncoder(DEFAULT_MODEL), batch_size=8192) as store:
        store.ingest(f"synthetic {i} sentence topic{i // 50}" for i in range(size))
        print(f"built {store.count():,} sentences in {time.perf_counter() - started:.0f} s", flush=True)
        params = {"k": max(2, size // 500)} if method == "kmeans" else {}
        run = store.cluster(method, **params)
        print(
            f"run {run.id} ({method}): {run.clusters} clusters, {run.assigned:,} assigned, {run.seconds:.0f} s",
            flush=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_lookups(url: str, queries: list[str], clients: int, total: int, cap_s: float = 120.0) -> dict:
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + cap_s

    def worker(n: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in counter:
                if time.monotonic() > deadline:
                    break
                t = time.perf_counter()
                r = client.post("/lookup", json={"text": queries[i % len(queries)]})
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "p50_ms": round(pct(latencies, 50), 1),
        "p99_ms": round(pct(latencies, 99), 1),
        "per_s": round(len(latencies) / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--method", default="community")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the store here instead of a temporary folder")
    ap.add_argument("--ingest", type=int, default=2000, help="texts ingested each way")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--lookups", type=int, default=300, help="requests per client count (x clients/8 above 8)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="clusterer-bench-service-"))
    path = args.keep or tmp / "store"
    results: dict = {"size": args.size, "method": args.method}
    try:
        if not (path / "clusterer.db").exists():
            build(path, args.size, args.method)
        queries = read_texts(DATA / "clinc150" / "clinc150.csv")[::37][:500]
        bank = read_texts(DATA / "banking77" / "banking77.csv")
        http_texts, local_texts, one_call = (
            bank[: args.ingest],
            bank[args.ingest : 2 * args.ingest],
            bank[2 * args.ingest : 3 * args.ingest],
        )

        from clusterer.api import Store

        with Store.open(path) as store:
            store.lookup("warm up the model")
            lat = []
            for q in queries[:200]:
                t = time.perf_counter()
                store.lookup(q)
                lat.append(time.perf_counter() - t)
            results["in_process_lookup"] = {
                "calls": len(lat),
                "p50_ms": round(pct(lat, 50), 1),
                "p99_ms": round(pct(lat, 99), 1),
                "per_s": round(len(lat) / sum(lat), 1),
            }
            print("in-process lookup", results["in_process_lookup"], flush=True)
            import faiss

            faiss.omp_set_num_threads(1)  # as the server's request threads search
            lat = []
            for q in queries[:200]:
                t = time.perf_counter()
                store.lookup(q)
                lat.append(time.perf_counter() - t)
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            results["in_process_lookup_one_omp_thread"] = {
                "calls": len(lat),
                "p50_ms": round(pct(lat, 50), 1),
                "p99_ms": round(pct(lat, 99), 1),
                "per_s": round(len(lat) / sum(lat), 1),
            }
            print("in-process lookup, one OpenMP thread", results["in_process_lookup_one_omp_thread"], flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clusterer",
                "serve",
                "--data-dir",
                str(path),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            import httpx

            started = time.perf_counter()
            while True:
                if server.poll() is not None:
                    raise SystemExit("server died:\n" + (tmp / "server.log").read_text())
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - started > 300:
                    raise SystemExit("server not ready after 300 s")
                time.sleep(0.5)
            results["server_ready_s"] = round(time.perf_counter() - started, 1)
            http_lookups(url, queries, 4, 40)  # warm-up
            results["http_lookup"] = []
            for clients in (1, 8, 32):
                row = http_lookups(url, queries, clients, args.lookups * max(1, clients // 8))
                results["http_lookup"].append(row)
                print("http lookup", row, flush=True)
            # ingestion, alternating one HTTP batch and one in-process batch of the same size so
            # that both see the same machine load (the in-process store is idle otherwise)
            http_s = local_s = 0.0
            http_added = 0
            with Store.open(path) as store, httpx.Client(base_url=url, timeout=300) as client:
                store.embed(["warm up"])
                for start in range(0, len(http_texts), args.batch):
                    t = time.perf_counter()
                    r = client.post("/sentences", json={"texts": http_texts[start : start + args.batch]})
                    r.raise_for_status()
                    http_s += time.perf_counter() - t
                    http_added += r.json()["added"]
                    t = time.perf_counter()
                    store.ingest(local_texts[start : start + args.batch])
                    local_s += time.perf_counter() - t
                t = time.perf_counter()
                store.ingest(one_call)
                one_s = time.perf_counter() - t
            results["http_ingest"] = {
                "texts": len(http_texts),
                "added": http_added,
                "seconds": round(http_s, 2),
                "per_s": round(len(http_texts) / http_s, 1),
                "batch": args.batch,
            }
            results["in_process_ingest"] = {
                "texts": len(local_texts),
                "seconds": round(local_s, 2),
                "per_s": round(len(local_texts) / local_s, 1),
                "batch": args.batch,
            }
            results["in_process_ingest_one_call"] = {
                "texts": len(one_call),
                "seconds": round(one_s, 2),
                "per_s": round(len(one_call) / one_s, 1),
            }
            print(
                "ingest",
                results["http_ingest"],
                results["in_process_ingest"],
                results["in_process_ingest_one_call"],
                flush=True,
            )
            cli = []
            for q in queries[:3]:
                t = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "clusterer", "lookup", q, "--data-dir", str(path), "--json"],
                    cwd=ROOT,
                    env=dict(os.environ, PYTHONPATH=str(ROOT)),
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                cli.append(time.perf_counter() - t)
            results["cli_lookup"] = {
                "calls": len(cli),
                "mean_s": round(statistics.mean(cli), 2),
                "max_s": round(max(cli), 2),
            }
            print("cli lookup", results["cli_lookup"], flush=True)
            metrics = httpx.get(url + "/metrics").text
            results["metrics_lines"] = len(metrics.splitlines())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
            log.close()
        with Store.open(path) as store:
            results["verify_ok"] = store.verify().ok
        eight = next(r for r in results["http_lookup"] if r["clients"] == 8)
        results["targets"] = {
            "p99_at_8_below_50ms": eight["p99_ms"] < 50,
            "per_s_at_8_at_least_100": eight["per_s"] >= 100,
            "http_ingest_vs_in_process": round(
                results["http_ingest"]["per_s"] / results["in_process_ingest"]["per_s"], 3
            ),
        }
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
