"""`clusterer serve` under load: lookup latency and throughput over HTTP against `Store.lookup`.

For each store (the bundled 3k sample, a 100k and a 1M store), in one run:

- the in-process peer: ``Store.lookup(text)`` in one thread (embedding included), p50/p99;
- ``POST /lookup`` at 1, 8 and 32 concurrent clients (p50, p99, lookups/s), each phase with
  texts no earlier phase sent (the server's embedding cache does not help);
- readers with a writer: 8 lookup clients while one client ingests batches over
  ``POST /sentences``; readers' p99 against the idle 8-client p99, and every text ingested
  is found stored afterwards (sample and 100k stores, on a copy).

The sample store is ingested with the real model; the 100k and 1M stores hold synthetic 384-d
vectors in clusters of 50 inserted directly (no model), under the bundled model's name so the
server opens them with the real model (lookups embed real text, as a user's would). The 1M
store is the one ``bench/incremental.py --synthetic-only --method leiden --keep DIR`` keeps
(``--large DIR``); stores are kept under ``bench/.cache``. Query texts are CLINC150 sentences,
ingested ones BANKING77 (shared data folder). Every loop is bounded in count and time; servers
bind 127.0.0.1.

    python bench/service.py [--stores sample,100k,1m] [--large DIR] [--lookups 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._data import CACHE_DIR, DATA_ROOT  # noqa: E402

DIM = 384
SAMPLE_CSV = ROOT / "clusterer" / "data" / "banking77_sample.csv"


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


def read_texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 1) if values else float("nan")


def build_sample(path: Path) -> None:
    from clusterer.api import Store

    with Store.open(path) as store:
        store.ingest_file(SAMPLE_CSV)
        store.cluster()


def build_synthetic(path: Path, size: int, method: str) -> None:
    from clusterer.api import Store
    from indexer.encoder import DEFAULT_MODEL

    started = time.perf_counter()
    with Store.open(path, encoder=SyntheticEncoder(DEFAULT_MODEL), batch_size=8192) as store:
        store.ingest(f"synthetic {i} sentence topic{i // 50}" for i in range(size))
        run = store.cluster(method)
        print(
            f"built {size:,} ({method}) in {time.perf_counter() - started:.0f} s: {run.clusters} clusters", flush=True
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``clusterer serve`` on a free loopback port, stopped on exit."""

    def __init__(self, path: Path, log: Path):
        self.url = ""
        self.path, self.log_path = path, log

    def __enter__(self) -> Server:
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "clusterer", "serve", "--data-dir", str(self.path), "--port", str(port)]
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        started = time.perf_counter()
        while time.perf_counter() - started < 300:
            if self.proc.poll() is not None:
                raise SystemExit("server died:\n" + self.log_path.read_text())
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.ready_s = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("server not ready after 300 s")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def http_lookups(url: str, queries: list[str], clients: int, total: int, cap_s: float = 120.0) -> dict:
    """``total`` lookups (at most ``cap_s`` seconds) from ``clients`` threads, one request at a time each."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + cap_s

    def worker() -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in counter:
                if time.monotonic() > deadline:
                    break
                t = time.perf_counter()
                r = client.post("/lookup", json={"text": queries[i % len(queries)]})
                mine.append(time.perf_counter() - t)
                if r.status_code != 200:
                    with lock:
                        errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
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
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "per_s": round(len(latencies) / wall, 1),
    }


def in_process(path: Path, queries: list[str]) -> dict:
    from clusterer.api import Store

    with Store.open(path) as store:
        store.lookup("warm up the model")
        lat = []
        for q in queries:
            t = time.perf_counter()
            store.lookup(q)
            lat.append(time.perf_counter() - t)
    return {"clients": "in-process", "requests": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def with_writer(url: str, queries: list[str], texts: list[str], batch: int, total: int) -> dict:
    """8 lookup clients while one client ingests ``texts`` in batches; readers' latency and what landed."""
    import httpx

    before = httpx.get(url + "/stats", timeout=60).json()["sentences"]
    added = [0]
    write_s = [0.0]
    done = threading.Event()

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            t = time.perf_counter()
            for start in range(0, len(texts), batch):
                r = client.post("/sentences", json={"texts": texts[start : start + batch]})
                r.raise_for_status()
                added[0] += r.json()["added"]
            write_s[0] = time.perf_counter() - t
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    readers = http_lookups(url, queries, 8, total, cap_s=120)
    w.join(300)
    after = httpx.get(url + "/stats", timeout=60).json()["sentences"]
    return dict(
        readers,
        clients="8 + writer",
        written=len(texts),
        added=added[0],
        stored=after - before,
        write_s=round(write_s[0], 1),
        writer_done=done.is_set(),
    )


def run_store(name: str, path: Path, queries: list[str], ingest: list[str], args, tmp: Path) -> list[dict]:
    rows = [dict(in_process(path, queries[:200]), store=name)]
    print(name, rows[-1], flush=True)
    served = path
    if ingest:
        served = tmp / f"{name}-copy"
        shutil.copytree(path, served)
    offset = 200
    with Server(served, tmp / f"{name}.log") as server:
        http_lookups(server.url, [q + " (warm-up)" for q in queries[-50:]], 4, 40)
        for clients in (1, 8, 32):
            total = args.lookups * max(1, clients // 8)
            phase = [f"{q} ({clients})" for q in queries[offset : offset + total]]
            offset += total
            rows.append(
                dict(http_lookups(server.url, phase, clients, total), store=name, ready_s=round(server.ready_s, 1))
            )
            print(name, rows[-1], flush=True)
        if ingest:
            phase = [f"{q} (writer)" for q in queries[offset : offset + args.lookups * 2]]
            rows.append(dict(with_writer(server.url, phase, ingest, args.batch, len(phase)), store=name))
            print(name, rows[-1], flush=True)
    if ingest:
        shutil.rmtree(served, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| store | clients | requests | p50 ms | p99 ms | lookups/s | notes |\n|---|---|---|---|---|---|---|"
    lines = [head]
    idle = {r["store"]: r["p99_ms"] for r in rows if r["clients"] == 8}
    for r in rows:
        note = ""
        if r["clients"] == "8 + writer":
            note = (
                f"{r['written']} texts posted in {r['write_s']} s, {r['added']} added, {r['stored']} stored; "
                f"p99 {r['p99_ms'] / idle[r['store']]:.2f}x idle"
            )
        elif r.get("errors"):
            note = f"{r['errors']} errors"
        lines.append(
            f"| {r['store']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r.get('per_s', '')} | {note} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default="sample,100k,1m")
    ap.add_argument("--large", type=Path, default=CACHE_DIR / "service-1m", help="the 1M store (see the docstring)")
    ap.add_argument("--method", default="community", help="method of the 100k store's run")
    ap.add_argument("--lookups", type=int, default=300, help="requests per client count (x clients/8 above 8)")
    ap.add_argument("--ingest", type=int, default=1000, help="texts the writer posts alongside the readers")
    ap.add_argument("--batch", type=int, default=100, help="texts per POST /sentences")
    args = ap.parse_args()

    queries = read_texts(DATA_ROOT / "clinc150" / "clinc150.csv")
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))]
    bank = read_texts(DATA_ROOT / "banking77" / "banking77.csv")
    ingest = [f"{t} [posted]" for t in bank[: args.ingest]]
    wanted = args.stores.split(",")
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="clusterer-bench-service-"))
    try:
        for name in wanted:
            if name == "sample":
                path = CACHE_DIR / "service-sample"
                if not (path / "clusterer.db").exists():
                    build_sample(path)
            elif name == "100k":
                path = CACHE_DIR / f"service-100k-{args.method}"
                if not (path / "clusterer.db").exists():
                    build_synthetic(path, 100_000, args.method)
            elif name == "1m":
                path = args.large
                if not (path / "clusterer.db").exists():
                    print(f"no 1M store at {path}: build it with bench/incremental.py --keep", flush=True)
                    continue
            else:
                raise SystemExit(f"unknown store {name!r}")
            rows += run_store(name, path, queries, ingest if name != "1m" else [], args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
