"""Where the Ray work runs: the address, the connection for one command, and the cluster's facts.

``local`` starts a Ray instance inside this command (bound to 127.0.0.1, no dashboard) and stops
it afterwards; any other value is the address of a running cluster (``ray start --head`` prints
it), reached over TCP first so that a wrong address is one clear error instead of a long hang.
A process already connected to Ray (a test, a notebook) keeps its connection and is not shut down.

ray is imported here and only here, when a command asks for it.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from clusterer.errors import ClustererError

LOCAL = "local"
INSTALL_HINT = "Ray is not installed: pip install 'clusterer[ray]' (or '.[ray]' from a checkout)"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONNECT_CHECK_S = 5.0
LOCAL_OBJECT_STORE = 256 << 20
"""Object store of a ``local`` instance: batches stream through it, so it stays small."""


class RayUnavailableError(ClustererError):
    """Ray is not installed, or the cluster at the given address cannot be reached."""


def import_ray() -> Any:
    """The ray module, or :class:`RayUnavailableError` with the install command."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RayUnavailableError(INSTALL_HINT) from None


def _host_port(address: str) -> tuple[str, int]:
    address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailableError(f"not a Ray address: {address!r} (give local or HOST:PORT, e.g. 10.0.0.5:6379)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_CHECK_S) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address}: {reason}") from None


@dataclass
class RayCluster:
    """The cluster a command ran on: how many nodes, CPUs and GPUs it had."""

    address: str
    nodes: int
    cpus: float
    gpus: float
    node_ips: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "nodes": self.nodes,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "node_ips": self.node_ips,
        }


def describe_cluster(address: str) -> RayCluster:
    ray = import_ray()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in alive)
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in alive)
    return RayCluster(address, len(alive), cpus, gpus, sorted(str(n.get("NodeManagerAddress")) for n in alive))


@contextmanager
def ray_session(address: str, *, num_cpus: int | None = None) -> Iterator[RayCluster]:
    """Connected to Ray for the duration: a fresh local instance for ``local``, else the
    cluster at ``address``; yields what the cluster has."""
    host = "127.0.0.1" if address == LOCAL else _host_port(address)[0]
    if host in LOOPBACK and "ray" not in sys.modules:
        # Ray rewrites a loopback address to the machine's address unless told it runs on one
        # machine: a local instance then binds 127.0.0.1, and a head started with
        # --node-ip-address 127.0.0.1 can be reached.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if ray.is_initialized():
        _quiet_data(ray)
        yield describe_cluster(address)
        return
    if address == LOCAL:
        ray.init(
            address="local",  # a new instance, never one found through RAY_ADDRESS or /tmp/ray
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    else:
        check_reachable(address)
        ray.init(address=address.removeprefix("ray://"), log_to_driver=False, logging_level=logging.WARNING)
    try:
        _quiet_data(ray)
        yield describe_cluster(address)
    finally:
        ray.shutdown()


def _quiet_data(ray: Any) -> None:
    """Our progress bar, not Ray Data's (which would interleave with it on stderr)."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-dataset notices, too
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
