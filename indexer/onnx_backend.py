"""The ONNX Runtime backend: export a sentence-transformers pipeline (transformer, pooling,
normalisation) to ONNX once, fuse it with onnxruntime's BERT graph optimiser, cache it on disk
and run it with length-bucketed batches.

The cache lives under ``$CLUSTERER_CACHE_DIR`` (else ``$XDG_CACHE_HOME/clusterer``), one folder
per model keyed by the model files' names, sizes and mtimes, the export recipe and library
versions.  Each entry holds model.onnx, tokenizer.json, the probe's fp32 reference embeddings
and meta.json, which records model.onnx's size, mtime and SHA-256: the digest is computed once
at export, and a later load re-hashes the file only when its size or mtime changed.  An entry
is used only after the fidelity probe passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.hardware import cpu_threads
from indexer.model_resolution import quiet_loading
from indexer.precision import (
    FIDELITY_THRESHOLD,
    PROBE_BATCH_SIZE,
    PROBE_SENTENCES,
    min_cosine,
    probe_reference,
)

log = logging.getLogger(__name__)

# Bump when the export recipe or the cache entry's layout changes so old entries are not reused.
ONNX_EXPORT_VERSION = 2
ONNX_BATCH_SIZE = 32
ONNX_MAX_CHUNK = 16384  # sentences tokenised and length-sorted together
CALL_TOKENS = 8
"""What one model call costs beyond its tokens, in tokens: a call streams every weight matrix
from memory whatever its size (measured with all-MiniLM-L6-v2 on a 2-core EPYC, one thread:
2.1 ms a call plus 0.24 ms a token), so a short text batched with a long one can cost less
padded than alone, and a batch of mixed lengths can cost less split than padded."""
GROUPED_MAX = 256
"""Up to this many texts (the lookups of a server, small writes) are split into calls by
:func:`length_groups`; larger inputs, sorted by length, already have little padding in fixed
batches."""


def length_groups(lengths: Sequence[int], max_batch: int, call_tokens: float = CALL_TOKENS) -> list[int]:
    """Where to cut ``lengths`` (ascending token counts) into model calls of at most ``max_batch``
    texts so that the padded tokens plus ``call_tokens`` a call are fewest (a call pads its
    texts to its longest). Returns the end (exclusive) of each call, the last being ``len``."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        for start in range(max(0, end - max_batch), end):
            cost = best[start] + call_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    ends, end = [], n
    while end > 0:
        ends.append(end)
        end = cut[end]
    return ends[::-1]


_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    """Root of the on-disk cache: ``$CLUSTERER_CACHE_DIR``, else ``$XDG_CACHE_HOME/clusterer``
    (``~/.cache/clusterer``)."""
    env = os.environ.get("CLUSTERER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "clusterer"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def onnx_cache_dir(model_name: str, model_dir: str | os.PathLike) -> Path:
    """Cache folder of the ONNX export of the local model at ``model_dir``.  The key covers the
    model files (relative names, sizes, mtimes), the export recipe and library versions."""
    root = Path(model_dir).resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            full = Path(dirpath) / fn
            st = full.stat()
            files.append([str(full.relative_to(root)), st.st_size, st.st_mtime_ns])
    key = {
        "export": ONNX_EXPORT_VERSION,
        "path": str(root),
        "files": files,
        "versions": {n: _dist_version(n) for n in ("onnxruntime", "torch", "transformers", "sentence-transformers")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model_name).name or "model")
    return cache_root() / "onnx" / f"{safe}-{digest}"


def model_file_record(model_file: Path) -> dict:
    """What meta.json records of model.onnx: size, mtime and SHA-256 (hashed here, once)."""
    st = model_file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(model_file)}


def verify_model_file(folder: Path, meta: dict) -> None:
    """Raise ValueError unless ``folder``/model.onnx is the file meta.json describes.

    An unchanged size and mtime is trusted without reading the file; otherwise the file is
    hashed, and when the digest still matches (e.g. a copy that lost its mtime) the new mtime
    is recorded so the next load is cheap again.
    """
    model_file = folder / "model.onnx"
    st = model_file.stat()
    if st.st_size != meta.get("size"):
        raise ValueError("model.onnx does not match its recorded size")
    if st.st_mtime_ns == meta.get("mtime_ns"):
        return
    if sha256_file(model_file) != meta.get("sha256"):
        raise ValueError("model.onnx does not match its recorded checksum")
    meta["mtime_ns"] = st.st_mtime_ns
    with contextlib.suppress(OSError):  # a read-only cache still works, it is just re-hashed
        _write_meta(folder, meta)


def session_options(threads: int | None = None):
    """onnxruntime session options of the runner: all graph optimisations, ``threads`` intra-op
    threads (default: the CPUs this process may use), and no busy-waiting worker threads, which
    only steal cycles on a shared, loaded machine (``CLUSTERER_ORT_SPIN=1`` turns it back on)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("CLUSTERER_ORT_SPIN", "0"))
    return so


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, folder / "meta.json")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class OnnxRunner:
    """An onnxruntime session over an exported sentence-transformers pipeline plus its
    (fast) tokenizer; texts are tokenised in chunks, sorted by token length and run in
    batches padded only to the batch maximum."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("export") != ONNX_EXPORT_VERSION:
            raise ValueError(f"export version {meta.get('export')} != {ONNX_EXPORT_VERSION}")
        model_file = folder / "model.onnx"
        verify_model_file(folder, meta)
        self.meta = meta
        self.dimension = int(meta["dimension"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.reference = np.load(folder / "probe_reference.npy")
        so = session_options(threads)
        self.session = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - set(_ONNX_INPUTS)
        if unknown:
            raise ValueError(f"unexpected ONNX inputs {sorted(unknown)}")
        self.output_name = meta["output"]

    def probe(self) -> float:
        return min_cosine(self.reference, self.encode(list(PROBE_SENTENCES), PROBE_BATCH_SIZE))

    def encode(self, texts: list[str], batch_size: int, progress: Any = None) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), ONNX_MAX_CHUNK):
            chunk = texts[start : start + ONNX_MAX_CHUNK]
            encs = self.tokenizer.encode_batch(chunk)
            ids = [e.ids for e in encs]
            types = [e.type_ids for e in encs] if "token_type_ids" in self.input_names else None
            lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            order = np.argsort(lens, kind="stable")
            if len(order) <= GROUPED_MAX:
                ends = length_groups(lens[order].tolist(), batch_size)
            else:
                ends = [*range(batch_size, len(order), batch_size), len(order)]
            for b, e in zip([0, *ends[:-1]], ends):
                idx = order[b:e]
                width = int(lens[idx].max())
                arr = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                tarr = np.zeros((len(idx), width), dtype=np.int64) if types is not None else None
                for r, j in enumerate(idx):
                    n = lens[j]
                    arr[r, :n] = ids[j]
                    mask[r, :n] = 1
                    if tarr is not None and types is not None:
                        tarr[r, :n] = types[j]
                feed = {"input_ids": arr, "attention_mask": mask, "token_type_ids": tarr}
                emb = self.session.run([self.output_name], {k: feed[k] for k in self.input_names})[0]
                out[start + idx] = emb
                if progress is not None:
                    progress.update(len(idx))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out


def export_onnx(fp32_model, folder: Path, reference: np.ndarray) -> dict:
    """Export the sentence-transformers pipeline ``fp32_model`` to ``folder`` (model.onnx,
    tokenizer.json, probe_reference.npy, meta.json)."""
    import torch
    from tokenizers import Tokenizer

    tok = getattr(getattr(fp32_model, "tokenizer", None), "backend_tokenizer", None)
    if tok is None:
        raise ValueError("the model has no fast (tokenizers) tokenizer")
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=int(fp32_model.max_seq_length))

    preprocess = getattr(fp32_model, "preprocess", None) or fp32_model.tokenize
    check = list(PROBE_SENTENCES[:8]) + list(PROBE_SENTENCES[-4:]) + ["  padded   text  ", "x " * 400]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = preprocess(check)
    names = [n for n in _ONNX_INPUTS if isinstance(feats.get(n), torch.Tensor)]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(f"unsupported model inputs {sorted(k for k in feats)}")
    # The standalone tokenizer must reproduce sentence-transformers' token ids exactly.
    mask = feats["attention_mask"].numpy()
    for i, enc in enumerate(tok.encode_batch(check)):
        n = int(mask[i].sum())
        if enc.ids != feats["input_ids"][i, :n].tolist():
            raise ValueError(f"tokenizer mismatch with sentence-transformers on {check[i][:40]!r}")
    constants = {k: v for k, v in feats.items() if not isinstance(v, torch.Tensor)}

    class _Pipeline(torch.nn.Module):
        def __init__(self, st) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors):
            out = self.st({**constants, **dict(zip(names, tensors))})
            return out["sentence_embedding"]

    # Eager attention traces to the MatMul/Softmax pattern that onnxruntime's BERT optimiser
    # fuses into its Attention kernel (the SDPA trace is not fused).
    hf = getattr(fp32_model[0], "auto_model", None)
    old_attn = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    if hf is not None and hasattr(hf, "set_attn_implementation"):
        try:
            hf.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - keep the default attention
            old_attn = None
    raw = folder / "raw.onnx"
    try:
        args = tuple(feats[n] for n in names)  # padded, so the mask path is traced
        dyn = {n: {0: "batch", 1: "tokens"} for n in names}
        with torch.inference_mode(), warnings.catch_warnings(), quiet_loading():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Pipeline(fp32_model).eval(),
                args,
                str(raw),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes=dyn,
                opset_version=17,
                dynamo=False,
            )
    finally:
        if hf is not None and old_attn is not None:
            hf.set_attn_implementation(old_attn)

    fused: dict[str, int] = {}
    model_file = folder / "model.onnx"
    try:
        from onnxruntime.transformers import optimizer

        cfg = getattr(hf, "config", None)
        with warnings.catch_warnings(), quiet_loading():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(raw),
                model_type="bert",
                num_heads=int(getattr(cfg, "num_attention_heads", 0) or 0),
                hidden_size=int(getattr(cfg, "hidden_size", 0) or 0),
                opt_level=0,
                use_gpu=False,
            )
            fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(model_file))
        raw.unlink()
    except Exception as exc:  # noqa: BLE001 - the unfused graph is still correct
        log.warning("onnxruntime transformer fusion failed (%s); using the unfused ONNX graph", exc)
        os.replace(raw, model_file)

    tok.save(str(folder / "tokenizer.json"))
    np.save(folder / "probe_reference.npy", reference.astype(np.float32))
    meta = {
        "export": ONNX_EXPORT_VERSION,
        "inputs": names,
        "output": "sentence_embedding",
        "dimension": int(reference.shape[1]),
        "max_seq_length": int(fp32_model.max_seq_length),
        **model_file_record(model_file),
        "fused_ops": fused,
        "created": time.time(),
    }
    _write_meta(folder, meta)
    return meta


def open_cached(folder: Path) -> tuple[OnnxRunner, float] | None:
    """The cached export in ``folder`` and its probe fidelity when it is complete, intact and
    passes the probe; otherwise None (a damaged entry is removed)."""
    if not (folder / "meta.json").is_file():
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        runner = OnnxRunner(folder)
        fidelity = runner.probe()
        if fidelity < FIDELITY_THRESHOLD:
            raise ValueError(f"probe min cosine {fidelity:.4f}")
        return runner, fidelity
    except Exception as exc:  # noqa: BLE001 - corrupt or stale cache entry
        log.warning("cached ONNX model %s is unusable (%s: %s); re-exporting", folder, type(exc).__name__, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def export_to(fp32_model, folder: Path, name: str = "model") -> None:
    """Export ``fp32_model`` into the cache entry ``folder`` atomically (a temporary sibling
    folder renamed into place)."""
    start = time.perf_counter()
    reference = probe_reference(fp32_model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        meta = export_onnx(fp32_model, tmp, reference)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "exported %s to ONNX in %.1f s (%s; fused %s)", name, time.perf_counter() - start, folder, meta.get("fused_ops")
    )


def load_runner(name: str, model_dir: str, load_fp32: Callable[[], Any]) -> tuple[OnnxRunner, float, Path, bool]:
    """``(runner, fidelity, folder, exported)`` for the local model at ``model_dir``: the cached
    export when usable (probed once), else a fresh export of ``load_fp32()``."""
    folder = onnx_cache_dir(name, model_dir)
    with file_lock(folder.with_name(folder.name + ".lock")):
        cached = open_cached(folder)
        if cached is not None:
            return cached[0], cached[1], folder, False
        export_to(load_fp32(), folder, name)
        runner = OnnxRunner(folder)
    return runner, runner.probe(), folder, True
