"""Writer processes for tests/test_incremental.py's kill -9 test.

    python -m tests.incremental_crash_worker serve

reads ``ingest DATA_DIR INPUT_FILE PROGRESS_FILE`` lines from standard input and forks one child
per line (imports paid once).  The child opens a ``clusterer.store.Store`` (FakeEncoder) whose
latest run is a community run, prints ``ready PID``, and ingests INPUT_FILE in batches of 50, so
every batch is assigned to the run inside the transaction that stores it; after each commit it
appends the running count of committed records to PROGRESS_FILE (unbuffered).  The server prints
``exit PID CODE`` when the child ends (CODE -9 after SIGKILL).
"""

from __future__ import annotations

import os
import sys

import indexer.store as store_module
from tests.fakes import FakeEncoder

store_module.make_encoder = lambda *a, **k: FakeEncoder()


def main(mode: str, data_dir: str, input_file: str, progress_file: str) -> None:
    from clusterer.store import Store

    fd = os.open(progress_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    store = Store(data_dir, batch_size=50, lock_timeout=30)
    print(f"ready {os.getpid()}", flush=True)
    if mode != "ingest":
        raise SystemExit(f"unknown mode {mode!r}")
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        os.write(fd, f"{done[0]}\n".encode())  # unbuffered: survives SIGKILL

    store.ingest_file(input_file, progress=progress)
    print("done", flush=True)
    store.close()


def serve() -> None:
    import faiss  # noqa: F401

    import clusterer.community  # noqa: F401
    import clusterer.store  # noqa: F401  (paid once here rather than in every child)
    import clusterer.topics  # noqa: F401

    print("serving", flush=True)
    for command in sys.stdin:
        args = command.split()
        if not args:
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                main(*args)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        main(*sys.argv[1:5])
