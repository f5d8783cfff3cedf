"""Benchmark: our hand-written ONNX export (indexer.onnx_backend) against sentence-transformers'
own ONNX path (``backend="onnx"`` plus optimum's O1-O4 graph optimisation and dynamic int8
quantisation), with torch fp32 as the reference, on one corpus in one process.

    python bench/encoder_backends.py                 # 5,000 banking77 + clinc150 texts
    python bench/encoder_backends.py --n 2000 --reps 3 --variants torch,ours,st-onnx,O2

The library's variants need ``optimum[onnxruntime]``, which at the time of writing pins
transformers < 4.58 (so it cannot live beside transformers 5): run this script in a separate
virtualenv that has it; without optimum only ``torch`` and ``ours`` run.  Everything is offline:
the model is the bundled all-MiniLM-L6-v2, copied to a temporary folder so the library's exports
never write into the installed package.

Printed per variant: load/export seconds, sentences per second (best of ``--reps`` passes over
the corpus, variants interleaved), the ratio to ours, the fidelity probe (min cosine to torch fp32
over indexer.precision.PROBE_SENTENCES, the probe the encoder uses) and the min/mean cosine to
torch fp32 over the whole corpus.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = ("O1", "O2", "O3", "O4")
ALL_VARIANTS = ("torch", "ours", "st-onnx", *LEVELS, "qint8")


def corpus(n: int) -> list[str]:
    """``n`` texts alternating banking77 and clinc150 rows."""
    from bench._data import DATA_ROOT, read_csv

    a, _ = read_csv(DATA_ROOT / "banking77" / "banking77.csv", limit=n)
    b, _ = read_csv(DATA_ROOT / "clinc150" / "clinc150.csv", limit=n)
    mixed = [t for pair in zip(a, b) for t in pair]
    return mixed[:n]


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def st_variants(
    names: list[str], workdir: Path, same_session: bool
) -> dict[str, tuple[float, Callable[[list[str]], np.ndarray]]]:
    """The library's variants as ``{name: (load seconds, encode)}``; a failed one is reported
    and left out.  ``same_session``: onnxruntime sessions get our runner's options (threads,
    no spinning) instead of onnxruntime's defaults."""
    from sentence_transformers import SentenceTransformer

    from indexer.model_resolution import bundled_model_path
    from indexer.onnx_backend import session_options

    def kwargs(**extra):
        return {"session_options": session_options(), **extra} if same_session else extra

    folder = workdir / "st-model"
    shutil.copytree(bundled_model_path(), folder)
    out: dict[str, tuple[float, Callable]] = {}
    t0 = time.perf_counter()
    base = SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs=kwargs())
    base_s = time.perf_counter() - t0
    base.save_pretrained(str(folder))  # keeps onnx/model.onnx next to the model files
    if "st-onnx" in names:
        out["st-onnx"] = (base_s, lambda t, m=base: m.encode(t, batch_size=32))
    for level in LEVELS:
        if level not in names:
            continue
        try:
            from sentence_transformers import export_optimized_onnx_model

            t0 = time.perf_counter()
            export_optimized_onnx_model(base, level, str(folder))
            m = SentenceTransformer(
                str(folder), device="cpu", backend="onnx", model_kwargs=kwargs(file_name=f"onnx/model_{level}.onnx")
            )
            out[level] = (base_s + time.perf_counter() - t0, lambda t, m=m: m.encode(t, batch_size=32))
        except Exception as exc:  # noqa: BLE001 - report and go on (O4 needs a GPU)
            print(f"{level}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", flush=True)
    if "qint8" in names:
        try:
            from sentence_transformers import export_dynamic_quantized_onnx_model

            from indexer.hardware import cpu_has_native_bf16

            config = "avx512_vnni" if cpu_has_native_bf16() else "avx2"
            t0 = time.perf_counter()
            export_dynamic_quantized_onnx_model(base, config, str(folder))
            m = SentenceTransformer(
                str(folder),
                device="cpu",
                backend="onnx",
                model_kwargs=kwargs(file_name=f"onnx/model_qint8_{config}.onnx"),
            )
            out["qint8"] = (base_s + time.perf_counter() - t0, lambda t, m=m: m.encode(t, batch_size=32))
        except Exception as exc:  # noqa: BLE001
            print(f"qint8: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="corpus size (default 5000)")
    parser.add_argument("--reps", type=int, default=2, help="timed passes per variant (best is kept)")
    parser.add_argument(
        "--ort-defaults",
        action="store_true",
        help="run the library's sessions with onnxruntime's default options instead of ours",
    )
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"comma list of {ALL_VARIANTS}")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(ALL_VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import importlib.metadata as md

    import torch

    from indexer.encoder import Encoder
    from indexer.hardware import cpu_threads
    from indexer.model_resolution import load_sentence_transformer
    from indexer.precision import (
        PROBE_SENTENCES,
        min_cosine,
        probe_reference,
        torch_embed,
    )

    versions = {p: md.version(p) for p in ("sentence-transformers", "transformers", "onnxruntime", "torch")}
    try:
        versions["optimum"] = md.version("optimum")
    except md.PackageNotFoundError:
        versions["optimum"] = "-"
    texts = corpus(args.n)
    print(
        f"corpus: {len(texts)} banking77+clinc150 texts; {cpu_threads()} CPUs (shared machine), "
        f"torch threads {torch.get_num_threads()}; library sessions with "
        f"{'onnxruntime defaults' if args.ort_defaults else 'our session options'}; {versions}",
        flush=True,
    )

    fp32 = load_sentence_transformer(None, "cpu")
    reference = probe_reference(fp32)
    encoders: dict[str, tuple[float, Callable]] = {}
    if "torch" in names:
        encoders["torch"] = (0.0, lambda t: torch_embed(fp32, t, 128))
    with tempfile.TemporaryDirectory(prefix="encoder-backends-") as tmp:
        work = Path(tmp)
        if "ours" in names:
            os.environ["CLUSTERER_CACHE_DIR"] = str(work / "cache")
            t0 = time.perf_counter()
            ours = Encoder(backend="onnx").load()
            encoders["ours"] = (time.perf_counter() - t0, ours.encode)
        lib = [v for v in names if v not in ("torch", "ours")]
        if lib:
            try:
                import optimum.onnxruntime  # noqa: F401
            except ImportError:
                print(f"optimum[onnxruntime] is not installed: skipping {lib}", flush=True)
            else:
                encoders.update(st_variants(lib, work, same_session=not args.ort_defaults))

        best: dict[str, float] = {}
        embeddings: dict[str, np.ndarray] = {}
        for rep in range(args.reps):
            for name, (_, encode) in encoders.items():
                t0 = time.perf_counter()
                emb = encode(texts)
                seconds = time.perf_counter() - t0
                print(f"pass {rep + 1} {name}: {len(texts) / seconds:.0f} sentences/s", flush=True)
                best[name] = min(best.get(name, float("inf")), seconds)
                embeddings[name] = unit(emb)
        truth = embeddings.get("torch")
        if truth is None:
            truth = unit(torch_embed(fp32, texts, 128))
        ours_rate = len(texts) / best["ours"] if "ours" in best else None
        print(
            f"{'variant':<9} {'load s':>7} {'sent/s':>8} {'vs ours':>8} {'probe min cos':>14} "
            f"{'corpus min cos':>15} {'corpus mean cos':>16}"
        )
        for name, (load_s, encode) in encoders.items():
            rate = len(texts) / best[name]
            probe = min_cosine(reference, unit(encode(list(PROBE_SENTENCES))))
            cos = (embeddings[name] * truth).sum(axis=1)
            ratio = f"{rate / ours_rate:.2f}x" if ours_rate else "-"
            print(
                f"{name:<9} {load_s:7.1f} {rate:8.0f} {ratio:>8} {probe:14.5f} {cos.min():15.5f} {cos.mean():16.6f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
