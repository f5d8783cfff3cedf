"""``clusterer serve``: the store over HTTP, with the model resident and a web page at /."""

from __future__ import annotations

import click

from clusterer.cli.common import open_store, settings_from, store_options


@click.command()
@click.option(
    "--host",
    default=None,
    help="Address to listen on [env CLUSTERER_HOST; default 127.0.0.1]. Any other than loopback needs a token.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [env CLUSTERER_PORT; default 8000].")
@click.option(
    "--token", default=None, help="Bearer token every request except /healthz must carry [env CLUSTERER_TOKEN]."
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="Allow browser pages from this origin to call the API (repeatable) [default: none].",
)
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="Texts per request at most [1000].")
@click.option("--max-text", type=click.IntRange(min=1), default=None, help="Characters per text at most [10000].")
@click.option("--max-body", type=click.IntRange(min=1024), default=None, help="Request body bytes at most [8 MiB].")
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=None,
    help="Writes waiting at most; more get 503 with Retry-After [64].",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@store_options
def serve(host, port, token, cors_origins, max_batch, max_text, max_body, queue_size, log_level, as_json, **kwargs):
    """Serve the store over HTTP: JSON API (OpenAPI at /docs), metrics, and a web page at /.

    Writes go through one writer thread that takes the data folder's writer lock for each
    batch, so CLI commands on the same folder keep working; reads run in parallel.
    """
    from clusterer.server.security import check_bind
    from clusterer.settings import ServerSettings

    server = ServerSettings.resolve(
        {
            "host": host,
            "port": port,
            "token": token,
            "cors_origins": cors_origins,
            "max_batch": max_batch,
            "max_text": max_text,
            "max_body": max_body,
            "queue_size": queue_size,
        }
    )
    refusal = check_bind(server.host, server.token)
    if refusal:
        raise click.UsageError(refusal)
    settings = settings_from(kwargs)
    import uvicorn

    from clusterer.server.app import create_app

    store = open_store(settings, create=True)
    app = create_app(store, server)
    click.echo(
        f"serving {settings.data_dir} on http://{server.host}:{server.port}/ "
        f"(API docs at /docs{', token required' if server.token else ''})",
        err=True,
    )
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=30,
        server_header=False,
    )


COMMANDS = [serve]
