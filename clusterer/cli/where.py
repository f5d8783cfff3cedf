"""The ``--where`` option shared by search, export, cluster and duplicates."""

from __future__ import annotations

from collections.abc import Callable

import click

WHERE_HELP = (
    "Only sentences matching FILTER (repeatable, ANDed): field=value, field!=value, field>=3, "
    "field<2024-06-01, 'field in a,b', field~text; fields: metadata keys (a.b nested), "
    "source, line, id, seq, text, created."
)


def where_option(f: Callable) -> Callable:
    return click.option("--where", "where", multiple=True, metavar="FILTER", help=WHERE_HELP)(f)


def where_value(where: tuple[str, ...]) -> list[str] | None:
    """The option's value as the API takes it (None when not given)."""
    return list(where) if where else None
