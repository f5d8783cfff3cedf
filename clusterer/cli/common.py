"""What every command shares: store options, output as text or JSON, error handling."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from clusterer.settings import Settings


def _remember_json(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta["clusterer.json"] = True
    return value


def store_options(f: Callable) -> Callable:
    """--data-dir, --db, --model, --device and --json, on every command."""
    options = [
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Data folder with the SQLite database and FAISS file [env CLUSTERER_DATA_DIR; default ./clusterer-data]."),
        click.option("--db", "db", default=None, metavar="URL",
                     help="SQLAlchemy database URL instead of the SQLite file [env CLUSTERER_DB]."),
        click.option("--model", default=None,
                     help="sentence-transformers model name or path [env CLUSTERER_MODEL; default: bundled all-MiniLM-L6-v2]."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="Where to embed and search [env CLUSTERER_DEVICE; default auto]."),
        click.option("--json", "as_json", is_flag=True, expose_value=True, callback=_remember_json,
                     is_eager=True, help="Print one JSON document for scripts."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def settings_from(kwargs: dict[str, Any]) -> Settings:
    return Settings.resolve({
        "data_dir": kwargs.pop("data_dir", None),
        "db": kwargs.pop("db", None),
        "model": kwargs.pop("model", None),
        "device": kwargs.pop("device", None),
    })


def open_store(settings: Settings, *, create: bool = False, recover: bool = True):
    from clusterer.api import Store

    return Store.open(settings.data_dir, create=create, recover=recover, **settings.store_kwargs())


def emit(data: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=None))
    elif human is not None:
        human(data)
    else:
        click.echo(json.dumps(data, ensure_ascii=False, default=str, indent=2))


def library_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    from clusterer.errors import ClustererError
    from indexer.errors import IndexerError
    from storage.errors import StorageError

    return (ClustererError, IndexerError, StorageError, SQLAlchemyError, OSError)


def describe_error(exc: BaseException) -> str:
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return f"database error: {orig or exc}".splitlines()[0]
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


class CLIGroup(click.Group):
    """Turns the library's exceptions into one-line messages and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except library_errors() as exc:
            message = describe_error(exc)
            partial = getattr(exc, "partial_report", None)
            if partial is not None and partial.added:
                message += f" ({partial.added} sentences before it were stored)"
            if ctx.meta.get("clusterer.json"):
                click.echo(json.dumps({"error": message, "command": ctx.invoked_subcommand}))
                ctx.exit(1)
            raise click.ClickException(message) from None
