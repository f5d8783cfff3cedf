"""The clustering methods: one table of names, parameters, upkeep rules and the code that runs each.

Everything that needs to know about methods reads this table: ``Store.cluster`` (defaults and
validation through :func:`resolve`), the ``clusterer cluster`` options (generated from
:func:`option_specs`), incremental upkeep (``get(name).upkeep``) and the docs
(:func:`markdown_table`). Adding a method means adding one :class:`Method` entry and its
``compute`` function here.

Upkeep rules: ``community`` (a new sentence joins the cluster most of its neighbours above the
threshold are in), ``centroid`` (nearest centroid) and ``graph`` (the cluster holding most of its
kNN similarity, see :func:`clusterer.algorithms.graph.assign_by_weight`).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import graph as graph_algorithm
from clusterer.errors import ClustererError, InvalidParameterError

DEFAULT_METHOD = "leiden"
UPKEEP_RULES = ("community", "centroid", "graph")
SEARCHES = ("auto", "exact", "approximate")
MAX_GRAPH_BYTES = 4 << 30
MAX_COMMUNITY_FRACTION = 0.5
EXACT_SEARCH_MAX = 20_000


class GuardRailError(ClustererError):
    """A run was refused because it would exhaust memory or produce one giant cluster."""


@dataclass
class Labels:
    """What an algorithm produced over positions 0..n-1: label (-1 unassigned), similarity, centre.

    ``parents`` maps each fine label to its coarse label for methods with a two-level hierarchy
    (None otherwise); ``info`` holds the JSON-serialisable facts the run stores in its stats.
    """

    labels: np.ndarray
    similarities: np.ndarray
    centres: dict[int, int] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    parents: dict[int, int] | None = None


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

    ``compute(x, params, *, device, force, show_progress, initial)`` returns :class:`Labels`.
    ``warm_start``: the method can start from an existing membership (recluster keeps ids).
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    upkeep: str
    compute: Compute
    levels: tuple[str, ...] = ("fine",)
    warm_start: bool = False

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


# -- the functions behind the methods --------------------------------------------------------


def _cuda_available() -> bool:
    from indexer.hardware import cuda_available

    return cuda_available()


def _raise_threshold_hint(threshold: float) -> str:
    """What to suggest; never a "higher" threshold that is not above the current one."""
    higher = min(0.95, threshold + 0.1)
    if higher > threshold:
        return f"Raise --threshold (e.g. {higher:.2f}) or pass --force."
    return "Pass --force to run anyway."


def check_community_guards(
    x: np.ndarray, threshold: float, min_size: int, max_bytes: int = MAX_GRAPH_BYTES
) -> dict[str, Any]:
    """Estimate the neighbour graph from a sample; raise GuardRailError if it is unreasonable."""
    from clusterer.algorithms.neighbors import estimate_graph

    if len(x) < 2 * min_size:
        return {}
    est = estimate_graph(x, threshold, min_size, sample_size=min(2000, len(x)))
    facts = {
        "estimated_graph_bytes": int(est.expected_bytes),
        "largest_neighbourhood_fraction": round(est.max_neighborhood_fraction, 4),
        "candidate_fraction": round(est.candidate_fraction, 4),
    }
    if est.expected_bytes > max_bytes:
        raise GuardRailError(
            f"threshold {threshold} would build a neighbour graph of about {est.expected_bytes / 2**30:.1f} GiB "
            f"(limit {max_bytes / 2**30:.1f} GiB; {est.mean_neighborhood_size:.0f} neighbours per sentence on average). "
            f"{_raise_threshold_hint(threshold)}"
        )
    if est.max_neighborhood_fraction > MAX_COMMUNITY_FRACTION:
        raise GuardRailError(
            f"at threshold {threshold} one sentence is similar to {est.max_neighborhood_fraction:.0%} of the store, "
            f"so most sentences would land in one community. {_raise_threshold_hint(threshold)}"
        )
    return facts


def community_labels(
    x: np.ndarray,
    threshold: float,
    min_size: int,
    device: str = "auto",
    nprobe: int | None = None,
    search: str = "auto",
    show_progress: bool = False,
) -> Labels:
    """Community detection over ``x``.

    ``search``: "exact" (FAISS flat range search, or torch on CUDA), "approximate" (cell-blocked
    search of :mod:`clusterer.algorithms.partitioned`, ``nprobe`` cells per point) or "auto": exact up to
    ``EXACT_SEARCH_MAX`` sentences or on a GPU, approximate above.
    """
    from clusterer.algorithms.community import community_detection
    from clusterer.algorithms.neighbors import neighbor_graph
    from clusterer.algorithms.partitioned import (
        DEFAULT_NPROBE,
        partitioned_neighbor_graph,
    )

    if search not in SEARCHES:
        raise InvalidParameterError(f"search must be auto, exact or approximate, got {search!r}")
    n = len(x)
    labels = np.full(n, -1, dtype=np.int64)
    sims = np.full(n, np.nan, dtype=np.float32)
    if n == 0 or n < min_size:
        # fewer sentences than min_size: no community can be big enough (the reference clamps
        # min_size to n instead, which would turn any tiny store into one community)
        return Labels(labels, sims)
    if search == "auto":
        on_gpu = device == "cuda" or (device == "auto" and _cuda_available())
        search = "exact" if n <= EXACT_SEARCH_MAX or on_gpu else "approximate"
    if search == "exact":
        graph = neighbor_graph(x, threshold, min_size, device=device, show_progress=show_progress)
    else:
        graph = partitioned_neighbor_graph(
            x, threshold, min_size, nprobe=nprobe or DEFAULT_NPROBE, show_progress=show_progress
        )
    communities = community_detection(graph)
    centres: dict[int, int] = {}
    for k, com in enumerate(communities):
        members = np.asarray(com.members, dtype=np.int64)
        labels[members] = k
        sims[members] = com.similarities
        centres[k] = com.centre
    return Labels(labels, sims, centres, info={"search": search, "candidates": len(graph), "edges": graph.total_edges})


def _community(x, params, *, device="auto", force=False, show_progress=False, initial=None) -> Labels:
    t, m = float(params["threshold"]), int(params["min_size"])
    guards = {} if force else check_community_guards(x, t, m)
    out = community_labels(
        x,
        t,
        m,
        device=device,
        nprobe=params.get("nprobe"),
        search=params.get("search", "auto"),
        show_progress=show_progress,
    )
    out.info.update(guards)
    return out


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0) -> Labels:
    from clusterer.algorithms.kmeans import kmeans

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = kmeans(x, k, seed=seed)
    return Labels(
        res.labels.astype(np.int64),
        res.similarities.astype(np.float32),
        centroids={j: res.centroids[j] for j in range(res.k)},
        info={"inertia": res.inertia},
    )


def _kmeans(x, params, *, device="auto", force=False, show_progress=False, initial=None) -> Labels:
    return kmeans_labels(x, int(params["k"]), seed=int(params.get("seed", 0)))


def agglomerative_labels(x: np.ndarray, distance_threshold: float, linkage: str = "ward") -> Labels:
    from clusterer.algorithms.agglomerative import agglomerative

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = agglomerative(x, distance_threshold, linkage=linkage)
    return Labels(np.asarray(res.labels, dtype=np.int64), np.asarray(res.similarities, dtype=np.float32))


def _agglomerative(x, params, *, device="auto", force=False, show_progress=False, initial=None) -> Labels:
    return agglomerative_labels(x, float(params["distance_threshold"]), params.get("linkage", "ward"))


def _compact(initial: np.ndarray) -> np.ndarray:
    """Arbitrary cluster ids (-1 for none) as 0..m-1, keeping -1."""
    initial = np.asarray(initial, dtype=np.int64)
    out = np.full(len(initial), -1, dtype=np.int64)
    have = initial >= 0
    if have.any():
        _, out[have] = np.unique(initial[have], return_inverse=True)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _leiden(x, params, *, device="auto", force=False, show_progress=False, initial=None) -> Labels:
    n = len(x)
    if n == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32), parents={})
    res = graph_algorithm.graph_clustering(
        x,
        k=None if params.get("k") is None else int(params["k"]),
        resolution=params.get("resolution"),
        min_size=int(params["min_size"]),
        seed=int(params.get("seed", 0)),
        initial=None if initial is None else _compact(initial),
        search=params.get("search", "auto"),
        nprobe=params.get("nprobe"),
        device=device,
        show_progress=show_progress,
    )
    labels = np.asarray(res.labels, dtype=np.int64)
    present = set(np.unique(labels[labels >= 0]).tolist())  # with ``initial``, ids can have gaps
    parents = {int(f): int(c) for f, c in enumerate(np.asarray(res.parents, dtype=np.int64)) if f in present and c >= 0}
    outliers = int(np.count_nonzero(labels < 0))
    info = dict(_jsonable(res.info))
    info.update(
        resolution=_jsonable(res.resolution),
        coarse_resolution=_jsonable(res.coarse_resolution),
        scores=_jsonable(res.scores),
        outliers=outliers,
        outlier_share=round(outliers / n, 6),
        min_similarity=_jsonable(res.info.get("min_similarity", 0.0)),
        k=int(res.info.get("k") or params["k"]),
        warm_start=initial is not None,
    )
    return Labels(labels, np.full(n, np.nan, dtype=np.float32), info=info, parents=parents)


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
            compute=_leiden,
            levels=("fine", "coarse"),
            warm_start=True,
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
            compute=_community,
        ),
        Method(
            "kmeans",
            "k-means on the unit sphere with k clusters",
            (
                Param("k", int, 50, "number of clusters", low=1),
                Param("seed", int, 0, "random seed", low=0),
            ),
            upkeep="centroid",
            compute=_kmeans,
        ),
        Method(
            "agglomerative",
            "agglomerative clustering cut at a merge distance (small stores)",
            (
                Param("distance_threshold", float, 1.5, "merge distance threshold", low=0, low_open=True),
                Param("linkage", str, "ward", "linkage", choices=("ward", "average", "complete")),
            ),
            upkeep="centroid",
            compute=_agglomerative,
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
