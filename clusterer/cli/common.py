"""What every command shares: store options, output as text or JSON, error handling."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from clusterer.settings import Settings


def store_options(f: Callable) -> Callable:
    """--data-dir, --db, --model, --device and --json, on every command."""
    options = [
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Data folder with the SQLite database and FAISS file [env CLUSTERER_DATA_DIR; default ./clusterer-data].",
        ),
        click.option(
            "--db",
            "db",
            default=None,
            metavar="URL",
            help="SQLAlchemy database URL instead of the SQLite file [env CLUSTERER_DB].",
        ),
        click.option(
            "--model",
            default=None,
            help="sentence-transformers model name or path [env CLUSTERER_MODEL; default: bundled all-MiniLM-L6-v2].",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=None,
            help="Where to embed and search [env CLUSTERER_DEVICE; default auto].",
        ),
        click.option(
            "--json", "as_json", is_flag=True, help='Print one JSON document for scripts (errors too: {"error": ...}).'
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def settings_from(kwargs: dict[str, Any]) -> Settings:
    return Settings.resolve(
        {
            "data_dir": kwargs.pop("data_dir", None),
            "db": kwargs.pop("db", None),
            "model": kwargs.pop("model", None),
            "device": kwargs.pop("device", None),
        }
    )


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


MAX_SENTENCE_ID = 2**63 - 1
MAX_SMALL_ID = 2**31 - 1
DEBUG_ENV = "CLUSTERER_DEBUG"
_NEGATIVE_NUMBER = re.compile(r"-\d+")


class IdType(click.ParamType):
    """A stored id: a whole number from 0 to the largest the database column holds."""

    name = "id"

    def __init__(self, what: str, maximum: int):
        self.what = what
        self.maximum = maximum

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not a {self.what} id: ids are whole numbers", param, ctx)
        if not 0 <= number <= self.maximum:
            self.fail(f"{value} is not a {self.what} id: ids go from 0 to {self.maximum:,}", param, ctx)
        return number


SENTENCE_ID = IdType("sentence", MAX_SENTENCE_ID)
CLUSTER_ID = IdType("cluster", MAX_SMALL_ID)
RUN_ID = IdType("run", MAX_SMALL_ID)


def library_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    from clusterer import errors

    return (*errors.library_errors(), SQLAlchemyError, OSError)


def one_line(message: object) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def describe_error(exc: BaseException) -> str:
    """One line for a user: what failed and, where there is one, the file or database."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return one_line(f"database error: {orig or exc}")
    if isinstance(exc, OSError) and exc.filename:
        return one_line(f"{exc.filename}: {exc.strerror}")
    if isinstance(exc, library_errors()):
        return one_line(exc)
    return one_line(
        f"internal error ({type(exc).__name__}: {exc}); run with --debug or {DEBUG_ENV}=1 for the traceback"
    )


def _before_double_dash(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")] if "--" in argv else argv


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in _before_double_dash(argv) or os.environ.get(DEBUG_ENV, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )


def _usage_message(exc: click.UsageError) -> str:
    if isinstance(exc, click.NoSuchOption) and _NEGATIVE_NUMBER.fullmatch(exc.option_name or ""):
        return f"{exc.option_name} is not an id: ids are whole numbers from 0 up"
    where = exc.ctx.command_path if exc.ctx is not None else "clusterer"
    return f"{one_line(exc.format_message())} (see '{where} --help')"


class CLIGroup(click.Group):
    """Turns every failure into one line (or ``{"error": ...}`` with --json) and an exit code:
    1 for errors, 2 for usage errors; ``--debug`` (or CLUSTERER_DEBUG=1) shows tracebacks."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                help=f"Show the full traceback of an error [env {DEBUG_ENV}=1].",
            )
        )

    def _subcommand(self, argv: list[str]) -> str | None:
        for arg in _before_double_dash(argv):
            if arg in self.commands:
                return arg
        return None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in _before_double_dash(argv)
        code = 0
        try:
            rv = super().main(argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
        except click.Abort:
            click.echo("Aborted!", err=True)
            code = 1
        except click.UsageError as exc:
            code = self._fail(_usage_message(exc), exc.exit_code, as_json, argv)
        except click.ClickException as exc:
            code = self._fail(one_line(exc.format_message()), exc.exit_code, as_json, argv)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        except Exception as exc:
            if debug_enabled(argv):
                raise
            message = describe_error(exc)
            partial = getattr(exc, "partial_report", None)
            if partial is not None and partial.added:
                message += f" ({partial.added} sentences before it were stored)"
            code = self._fail(message, 1, as_json, argv)
        if standalone_mode:
            sys.exit(code)
        return code

    def _fail(self, message: str, code: int, as_json: bool, argv: list[str]) -> int:
        if as_json:
            click.echo(json.dumps({"error": message, "command": self._subcommand(argv)}, ensure_ascii=False))
        else:
            click.echo(f"Error: {message}", err=True)
        return code
