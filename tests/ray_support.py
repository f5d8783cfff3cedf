"""Support for the Ray tests: a two-node cluster on loopback, a time guard, worker encoders.

The cluster is ``ray.cluster_utils.Cluster`` with two nodes of one CPU each on 127.0.0.1. Every
test runs under :func:`time_guard` (an alarm that fails the test, then a hard exit with the
stacks should even that not return), so a wedged cluster cannot hang CI.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# one machine: Ray must not rewrite 127.0.0.1 to the machine's address (set before ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]')")

from tests.fakes import FakeEncoder  # noqa: E402

FAKE_FACTORY = "tests.fakes:FakeEncoder"
NODE_OBJECT_STORE = 80 << 20
TEST_SECONDS = 240


@contextmanager
def time_guard(seconds: int = TEST_SECONDS):
    def expired(signum, frame):
        raise TimeoutError(f"Ray test ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    try:
        yield
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def two_node_cluster():
    from ray.cluster_utils import Cluster

    with time_guard(180):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                "object_store_memory": NODE_OBJECT_STORE,
                "node_ip_address": "127.0.0.1",
            },
        )
        cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class KillOnceEncoder(FakeEncoder):
    """The fake encoder, except that the worker process holding it kills itself (SIGKILL) on its
    ``after``-th batch, once per flag file: the restarted worker then carries on."""

    def __init__(self, flag: str, after: int = 3):
        super().__init__()
        self._flag = Path(flag)
        self._after = after
        self._calls = 0

    def encode(self, texts, show_progress: bool = False) -> np.ndarray:
        self._calls += 1
        if self._calls >= self._after and not self._flag.exists():
            self._flag.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode(texts, show_progress)


def sentences(n: int, start: int = 0) -> list[str]:
    topics = ["credit card payment declined", "flight booking cancel refund", "forgot pin code reset"]
    return [f"{topics[i % 3]} case {i} variant {i % 7}" for i in range(start, start + n)]
