"""Writer processes for tests/test_crash.py and tests/test_incremental.py, which kill them with SIGKILL.

    python -m tests.crash_worker serve

reads commands ``MODE DATA_DIR INPUT_FILE PROGRESS_FILE`` from standard input, one a line.
For each it forks a child (so the imports are paid once, not twenty times) that
prints ``ready PID`` once its store is open and then does the work; when the
child ends the server prints ``exit PID CODE`` (CODE is -9 after a SIGKILL).
Modes, all with the FakeEncoder (no model):

``ingest``  ingest INPUT_FILE with batch_size 500, appending to PROGRESS_FILE the running
            count of records whose batch was committed (the progress callback runs
            after each batch's commit);
``assign``  the same through ``clusterer.api.Store`` with batch_size 50, so every batch is
            assigned to the latest clustering run in the transaction that stores it;
``rebuild`` rebuild_index() again and again, one line per finished rebuild;
``delete``  delete a few ids at a time, one line with the removed ids per finished call.

Progress lines are written unbuffered, only after the work they report is committed.
"""

from __future__ import annotations

import os
import sys

import indexer.sentence_store as store_module
from tests.fakes import FakeEncoder

store_module.make_encoder = lambda *a, **k: FakeEncoder()


def main(mode: str, data_dir: str, input_file: str, progress_file: str) -> None:
    fd = os.open(progress_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(line: str) -> None:
        os.write(fd, (line + "\n").encode())  # unbuffered: survives SIGKILL

    if mode == "assign":
        from clusterer.api import Store

        store = Store(data_dir, batch_size=50, lock_timeout=30)
    else:
        store = store_module.SentenceStore(data_dir, batch_size=500, lock_timeout=30)
    print(f"ready {os.getpid()}", flush=True)
    if mode in ("ingest", "assign"):
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            note(str(done[0]))

        report = store.ingest_file(input_file, progress=progress)
        print(f"done added={report.added}", flush=True)
    elif mode == "rebuild":
        for i in range(1000):
            store.rebuild_index()
            note(str(i))
    elif mode == "delete":
        ids = store.index.ids()
        ids.sort()
        for start in range(0, len(ids), 40):
            chunk = [int(i) for i in ids[start : start + 40 : 4]]
            removed = store.delete(chunk)
            note(" ".join(map(str, removed)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    store.close()


def serve() -> None:
    import alembic.command
    import alembic.runtime.migration
    import alembic.script  # noqa: F401
    import faiss  # noqa: F401

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
            except BaseException:  # noqa: BLE001 (the forked child reports any failure, then exits)
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
