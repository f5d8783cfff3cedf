"""Lookup commands: lookup, which, members, unassigned, recluster, history."""

from __future__ import annotations

import json

import click

from clusterer.cli.common import CLUSTER_ID, SENTENCE_ID, emit, open_store, settings_from, store_options


def _sim(value) -> str:
    return f"{value:.3f}" if value is not None else "  -  "


@click.command()
@click.argument("text")
@click.option("--members", type=click.IntRange(min=0), default=5, show_default=True, help="Members to show.")
@store_options
def lookup(text, members, as_json, **kwargs):
    """Which cluster TEXT belongs to (nothing is stored): similarity, keywords, members."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        data = store.lookup(text, members=members)

    def human(d):
        c = d["cluster"]
        if c is None:
            click.echo("no cluster: the sentence fits none of the current clusters")
        else:
            if "share" in d:
                click.echo(
                    f"cluster {c['id']} ({c['size']} sentences), similarity to its centroid {_sim(d['similarity'])}, "
                    f"{d['share']:.0%} of the nearest neighbours' weight"
                )
            else:
                click.echo(
                    f"cluster {c['id']} ({c['size']} sentences), similarity to centre {_sim(d['similarity'])}"
                    + (f", {d['votes']} members above the threshold" if d["votes"] else "")
                )
            click.echo(f"keywords: {', '.join(c['keywords'])}")
            for m in c["members"]:
                click.echo(f"  {_sim(m['similarity'])}  [{m['id']}] {m['text']}")
        if d.get("where"):
            click.echo(f"run {d['run_id']} covers only sentences where {' and '.join(d['where'])}")
        click.echo("nearest stored sentences:")
        for n in d["nearest"]:
            where = f"cluster {n['cluster']}" if n["cluster"] is not None else "unassigned"
            click.echo(f"  {_sim(n['similarity'])}  [{n['id']}] {n['text']}  ({where})")

    emit(data, as_json, human)


@click.command()
@click.argument("sentence_id", type=SENTENCE_ID)
@store_options
def which(sentence_id, as_json, **kwargs):
    """The cluster of stored sentence SENTENCE_ID, with its history across runs."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        data = store.cluster_of(sentence_id)

    def human(d):
        s = d["sentence"]
        click.echo(f"[{s['id']}] {s['text']}")
        if d["cluster"]:
            c = d["cluster"]
            click.echo(
                f"cluster {c['id']} ({c['size']} sentences), similarity {_sim(d['similarity'])}: {', '.join(c['keywords'][:6])}"
            )
        elif d.get("outside_filter"):
            click.echo(f"outside run {d['run_id']}, which covers only sentences where {' and '.join(d['where'])}")
        elif d["pending"]:
            click.echo(f"not yet seen by run {d['run_id']}")
        else:
            click.echo(f"unassigned in run {d['run_id']}")
        for h in d["history"]:
            where = f"cluster {h['cluster']}" if h["cluster"] is not None else "unassigned"
            click.echo(f"  run {h['run_id']:>3} {h['method']:<13} {h['started_at']}  {where}")

    emit(data, as_json, human)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@store_options
def members(cluster_id, offset, limit, as_json, **kwargs):
    """Members of cluster CLUSTER_ID, most similar to its centre first, a page at a time."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        items = store.members(cluster_id, offset=offset, limit=limit)
    data = {"cluster_id": cluster_id, "offset": offset, "limit": limit, "members": [m.to_dict() for m in items]}

    def human(d):
        for m in items:
            click.echo(f"{_sim(m.similarity)}  [{m.id}] {m.text}")

    emit(data, as_json, human)


@click.command()
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@store_options
def unassigned(offset, limit, as_json, **kwargs):
    """Sentences that fit no cluster yet."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        total, items = store.unassigned(offset=offset, limit=limit)
    data = {"total": total, "offset": offset, "limit": limit, "sentences": [m.to_dict() for m in items]}

    def human(d):
        click.echo(f"{total:,} unassigned sentences")
        for m in items:
            click.echo(f"  [{m.id}] {m.text}")

    emit(data, as_json, human)


@click.command()
@click.option("--force", is_flag=True, help="Run even when the guard rails object.")
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="leiden: a new resolution (higher: more, smaller clusters); the stored kNN graph is reused.",
)
@store_options
def recluster(force, resolution, as_json, **kwargs):
    """A full run with the latest run's method and parameters; cluster ids carry over (leiden
    starts from the current membership and reuses the run's stored kNN graph)."""
    settings = settings_from(kwargs)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(f"… {msg}", err=True))
    with open_store(settings) as store:
        previous = store.run()
        extra = {} if resolution is None else {"resolution": resolution}
        run = store.recluster(device=settings.device, force=force, progress=say, show_progress=not as_json, **extra)
        events = [e for e in store.events(run.id) if e.kind != "continued"]
        kept = sum(1 for e in store.events(run.id) if e.kind == "continued")
    data = {
        "previous_run": previous.id,
        "run": run.to_dict(),
        "kept_ids": kept,
        "events": [e.to_dict() for e in events],
    }

    def human(d):
        click.echo(
            f"run {run.id} ({run.method} {json.dumps({k: v for k, v in run.params.items() if k != 'stats'})}): "
            f"{run.clusters} clusters, {run.assigned:,}/{run.sentences:,} assigned; {kept} ids kept from run {previous.id}"
        )
        from clusterer.cli.cluster_commands import _run_facts

        facts = _run_facts(run)
        if facts:
            click.echo(facts)
        for e in events:
            level = " (coarse)" if e.detail.get("level") == "coarse" else ""
            click.echo(
                f"  {e.kind:<6} cluster {e.cluster_id}{level}" + (f" (related {e.related})" if e.related else "")
            )

    emit(data, as_json, human)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@store_options
def history(cluster_id, as_json, **kwargs):
    """Births, growth, merges, splits and death of cluster CLUSTER_ID."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        items = store.history(cluster_id)
    data = {"cluster_id": cluster_id, "events": [e.to_dict() for e in items]}

    def human(d):
        for e in items:
            extra = f" related {e.related}" if e.related else ""
            detail = f" {json.dumps(e.detail)}" if e.detail else ""
            click.echo(f"{e.at}  run {e.run_id:>3}  {e.kind:<9} size {e.size}{extra}{detail}")

    emit(data, as_json, human)


COMMANDS = [lookup, which, members, unassigned, recluster, history]
