"""Settings.resolve: command-line options over CLUSTERER_* variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterer.settings import Settings


def test_defaults_when_nothing_given():
    s = Settings.resolve({}, environ={})
    assert s == Settings()
    assert s.data_dir == Path("clusterer-data")
    assert s.db is None and s.model is None
    assert s.device == "auto"
    assert s.lock_timeout == 30.0
    assert s.batch_size == 4096


def test_env_over_default():
    env = {
        "CLUSTERER_DATA_DIR": "/tmp/from-env",
        "CLUSTERER_DB": "sqlite:///env.db",
        "CLUSTERER_MODEL": "env-model",
        "CLUSTERER_DEVICE": "cpu",
        "CLUSTERER_LOCK_TIMEOUT": "2.5",
        "CLUSTERER_BATCH_SIZE": "128",
    }
    s = Settings.resolve({}, environ=env)
    assert s.data_dir == Path("/tmp/from-env")
    assert s.db == "sqlite:///env.db"
    assert s.model == "env-model"
    assert s.device == "cpu"
    assert s.lock_timeout == 2.5
    assert s.batch_size == 128


def test_option_over_env():
    env = {"CLUSTERER_DATA_DIR": "/tmp/from-env", "CLUSTERER_DEVICE": "cpu", "CLUSTERER_LOCK_TIMEOUT": "2.5"}
    s = Settings.resolve({"data_dir": "/tmp/from-option", "device": "cuda", "lock_timeout": 7}, environ=env)
    assert s.data_dir == Path("/tmp/from-option")
    assert s.device == "cuda"
    assert s.lock_timeout == 7.0


def test_none_option_falls_through_to_env_then_default():
    env = {"CLUSTERER_MODEL": "env-model"}
    s = Settings.resolve({"model": None, "data_dir": None, "db": None}, environ=env)
    assert s.model == "env-model"
    assert s.data_dir == Path("clusterer-data")
    assert s.db is None


def test_empty_env_value_counts_as_unset():
    s = Settings.resolve({}, environ={"CLUSTERER_DATA_DIR": "", "CLUSTERER_LOCK_TIMEOUT": ""})
    assert s.data_dir == Path("clusterer-data")
    assert s.lock_timeout == 30.0


def test_types_are_converted():
    s = Settings.resolve(
        {"data_dir": "relative/dir"}, environ={"CLUSTERER_LOCK_TIMEOUT": "1", "CLUSTERER_BATCH_SIZE": "64"}
    )
    assert isinstance(s.data_dir, Path) and s.data_dir == Path("relative/dir")
    assert isinstance(s.lock_timeout, float) and s.lock_timeout == 1.0
    assert isinstance(s.batch_size, int) and s.batch_size == 64


def test_uses_os_environ_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTERER_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("CLUSTERER_LOCK_TIMEOUT", "0.25")
    s = Settings.resolve()
    assert s.data_dir == tmp_path / "env-data"
    assert s.lock_timeout == 0.25


def test_bad_number_in_env_raises():
    with pytest.raises(ValueError):
        Settings.resolve({}, environ={"CLUSTERER_LOCK_TIMEOUT": "soon"})


def test_store_kwargs_carry_the_resolved_values():
    s = Settings.resolve({"db": "sqlite:///x.db", "model": "m"}, environ={"CLUSTERER_LOCK_TIMEOUT": "3"})
    kw = s.store_kwargs()
    assert kw["db_url"] == "sqlite:///x.db"
    assert kw["model"] == "m"
    assert kw["lock_timeout"] == 3.0
    assert kw["device"] == "auto"
    assert "data_dir" not in kw


def test_server_lookup_settings_from_environment():
    from clusterer.settings import ServerSettings

    s = ServerSettings.resolve(
        {}, {"CLUSTERER_LOOKUP_WAIT_MS": "0.5", "CLUSTERER_LOOKUP_BATCH": "8", "CLUSTERER_LOOKUP_CACHE": "0"}
    )
    assert (s.lookup_wait_ms, s.lookup_batch, s.lookup_cache) == (0.5, 8, 0)
    assert ServerSettings.resolve({}, {}).lookup_batch == 32
