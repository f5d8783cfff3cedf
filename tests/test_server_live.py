"""A real `clusterer serve` (uvicorn, 127.0.0.1, a free port, the fake encoder) under load:
one writer and eight readers, a CLI ingest into the same folder meanwhile, SIGTERM in the
middle of a batch, and kill -9 in the middle of a batch. Every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from clusterer.api import Store  # noqa: E402 (after the importorskip guards above)
from indexer.normalize import normalize_text, text_hash  # noqa: E402 (after the importorskip guards above)
from storage import sentences as sq  # noqa: E402 (after the importorskip guards above)
from tests.test_server import make_store  # noqa: E402 (after the importorskip guards above)

pytestmark = pytest.mark.slow  # real uvicorn servers and client processes

ROOT = Path(__file__).resolve().parents[1]
READERS = 8
WRITE_SECONDS = 45.0
MAX_BATCHES = 12
READER_MAX_REQUESTS = 1500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 (open for the server's lifetime)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.server_worker",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready:\n" + self.output())

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    make_store(data).close()
    started: list[Server] = []

    def start() -> Server:
        s = Server(data, tmp_path / f"server{len(started)}.log")
        started.append(s)
        return s

    start.data_dir = data
    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def stored_ids(data_dir: Path, texts: list[str]) -> dict[str, int]:
    store = Store.open(data_dir, device="cpu")
    try:
        with store.db.read() as session:
            found = sq.ids_by_hash(session, [text_hash(normalize_text(t)) for t in texts])
        return {t: found.get(text_hash(normalize_text(t))) for t in texts}
    finally:
        store.close()


def verify(data_dir: Path):
    store = Store.open(data_dir, device="cpu")
    try:
        return store.verify(), store.count()
    finally:
        store.close()


def writer_loop(
    url: str, prefix: str, posted: list[str], errors: list[str], stop: threading.Event, visible: list[bool]
):
    deadline = time.monotonic() + WRITE_SECONDS
    with httpx.Client(base_url=url, timeout=60) as client:
        for b in range(MAX_BATCHES):
            if time.monotonic() > deadline or stop.is_set():
                break
            texts = [f"{prefix} batch{b} item{i} word{(b * 7 + i) % 13}" for i in range(20)]
            r = client.post("/sentences", json={"texts": texts})
            if r.status_code != 200:
                errors.append(f"POST {r.status_code} {r.text[:200]}")
                continue
            if [s["status"] for s in r.json()["sentences"]] != ["added"] * 20:
                errors.append(f"batch {b}: {r.json()['sentences']}")
            posted.extend(texts)
            hit = client.get("/search", params={"q": texts[-1], "k": 1}).json()["hits"]
            visible.append(bool(hit) and hit[0]["text"] == texts[-1])


def reader_loop(url: str, n: int, errors: list[str], stop: threading.Event, counts: list[int]):
    rng = random.Random(n)
    done = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set() and done < READER_MAX_REQUESTS:
            if rng.random() < 0.5:
                r = client.get(
                    "/search", params={"q": rng.choice(["credit card payment", "forgot pin", "flight"]), "k": 5}
                )
            else:
                r = client.post(
                    "/lookup", json={"text": rng.choice(["credit card payment declined", "forgot pin code"])}
                )
            if r.status_code != 200:
                errors.append(f"reader {n}: {r.status_code} {r.text[:200]}")
            done += 1
    counts.append(done)


def test_one_writer_eight_readers_and_a_cli_ingest_all_land(server, tmp_path):
    srv = server()
    posted, errors, visible, counts = [], [], [], []
    stop = threading.Event()
    readers = [threading.Thread(target=reader_loop, args=(srv.url, n, errors, stop, counts)) for n in range(READERS)]
    writer = threading.Thread(target=writer_loop, args=(srv.url, "http", posted, errors, stop, visible))
    cli_file = tmp_path / "cli.txt"
    cli_texts = [f"cli line{i} word{i % 11}" for i in range(400)]
    cli_file.write_text("\n".join(cli_texts) + "\n")
    for t in [*readers, writer]:
        t.start()
    time.sleep(0.5)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.server_worker",
            "ingest",
            str(cli_file),
            "--data-dir",
            str(server.data_dir),
            "--json",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    writer.join(60)
    stop.set()
    for t in readers:
        t.join(60)
    assert cli.returncode == 0, cli.stderr
    assert '"added": 400' in cli.stdout
    assert not errors, errors[:5]
    assert len(counts) == READERS and sum(counts) >= READERS
    assert len(posted) >= 100 and len(visible) == len(posted) // 20 and all(visible), visible
    # the server sees the CLI's sentences (replayed from the database)
    hit = httpx.get(srv.url + "/search", params={"q": cli_texts[123], "k": 1}).json()["hits"][0]
    assert hit["text"] == cli_texts[123]
    assert srv.stop() in (0, -signal.SIGTERM), srv.output()
    ids = stored_ids(server.data_dir, posted + cli_texts)
    assert all(ids.values()) and len(set(ids.values())) == len(posted) + len(cli_texts)
    report, count = verify(server.data_dir)
    assert report.ok, report.problems
    assert count == 28 + len(posted) + len(cli_texts)


def test_sigterm_finishes_the_batch_in_flight(server):
    srv = server()
    texts = [f"term batch item{i} word{i % 17}" for i in range(800)]
    result = {}

    def post():
        try:
            result["response"] = httpx.post(srv.url + "/sentences", json={"texts": texts}, timeout=60)
        except httpx.HTTPError as exc:
            result["error"] = exc

    t = threading.Thread(target=post)
    t.start()
    wait_until_writing(srv.url)
    code = srv.stop(signal.SIGTERM)
    t.join(60)
    # uvicorn re-raises the signal once it has shut down gracefully, hence -SIGTERM
    assert code in (0, -signal.SIGTERM), srv.output()
    assert "response" in result, result
    r = result["response"]
    assert r.status_code == 200 and r.json()["added"] == len(texts), r.text
    assert all(stored_ids(server.data_dir, texts).values())
    report, _ = verify(server.data_dir)
    assert report.ok, report.problems


def wait_until_writing(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=10).text
        if "clusterer_writer_queue_depth 1.0" in text:
            return
        time.sleep(0.02)
    raise AssertionError("the batch never reached the writer")


def test_kill_9_during_a_batch_loses_nothing_acknowledged(server):
    srv = server()
    acked: list[str] = []
    rng = random.Random(7)
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for b in range(5):
            texts = [f"acked{b} item{i} word{i % 19}" for i in range(200)]
            assert client.post("/sentences", json={"texts": texts}).status_code == 200
            acked.extend(texts)
    inflight = [f"inflight item{i} word{i % 23}" for i in range(1000)]
    t = threading.Thread(target=lambda: _post_quietly(srv.url, inflight))
    t.start()
    wait_until_writing(srv.url)
    time.sleep(rng.uniform(0.0, 0.3))
    srv.stop(signal.SIGKILL)
    t.join(60)
    report, count = verify(server.data_dir)  # reopening recovers; then the file and database agree
    assert report.ok, report.problems
    ids = stored_ids(server.data_dir, acked + inflight)
    assert all(ids[t] for t in acked)
    landed = sum(1 for t in inflight if ids[t])
    assert count == 28 + len(acked) + landed


def _post_quietly(url: str, texts: list[str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url + "/sentences", json={"texts": texts}, timeout=60)
