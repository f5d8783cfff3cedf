"""Ray stays optional: the CLI does not import it, a missing install or an unreachable cluster
is one clear error, and the address comes from --ray or CLUSTERER_RAY_ADDRESS."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from clusterer.distributed import ray_env
from clusterer.settings import Settings


def test_importing_the_cli_does_not_import_ray():
    code = "import sys, clusterer.cli, clusterer.distributed.ray_ingest, clusterer.distributed.ray_cluster; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_address_from_the_environment():
    assert Settings.resolve({}, {"CLUSTERER_RAY_ADDRESS": "10.0.0.5:6379"}).ray_address == "10.0.0.5:6379"
    assert Settings.resolve({"ray_address": "local"}, {"CLUSTERER_RAY_ADDRESS": "10.0.0.5:6379"}).ray_address == "local"
    assert Settings.resolve({}, {}).ray_address is None


def test_missing_ray_names_the_install_command(monkeypatch):
    def no_ray(name, *a, **k):
        raise ImportError(name)

    monkeypatch.setattr(ray_env.importlib, "import_module", no_ray)
    with pytest.raises(ray_env.RayUnavailableError, match=r"pip install 'clusterer\[ray\]'"):
        ray_env.import_ray()


def test_unreachable_or_malformed_address_is_one_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(ray_env.RayUnavailableError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        ray_env.check_reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ray_env.RayUnavailableError, match="not a Ray address"):
        ray_env.check_reachable("nohost")


def test_cli_reports_an_unreachable_cluster(tmp_path):
    from click.testing import CliRunner

    from clusterer.cli import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "a.txt").write_text("one sentence\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["ingest", str(tmp_path / "a.txt"), "--data-dir", str(tmp_path / "d"), "--ray", f"127.0.0.1:{port}"]
    )
    assert result.exit_code == 1
    assert "Error: " in result.output and "Traceback" not in result.output
