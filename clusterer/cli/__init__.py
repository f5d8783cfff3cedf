"""The ``clusterer`` admin command line."""

from __future__ import annotations

import click

from clusterer.cli.common import CLIGroup


@click.group(cls=CLIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clusterer")
def cli() -> None:
    """Cluster sentences at scale: ingest, search, cluster and look up."""


def _register() -> None:
    from clusterer.cli import (
        cluster_commands,
        curation_commands,
        duplicate_commands,
        lookup_commands,
        serve_commands,
        store_commands,
    )

    modules = (store_commands, cluster_commands, lookup_commands, curation_commands, duplicate_commands, serve_commands)
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="clusterer")
