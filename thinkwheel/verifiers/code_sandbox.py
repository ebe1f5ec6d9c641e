"""Run untrusted Python in a limited, isolated process and read back a trusted verdict.

Each sandbox worker is one warm fork server (`python -I [-S] code_harness.py`, scrubbed
environment) started once and reused; every check is a fresh fork of that clean server in
its own throw-away temp dir, with rlimits on memory, CPU, file size and open files and the
harness's audit-hook guard (see code_harness.py). Network isolation, decided once per
process by `isolation()`:
- "netns": the server runs under `unshare --user --map-root-user --net --pid --fork
  --kill-child`: no network interfaces but loopback-down, its own pid namespace (checks
  cannot see or signal host processes; the server, as its pid 1, kills anything a check
  leaves behind), and everything in it dies with it;
- "audit": unshare is not permitted here; sockets are refused by the harness's audit hook.
The mode is reported in every verdict's detail. Pass is judged from the sentinel line the
harness writes after all tests, never from the exit code. A server that dies or stops
answering is killed and replaced; the check in flight fails.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import queue
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HARNESS = str(Path(__file__).with_name("code_harness.py"))
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
MAX_OUTPUT = 64 * 1024  # bytes of program output kept for the verdict detail
STARTUP_S = 30.0  # a cold server on a loaded 2-core box
SLACK_S = 5.0  # the server enforces the deadline; we give up on the server only after this


@dataclass(frozen=True)
class Limits:
    test_timeout_s: float = 5.0
    timeout_s: float = 10.0  # wall clock for the whole candidate
    memory_mb: int = 1024
    fsize_mb: int = 16
    site_packages: bool = False  # -S: stdlib only, faster start, less to attack


@dataclass(frozen=True)
class RunResult:
    passed: int
    total: int
    status: str  # ok | timeout | no_sentinel | unsafe | error (the sandbox itself failed)
    detail: str
    seconds: float
    per_test: tuple[bool, ...] | None = None  # each test's outcome, when the run finished


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """"netns" when an unprivileged network+pid namespace works here, else "audit"."""
    if shutil.which("unshare") is None:
        return "audit"
    try:
        r = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "audit"
    return "netns" if r.returncode == 0 else "audit"


class _Server:
    """One warm fork server and the pipes to it (length-prefixed JSON frames)."""

    def __init__(self, site_packages: bool) -> None:
        self.mode = isolation()
        cmd = [sys.executable, "-I"] + ([] if site_packages else ["-S"]) + [HARNESS]
        if self.mode == "netns":
            cmd = _UNSHARE + cmd
        self.proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env=_ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        reply = self._recv(time.monotonic() + STARTUP_S)
        if not (isinstance(reply, dict) and reply.get("ready")):
            self.close()
            raise RuntimeError("sandbox server did not start")

    def _recv(self, deadline: float) -> Any:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]

        def read(n: int) -> bytes | None:
            buf = b""
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    return None
                buf += chunk
            return buf

        head = read(4)
        body = None if head is None else read(struct.unpack(">I", head)[0])
        return None if body is None else json.loads(body)

    def check(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The server's answer, or None when it died or hung (it is then closed)."""
        data = json.dumps(request).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            self.close()
            return None
        reply = self._recv(time.monotonic() + timeout_s + SLACK_S)
        if not isinstance(reply, dict):
            self.close()
            return None
        return reply

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:
                pass


_IDLE: dict[bool, list[_Server]] = {False: [], True: []}
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 8  # servers kept warm per flavour; a thread takes one per check


def _acquire(site_packages: bool) -> _Server:
    with _IDLE_LOCK:
        idle = _IDLE[site_packages]
        while idle:
            server = idle.pop()
            if server.alive():
                return server
            server.close()
    return _Server(site_packages)


def _release(server: _Server, site_packages: bool) -> None:
    if not server.alive():
        return
    with _IDLE_LOCK:
        if len(_IDLE[site_packages]) < MAX_IDLE:
            _IDLE[site_packages].append(server)
            return
    server.close()


_TRASH: queue.Queue[str] = queue.Queue()
_JANITOR: list[threading.Thread] = []
MAX_TRASH = 256  # past this backlog, callers remove their own temp dirs


def _janitor() -> None:
    while True:
        shutil.rmtree(_TRASH.get(), ignore_errors=True)
        _TRASH.task_done()


def _discard(root: str) -> None:
    """Remove a check's temp dir off the critical path (rmdir costs ms on ext4 here)."""
    with _IDLE_LOCK:
        if not _JANITOR:
            _JANITOR.append(threading.Thread(target=_janitor, name="tw-sbx-janitor", daemon=True))
            _JANITOR[0].start()
    if _TRASH.qsize() >= MAX_TRASH:
        shutil.rmtree(root, ignore_errors=True)
    else:
        _TRASH.put(root)


@atexit.register
def close_servers() -> None:
    """Stop every idle sandbox server (also run at exit)."""
    with _IDLE_LOCK:
        servers = [s for idle in _IDLE.values() for s in idle]
        for idle in _IDLE.values():
            idle.clear()
    for server in servers:
        server.close()
    if _JANITOR:
        _TRASH.join()  # every temp dir is gone before the process exits


def _parse(out: bytes, nonce: str, total: int) -> tuple[tuple[bool, ...], int, str] | None:
    """(per-test outcomes, violations, detail) from the pass line, or None if it is absent or
    inconsistent (a count that disagrees with the outcomes is a forgery)."""
    at = out.rfind(("\n" + nonce + " ").encode())
    if at == -1:
        return None
    fields = out[at + 1 :].decode(errors="replace").split("\n", 1)[0].split(" ", 5)
    try:
        passed, n, violations, bits = int(fields[1]), int(fields[2]), int(fields[3]), fields[4]
    except (IndexError, ValueError):
        return None
    bits = "" if bits == "-" else bits
    if n != total or len(bits) != n or set(bits) - {"0", "1"} or bits.count("1") != passed:
        return None
    return tuple(b == "1" for b in bits), violations, fields[5] if len(fields) > 5 else ""


def run_tests(code: str, tests: list[str], limits: Limits = Limits()) -> RunResult:
    """Run `code` then each test in a sandbox; count passes from the harness's sentinel."""
    start = time.perf_counter()
    nonce = secrets.token_hex(16)
    payload = {"code": code, "tests": list(tests), "nonce": nonce,
               "test_timeout_s": limits.test_timeout_s, "cpu_s": int(limits.timeout_s) + 1,
               "memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb}
    mode = isolation()
    root = tempfile.mkdtemp(prefix="tw-sbx-")
    try:
        os.mkdir(os.path.join(root, "work"))
        try:
            server = _acquire(limits.site_packages)
        except (OSError, RuntimeError) as err:
            return RunResult(0, len(tests), "error", f"sandbox={mode}; {err}"[:300],
                             time.perf_counter() - start)
        reply = server.check({"dir": root, "payload": payload, "timeout_s": limits.timeout_s},
                             limits.timeout_s)
        _release(server, limits.site_packages)
        out_bytes = b""
        try:
            with open(os.path.join(root, "out"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - MAX_OUTPUT))
                out_bytes = f.read()
        except OSError:
            pass
    finally:
        _discard(root)  # the candidate may have made dirs read-only: rmtree ignores errors
    seconds = time.perf_counter() - start
    status = "timeout" if reply is not None and reply.get("status") == "timeout" else "ok"
    parsed = _parse(out_bytes, nonce, len(tests)) if reply is not None and status == "ok" else None
    tail = out_bytes[-400:].decode(errors="replace").replace(nonce, "<nonce>")
    where = f"sandbox={mode}"
    if status == "timeout":
        return RunResult(0, len(tests), "timeout", f"{where}; over {limits.timeout_s}s", seconds)
    if parsed is None:
        exit_code = "server died" if reply is None else reply.get("exit")
        return RunResult(0, len(tests), "no_sentinel",
                         f"{where}; exit={exit_code}; no pass line; output: {tail}", seconds)
    per_test, violations, detail = parsed
    if violations:
        return RunResult(0, len(tests), "unsafe", f"{where}; {detail}", seconds)
    return RunResult(sum(per_test), len(tests), "ok", f"{where}; {detail}", seconds, per_test)
