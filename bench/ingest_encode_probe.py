"""Scratch benchmark: encode rate of plain fp32 sentence-transformers vs variants.

Usage: python3 bench/ingest_encode_probe.py [N] [variant ...]
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

DATA = Path("/work/shared/data")


def load_sentences(n: int) -> list[str]:
    out: list[str] = []
    for rel in ("banking77/banking77.csv", "quora/quora_questions_clusters.csv"):
        with open(DATA / rel, newline="", encoding="utf-8") as fh:
            rows = [r["text"] for r in csv.DictReader(fh)]
        out.extend(rows[: n // 2])
    return out[:n]


def timed(label, fn, texts):
    fn(texts[:64])
    t0 = time.perf_counter()
    emb = fn(texts)
    dt = time.perf_counter() - t0
    print(f"{label:40s} {len(texts) / dt:8.1f} sent/s  ({dt:.2f}s)", flush=True)
    return emb, len(texts) / dt


def main() -> None:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from indexer.encoder import bundled_model_path

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    variants = sys.argv[2:] or ["plain", "encoder"]
    texts = load_sentences(n)
    path = str(bundled_model_path())
    base = SentenceTransformer(path, device="cpu")
    ref, ref_rate = timed("plain fp32 encode()", lambda t: base.encode(t), texts)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)

    def report(label, fn):
        emb, rate = timed(label, fn, texts)
        emb = np.asarray(emb, dtype=np.float32)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = (emb * ref).sum(1)
        print(f"{'':40s} x{rate / ref_rate:.2f}  min cos {cos.min():.4f} mean {cos.mean():.5f}", flush=True)

    for v in variants:
        if v == "plain":
            continue
        if v.startswith("bs"):
            bs = int(v[2:])
            report(f"fp32 batch {bs}", lambda t: base.encode(t, batch_size=bs))
        elif v == "autocast":
            def f(t):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return base.encode(t)
            report("fp32 weights + autocast bf16", f)
        elif v == "bf16":
            m = SentenceTransformer(path, device="cpu").to(torch.bfloat16)
            report("bf16 weights", lambda t: m.encode(t))
        elif v == "encoder":
            from indexer.encoder import Encoder
            enc = Encoder()
            enc.load()
            print(f"Encoder: precision={enc.precision} fidelity={enc.fidelity}", flush=True)
            report(f"Encoder auto ({enc.precision})", enc.encode)
        else:
            raise SystemExit(f"unknown variant {v}")


if __name__ == "__main__":
    main()
