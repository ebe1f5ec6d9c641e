"""A reusable pool of killable worker processes with a wall-clock bound per job.

Why not concurrent.futures: its workers cannot be killed one at a time, so one sympy call
that never returns stalls the pool forever. Here each worker is driven by one parent thread
that waits on a pipe with a deadline; on overrun the worker is killed and replaced, the job
is reported as a timeout and the rest of its chunk carries on in the new worker. The pool
works from any thread or event loop (no signals); workers are spawned fresh interpreters.
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

TIMEOUT = ("timeout", None)
STARTUP_S = 120.0  # a cold worker imports sympy; on a loaded 2-core box that can take a while


def _resolve(spec: str) -> Callable[[Any], Any]:
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _worker_main(rx: Connection, tx: Connection, spec: str) -> None:
    # a terminal's Ctrl-C reaches the whole process group: the parent decides when its
    # workers stop (it closes their pipes), and each would otherwise print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fn = _resolve(spec)
    warm_up = getattr(importlib.import_module(spec.partition(":")[0]), "warm_up", None)
    if warm_up is not None:
        warm_up()  # pay import/first-parse cost before any job's clock starts
    tx.send("ready")
    while True:
        try:
            jobs = rx.recv()
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        for idx, job in jobs:
            try:
                tx.send((idx, "ok", fn(job)))
            except Exception as err:  # report, never die on a bad job
                tx.send((idx, "error", f"{type(err).__name__}: {err}"[:500]))


class _Slot:
    """One worker process plus the pipes to it; replaced when killed.

    Workers are fresh interpreters (`python -m thinkwheel.verifiers.math_pool`), i.e. the
    spawn model without multiprocessing's re-import of the caller's __main__ module, so
    the pool also works from scripts that lack an `if __name__ == "__main__"` guard.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.start()

    def start(self) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thinkwheel.verifiers.math_pool", self.spec,
             str(down_r), str(up_w)],
            pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL, env=env,
        )
        os.close(down_r)
        os.close(up_w)
        self.tx = Connection(down_w, readable=False)
        self.rx = Connection(up_r, writable=False)
        if not self.rx.poll(STARTUP_S) or self.rx.recv() != "ready":
            self.proc.kill()
            raise RuntimeError(f"worker for {self.spec} did not start within {STARTUP_S}s")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.tx.close()
        self.rx.close()

    def restart(self) -> None:
        self.kill()
        self.start()

    def run(self, jobs: list[tuple[int, Any]], timeout_s: float, out: list[Any]) -> None:
        """Run a chunk; each job gets `timeout_s` from the moment the previous one finished."""
        pending = list(jobs)
        while pending:
            try:
                self.tx.send(pending)
            except OSError:
                self.restart()
                self.tx.send(pending)
            while pending:
                if not self.rx.poll(timeout_s):
                    out[pending[0][0]] = TIMEOUT
                    pending = pending[1:]
                    self.restart()
                    break
                try:
                    idx, status, value = self.rx.recv()
                except (EOFError, OSError):
                    out[pending[0][0]] = ("error", "worker died")
                    pending = pending[1:]
                    self.restart()
                    break
                out[idx] = (status, value)
                pending = [p for p in pending if p[0] != idx]


class WorkerPool:
    """`map(jobs, timeout_s)` -> one (status, value) per job; status is ok | error | timeout."""

    def __init__(self, spec: str, workers: int = 2) -> None:
        self.spec = spec
        self.slots = [_Slot(spec) for _ in range(max(1, workers))]
        self._lock = threading.Lock()

    def map(self, jobs: Sequence[Any], timeout_s: float, chunk: int = 16) -> list[Any]:
        out: list[Any] = [("error", "not run")] * len(jobs)
        chunks: queue.Queue[list[tuple[int, Any]]] = queue.Queue()
        items = list(enumerate(jobs))
        size = max(1, min(chunk, len(items) // (len(self.slots) * 2) or 1))
        for i in range(0, len(items), size):
            chunks.put(items[i : i + size])

        def drive(slot: _Slot) -> None:
            while True:
                try:
                    batch = chunks.get_nowait()
                except queue.Empty:
                    return
                slot.run(batch, timeout_s, out)

        with self._lock:  # one map at a time per pool; callers on other threads wait
            threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in self.slots]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return out

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.tx.send(None)
                slot.proc.wait(1)
            except (OSError, subprocess.TimeoutExpired):
                pass
            slot.kill()


_SHARED: dict[tuple[str, int], WorkerPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(spec: str, workers: int) -> WorkerPool:
    """A process-wide pool per (job function, size), reused across calls and closed at exit."""
    with _SHARED_LOCK:
        key = (spec, workers)
        if key not in _SHARED:
            _SHARED[key] = WorkerPool(spec, workers)
        return _SHARED[key]


@atexit.register
def _close_shared() -> None:
    for pool in _SHARED.values():
        pool.close()
    _SHARED.clear()


if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[2]), writable=False),
                 Connection(int(sys.argv[3]), readable=False), sys.argv[1])
