"""The README stays true: its Python example runs (against a temporary store with the fake
encoder) and every `clusterer <command>` it names exists. README.md is read at run time."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from clusterer.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
TOPICS = 30
PER_TOPIC = 45


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _named_commands(text: str) -> set[str]:
    names = set()
    for block in _blocks(text, "bash"):
        for line in block.splitlines():
            names.update(re.findall(r"(?:^|&&|\|)\s*clusterer\s+([a-z][a-z-]*)", line))
    names.update(re.findall(r"`clusterer\s+([a-z][a-z-]*)", text))
    return names


def _tickets(path: Path) -> None:
    """A CSV with a `body` column: TOPICS topics of PER_TOPIC sentences that share most words,
    enough for the ids the example names (sentence 1234, cluster 12) to exist."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "body"])
        for t in range(TOPICS):
            words = " ".join(f"topic{t}word{w}" for w in range(8))
            for i in range(PER_TOPIC):
                writer.writerow([t * PER_TOPIC + i, f"{words} ticket{t}x{i}"])


def test_readme_names_only_commands_that_exist():
    named = _named_commands(README.read_text(encoding="utf-8"))
    assert {"ingest", "cluster", "lookup"} <= named, "the README's command list was not found"
    missing = sorted(named - set(cli.commands))
    assert not missing, f"the README names commands that do not exist: {missing}"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = _blocks(README.read_text(encoding="utf-8"), "python")
    assert blocks, "the README has no ```python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")
    _tickets(tmp_path / "tickets.csv")
    for block in blocks:
        namespace: dict = {"__name__": "readme_example"}
        try:
            exec(compile(block, str(README), "exec"), namespace)
        finally:
            store = namespace.get("store")
            if store is not None:
                store.close()


@pytest.mark.parametrize("command", sorted(_named_commands(README.read_text(encoding="utf-8"))))
def test_readme_command_has_help(command):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
