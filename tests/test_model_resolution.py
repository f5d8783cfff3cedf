"""indexer.model_resolution: which files a model name means, without loading anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indexer.errors import ModelLoadError
from indexer.model_resolution import (
    DEFAULT_MODEL,
    bundled_model_path,
    environment,
    is_default_model,
    load_sentence_transformer,
    local_model_dir,
    looks_like_path,
    model_name,
    resolve_model,
)


def test_default_aliases_resolve_to_the_bundled_folder():
    path = bundled_model_path()
    assert (path / "modules.json").is_file() and (path / "config.json").is_file()
    for alias in (None, DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"):
        assert is_default_model(alias)
        assert model_name(alias) == DEFAULT_MODEL
        assert resolve_model(alias) == str(path)
        assert local_model_dir(alias) == str(path)
    assert not is_default_model("all-mpnet-base-v2")
    assert model_name(Path("/models/x")) == "/models/x"
    assert resolve_model("/some/other/model") == "/some/other/model"


@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("/abs/model", True),
        ("./rel", True),
        ("~/m", True),
        ("a/b/c", True),
        ("org/model", False),
        ("model", False),
        ("sentence-transformers/all-mpnet-base-v2", False),
    ],
)
def test_looks_like_path(name, is_path):
    assert looks_like_path(name) is is_path


def test_local_model_dir(tmp_path):
    assert local_model_dir(str(tmp_path)) == str(tmp_path)
    assert local_model_dir("org/some-hub-model") is None  # may still load from the hub cache
    with pytest.raises(ModelLoadError, match="does not exist"):
        local_model_dir(str(tmp_path / "missing"))


def test_missing_path_fails_before_importing_anything(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_sentence_transformer(str(tmp_path / "missing"), "cpu")


def test_environment_restores(monkeypatch):
    monkeypatch.setenv("CLUSTERER_T_SET", "before")
    monkeypatch.delenv("CLUSTERER_T_UNSET", raising=False)
    with environment(CLUSTERER_T_SET="during", CLUSTERER_T_UNSET="during"):
        assert os.environ["CLUSTERER_T_SET"] == os.environ["CLUSTERER_T_UNSET"] == "during"
    assert os.environ["CLUSTERER_T_SET"] == "before"
    assert "CLUSTERER_T_UNSET" not in os.environ
