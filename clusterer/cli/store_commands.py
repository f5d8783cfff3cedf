"""Commands over the sentence store: ingest, stats, search, verify, rebuild-index, delete."""

from __future__ import annotations

import os
import sys

import click

from clusterer.cli.common import SENTENCE_ID, emit, open_store, settings_from, store_options
from clusterer.cli.ray_option import ray_option, with_ray
from clusterer.cli.where import where_option, where_value

LINE_COUNT_LIMIT = 2 << 30


def _count_lines(path: str) -> int | None:
    """Lines in a regular file (for the progress bar's total), None for stdin or huge files."""
    if path == "-" or not os.path.isfile(path) or os.path.getsize(path) > LINE_COUNT_LIMIT:
        return None
    count = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def _progress_bar(desc: str, total: int | None):
    from tqdm import tqdm

    return tqdm(
        desc=desc,
        total=total,
        unit=" sent",
        unit_scale=True,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=None if not os.environ.get("CLUSTERER_PROGRESS") else False,
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "text", "csv", "tsv", "jsonl"]),
    default="auto",
    show_default=True,
    help="Input format; auto picks by suffix (.csv .tsv .jsonl, else text).",
)
@click.option("--text-column", default="text", show_default=True, help="CSV/TSV column holding the sentence.")
@click.option("--text-field", default="text", show_default=True, help="JSONL field holding the sentence.")
@click.option("--skip-invalid", is_flag=True, help="Skip and count bad records instead of stopping.")
@click.option(
    "--near-duplicates-threshold",
    "near_dups",
    type=click.FloatRange(-1.0, 1.0),
    default=None,
    metavar="T",
    help="Skip a sentence whose nearest stored sentence (or an earlier one of the batch) has cosine >= T.",
)
@ray_option
@store_options
def ingest(inputs, fmt, text_column, text_field, skip_invalid, near_dups, as_json, ray_address, **kwargs):
    """Embed and store sentences from files (one per line, CSV, JSONL) or - for stdin."""
    settings = with_ray(settings_from(kwargs), ray_address)
    reports = []
    on_ray = None
    if settings.ray_address:
        from clusterer.distributed.ray_ingest import ingest_on_ray
        from clusterer.distributed.ray_read import ReadOptions

        total = sum(_count_lines(p) or 0 for p in inputs) or None
        with _progress_bar(f"ray {settings.ray_address}", total) as bar:
            on_ray = ingest_on_ray(
                settings,
                inputs,
                read=ReadOptions(fmt, text_column, text_field, skip_invalid),
                near_duplicates=near_dups,
                progress=bar.update,
            )
        reports = on_ray.reports
    else:
        with open_store(settings, create=True) as store:
            for path in inputs:
                with _progress_bar(os.path.basename(path) if path != "-" else "<stdin>", _count_lines(path)) as bar:
                    report = store.ingest_file(
                        path,
                        format=fmt,
                        text_column=text_column,
                        text_field=text_field,
                        skip_invalid=skip_invalid,
                        progress=bar.update,
                        near_duplicates=near_dups,
                    )
                reports.append(report)
    data = {
        "inputs": [r.to_dict() for r in reports],
        "added": sum(r.added for r in reports),
        "duplicates": sum(r.duplicates for r in reports),
        "near_duplicates": sum(r.near_duplicates for r in reports),
        "empty": sum(r.empty for r in reports),
        "invalid": sum(r.invalid for r in reports),
    }
    if on_ray is not None:
        data["ray"] = on_ray.to_dict()

    def human(d):
        for r in reports:
            line = (
                f"{r.source}: {r.added} added, {r.duplicates} duplicates, "
                f"{f'{r.near_duplicates} near-duplicates, ' if near_dups is not None else ''}{r.empty} empty"
                f"{f', {r.invalid} invalid skipped' if r.invalid else ''} "
                f"({r.rate:,.0f} sentences/s)"
            )
            click.echo(line)
            for err in r.errors:
                click.echo(f"  skipped: {err}", err=True)
            if r.upkeep.get("message"):
                click.echo(f"upkeep: {r.upkeep['message']} (run {r.upkeep['run']}, {r.upkeep['seconds']:.1f}s)")
        if on_ray is not None:
            c = on_ray.cluster
            click.echo(
                f"ray {c.address}: {c.nodes} nodes, {on_ray.workers} embedding workers, {on_ray.seconds:.1f} s",
                err=True,
            )

    emit(data, as_json, human)


@click.command()
@store_options
def stats(as_json, **kwargs):
    """Sentences, duplicates skipped, model, and the state of the index."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        data = store.stats()

    def human(d):
        idx = d["index"]
        click.echo(f"sentences:          {d['sentences']:,}")
        click.echo(f"duplicates skipped: {d['duplicates_skipped']:,}")
        if d.get("near_duplicates_skipped"):
            click.echo(f"near-dups skipped:  {d['near_duplicates_skipped']:,}")
        click.echo(f"empty skipped:      {d['empty_skipped']:,}")
        click.echo(f"invalid skipped:    {d['invalid_skipped']:,}")
        click.echo(f"model:              {d['model']} ({d['dimension']}-d)")
        click.echo(f"database:           {d['database']}")
        click.echo(
            f"index:              {idx['type']}, {idx['indexed']:,} vectors, "
            f"{idx['bytes']:,} bytes, watermark {idx['watermark']}, {idx['pending']} pending"
            f"{', DIRTY' if idx['dirty'] else ''}{', DAMAGED (run verify --repair)' if idx.get('damaged') else ''}"
        )
        if d.get("read_only"):
            click.echo("read-only:          yes (reads work; writes need a writable data folder)")

    emit(data, as_json, human)


@click.command()
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many neighbours.")
@where_option
@store_options
def search(text, k, where, as_json, **kwargs):
    """The stored sentences most similar to TEXT."""
    settings = settings_from(kwargs)
    with open_store(settings) as store:
        hits = store.search(text, k, where=where_value(where))
    data = {"query": text, "where": list(where), "hits": [h.to_dict() for h in hits]}

    def human(d):
        for h in hits:
            click.echo(f"{h.similarity:.3f}  [{h.id}] {h.text}")

    emit(data, as_json, human)


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="First bring the index file in line with the database (replay what is missing; rebuild only a "
    "damaged file), then check.",
)
@store_options
def verify(repair, as_json, **kwargs):
    """Check that the index file and the database agree (exit 1 if not)."""
    settings = settings_from(kwargs)
    repaired = None
    with open_store(settings, recover=False) as store:
        if repair:
            repaired = store.repair()
        report = store.verify()
    data = report.to_dict()
    if repaired is not None:
        data["repair"] = repaired

    def human(d):
        if repaired is not None and repaired["action"] != "none":
            click.echo(
                f"repair: {repaired['action']} ({repaired['added']:,} added, {repaired['removed']:,} removed, "
                f"{repaired['seconds']:.2f} s)"
            )
        if report.ok:
            click.echo(f"OK: {report.sentences:,} sentences, {report.indexed:,} indexed (watermark {report.watermark})")
        for p in report.problems:
            click.echo(f"problem: {p}")

    emit(data, as_json, human)
    if not report.ok:
        sys.exit(1)


@click.command("rebuild-index")
@store_options
def rebuild_index(as_json, **kwargs):
    """Rebuild the FAISS file from the stored embeddings (no re-embedding)."""
    settings = settings_from(kwargs)
    with open_store(settings, recover=False) as store:
        data = store.rebuild_index()
    emit(
        data,
        as_json,
        lambda d: click.echo(f"rebuilt {d['index_type']} index of {d['indexed']:,} vectors in {d['seconds']:.2f} s"),
    )


@click.command()
@click.argument("ids", nargs=-1, type=SENTENCE_ID, required=True)
@store_options
def delete(ids, as_json, **kwargs):
    """Remove sentences by id from the database and the index."""
    settings = settings_from(kwargs)
    with open_store(settings) as store:
        removed = store.delete(ids)
    missing = sorted(set(ids) - set(removed))
    data = {"deleted": removed, "not_found": missing}

    def human(d):
        click.echo(
            f"deleted {len(removed)} sentence(s)" + (f"; not found: {', '.join(map(str, missing))}" if missing else "")
        )

    emit(data, as_json, human)
    if missing and not removed:
        sys.exit(1)


COMMANDS = [ingest, stats, search, verify, rebuild_index, delete]
