"""Commands over clusterings: cluster, clusters, show, runs, export."""

from __future__ import annotations

import csv
import json
import sys

import click

from clusterer.cli.common import CLUSTER_ID, RUN_ID, emit, open_store, settings_from, store_options


def _short(text: str | None, width: int = 70) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command()
@click.option("--method", type=click.Choice(["community", "kmeans", "agglomerative"]), default="community",
              show_default=True, help="Clustering algorithm.")
@click.option("--threshold", type=float, default=None, help="community: cosine similarity threshold [0.75].")
@click.option("--min-size", type=click.IntRange(min=1), default=None, help="community: minimum community size [10].")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="community, approximate search: cells probed per cell of sentences (recall knob) [12].")
@click.option("--search", type=click.Choice(["auto", "exact", "approximate"]), default=None,
              help="community: neighbour search; auto = exact up to 20,000 sentences or on a GPU [auto].")
@click.option("--k", "k", type=click.IntRange(min=1), default=None, help="kmeans: number of clusters [50].")
@click.option("--seed", type=int, default=None, help="kmeans: random seed [0].")
@click.option("--distance-threshold", type=float, default=None, help="agglomerative: merge distance threshold [1.5].")
@click.option("--linkage", type=click.Choice(["ward", "average", "complete"]), default=None,
              help="agglomerative: linkage [ward].")
@click.option("--force", is_flag=True, help="Run even when the guard rails predict a memory blow-up or one giant cluster.")
@store_options
def cluster(method, threshold, min_size, nprobe, search, k, seed, distance_threshold, linkage, force, as_json, **kwargs):
    """Cluster every stored sentence and store the run."""
    settings = settings_from(kwargs)
    given = {"community": dict(threshold=threshold, min_size=min_size, nprobe=nprobe, search=search),
             "kmeans": dict(k=k, seed=seed),
             "agglomerative": dict(distance_threshold=distance_threshold, linkage=linkage)}[method]
    others = {"threshold": threshold, "min_size": min_size, "nprobe": nprobe, "search": search, "k": k, "seed": seed,
              "distance_threshold": distance_threshold, "linkage": linkage}
    stray = [name for name, v in others.items() if v is not None and name not in given]
    if stray:
        raise click.UsageError(f"--method {method} does not use {', '.join('--' + s.replace('_', '-') for s in stray)}")
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(f"… {msg}", err=True))
    with open_store(settings) as store:
        run = store.cluster(method, device=settings.device, force=force, progress=say,
                            show_progress=not as_json, **given)
        top = store.clusters(run.id)[:10]
    data = {"run": run.to_dict(), "top_clusters": [c.to_dict() for c in top]}

    def human(d):
        click.echo(f"run {run.id}: {run.method} {json.dumps({k: v for k, v in run.params.items() if k != 'stats'})}")
        click.echo(f"{run.clusters} clusters, {run.assigned:,} of {run.sentences:,} sentences assigned, "
                   f"{run.unassigned:,} unassigned, {run.seconds:.2f} s")
        for c in top:
            click.echo(f"  [{c.id}] {c.size:>6}  {', '.join(c.keywords[:5])}  — {_short(c.centre_text, 60)}")

    emit(data, as_json, human)


@click.command()
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the largest N clusters.")
@store_options
def clusters(run_id, limit, as_json, **kwargs):
    """List clusters: id, size, keywords, centre sentence, cohesion."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        run = store.run(run_id)
        items = store.clusters(run.id)
    if limit:
        items = items[:limit]
    data = {"run": run.to_dict(), "clusters": [c.to_dict() for c in items]}

    def human(d):
        click.echo(f"run {run.id} ({run.method}): {run.clusters} clusters, {run.unassigned:,} unassigned sentences")
        click.echo(f"{'id':>6} {'size':>7} {'cohesion':>8}  keywords / centre")
        for c in items:
            click.echo(f"{c.id:>6} {c.size:>7} {c.cohesion or 0:>8.3f}  {', '.join(c.keywords[:6])}")
            click.echo(f"{'':>24}{_short(c.centre_text)}")

    emit(data, as_json, human)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Members to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@store_options
def show(cluster_id, limit, offset, run_id, as_json, **kwargs):
    """One cluster: keywords, representatives, members with similarity to the centre."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        info = store.cluster_info(cluster_id, run_id=run_id, limit=limit, offset=offset)
    data = info.to_dict()

    def human(d):
        click.echo(f"cluster {info.id} (run {info.run_id}): {info.size} sentences, cohesion {info.cohesion or 0:.3f}")
        click.echo(f"keywords: {', '.join(info.keywords)}")
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
            params = {k: v for k, v in r.params.items() if k != "stats"}
            secs = f"{r.seconds:.2f}s" if r.seconds is not None else "-"
            click.echo(f"{r.id:>4} {r.status:<8} {r.method:<13} {json.dumps(params):<45} {r.started_at}  {secs:>8}  "
                       f"{r.clusters} clusters, {r.assigned}/{r.sentences} assigned" + (f"  {r.error}" if r.error else ""))

    emit(data, as_json, human)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
              help="Write to a file instead of standard output.")
@click.option("--run", "run_id", type=RUN_ID, default=None, help="Run id (default: the latest).")
@store_options
def export(fmt, output, run_id, as_json, **kwargs):
    """Every sentence with its metadata, cluster id (empty when unassigned) and similarity.

    To standard output, --json means JSON Lines (one object per sentence, the jsonl
    format); with --output, --json prints one JSON summary of what was written."""
    settings = settings_from(kwargs)
    if as_json and output == "-" and fmt != "jsonl":
        raise click.UsageError("--json on standard output writes JSON Lines: use --format jsonl or --output FILE")
    with open_store(settings, recover=False) as store:
        store.run(run_id)
        out = sys.stdout if output == "-" else open(output, "w", encoding="utf-8", newline="")
        count = 0
        try:
            if fmt == "csv":
                writer = csv.writer(out)
                writer.writerow(["id", "text", "metadata", "cluster", "similarity"])
            for row in store.export(run_id):
                if fmt == "csv":
                    writer.writerow([row["id"], row["text"], json.dumps(row["metadata"], ensure_ascii=False) if row["metadata"] else "",
                                     "" if row["cluster"] is None else row["cluster"],
                                     "" if row["similarity"] is None else row["similarity"]])
                else:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        finally:
            if out is not sys.stdout:
                out.close()
    if output != "-":
        emit({"exported": count, "output": output, "format": fmt}, as_json,
             lambda d: click.echo(f"exported {count:,} sentences to {output}", err=True))


COMMANDS = [cluster, clusters, show, runs, export]
