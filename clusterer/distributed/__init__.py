"""Running past one machine: ingest and clustering on a Ray cluster (needs the ``ray`` extra).

Nothing here imports ray at module level; :mod:`clusterer.distributed.ray_env` does, when a
command asks for Ray.
"""
