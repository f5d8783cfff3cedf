"""``--ray ADDRESS``: the option of the commands that can run on a Ray cluster (ingest, cluster)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import click

from clusterer.settings import Settings


def ray_option(f: Callable) -> Callable:
    return click.option(
        "--ray",
        "ray_address",
        default=None,
        metavar="ADDRESS",
        help="Run on Ray: local (a Ray started for this command) or a cluster's HOST:PORT "
        "[env CLUSTERER_RAY_ADDRESS]; needs pip install '.[ray]'.",
    )(f)


def with_ray(settings: Settings, ray_address: str | None) -> Settings:
    """``settings`` with the ``--ray`` value, which wins over CLUSTERER_RAY_ADDRESS."""
    return replace(settings, ray_address=ray_address) if ray_address else settings
