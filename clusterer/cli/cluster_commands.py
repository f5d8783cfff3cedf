"""Commands over clusterings: cluster, clusters, show, runs, export, methods."""

from __future__ import annotations

import csv
import json
import sys

import click

from clusterer.cli.common import CLUSTER_ID, RUN_ID, emit, open_store, settings_from, store_options
from clusterer.cli.ray_option import ray_option, with_ray
from clusterer.cli.where import where_option, where_value


def _short(text: str | None, width: int = 70) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _method_options(f):
    """One option per parameter name in the methods table, plus --method."""
    from clusterer.service import methods

    for spec in reversed(methods.option_specs()):
        kind = click.Choice(list(spec.choices)) if spec.choices else spec.type
        f = click.option(spec.flag, spec.name, type=kind, default=None, help=spec.help)(f)
    return click.option(
        "--method",
        type=click.Choice(list(methods.names())),
        default=methods.DEFAULT_METHOD,
        show_default=True,
        help="Clustering method (see `clusterer methods`).",
    )(f)


def _given(method: str, values: dict):
    """The parameters given for ``method``, checked against the table (usage errors otherwise)."""
    from clusterer.errors import InvalidParameterError
    from clusterer.service import methods

    spec = methods.get(method)
    stray = [name for name, v in values.items() if v is not None and name not in spec.param_names]
    if stray:
        raise click.UsageError(f"--method {method} does not use {', '.join('--' + s.replace('_', '-') for s in stray)}")
    given = {k: v for k, v in values.items() if v is not None}
    try:
        spec.resolve(given)
    except InvalidParameterError as exc:
        raise click.UsageError(str(exc)) from None
    return given


def _run_facts(run) -> str:
    """One line of what a run chose: resolution, outlier share, levels, seconds per stage."""
    stats = run.params.get("stats", {})
    parts = []
    if stats.get("resolution") is not None:
        parts.append(f"resolution {stats['resolution']:g}" + ("" if "resolution" in run.params else " (automatic)"))
    if stats.get("coarse_clusters"):
        parts.append(f"{stats['coarse_clusters']} coarse topics")
    if stats.get("outlier_share") is not None:
        parts.append(f"outliers {stats['outlier_share']:.1%}")
    if stats.get("trigger"):
        parts.append(
            f"made by upkeep: {stats['trigger'].get('reason')} (after run {stats['trigger'].get('previous_run')})"
        )
    if stats.get("graph"):
        parts.append(f"kNN graph of run {stats['graph']['reused_from_run']} reused")
    secs = stats.get("seconds") or {}
    if secs:
        parts.append("seconds " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items()))
    ray = stats.get("ray")
    if ray:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in (ray.get("seconds") or {}).items())
        parts.append(f"ray {ray['nodes']} nodes, {ray['shards']} shards" + (f": {stages}" if stages else ""))
    return "; ".join(parts)


def _params_text(run) -> str:
    return json.dumps({k: v for k, v in run.params.items() if k != "stats"})


@click.command()
@_method_options
@click.option(
    "--force", is_flag=True, help="Run even when the guard rails predict a memory blow-up or one giant cluster."
)
@where_option
@ray_option
@store_options
def cluster(method, force, where, as_json, ray_address, **kwargs):
    """Cluster every stored sentence and store the run (leiden by default: no k, no threshold)."""
    settings = with_ray(settings_from(kwargs), ray_address)
    given = _given(method, kwargs)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(f"… {msg}", err=True))
    options = dict(
        device=settings.device, force=force, progress=say, show_progress=not as_json, where=where_value(where)
    )
    with open_store(settings) as store:
        if settings.ray_address:
            from clusterer.distributed.ray_cluster import cluster_on_ray

            run = cluster_on_ray(store, settings.ray_address, method, **options, **given)
        else:
            run = store.cluster(method, **options, **given)
        top = store.clusters(run.id)[:10]
        coarse = store.clusters(run.id, level="coarse")[:10]
    data = {
        "run": run.to_dict(),
        "top_clusters": [c.to_dict() for c in top],
        "top_coarse_clusters": [c.to_dict() for c in coarse],
    }

    def human(d):
        click.echo(f"run {run.id}: {run.method} {_params_text(run)}")
        click.echo(
            f"{run.clusters} clusters, {run.assigned:,} of {run.sentences:,} sentences assigned, "
            f"{run.unassigned:,} unassigned, {run.seconds:.2f} s"
        )
        facts = _run_facts(run)
        if facts:
            click.echo(facts)
        if coarse:
            click.echo("coarse topics:")
            for c in coarse:
                click.echo(f"  [{c.id}] {c.size:>6}  {len(c.children)} clusters  {', '.join(c.keywords[:5])}")
            click.echo("clusters:")
        for c in top:
            click.echo(f"  [{c.id}] {c.size:>6}  {', '.join(c.keywords[:5])}  — {_short(c.centre_text, 60)}")

    emit(data, as_json, human)


@click.command()
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the largest N clusters.")
@click.option(
    "--level",
    type=click.Choice(["fine", "coarse"]),
    default="fine",
    show_default=True,
    help="fine: the clusters sentences are assigned to; coarse: the topics grouping them (leiden runs).",
)
@store_options
def clusters(run_id, limit, level, as_json, **kwargs):
    """List clusters: id, size, keywords, centre sentence, cohesion (and parent or children)."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        run = store.run(run_id)
        items = store.clusters(run.id, level=level)
    if limit:
        items = items[:limit]
    data = {"run": run.to_dict(), "level": level, "clusters": [c.to_dict() for c in items]}

    def human(d):
        if level == "coarse":
            click.echo(f"run {run.id} ({run.method}): {len(items)} coarse topics over {run.clusters} clusters")
            if not items:
                click.echo(f"run {run.id} has no coarse level (only leiden runs have one)")
        else:
            click.echo(f"run {run.id} ({run.method}): {run.clusters} clusters, {run.unassigned:,} unassigned sentences")
        if run.params.get("where"):
            click.echo(f"covers only sentences where {' and '.join(run.params['where'])}")
        click.echo(f"{'id':>6} {'size':>7} {'cohesion':>8}  keywords / centre")
        for c in items:
            extra = (
                f"  ({len(c.children)} clusters)"
                if level == "coarse"
                else (f"  (topic {c.parent})" if c.parent is not None else "")
            )
            name = f'"{c.label}" ' if c.label else ""
            click.echo(f"{c.id:>6} {c.size:>7} {c.cohesion or 0:>8.3f}  {name}{', '.join(c.keywords[:6])}{extra}")
            click.echo(f"{'':>24}{_short(c.centre_text)}")

    emit(data, as_json, human)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Members to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@store_options
def show(cluster_id, limit, offset, run_id, as_json, **kwargs):
    """One cluster: keywords, representatives, members with similarity to the centre; a coarse
    topic's clusters, or a cluster's topic."""
    from clusterer.service.views import cluster_detail

    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        info = store.cluster_info(cluster_id, run_id=run_id, limit=limit, offset=offset)
        data, children, parent = cluster_detail(store, info)

    def human(d):
        kind = "coarse topic" if info.level == "coarse" else "cluster"
        name = f' "{info.label}"' if info.label else ""
        click.echo(
            f"{kind} {info.id}{name} (run {info.run_id}): {info.size} sentences, cohesion {info.cohesion or 0:.3f}"
        )
        click.echo(f"keywords: {', '.join(info.keywords)}")
        if parent is not None:
            click.echo(f"topic:    [{parent.id}] {', '.join(parent.keywords[:6])}")
        for c in children:
            click.echo(f"cluster:  [{c.id}] {c.size:>6}  {', '.join(c.keywords[:6])}")
        click.echo(f"centre:   [{info.centre_id}] {info.centre_text}")
        for m in info.representatives:
            click.echo(f"typical:  [{m.id}] {m.text}")
        for m in info.members:
            sim = f"{m.similarity:.3f}" if m.similarity is not None else "  -  "
            click.echo(f"  {sim}  [{m.id}] {m.text}")

    emit(data, as_json, human)


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@store_options
def runs(limit, as_json, **kwargs):
    """Past runs with method, parameters, time and counts."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        items = store.runs(limit)
    data = {"runs": [r.to_dict() for r in items]}

    def human(d):
        for r in items:
            secs = f"{r.seconds:.2f}s" if r.seconds is not None else "-"
            click.echo(
                f"{r.id:>4} {r.status:<8} {r.method:<13} {_params_text(r):<45} {r.started_at}  {secs:>8}  "
                f"{r.clusters} clusters, {r.assigned}/{r.sentences} assigned" + (f"  {r.error}" if r.error else "")
            )
            facts = _run_facts(r)
            if facts and r.status == "done":
                click.echo(f"{'':>14}{facts}")

    emit(data, as_json, human)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="jsonl", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="Write to a file instead of standard output.",
)
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@where_option
@store_options
def export(fmt, output, run_id, where, as_json, **kwargs):
    """Every sentence (matching --where) with its metadata, cluster id (empty when unassigned),
    similarity, coarse topic id (empty without one) and the cluster's label. Columns: id, text,
    metadata, cluster, similarity, coarse_cluster, cluster_label.

    To standard output, --json means JSON Lines (one object per sentence, the jsonl
    format); with --output, --json prints one JSON summary of what was written."""
    settings = settings_from(kwargs)
    if as_json and output == "-" and fmt != "jsonl":
        raise click.UsageError("--json on standard output writes JSON Lines: use --format jsonl or --output FILE")
    with open_store(settings, recover=False) as store:
        store.run(run_id)
        out = sys.stdout if output == "-" else open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed in the finally below unless it is stdout)
        count = 0
        try:
            if fmt == "csv":
                writer = csv.writer(out)
                writer.writerow(["id", "text", "metadata", "cluster", "similarity", "coarse_cluster", "cluster_label"])
            for row in store.export(run_id, where=where_value(where)):
                if fmt == "csv":
                    writer.writerow(
                        [
                            row["id"],
                            row["text"],
                            json.dumps(row["metadata"], ensure_ascii=False) if row["metadata"] else "",
                            "" if row["cluster"] is None else row["cluster"],
                            "" if row["similarity"] is None else row["similarity"],
                            "" if row["coarse_cluster"] is None else row["coarse_cluster"],
                            row["cluster_label"] or "",
                        ]
                    )
                else:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
    if output != "-":
        emit(
            {"exported": count, "output": output, "format": fmt},
            as_json,
            lambda d: click.echo(f"exported {count:,} sentences to {output}", err=True),
        )


@click.command(name="methods")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown (for the docs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def methods_command(markdown, as_json):
    """The clustering methods, their parameters, defaults and upkeep rules."""
    from clusterer.service import methods

    rows = methods.describe()

    def human(d):
        if markdown:
            click.echo(methods.markdown_table())
            return
        for m in rows:
            click.echo(f"{m['method']}{' (default)' if m['default'] else ''}: {m['summary']}")
            click.echo(f"  levels {', '.join(m['levels'])}; new sentences: {m['upkeep']} rule")
            for p in m["params"]:
                click.echo(f"  {p['option']:<22} {p['shown_default']:<8} {p['help']} ({p['allowed']})")

    emit({"default": methods.DEFAULT_METHOD, "methods": rows}, as_json, human)


COMMANDS = [cluster, clusters, show, runs, export, methods_command]
