"""Scratch benchmark: encode rate of plain fp32 sentence-transformers vs variants.

Usage: python3 bench/ingest_encode_probe.py [N] [variant ...] [--reps R]

Variants: plain (always run first), bsN, autocast, bf16, encoder (Encoder defaults),
torch (Encoder backend="torch"), onnx (Encoder backend="onnx"), onnx-bsN (onnx with batch N),
onnx-int8 (the cached ONNX export dynamically quantised to int8, experimental).
With --reps R > 1 every variant (plain included) is timed R times, alternating, and the
median rate is reported.
"""

from __future__ import annotations

import csv
import sys
import time
from functools import partial
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

    argv = sys.argv[1:]
    reps = 1
    if "--reps" in argv:
        i = argv.index("--reps")
        reps = int(argv[i + 1])
        del argv[i : i + 2]
    n = int(argv[0]) if argv else 5000
    variants = argv[1:] or ["plain", "encoder"]
    texts = load_sentences(n)
    path = str(bundled_model_path())
    base = SentenceTransformer(path, device="cpu")
    ref, ref_rate = timed("plain fp32 encode()", lambda t: base.encode(t), texts)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)

    fns = {}

    def report(label, fn):
        if reps > 1:
            fns[label] = fn
            fn(texts[:64])
            emb = np.asarray(fn(texts), dtype=np.float32)
            emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            cos = (emb * ref).sum(1)
            print(f"{label:40s} min cos {cos.min():.4f} mean {cos.mean():.5f}", flush=True)
            return
        emb, rate = timed(label, fn, texts)
        emb = np.asarray(emb, dtype=np.float32)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = (emb * ref).sum(1)
        print(f"{'':40s} x{rate / ref_rate:.2f}  min cos {cos.min():.4f} mean {cos.mean():.5f}", flush=True)

    for v in variants:
        if v == "plain":
            continue
        if v in ("torch", "onnx") or v.startswith("onnx-bs"):
            from indexer.encoder import Encoder

            backend = "onnx" if v.startswith("onnx") else "torch"
            bs = int(v[7:]) if v.startswith("onnx-bs") else None
            enc = Encoder(backend=backend, batch_size=bs).load()
            print(f"Encoder {v}: precision={enc.precision} fidelity={enc.fidelity}", flush=True)
            report(f"Encoder {v}", enc.encode)
            continue
        if v == "onnx-int8":
            report("onnx int8 (dynamic, per-channel)", _int8_encoder(texts))
            continue
        if v.startswith("bs"):
            bs = int(v[2:])
            report(f"fp32 batch {bs}", partial(base.encode, batch_size=bs))
        elif v == "autocast":

            def f(t):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return base.encode(t)

            report("fp32 weights + autocast bf16", f)
        elif v == "bf16":
            m = SentenceTransformer(path, device="cpu").to(torch.bfloat16)
            report("bf16 weights", m.encode)
        elif v == "encoder":
            from indexer.encoder import Encoder

            enc = Encoder()
            enc.load()
            print(f"Encoder: precision={enc.precision} fidelity={enc.fidelity}", flush=True)
            report(f"Encoder auto ({enc.precision})", enc.encode)
        else:
            raise SystemExit(f"unknown variant {v}")

    if reps > 1:
        rates = {"plain fp32 encode()": []}
        rates.update({k: [] for k in fns})
        fns["plain fp32 encode()"] = lambda t: base.encode(t)
        for r in range(reps):
            for label in rates:
                t0 = time.perf_counter()
                fns[label](texts)
                rates[label].append(len(texts) / (time.perf_counter() - t0))
            print(f"rep {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True)
        base_rate = float(np.median(rates["plain fp32 encode()"]))
        for label, v in rates.items():
            med = float(np.median(v))
            print(f"{label:40s} median {med:8.1f} sent/s  x{med / base_rate:.2f}", flush=True)


def _int8_encoder(texts):
    """Quantise the cached ONNX export to int8 into a temp folder; report its probe."""
    import shutil
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from indexer import encoder as E
    from indexer import onnx_backend as O

    enc = E.Encoder(backend="onnx").load()
    src = enc.onnx_path.parent
    dst = Path(tempfile.mkdtemp()) / src.name
    shutil.copytree(src, dst)
    quantize_dynamic(
        str(src / "model.onnx"),
        str(dst / "model.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    import json

    meta = json.loads((dst / "meta.json").read_text())
    meta.update(O.model_file_record(dst / "model.onnx"))
    (dst / "meta.json").write_text(json.dumps(meta))
    runner = O.OnnxRunner(dst)
    print(f"int8 probe min cosine {runner.probe():.4f}", flush=True)
    return lambda t: runner.encode(list(t), 128)


if __name__ == "__main__":
    main()
