"""`clusterer serve` under load: lookup latency and throughput over HTTP against `Store.lookup`.

For each store (the bundled 3k sample, a 100k store of real sentences, a 1M synthetic store), in
one run:

- the in-process peer: ``Store.lookup(text)`` in one thread, as the CLI and the Python API run
  it (embedding included, exact search below 200,000 sentences), p50/p99;
- ``POST /lookup`` at 1, 8 and 32 concurrent clients, each sending its next request as soon as
  its answer comes (p50, p99, lookups/s: the most the server answers, and the latency then),
  then 8 clients offering 150 lookups/s in all on a fixed schedule (the latency at that load,
  counted from each request's scheduled time). Every phase sends texts no earlier phase sent
  (the server's embedding cache does not help). The 1-client phase sends the peer's own texts,
  and ``agree`` is the share of its answers naming the cluster the peer named (the server
  searches a coded copy of the index above 20,000 sentences; the peer, the index itself);
- the lookup copy the server searches above 20,000 sentences, in process: what share of the
  store's own index's 10 and 64 nearest it finds, for queries near stored sentences;
- readers with a writer: 8 lookup clients while one client posts batches of new sentences
  (``POST /sentences``); the readers' p99 against the idle 8-client p99, and every posted text
  is found stored afterwards (on a copy of the store).

The sample store is ingested with the real model. The 100k store holds every distinct text of
the shared corpora (mix50k, BANKING77, 20 Newsgroups, Stack Overflow, CLINC150: 100,855) but
800 CLINC150 texts held out, 100,055 sentences, with their cached embeddings of the bundled
model, clustered by the default method. The 1M store holds synthetic 384-d vectors in planted
groups of 50 (``bench/incremental.py``). All three are stored under the bundled model's name,
so the server opens them with the real model and lookups embed real text, as a user's would.
Queries are CLINC150 texts: the peer and the 1-client phase send held-out ones; the other
phases send any, each with a mark of its own (so the 100k store holds a near-copy of some).
Stores are kept under ``bench/.cache``.

Clients are threads of this process, each with one keep-alive connection (``http.client``, far
lighter than an HTTP library, since on a small machine the clients share the cores with the
server). Every loop is bounded in count and time; servers bind 127.0.0.1.

    python bench/service.py [--stores sample,100k,1m] [--lookups 1500] [--writer-stores sample,100k]
"""

from __future__ import annotations

import argparse
import csv
import http.client
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

from bench._data import CACHE_DIR, DATA_ROOT, labelled, load_mix50k, mix50k  # noqa: E402

SAMPLE_CSV = ROOT / "clusterer" / "data" / "banking77_sample.csv"
PHASE_CAP_S = 180.0


def read_texts(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 1) if values else float("nan")


# -- the stores -------------------------------------------------------------------------


def build_sample(path: Path) -> None:
    from clusterer.api import Store

    with Store.open(path) as store:
        store.ingest_file(SAMPLE_CSV)
        store.cluster()


HELD_OUT = 800
"""CLINC150 texts the 100k store does not hold (the shared corpora have 100,855 distinct texts)."""


def clinc_split() -> tuple[list[str], list[str]]:
    """(CLINC150 texts the 100k store holds, the :data:`HELD_OUT` it does not), fixed."""
    texts = read_texts(DATA_ROOT / "clinc150" / "clinc150.csv")
    out = set(np.random.default_rng(0).choice(len(texts), HELD_OUT, replace=False).tolist())
    return [t for i, t in enumerate(texts) if i not in out], [t for i, t in enumerate(texts) if i in out]


def real_100k() -> tuple[list[str], np.ndarray]:
    """(texts, embeddings) of the 100k store: every distinct text of the shared corpora but the
    held-out CLINC150 ones."""
    texts, parts = list(load_mix50k()[0]), [mix50k()[0]]
    for name, start in (("banking77", 0), ("20newsgroups", 0), ("stackoverflow", 50_000 - 36_825)):
        x, _, t = labelled(name)
        texts += t[start:]
        parts.append(x[start:])
    x, _, clinc = labelled("clinc150")
    kept = set(clinc_split()[0])
    keep = [i for i, t in enumerate(clinc) if t in kept]
    texts += [clinc[i] for i in keep]
    parts.append(x[keep])
    return texts, np.vstack(parts)


def build_100k(path: Path) -> None:
    from bench.incremental import TableEncoder
    from clusterer.api import Store
    from indexer.encoder import DEFAULT_MODEL
    from indexer.normalize import normalize_text

    texts, x = real_100k()
    encoder = TableEncoder(dict(zip(map(normalize_text, texts), x)), DEFAULT_MODEL)
    started = time.perf_counter()
    with Store.open(path, encoder=encoder, batch_size=8192) as store:
        store.ingest(texts)
        run = store.cluster()
        print(f"built {store.count():,} sentences in {time.perf_counter() - started:.0f} s: {run.clusters} clusters")


def build_1m(path: Path) -> None:
    script = ROOT / "bench" / "incremental.py"
    options = ["--synthetic-only", "--method", "leiden", "--batches", "1", "--keep", str(path)]
    subprocess.run([sys.executable, str(script), *options], check=True, cwd=ROOT)


BUILDERS = {"sample": build_sample, "100k": build_100k, "1m": build_1m}


def store_path(name: str) -> Path:
    return CACHE_DIR / f"service-{name}"


# -- the server and its clients ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(conn: http.client.HTTPConnection, method: str, path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body)
    conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


class Server:
    """``clusterer serve`` on a free loopback port, ready (and its lookup copy built), stopped on exit."""

    def __init__(self, path: Path, log: Path):
        self.path, self.log_path = path, log

    def __enter__(self) -> Server:
        self.port = free_port()
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "clusterer", "serve", "--data-dir", str(self.path), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        started = time.perf_counter()
        while time.perf_counter() - started < 600:
            if self.proc.poll() is not None:
                raise SystemExit("server died:\n" + self.log_path.read_text())
            try:
                status, body = call(self.connect(), "GET", "/readyz")
                if status == 200 and body.get("lookup_index") != "building":
                    self.ready_s = time.perf_counter() - started
                    return self
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.3)
        raise SystemExit("server not ready after 600 s")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def http_lookups(
    server: Server, texts: list[str], clients: int, rate: float | None = None, cap_s: float = PHASE_CAP_S
) -> dict:
    """Every text looked up once (at most ``cap_s`` seconds) by ``clients`` threads, one request at
    a time each: as fast as answers come (closed loop), or at ``rate`` lookups a second in all,
    the i-th sent at ``i / rate`` s (open loop: its latency counts from then, so a late answer
    delays the next requests' measurements too, as it would a real client's)."""
    latencies: list[float] = []
    answers: dict[int, int | None] = {}
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(len(texts)))
    deadline = time.monotonic() + cap_s
    start = time.perf_counter() + 0.05

    def worker() -> None:
        mine, got = [], {}
        conn = server.connect()
        for i in counter:
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            if rate:
                t = start + i / rate
                time.sleep(max(0.0, t - time.perf_counter()))
            status, body = call(conn, "POST", "/lookup", {"text": texts[i]})
            mine.append(time.perf_counter() - t)
            if status == 200:
                got[i] = body["cluster_id"]
            else:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            answers.update(got)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients if not rate else f"{clients} at {rate:g}/s",
        "requests": len(latencies),
        "errors": errors[0],
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "per_s": round(len(latencies) / wall, 1),
        "answers": answers,
    }


def in_process(path: Path, texts: list[str]) -> tuple[dict, list[int | None]]:
    from clusterer.api import Store

    with Store.open(path) as store:
        store.lookup("warm up the model")
        lat, answers = [], []
        for text in texts:
            t = time.perf_counter()
            answers.append(store.lookup(text)["cluster_id"])
            lat.append(time.perf_counter() - t)
    row = {"clients": "in-process", "requests": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
    row["per_s"] = round(len(lat) / sum(lat), 1)
    return row, answers


def copy_recall(path: Path, n: int = 300) -> dict | None:
    """How much of what the store's own index finds the lookup copy finds, in process: for ``n``
    queries near stored sentences (a stored vector plus noise, cosine about 0.9 to it), the
    share of the index's 10 and 64 nearest among the copy's. None below the copy's size."""
    from clusterer.api import Store
    from indexer.replica import EXACT_MAX

    with Store.open(path) as store:
        if store.count() <= EXACT_MAX:
            return None
        store.lookup_copy.enable()
        started = time.perf_counter()
        store.lookup_index()
        store.lookup_copy.wait()
        built = time.perf_counter() - started
        copy = store.lookup_index()
        rng = np.random.default_rng(2)
        _, x = store.embeddings(rng.choice(store.index.ids(), n, replace=False).tolist())
        noise = rng.standard_normal(x.shape).astype(np.float32)
        q = x + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        truth, found = store.index.search(q, 64).ids, copy.search(q, 64).ids
    share = {k: float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(truth, found)])) for k in (10, 64)}
    return {
        "clients": "copy",
        "kind": copy.kind,
        "built_s": round(built, 1),
        "recall10": share[10],
        "recall64": share[64],
    }


def with_writer(server: Server, texts: list[str], posted: list[str], batch: int) -> dict:
    """8 lookup clients while one client posts ``posted`` in batches; readers' latency and what landed."""
    before = call(server.connect(), "GET", "/stats")[1]["sentences"]
    added, write_s, done = [0], [0.0], threading.Event()

    def writer() -> None:
        wconn = server.connect()
        t = time.perf_counter()
        for start in range(0, len(posted), batch):
            status, body = call(wconn, "POST", "/sentences", {"texts": posted[start : start + batch]})
            if status != 200:
                raise SystemExit(f"POST /sentences: {status} {body}")
            added[0] += body["added"]
        write_s[0] = time.perf_counter() - t
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    readers = http_lookups(server, texts, 8)
    w.join(600)
    after = call(server.connect(), "GET", "/stats")[1]["sentences"]  # a new connection: the idle one timed out
    return dict(readers, clients="8 + writer", posted=len(posted), added=added[0], stored=after - before,
                write_s=round(write_s[0], 1), writer_done=done.is_set())  # fmt: skip


# -- one store ------------------------------------------------------------------------


def query_texts() -> tuple[list[str], list[str]]:
    """(texts for the in-process peer and the 1-client phase: CLINC150 texts no store holds,
    texts for the other phases: CLINC150 texts, shuffled, which each phase marks as its own)."""
    _, held_out = clinc_split()
    texts = read_texts(DATA_ROOT / "clinc150" / "clinc150.csv")
    return held_out, [texts[i] for i in np.random.default_rng(1).permutation(len(texts))]


def run_store(name: str, posted: list[str], args, tmp: Path) -> list[dict]:
    path = store_path(name)
    if not (path / "clusterer.db").exists():
        BUILDERS[name](path)
    held_out, queries = query_texts()
    peer_texts = held_out[: args.peer]
    row, peer_answers = in_process(path, peer_texts)
    rows = [dict(row, store=name)]
    print(name, rows[-1], flush=True)
    recall = copy_recall(path)
    if recall is not None:
        rows.append(dict(recall, store=name))
        print(name, rows[-1], flush=True)
    served = path
    if name in args.writer_stores:
        served = tmp / f"{name}-copy"
        shutil.copytree(path, served)
    offset = 0
    try:
        with Server(served, tmp / f"{name}.log") as server:
            http_lookups(server, [f"{q} (warm-up)" for q in queries[-100:]], 4)
            for clients in args.clients:
                if clients == 1:
                    phase = peer_texts
                else:
                    phase = [f"{q} ({clients})" for q in queries[offset : offset + args.lookups]]
                    offset += args.lookups
                result = http_lookups(server, phase, clients)
                answers = result.pop("answers")
                if clients == 1:
                    same = [answers[i] == a for i, a in enumerate(peer_answers) if i in answers]
                    result["agree"] = round(float(np.mean(same)), 4) if same else None
                rows.append(dict(result, store=name, ready_s=round(server.ready_s, 1)))
                print(name, rows[-1], flush=True)
            if args.rate:
                phase = [f"{q} (paced)" for q in queries[offset : offset + args.lookups]]
                offset += args.lookups
                result = http_lookups(server, phase, 8, rate=args.rate)
                result.pop("answers")
                rows.append(dict(result, store=name))
                print(name, rows[-1], flush=True)
            if name in args.writer_stores:
                phase = [f"{q} (writer)" for q in queries[offset : offset + args.lookups]]
                result = with_writer(server, phase, posted, args.batch)
                result.pop("answers")
                rows.append(dict(result, store=name))
                print(name, rows[-1], flush=True)
    finally:
        if served != path:
            shutil.rmtree(served, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| store | clients | requests | p50 ms | p99 ms | lookups/s | notes |\n|---|---|---|---|---|---|---|"
    lines = [head]
    idle = {r["store"]: r["p99_ms"] for r in rows if r["clients"] == 8}
    for r in rows:
        notes = []
        if r["clients"] == "8 + writer":
            notes.append(
                f"{r['posted']} texts posted in {r['write_s']} s, {r['added']} added, {r['stored']} stored; "
                f"p99 {r['p99_ms'] / idle[r['store']]:.2f}x idle"
            )
        if r.get("agree") is not None:
            notes.append(f"same cluster as in-process: {r['agree']:.3f}")
        if r["clients"] == "copy":
            notes.append(
                f"{r['kind']}, built in {r['built_s']} s; of the index's nearest 10 / 64 it finds "
                f"{r['recall10']:.3f} / {r['recall64']:.3f}"
            )
            lines.append(f"| {r['store']} | lookup copy | | | | | {'; '.join(notes)} |")
            continue
        if r.get("errors"):
            notes.append(f"{r['errors']} errors")
        lines.append(
            f"| {r['store']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r.get('per_s', '')} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default="sample,100k,1m")
    ap.add_argument("--clients", default="1,8,32", help="client counts, in order")
    ap.add_argument("--lookups", type=int, default=1200, help="lookups per phase")
    ap.add_argument("--peer", type=int, default=300, help="lookups of the in-process peer (and of the 1-client phase)")
    ap.add_argument("--rate", type=float, default=150.0, help="lookups/s of the paced 8-client phase (0: none)")
    ap.add_argument("--writer-stores", default="sample,100k", help="stores with a writer phase (on a copy)")
    ap.add_argument("--posted", type=int, default=1000, help="texts the writer posts alongside the readers")
    ap.add_argument("--batch", type=int, default=100, help="texts per POST /sentences")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.writer_stores = set(args.writer_stores.split(",")) if args.writer_stores else set()

    bank = read_texts(DATA_ROOT / "banking77" / "banking77.csv")
    posted = [f"{t} [posted]" for t in bank[-args.posted :]]
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="clusterer-bench-service-"))
    try:
        for name in args.stores.split(","):
            if name not in BUILDERS:
                raise SystemExit(f"unknown store {name!r}")
            rows += run_store(name, posted, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
