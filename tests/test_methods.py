"""The table of clustering methods (clusterer.service.methods): defaults, validation with one-line
messages, upkeep rules, the generated command-line options and the docs table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clusterer.algorithms import graph
from clusterer.cli import cli
from clusterer.cli.cluster_commands import cluster as cluster_command
from clusterer.errors import InvalidParameterError
from clusterer.service import methods


def test_leiden_is_the_default_and_needs_no_k_or_threshold():
    assert methods.DEFAULT_METHOD == "leiden"
    assert methods.get(None).name == "leiden"
    params = methods.resolve(None)
    assert params == {"min_size": graph.DEFAULT_MIN_SIZE, "seed": 0, "search": "auto"}  # k and resolution: automatic
    assert "threshold" not in params and "resolution" not in params  # resolution: automatic


def test_every_method_names_an_upkeep_rule():
    assert {m: methods.upkeep_rule(m) for m in methods.names()} == {
        "leiden": "graph",
        "community": "community",
        "kmeans": "centroid",
        "agglomerative": "centroid",
    }
    assert all(m.upkeep in methods.UPKEEP_RULES for m in methods.METHODS.values())
    assert methods.get("leiden").levels == ("fine", "coarse") and methods.get("leiden").warm_start
    assert methods.get("kmeans").levels == ("fine",) and not methods.get("kmeans").warm_start


def test_defaults_of_the_other_methods_are_unchanged():
    assert methods.resolve("community") == {"threshold": 0.75, "min_size": 10, "search": "auto"}
    assert methods.resolve("kmeans") == {"k": 50, "seed": 0}
    assert methods.resolve("agglomerative") == {"distance_threshold": 1.5, "linkage": "ward"}


def test_given_values_are_converted_and_kept():
    params = methods.resolve("leiden", k=np.int64(15), resolution=2, min_size=3.0, nprobe=8)
    assert params == {"k": 15, "resolution": 2.0, "min_size": 3, "seed": 0, "search": "auto", "nprobe": 8}
    assert type(params["k"]) is int and type(params["resolution"]) is float and type(params["min_size"]) is int
    assert "resolution" not in methods.resolve("leiden", resolution="auto")
    assert "resolution" not in methods.resolve("leiden", resolution=None)


@pytest.mark.parametrize(
    "method,given,words",
    [
        ("spectral", {}, ["unknown method 'spectral'", "leiden, community, kmeans, agglomerative"]),
        ("kmeans", {"threshold": 0.5}, ["kmeans does not take threshold", "k, seed"]),
        ("leiden", {"threshold": 0.5, "linkage": "ward"}, ["leiden does not take linkage, threshold"]),
        ("leiden", {"k": 0}, ["leiden: --k must be at least 1, got 0"]),
        ("leiden", {"k": 2.5}, ["leiden: --k must be an integer, got 2.5"]),
        ("leiden", {"k": True}, ["--k must be an integer"]),
        ("leiden", {"resolution": 0}, ["leiden: --resolution must be above 0, got 0.0"]),
        ("leiden", {"resolution": -1}, ["--resolution must be above 0"]),
        ("leiden", {"resolution": "high"}, ["--resolution must be a finite number, got 'high'"]),
        ("leiden", {"resolution": float("nan")}, ["--resolution must be a finite number"]),
        ("leiden", {"min_size": 0}, ["leiden: --min-size must be at least 1, got 0"]),
        ("leiden", {"search": "fast"}, ["leiden: --search must be one of auto, exact, approximate, got 'fast'"]),
        ("leiden", {"nprobe": 0}, ["--nprobe must be at least 1"]),
        ("community", {"threshold": 1.5}, ["community: --threshold must be between -1 and 1, got 1.5"]),
        ("community", {"min_size": 0}, ["--min-size must be at least 1"]),
        ("kmeans", {"k": -3}, ["kmeans: --k must be at least 1, got -3"]),
        ("agglomerative", {"distance_threshold": 0}, ["--distance-threshold must be above 0"]),
        ("agglomerative", {"linkage": "single"}, ["--linkage must be one of ward, average, complete, got 'single'"]),
    ],
)
def test_bad_parameters_get_one_line(method, given, words):
    with pytest.raises(InvalidParameterError) as err:
        methods.resolve(method, **given)
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_options_cover_every_parameter_once():
    specs = methods.option_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert set(names) == {p.name for m in methods.METHODS.values() for p in m.params}
    by_name = {s.name: s for s in specs}
    assert by_name["k"].methods == ("leiden", "kmeans")
    assert (
        "leiden: neighbours per sentence" in by_name["k"].help
        and "kmeans: number of clusters [50]" in by_name["k"].help
    )
    assert by_name["resolution"].type is float and "[auto]" in by_name["resolution"].help
    assert by_name["search"].choices == ("auto", "exact", "approximate")
    flags = {o for p in cluster_command.params for o in p.opts}
    assert {s.flag for s in specs} <= flags
    assert "--method" in flags


def test_a_new_method_is_one_table_entry(monkeypatch):
    extra = methods.Method(
        "echo",
        "every sentence alone",
        (
            methods.Param("k", int, 3, "unused here", low=1),
            methods.Param("spread", float, 0.5, "how far", low=0, high=1),
        ),
        upkeep="centroid",
        compute=lambda x, params, **kw: methods.Labels(np.arange(len(x)), np.ones(len(x), np.float32)),
    )
    monkeypatch.setitem(methods.METHODS, "echo", extra)
    assert methods.resolve("echo") == {"k": 3, "spread": 0.5}
    assert next(s for s in methods.option_specs() if s.name == "spread").methods == ("echo",)
    assert "echo" in [m["method"] for m in methods.describe()]
    assert "`--spread`" in methods.markdown_table()


def test_markdown_table_lists_every_parameter():
    table = methods.markdown_table()
    lines = table.splitlines()
    assert lines[0].startswith("| method | option |")
    assert len(lines) == 2 + sum(len(m.params) for m in methods.METHODS.values())
    assert "`leiden` (default)" in table and "| `--resolution` | auto |" in table


def test_methods_command():
    runner = CliRunner()
    out = json.loads(runner.invoke(cli, ["methods", "--json"]).stdout)
    assert out["default"] == "leiden"
    leiden = next(m for m in out["methods"] if m["method"] == "leiden")
    assert leiden["upkeep"] == "graph" and leiden["levels"] == ["fine", "coarse"]
    assert [p["name"] for p in leiden["params"]] == ["k", "resolution", "min_size", "seed", "search", "nprobe"]
    text = runner.invoke(cli, ["methods"]).stdout
    assert "leiden (default)" in text and "--distance-threshold" in text
    assert runner.invoke(cli, ["methods", "--markdown"]).stdout.strip() == methods.markdown_table()
