"""The clustering methods: one table of names, parameters, upkeep rules and the code that runs each.

Everything that needs to know about methods reads this table: ``Store.cluster`` (defaults and
validation through :func:`resolve`), the ``clusterer cluster`` options (generated from
:func:`option_specs`), incremental upkeep (``get(name).upkeep``) and the docs
(:func:`markdown_table`). Adding a method means adding one :class:`Method` entry and its
``compute`` function (in :mod:`clusterer.service.compute`).

Upkeep rules: ``community`` (a new sentence joins the cluster most of its neighbours above the
threshold are in), ``centroid`` (nearest centroid) and ``graph`` (the cluster holding most of its
kNN similarity, see :func:`clusterer.algorithms.graph.assign_by_weight`).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clusterer.algorithms import graph as graph_algorithm
from clusterer.errors import InvalidParameterError
from clusterer.service.compute import (  # noqa: F401  (Labels, GuardRailError, SEARCHES re-exported)
    SEARCHES,
    GuardRailError,
    Labels,
    run_agglomerative,
    run_community,
    run_kmeans,
    run_leiden,
)

DEFAULT_METHOD = "leiden"
UPKEEP_RULES = ("community", "centroid", "graph")


@dataclass(frozen=True)
class Param:
    """One parameter: its type (int, float or str), default (None: optional or automatic),
    bounds or choices, and help text."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    none_means: str | None = None
    shown_default: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, method: str, value: Any) -> Any:
        """``value`` converted to this parameter's type, or InvalidParameterError (one line)."""
        where = f"{method}: {self.flag}"
        if value is None or (self.none_means and isinstance(value, str) and value.lower() == self.none_means):
            return None
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidParameterError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
                raise InvalidParameterError(f"{where} must be an integer, got {value!r}")
            value = operator.index(value) if isinstance(value, numbers.Integral) else int(float(value))
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise InvalidParameterError(f"{where} must be a finite number, got {value!r}")
            value = float(value)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            raise InvalidParameterError(f"{where} must be {self.range_text()}, got {value}")
        return value

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {_num(self.low)} and {_num(self.high)}"
        if self.low is not None:
            return f"above {_num(self.low)}" if self.low_open else f"at least {_num(self.low)}"
        if self.high is not None:
            return f"at most {_num(self.high)}"
        return "any value"

    def default_text(self) -> str:
        if self.default is None:
            return self.shown_default or self.none_means or "none"
        return str(self.default)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


Compute = Callable[..., Labels]


@dataclass(frozen=True)
class Method:
    """A clustering method: its parameters, upkeep rule, levels, and the function that runs it.

    ``compute(x, params, *, device, force, show_progress, initial, graph)`` returns :class:`Labels`.
    ``warm_start``: the method can start from an existing membership (recluster keeps ids).
    ``stores_graph``: the method clusters a kNN graph that the run stores, and can take a stored
    one instead of searching again (re-optimisation, ``recluster --resolution``).
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    upkeep: str
    compute: Compute
    levels: tuple[str, ...] = ("fine",)
    warm_start: bool = False
    stores_graph: bool = False

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise InvalidParameterError(f"{self.name} has no parameter {name!r}")

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in and every value checked; parameters left None are not stored."""
        unknown = sorted(k for k, v in given.items() if v is not None and k not in self.param_names)
        if unknown:
            raise InvalidParameterError(
                f"{self.name} does not take {', '.join(unknown)}; its parameters are {', '.join(self.param_names)}"
            )
        out: dict[str, Any] = {}
        for p in self.params:
            value = p.check(self.name, given.get(p.name))
            if value is None:
                value = p.default
            if value is not None:
                out[p.name] = value
        return out


# -- the table -------------------------------------------------------------------------------

_MIN_SIZE_HELP = "smallest cluster kept; smaller groups are left unassigned"
_SEARCH_HELP = "neighbour search; auto = exact up to 20,000 sentences or on a GPU"
_NPROBE_HELP = "approximate search: cells probed per cell of sentences (recall knob)"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "leiden",
            "Leiden communities of the symmetrised cosine kNN graph, granularity chosen from the data, "
            "with a coarse and a fine level",
            (
                Param(
                    "k",
                    int,
                    None,
                    "neighbours per sentence in the kNN graph (auto: 30, 15 above 200,000 sentences)",
                    low=1,
                    none_means="auto",
                ),
                Param(
                    "resolution",
                    float,
                    None,
                    "Leiden resolution: higher gives more, smaller clusters",
                    low=0,
                    low_open=True,
                    none_means="auto",
                ),
                Param("min_size", int, graph_algorithm.DEFAULT_MIN_SIZE, _MIN_SIZE_HELP, low=1),
                Param("seed", int, 0, "random seed", low=0),
                Param("search", str, "auto", "neighbour search; auto = exact below 5,000 sentences", choices=SEARCHES),
                Param(
                    "nprobe",
                    int,
                    None,
                    "approximate kNN: cells probed per cell of sentences (recall knob)",
                    low=1,
                    shown_default="16; 8 above 200,000",
                ),
            ),
            upkeep="graph",
            compute=run_leiden,
            levels=("fine", "coarse"),
            warm_start=True,
            stores_graph=True,
        ),
        Method(
            "community",
            "sentence-transformers community detection: members above a cosine threshold to a centre",
            (
                Param("threshold", float, 0.75, "cosine similarity threshold", low=-1, high=1),
                Param("min_size", int, 10, "minimum community size", low=1),
                Param("search", str, "auto", _SEARCH_HELP, choices=SEARCHES),
                Param("nprobe", int, None, _NPROBE_HELP, low=1, shown_default="12"),
            ),
            upkeep="community",
            compute=run_community,
        ),
        Method(
            "kmeans",
            "k-means on the unit sphere with k clusters",
            (
                Param("k", int, 50, "number of clusters", low=1),
                Param("seed", int, 0, "random seed", low=0),
            ),
            upkeep="centroid",
            compute=run_kmeans,
        ),
        Method(
            "agglomerative",
            "agglomerative clustering cut at a merge distance (small stores)",
            (
                Param("distance_threshold", float, 1.5, "merge distance threshold", low=0, low_open=True),
                Param("linkage", str, "ward", "linkage", choices=("ward", "average", "complete")),
            ),
            upkeep="centroid",
            compute=run_agglomerative,
        ),
    )
}


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def get(name: str | None) -> Method:
    """The method called ``name`` (None: the default); InvalidParameterError when unknown."""
    method = METHODS.get(DEFAULT_METHOD if name is None else name)
    if method is None:
        raise InvalidParameterError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return method


def resolve(name: str | None, **given: Any) -> dict[str, Any]:
    """The full parameters of a run of ``name``: defaults filled in, each value checked."""
    return get(name).resolve(given)


def upkeep_rule(name: str) -> str:
    """How incremental upkeep assigns new sentences to a run of ``name``."""
    return get(name).upkeep


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option shared by every method that has a parameter of that name."""

    name: str
    flag: str
    type: type
    choices: tuple[str, ...] | None
    help: str
    methods: tuple[str, ...]


def option_specs() -> list[OptionSpec]:
    """The ``clusterer cluster`` options, one per parameter name, with each method's meaning."""
    by_name: dict[str, list[tuple[Method, Param]]] = {}
    for method in METHODS.values():
        for p in method.params:
            by_name.setdefault(p.name, []).append((method, p))
    specs = []
    for name, uses in by_name.items():
        kinds = {p.type for _, p in uses}
        if len(kinds) != 1:
            raise TypeError(f"parameter {name} has different types across methods")
        choices = None
        if all(p.choices for _, p in uses):
            choices = tuple(dict.fromkeys(c for _, p in uses for c in p.choices or ()))
        meanings: dict[str, list[str]] = {}
        for m, p in uses:
            meanings.setdefault(f"{p.help} [{p.default_text()}]", []).append(m.name)
        text = "; ".join(f"{', '.join(ms)}: {meaning}" for meaning, ms in meanings.items())
        specs.append(
            OptionSpec(name, uses[0][1].flag, kinds.pop(), choices, text + ".", tuple(m.name for m, _ in uses))
        )
    return specs


def describe() -> list[dict[str, Any]]:
    """Every method and parameter as plain rows (for ``clusterer methods --json`` and the docs)."""
    return [
        {
            "method": m.name,
            "default": m.name == DEFAULT_METHOD,
            "summary": m.summary,
            "upkeep": m.upkeep,
            "levels": list(m.levels),
            "params": [
                {
                    "name": p.name,
                    "option": p.flag,
                    "type": p.type.__name__,
                    "default": p.default,
                    "shown_default": p.default_text(),
                    "allowed": ", ".join(p.choices)
                    if p.choices
                    else p.range_text() + (f" or {p.none_means}" if p.none_means else ""),
                    "help": p.help,
                }
                for p in m.params
            ],
        }
        for m in METHODS.values()
    ]


def markdown_table() -> str:
    """The methods and their parameters as a Markdown table."""
    lines = ["| method | option | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for m in describe():
        name = f"`{m['method']}`" + (" (default)" if m["default"] else "")
        for i, p in enumerate(m["params"]):
            default = p["default"] if p["default"] is not None else p["shown_default"]
            lines.append(f"| {name if i == 0 else ''} | `{p['option']}` | {default} | {p['allowed']} | {p['help']} |")
    return "\n".join(lines)
