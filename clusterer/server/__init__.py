"""``clusterer serve``: the store over HTTP (FastAPI + uvicorn) with a web page.

FastAPI and uvicorn are imported only here, by the serve command, never by the others.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from clusterer.server.app import create_app as factory

    return factory(*args, **kwargs)
