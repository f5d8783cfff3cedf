"""indexer.hardware: CUDA is asked of torch only where a driver could be present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from indexer import hardware

ROOT = Path(__file__).resolve().parents[1]


def _probe(tmp_path: Path, driver_file: Path, env: dict[str, str]) -> list[str]:
    """Run cuda_possible/cuda_available in a fresh interpreter whose only driver file is
    ``driver_file`` (absent unless the test created it); print what they say and whether
    torch got imported."""
    code = (
        "import sys\n"
        "from indexer import hardware as h\n"
        f"h._DRIVER_FILES = ({str(driver_file)!r},)\n"
        f"h._LIBRARY_DIRS = ({str(tmp_path / 'no-libs')!r},)\n"
        "print(h.cuda_possible(), h.cuda_available(), 'torch' in sys.modules)\n"
    )
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path / "bin"), "LD_LIBRARY_PATH": "", **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full_env)
    return out.stdout.split()


def test_no_driver_answers_false_without_importing_torch(tmp_path):
    assert _probe(tmp_path, tmp_path / "no-driver", {}) == ["False", "False", "False"]


def test_driver_present_asks_torch(tmp_path):
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: fake\n")
    possible, available, imported = _probe(tmp_path, driver, {})
    assert possible == "True" and imported == "True"
    import torch

    assert available == str(torch.cuda.is_available())


def test_driver_library_or_nvidia_smi_makes_cuda_possible(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "_DRIVER_FILES", (str(tmp_path / "none"),))
    monkeypatch.setattr(hardware, "_LIBRARY_DIRS", (str(tmp_path / "libs"),))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    assert not hardware.cuda_possible()
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "libcuda.so.1").write_bytes(b"")
    assert hardware.cuda_possible()
    (libs / "libcuda.so.1").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "libcuda.so").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(other))
    assert hardware.cuda_possible()
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    assert not hardware.cuda_possible()
    (tmp_path / "bin").mkdir()
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    assert hardware.cuda_possible()


def test_cpu_facts():
    assert hardware.cpu_threads() >= 1
    assert isinstance(hardware.cpu_has_native_bf16(), bool)
