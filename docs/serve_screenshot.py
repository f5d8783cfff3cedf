"""Make docs/serve.png: the page over BANKING77 (13,083 questions) in headless Chromium.

The store is built from the bundled model's embeddings cached by bench/_data.py (or computed
with the model when the cache is absent), clustered with the community method, and served
with the real model, so the page's lookup embeds the query as a user's would.

    python docs/serve_screenshot.py [--out docs/serve.png]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("CLUSTERER_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "bench" / ".cache" / "banking77.npy"
QUERY = "I still haven't received my card"


class TableEncoder:
    def __init__(self, table, model_name, dimension):
        self.table, self.model_name, self.dimension, self.precision = table, model_name, dimension, "cached"

    def encode(self, texts, show_progress=False):
        return np.vstack([self.table[t] for t in texts]).astype(np.float32)


def build(path: Path) -> None:
    from clusterer.api import Store
    from indexer.encoder import DEFAULT_MODEL
    from indexer.normalize import normalize_text

    with open(DATA / "banking77" / "banking77.csv", newline="", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    if CACHE.exists() and len(np.load(CACHE, mmap_mode="r")) == len(texts):
        vectors = np.load(CACHE)
        encoder = TableEncoder({normalize_text(t): v for t, v in zip(texts, vectors)}, DEFAULT_MODEL, vectors.shape[1])
        store = Store.open(path, encoder=encoder)
    else:
        store = Store.open(path)
    with store:
        store.ingest(texts)
        store.cluster("community", threshold=0.7, min_size=15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve.png")
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tmp = Path(tempfile.mkdtemp(prefix="clusterer-shot-"))
    build(tmp / "store")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clusterer",
            "serve",
            "--data-dir",
            str(tmp / "store"),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
        f"--user-data-dir={tmp / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#clusters tr.cluster-row") or None)
        rows[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#members li") or None)
        driver.find_element(By.ID, "search-input").send_keys(QUERY)
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.find_elements(By.ID, "lookup-cluster") or None)
        wait.until(lambda d: "sentences (PCA)" in d.find_element(By.ID, "map-tip").text or None)
        time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
