"""Precision choice: reduced precision (bf16 on CPUs with native bf16 instructions, bf16/fp16
on CUDA) is used only when the hardware has it and a fidelity probe passes: the minimum cosine
between the embeddings of ``PROBE_SENTENCES`` under the candidate and under torch fp32 must be
at least ``FIDELITY_THRESHOLD``.  The same probe guards the ONNX backend."""

from __future__ import annotations

import logging

import numpy as np

from indexer.hardware import cpu_has_native_bf16
from indexer.model_resolution import quiet_loading

log = logging.getLogger(__name__)

FIDELITY_THRESHOLD = 0.99
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROBE_BATCH_SIZE = 64

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


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between ``a`` and ``b``."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


def torch_embed(model, texts: list[str], batch_size: int, show_progress: bool = False) -> np.ndarray:
    """Embeddings of ``texts`` by a SentenceTransformer, L2-normalised float32 in input order."""
    import torch

    with torch.inference_mode(), quiet_loading():
        out = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_tensor=True,
            normalize_embeddings=False,
        )
    out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
    return out.cpu().numpy().astype(np.float32, copy=False)


def probe_reference(fp32_model) -> np.ndarray:
    """The fp32 embeddings of ``PROBE_SENTENCES`` every candidate is compared with."""
    return torch_embed(fp32_model, list(PROBE_SENTENCES), PROBE_BATCH_SIZE)


def auto_candidate(device: str) -> str:
    """The reduced precision worth probing on ``device`` ("fp32" when none is)."""
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def reduce_precision(fp32_model, precision: str):
    """A copy of ``fp32_model`` in bf16 or fp16."""
    import copy

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return copy.deepcopy(fp32_model).to(dtype)


def choose_precision(fp32_model, device: str, requested: str, name: str = "model"):
    """``(model, precision, fidelity)`` for the torch backend.

    ``requested`` "auto" probes the hardware's reduced precision and keeps fp32 when the probe
    fails; an explicit precision is used as asked (fidelity still measured).  ``fidelity`` is
    None when the fp32 model itself is returned without a probe.
    """
    candidate = auto_candidate(device) if requested == "auto" else requested
    if candidate == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision 'fp16' is only supported on CUDA devices")
    if candidate == "fp32":
        return fp32_model, "fp32", None
    reference = probe_reference(fp32_model)
    reduced = reduce_precision(fp32_model, candidate)
    fidelity = min_cosine(reference, torch_embed(reduced, list(PROBE_SENTENCES), PROBE_BATCH_SIZE))
    if requested == "auto" and fidelity < FIDELITY_THRESHOLD:
        log.warning(
            "%s fidelity probe failed for %s (min cosine %.4f < %.2f); using fp32",
            candidate,
            name,
            fidelity,
            FIDELITY_THRESHOLD,
        )
        return fp32_model, "fp32", fidelity
    log.info("%s: using %s (probe min cosine %.5f)", name, candidate, fidelity)
    return reduced, candidate, fidelity
