"""Curation commands: merge, split, label, unmerge (edits that later runs and upkeep keep)."""

from __future__ import annotations

import click

from clusterer.cli.common import CLUSTER_ID, emit, open_store, settings_from, store_options


def _print_edit(d) -> None:
    name = f' "{d["label"]}"' if d.get("label") else ""
    if d["kind"] == "merge":
        click.echo(f"merged {', '.join(map(str, d['related']))} into {d['cluster_id']}{name}: {d['size']} sentences")
        click.echo(f"keywords: {', '.join(d['keywords'][:8])}")
    elif d["kind"] == "split":
        click.echo(f"split {d['cluster_id']}{name} ({d['size']} sentences) at resolution {d['resolution']:g} into:")
        for p in d["parts"]:
            click.echo(f"  [{p['id']}] {p['size']:>6}  {', '.join(p['keywords'][:6])}")
    elif d["kind"] == "unmerge":
        restored = ", ".join(map(str, d["related"]))
        click.echo(
            f"undid the merge into {d['cluster_id']}: {restored} back; {d['cluster_id']} has {d['size']} sentences"
        )
    elif d.get("label") is None:
        click.echo(
            f"cluster {d['cluster_id']}: label removed"
            if d.get("cleared")
            else f"cluster {d['cluster_id']} had no label"
        )
    else:
        click.echo(f'cluster {d["cluster_id"]} is now labelled "{d["label"]}"')


@click.command()
@click.argument("cluster_ids", nargs=-1, required=True, type=CLUSTER_ID)
@store_options
def merge(cluster_ids, as_json, **kwargs):
    """Merge clusters of the latest run into one (the largest's id); later runs and upkeep keep
    them together until `clusterer unmerge ID`."""
    with open_store(settings_from(kwargs)) as store:
        data = store.merge(list(cluster_ids)).to_dict()
    emit(data, as_json, _print_edit)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Leiden resolution on the cluster's kNN graph (default 1; higher: more parts).",
)
@store_options
def split(cluster_id, resolution, as_json, **kwargs):
    """Split a cluster of the latest run (Leiden on its members' kNN graph); the parts get new
    ids and later runs keep them apart."""
    with open_store(settings_from(kwargs)) as store:
        data = store.split(cluster_id, resolution).to_dict()
    emit(data, as_json, _print_edit)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@store_options
def unmerge(cluster_id, as_json, **kwargs):
    """Undo the newest merge into a cluster: the sentences it moved go back to their ids."""
    with open_store(settings_from(kwargs)) as store:
        data = store.unmerge(cluster_id).to_dict()
    emit(data, as_json, _print_edit)


@click.command()
@click.argument("cluster_id", type=CLUSTER_ID)
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the cluster's label.")
@store_options
def label(cluster_id, text, clear, as_json, **kwargs):
    """Name a cluster; `clusters`, `show`, `export` and the page show it, and it stays on the id
    across runs."""
    if clear == (text is not None):
        raise click.UsageError("give either TEXT or --clear")
    with open_store(settings_from(kwargs)) as store:
        data = store.label(cluster_id, None if clear else text).to_dict()
    emit(data, as_json, _print_edit)


COMMANDS = [merge, split, unmerge, label]
