"""A real chat-completions HTTP server on 127.0.0.1, backed by any `Engine`, with fault injection.

Why: the openai engine must be tested (and benchmarked) against real sockets, real HTTP and a
real model, including the failures a production server shows: 429, 500, slow responses,
malformed JSON, dropped connections and ignored `n`. Concurrent requests are batched into
one `engine.generate` call (a small dynamic batcher), so concurrency pays off as it does on
`vllm serve`.

    python -m thinkwheel.engines.local_server --model thinkwheel/assets/model --port 8000
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import json
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from thinkwheel.engines.base import Completion, Engine, SamplingParams

FAULTS = ("ok", "429", "500", "slow", "malformed", "drop", "short")


@dataclass
class FaultPlan:
    """Faults applied to successive chat requests, cycling through `script`.

    "slow" sleeps `slow_s` before answering normally; "malformed" answers 200 with a truncated
    body; "drop" closes the socket without a response; "short" returns one choice when n > 1.
    A scripted cycle (not random draws) makes every fault type certain to happen in a test.
    """

    script: Sequence[str] = ("ok",)
    slow_s: float = 0.5

    def __post_init__(self) -> None:
        bad = [f for f in self.script if f not in FAULTS]
        if bad or not self.script:
            raise ValueError(f"unknown faults {bad}; choose from {FAULTS}")


@dataclass
class ServerStats:
    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    by_prompt: Counter[str] = field(default_factory=Counter)  # last user message -> requests
    samples_served: int = 0


class _Batcher:
    """Collects concurrent requests and runs them through the engine in one call per params."""

    def __init__(self, engine: Engine, window_s: float) -> None:
        self.engine = engine
        generate = getattr(engine, "generate", None)  # a server asked only for /models has none
        self.per_seed = generate is not None and "seeds" in inspect.signature(generate).parameters
        self.window_s = window_s
        self.jobs: queue.Queue = queue.Queue()  # (messages, params, future), or None to stop
        self.batches = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="batcher")
        self.thread.start()

    def submit(self, messages: list[dict[str, str]], params: SamplingParams) -> list[Completion]:
        fut: Future = Future()
        self.jobs.put((messages, params, fut))
        return fut.result()

    def stop(self) -> None:
        self.jobs.put(None)

    def _run(self) -> None:
        while (first := self.jobs.get()) is not None:
            pending = [first]
            deadline = time.monotonic() + self.window_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    job = self.jobs.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)  # finish this batch, then stop
                    break
                pending.append(job)
            # calls that differ only in their seed batch together, as on vLLM, when the engine
            # takes a seed per request
            per_seed = self.per_seed
            groups: dict[SamplingParams, list] = {}
            for job in pending:
                groups.setdefault(replace(job[1], seed=None) if per_seed else job[1], []).append(job)
            for params, jobs in groups.items():
                self.batches += 1
                try:
                    msgs = [m for m, _, _ in jobs]
                    out = (self.engine.generate(msgs, params, seeds=[p.seed for _, p, _ in jobs])
                           if per_seed else self.engine.generate(msgs, params))
                except Exception as err:  # the handler turns it into a 500
                    for _, _, fut in jobs:
                        fut.set_exception(err)
                    continue
                for (_, _, fut), comps in zip(jobs, out, strict=True):
                    fut.set_result(comps)


class LocalServer:
    """`with LocalServer(engine, faults=FaultPlan(...)) as srv: srv.base_url` -> ".../v1"."""

    def __init__(
        self,
        engine: Engine,
        *,
        faults: FaultPlan | None = None,
        supports_n: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_window_s: float = 0.005,
        api_key: str | None = None,
        reasoning_field: str | None = None,
    ) -> None:
        self.engine = engine
        self.reasoning_field = reasoning_field
        self.api_key = api_key
        self.faults = faults or FaultPlan()
        self.supports_n = supports_n
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._cycle = itertools.cycle(self.faults.script)
        self._batcher = _Batcher(engine, batch_window_s)
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_fault(self, prompt: str) -> str:
        with self._lock:
            self.stats.requests += 1
            self.stats.by_prompt[prompt] += 1
            fault = next(self._cycle)
            self.stats.faults[fault] += 1
            return fault

    def start(self) -> LocalServer:
        """Idempotent: a second serve_forever loop outlives stop() and spins on the closed
        socket at 100% of a core (`with srv.start():` did that, and slowed a whole test run)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def batches(self) -> int:
        """engine.generate calls so far (fewer than requests when batching kicks in)."""
        return self._batcher.batches

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._batcher.stop()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def complete(self, body: dict, fault: str) -> tuple[int, bytes]:
        """Answer one chat-completions body: (status, response bytes)."""
        try:
            params = SamplingParams(
                n=int(body.get("n") or 1) if self.supports_n else 1,
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                max_tokens=int(body.get("max_tokens") or 256),
                stop=_stops(body.get("stop")),
                seed=int(body["seed"]) if body.get("seed") is not None else None,
            )
            messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        except (KeyError, TypeError, ValueError) as err:
            return 400, json.dumps({"error": {"message": f"bad request: {err}"}}).encode()
        comps = self._batcher.submit(messages, params)
        if fault == "short" and len(comps) > 1:
            comps = comps[:1]
        with self._lock:
            self.stats.samples_served += len(comps)
        model = str(body.get("model", self.engine.model_name))
        return 200, response_body(comps, model, self.reasoning_field)


def parsed_message(text: str, reasoning_field: str | None) -> dict[str, str | None]:
    """The assistant message, split as vLLM's deepseek_r1 reasoning parser splits it when a
    field name is given ("reasoning", or "reasoning_content" before vLLM 0.11): the thought in
    that field, the text after `</think>` as content, and all of it the thought when the model
    never closed it."""
    if reasoning_field is None:
        return {"role": "assistant", "content": text}
    head, _, tail = text.partition("</think>")
    thought = head.split("<think>", 1)[-1]
    return {"role": "assistant", reasoning_field: thought or None, "content": tail or None}


def response_body(
    completions: Sequence[Completion], model: str, reasoning_field: str | None = None
) -> bytes:
    """A chat.completion body for these samples."""
    return json.dumps(
        {
            "id": "chatcmpl-" + os.urandom(8).hex(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": k,
                    "message": parsed_message(c.text, reasoning_field),
                    "finish_reason": c.finish_reason,
                }
                for k, c in enumerate(completions)
            ],
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": sum(c.n_tokens for c in completions),
                "total_tokens": sum(c.n_tokens for c in completions),
            },
        }
    ).encode()


def _stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(s) for s in value)  # type: ignore[union-attr]


def _handler_for(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # quiet: tests and benchmarks print their own summaries

        def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout) before we answered
                self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802
            if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(401, b'{"error": {"message": "invalid api key"}}')
            elif self.path.rstrip("/") == "/v1/models":
                model = {"id": server.engine.model_name, "object": "model"}
                self._send(200, json.dumps({"object": "list", "data": [model]}).encode())
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:  # noqa: N802
            body_bytes = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            try:
                body = json.loads(body_bytes)
                prompt = str(body["messages"][-1]["content"])
            except (ValueError, KeyError, IndexError, TypeError):
                self._send(400, b'{"error": {"message": "bad json"}}')
                return
            if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._send(401, b'{"error": {"message": "invalid api key"}}')
                return
            fault = server.next_fault(prompt)
            if fault == "429":
                self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
                return
            if fault == "500":
                self._send(500, b'{"error": {"message": "injected failure"}}')
                return
            if fault == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "slow":
                time.sleep(server.faults.slow_s)
            try:
                status, data = server.complete(body, fault)
            except Exception as err:  # an engine failure is the server's 500, not a hang
                self._send(500, json.dumps({"error": {"message": str(err)}}).encode())
                return
            if fault == "malformed":
                data = data[: len(data) // 2]
            self._send(status, data)

    return Handler


@contextlib.contextmanager
def serve(engine: Engine, **kwargs: object) -> Iterator[LocalServer]:
    """Run a LocalServer in a background thread for the duration of the block."""
    server = LocalServer(engine, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="local HF model folder")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--faults", default="ok", help=f"comma-separated cycle of {FAULTS}")
    ap.add_argument("--no-n", action="store_true", help="ignore n, as some servers do")
    ap.add_argument(
        "--reasoning-field",
        choices=("reasoning", "reasoning_content"),
        help="return the <think> block apart in this field, as `vllm serve --reasoning-parser`",
    )
    args = ap.parse_args(argv)
    from thinkwheel.engines.hf import HFEngine

    engine = HFEngine(args.model, batch_size=args.batch_size)
    srv = LocalServer(
        engine,
        faults=FaultPlan(script=tuple(args.faults.split(","))),
        supports_n=not args.no_n,
        port=args.port,
        reasoning_field=args.reasoning_field,
    )
    print(f"serving {engine.model_name} at {srv.base_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.httpd.serve_forever()


if __name__ == "__main__":
    main()
