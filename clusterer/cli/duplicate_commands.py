"""The duplicates command: near-duplicate groups, their export, and removing all but one."""

from __future__ import annotations

import contextlib
import csv
import json
import sys

import click

from clusterer.cli.common import emit, open_store, settings_from, store_options
from clusterer.cli.where import where_option, where_value


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _write(report, fmt: str, output: str) -> int:
    target = contextlib.nullcontext(sys.stdout) if output == "-" else open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    rows = 0
    with target as out:
        writer = csv.writer(out) if fmt == "csv" else None
        if writer:
            writer.writerow(["group", "id", "similarity", "text", "metadata", "source", "line"])
        for n, group in enumerate(report.items, 1):
            for m in group.members:
                if writer:
                    writer.writerow(
                        [
                            n,
                            m.id,
                            m.similarity,
                            m.text,
                            json.dumps(m.metadata, ensure_ascii=False) if m.metadata else "",
                            m.source or "",
                            "" if m.line is None else m.line,
                        ]
                    )
                else:
                    out.write(
                        json.dumps(
                            {
                                "group": n,
                                "id": m.id,
                                "similarity": m.similarity,
                                "text": m.text,
                                "metadata": m.metadata,
                                "source": m.source,
                                "line": m.line,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                rows += 1
    return rows


@click.command()
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=0.95,
    show_default=True,
    help="Cosine similarity to a group's first member at or above which a sentence joins it.",
)
@where_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Report (and delete from) only the N largest groups."
)
@click.option(
    "--search",
    type=click.Choice(["auto", "exact", "approximate"]),
    default="auto",
    show_default=True,
    help="Range search: exact, IVF (approximate), or auto = exact up to 50,000 sentences.",
)
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="Approximate search: IVF lists probed [16].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Write the groups, one member per row, instead of the summary.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="File for --format (default: standard output).",
)
@click.option(
    "--delete-keep",
    type=click.Choice(["first", "longest"]),
    default=None,
    help="Delete every member but one per group: the first (earliest) or the longest text.",
)
@click.option("--yes", is_flag=True, help="Delete without asking.")
@store_options
def duplicates(threshold, where, limit, search, nprobe, fmt, output, delete_keep, yes, as_json, **kwargs):
    """Groups of near-duplicate sentences, largest first.

    Each group is a first member (its earliest sentence) and every later sentence whose cosine
    similarity to it is at or above --threshold and that no earlier group took (star groups:
    no chaining through intermediate sentences).
    """
    from clusterer.service.duplicates import deletion_plan

    settings = settings_from(kwargs)
    with open_store(settings, recover=delete_keep is not None) as store:
        report = store.duplicates(threshold, where=where_value(where), limit=limit, search=search, nprobe=nprobe)
        data = report.to_dict()
        if fmt is not None:
            written = _write(report, fmt, output)
            if output != "-":
                click.echo(
                    f"wrote {report.groups if limit is None else len(report.items)} groups "
                    f"({written} rows) to {output}",
                    err=True,
                )
        if delete_keep is not None:
            plan = deletion_plan(report, delete_keep)
            doomed = [i for g in plan for i in g]
            deleted: list[int] = []
            if doomed:
                if not as_json or not yes:
                    _describe_plan(report, plan, delete_keep, err=as_json or fmt is not None)
                if yes or click.confirm(f"Delete these {len(doomed)} sentences?", default=False, err=True):
                    deleted = store.delete_duplicates(report, delete_keep)
            data["deleted"] = deleted
            data["delete_keep"] = delete_keep
            if not deleted and doomed:
                click.echo("nothing deleted", err=True)
    if fmt is not None and output == "-":
        return

    def human(d):
        click.echo(
            f"{report.groups:,} groups of near-duplicates (threshold {report.threshold}, {report.search}) "
            f"among {report.sentences:,} sentences"
            + (f" where {' and '.join(report.where)}" if report.where else "")
            + f": {report.in_groups:,} sentences in groups, {report.removable:,} beyond the first of each"
        )
        if delete_keep is None:
            for n, group in enumerate(report.items, 1):
                click.echo(f"group {n} ({group.size} sentences)")
                for m in group.members:
                    meta = f"  {json.dumps(m.metadata, ensure_ascii=False)}" if m.metadata else ""
                    click.echo(f"  {m.similarity:.3f}  [{m.id}] {_short(m.text)}{meta}")
        elif d.get("deleted"):
            click.echo(f"deleted {len(d['deleted'])} sentences")

    emit(data, as_json, human)


def _describe_plan(report, plan, keep: str, err: bool) -> None:
    click.echo(f"will delete {sum(len(g) for g in plan)} sentences, keeping the {keep} of each group:", err=err)
    for group, drop in zip(report.items, plan):
        by_id = {m.id: m for m in group.members}
        kept = next(m for m in group.members if m.id not in drop)
        click.echo(f"  keep   [{kept.id}] {_short(kept.text)}", err=err)
        for i in drop:
            click.echo(f"  delete [{i}] {_short(by_id[i].text)} ({by_id[i].similarity:.3f})", err=err)


COMMANDS = [duplicates]
