"""Encoder tests against the real bundled all-MiniLM-L6-v2 model (no download)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import DEFAULT_MODEL, Encoder, bundled_model_path, resolve_model
from indexer.errors import EncodingError, IndexerError, ModelLoadError

SENTENCES = [
    "How do I reset my online banking password?",
    "I forgot my internet banking password, how can I change it?",
    "The cat sat quietly on the warm windowsill.",
    "What is the capital of Australia?",
    "Stock markets fell sharply after the rate rise.",
    "hello",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(precision="fp32").load()


def test_import_is_cheap():
    code = "import sys, indexer.encoder; print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_resolve_default_model():
    path = Path(resolve_model(None))
    assert path == bundled_model_path()
    assert (path / "modules.json").is_file()
    assert resolve_model(DEFAULT_MODEL) == str(path)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    assert resolve_model("/some/other/model") == "/some/other/model"


def test_lazy_load_and_names():
    enc = Encoder()
    assert not enc.loaded
    assert enc.model_name == DEFAULT_MODEL
    assert Encoder(DEFAULT_MODEL).model_name == DEFAULT_MODEL


def test_dimension_and_attributes(encoder):
    assert encoder.dimension == 384
    assert encoder.device == "cpu"
    assert encoder.precision == "fp32"
    assert encoder.model_name == DEFAULT_MODEL


def test_shape_dtype_normalised(encoder):
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (len(SENTENCES), 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_order_preserved_and_batching_independent(encoder):
    texts = [*SENTENCES, "a much longer sentence " * 20]
    whole = encoder.encode(texts)
    singles = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(whole, singles, atol=1e-4)
    rev = encoder.encode(texts[::-1])[::-1]
    np.testing.assert_allclose(whole, rev, atol=1e-4)


def test_empty_input(encoder):
    emb = encoder.encode([])
    assert emb.shape == (0, 384)
    assert emb.dtype == np.float32


def test_rejects_non_str(encoder):
    with pytest.raises(EncodingError):
        encoder.encode(["ok", 3])
    with pytest.raises(EncodingError):
        encoder.encode("a single string")
    with pytest.raises(IndexerError):
        encoder.encode([None])


def test_similar_closer_than_unrelated(encoder):
    a, b, c, d = encoder.encode(SENTENCES[:4])
    assert a @ b > 0.6
    assert a @ b > a @ c + 0.3
    assert a @ b > a @ d + 0.3


def test_no_stdout_output(capfd):
    enc = Encoder(precision="fp32")
    enc.encode(["quiet please"], show_progress=True)
    out, _ = capfd.readouterr()
    assert out == ""


@pytest.mark.slow
def test_bf16_fidelity(encoder):
    bf16 = Encoder(precision="bf16").load()
    assert bf16.precision == "bf16"
    assert bf16.fidelity is not None and bf16.fidelity >= 0.99
    x, y = encoder.encode(SENTENCES), bf16.encode(SENTENCES)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    assert float((x * y).sum(axis=1).min()) >= 0.99


def test_auto_precision_is_valid():
    enc = Encoder().load()
    assert enc.precision in ("fp32", "bf16")
    if enc.precision == "bf16":
        assert enc.fidelity >= 0.99


def test_missing_model_path_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder(str(tmp_path / "no-such-model")).load()


def test_broken_local_model_raises(tmp_path):
    (tmp_path / "modules.json").write_text("not json")
    with pytest.raises(ModelLoadError):
        Encoder(str(tmp_path)).encode(["x"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        Encoder(precision="int4")
    with pytest.raises(ValueError):
        Encoder(batch_size=0)


# --- ONNX Runtime backend -------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private cache folder holding one export of the bundled model (exported once)."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CLUSTERER_CACHE_DIR", str(root))
    enc = Encoder(backend="onnx").load()
    mp.undo()
    assert enc.onnx_exported
    return root, enc


def test_onnx_backend_loads_offline_and_is_faithful(onnx_cache, encoder):
    _, enc = onnx_cache
    assert enc.backend == "onnx" and enc.precision == "fp32" and enc.device == "cpu"
    assert enc.fidelity is not None and enc.fidelity >= 0.99
    assert enc.dimension == 384
    y = enc.encode(SENTENCES)
    assert y.dtype == np.float32 and y.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    x = Encoder(backend="torch", precision="fp32").encode(SENTENCES)
    assert float((x * y).sum(axis=1).min()) >= 0.99
    texts = [*SENTENCES, "a much longer sentence " * 20]
    whole = enc.encode(texts)
    np.testing.assert_allclose(whole, np.vstack([enc.encode([t]) for t in texts]), atol=1e-4)
    np.testing.assert_allclose(whole, enc.encode(texts[::-1])[::-1], atol=1e-4)
    assert enc.encode([]).shape == (0, 384)


def test_onnx_cache_reused(onnx_cache, monkeypatch):
    root, first = onnx_cache
    monkeypatch.setenv("CLUSTERER_CACHE_DIR", str(root))
    model_file = first.onnx_path
    mtime = model_file.stat().st_mtime_ns
    from indexer import onnx_backend

    probes = []
    real_probe = onnx_backend.OnnxRunner.probe
    monkeypatch.setattr(onnx_backend.OnnxRunner, "probe", lambda self: probes.append(1) or real_probe(self))
    monkeypatch.setattr(onnx_backend, "sha256_file", lambda p: pytest.fail(f"{p} hashed on a cached load"))
    enc = Encoder().load()  # auto picks onnx on CPU
    assert enc.backend == "onnx" and not enc.onnx_exported
    assert enc.onnx_path == model_file and model_file.stat().st_mtime_ns == mtime
    assert len(probes) == 1 and enc.fidelity >= 0.99


def test_cached_onnx_load_imports_no_torch(onnx_cache):
    import os

    root, _ = onnx_cache
    code = (
        "import sys\n"
        "from indexer.encoder import Encoder\n"
        "e = Encoder(device='cpu').load()\n"
        "assert e.encode(['hello there']).shape == (1, 384)\n"
        "print(e.backend, e.onnx_exported, *(m in sys.modules for m in ('torch', 'transformers', 'sentence_transformers')))\n"
    )
    env = {**os.environ, "CLUSTERER_CACHE_DIR": str(root), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["onnx", "False", "False", "False", "False"]


def test_onnx_corrupt_cache_reexported(onnx_cache, tmp_path, monkeypatch, caplog):
    import shutil

    root, first = onnx_cache
    copy = tmp_path / "cache"
    shutil.copytree(root, copy)
    monkeypatch.setenv("CLUSTERER_CACHE_DIR", str(copy))
    model_file = copy / first.onnx_path.relative_to(root)
    model_file.write_bytes(b"this is not an onnx model")
    with caplog.at_level("WARNING"):
        enc = Encoder(backend="onnx").load()
    assert enc.backend == "onnx" and enc.onnx_exported
    assert "re-exporting" in caplog.text
    assert model_file.stat().st_size > 1_000_000
    assert enc.fidelity >= 0.99


def test_torch_backend_still_works():
    enc = Encoder(backend="torch").load()
    assert enc.backend == "torch" and enc.precision in ("fp32", "bf16")
    assert enc.encode(SENTENCES[:2]).shape == (2, 384)


def test_fallback_to_torch_without_onnxruntime(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import -> ImportError
    with caplog.at_level("WARNING"):
        enc = Encoder().load()
    assert enc.backend == "torch"
    assert "falling back to torch" in caplog.text
    with pytest.raises(ModelLoadError):
        Encoder(backend="onnx").load()


def test_backend_arguments():
    with pytest.raises(ValueError):
        Encoder(backend="tensorrt")
    with pytest.raises(ValueError):
        Encoder(backend="onnx", precision="bf16")
    with pytest.raises(ValueError):
        Encoder(backend="onnx", device="cuda")


def _cost(lengths, ends, call_tokens):
    starts = [0, *ends[:-1]]
    return sum(call_tokens + (e - s) * lengths[e - 1] for s, e in zip(starts, ends))


def test_length_groups_cut_where_padding_costs_more_than_a_call():
    import itertools

    from indexer.onnx_backend import length_groups

    assert length_groups([10, 10, 10, 10], 32, call_tokens=8) == [4]  # one call, nothing padded
    assert length_groups([5, 6, 7, 60], 32, call_tokens=8) == [3, 4]  # the long one alone
    ends = length_groups([10] * 10, 4, call_tokens=8)  # never above max_batch, no more calls than needed
    assert len(ends) == 3 and all(0 < e - s <= 4 for s, e in zip([0, *ends[:-1]], ends)) and ends[-1] == 10
    assert length_groups([], 8) == []
    rng = np.random.default_rng(0)
    for _ in range(30):  # the fewest tokens of every way to cut, found by trying them all
        lengths = sorted(rng.integers(3, 40, rng.integers(1, 9)).tolist())
        n = len(lengths)
        best = min(
            _cost(lengths, [*cuts, n], 8)
            for r in range(n)
            for cuts in itertools.combinations(range(1, n), r)
            if all(e - s <= 4 for s, e in zip([0, *cuts], [*cuts, n]))
        )
        ends = length_groups(lengths, 4, call_tokens=8)
        assert ends[-1] == n and _cost(lengths, ends, 8) == best


@pytest.mark.slow
def test_onnx_mixed_lengths_in_groups_equal_alone(onnx_cache):
    _, enc = onnx_cache
    texts = ["hi", "a much longer sentence about the weather " * 6, "short one", "medium sized sentence here ok"]
    grouped = enc.encode(texts)
    np.testing.assert_allclose(grouped, np.vstack([enc.encode([t]) for t in texts]), atol=1e-5)


@pytest.mark.slow
def test_with_threads_is_the_same_model_in_a_session_of_its_own(onnx_cache):
    _, enc = onnx_cache
    single = enc.with_threads(1)
    assert single is not enc and single._model is not enc._model and single.backend == "onnx"
    assert single._model.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(single.encode(SENTENCES), enc.encode(SENTENCES), atol=1e-5)
    torch_enc = Encoder(backend="torch", precision="fp32")
    assert torch_enc.with_threads(1) is torch_enc
