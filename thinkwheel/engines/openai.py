"""Any OpenAI-compatible chat-completions server (`vllm serve`, SGLang, llama.cpp, hosted APIs).

Async with a concurrency limit; retries with exponential backoff and jitter on 429, 5xx,
timeouts, dropped connections and malformed bodies; `n` samples per request, fanned out as
single-sample calls when the server does not honour `n` (or returns fewer choices); every
finished sample goes to the on-disk cache first, so a re-run after a crash sends only what
had not come back. The API key comes from the environment, never from the config file.

Several replicas of one model (`vllm serve` on each node) are one engine: each call goes to
the server with the fewest calls in flight (at most `concurrency` each), so a faster server
takes more. A server that fails cools down with exponential backoff while the call is retried
at once on another, and once the cooldown is over one call probes it; with every server down,
calls retry on their own backoff as with one server, and fail when their retries are spent.
This is the scale-out for generation: the servers batch on their GPUs, the client only spreads
the load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from thinkwheel.chat_template import continues
from thinkwheel.engines.base import (
    OVER_CONTEXT,
    Completion,
    Request,
    SamplingParams,
    as_messages,
    first_stop,
    sequence_seed,
)
from thinkwheel.engines.cache import RequestCache, request_key

Progress = Callable[[int], None]  # called with the number of samples just finished
# retried: timeout, conflict, too early, rate limit, and every 5xx (a proxy's 520-524, an
# overloaded API's 529) except those no retry changes: not implemented, HTTP version
RETRY_STATUS = {408, 409, 425, 429}
FINAL_5XX = {501, 505}


def retryable(status: int) -> bool:
    return status in RETRY_STATUS or (500 <= status < 600 and status not in FINAL_5XX)


class EngineError(RuntimeError):
    """A request failed for good (a non-retryable status, or retries exhausted)."""


class _TooLong(Exception):
    """The server refused the request as longer than the model's context (prompt + max_tokens):
    that request's samples come back empty, with finish_reason "context_length", rather than
    failing its shard, and every re-run of it, for good."""


# how vLLM, SGLang, TGI, llama.cpp and OpenAI word a request over the context window (TGI:
# "`inputs` tokens + `max_new_tokens` must be <= 4096", "`inputs` must have less than 4096
# tokens"; llama.cpp: "exceeds the available context size"; vLLM: "maximum model length")
_CONTEXT_WORDS = ("context length", "context_length", "context window", "maximum input length",
                  "too many tokens", "prompt is too long", "context size", "maximum model length",
                  "max_new_tokens` must be", "`inputs` must have less than")


def _over_context(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in _CONTEXT_WORDS)



class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, said: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.said = said  # what the server answered, for the error once retries are spent


def sample_seed(seed: int | None, messages: Sequence[dict[str, str]], idx: int) -> int | None:
    """Seed for the call that asks for samples `idx`.. of this request. vLLM seeds a call's
    j-th sample `seed + j`, so one seed per call (the run's, plus one per round) gave round
    k+1 three of round k's four samples of a prompt, and every prompt of a shard the same
    noise: the seed comes from the prompt and the sample, as the other engines' do."""
    return None if seed is None else sequence_seed(seed, messages, idx) & 0x7FFFFFFF


@dataclass(eq=False)
class _Health:
    """A replica's record, kept across `generate` calls (a flow calls once per shard): a server
    found dead in one shard is not sent a burst of calls again in the next."""

    fails: int = 0  # consecutive failed calls
    down_until: float = 0.0  # time.monotonic() before which it gets no call while others are up


@dataclass(eq=False)
class _Server:
    url: str
    client: httpx.AsyncClient
    health: _Health
    load: int = 0  # calls in flight


class _Servers:
    """Hands each call the server to send it to, least-loaded first, at most `concurrency`
    calls in flight on each."""

    def __init__(self, servers: list[_Server], concurrency: int, backoff_s: float,
                 max_backoff_s: float) -> None:
        self.servers, self.concurrency = servers, concurrency
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.changed = asyncio.Condition()

    def up(self, now: float | None = None) -> list[_Server]:
        """Servers past their cooldown; one that failed last takes one call (a probe) at a time."""
        now = time.monotonic() if now is None else now
        return [s for s in self.servers
                if s.health.down_until <= now and (not s.health.fails or not s.load)]

    async def acquire(self) -> _Server:
        async with self.changed:
            while True:
                now = time.monotonic()
                # none up: the first back, so calls fail and back off as with a single server
                pool = self.up(now) or [min(self.servers, key=lambda s: s.health.down_until)]
                server = min(pool, key=lambda s: s.load)
                if server.load < self.concurrency:
                    server.load += 1
                    return server
                back = [s.health.down_until - now for s in self.servers if s.health.down_until > now]
                with contextlib.suppress(asyncio.TimeoutError):  # a cooldown ends, or a call does
                    await asyncio.wait_for(self.changed.wait(), timeout=min(back, default=1.0))

    async def release(self, server: _Server, failed: bool, retry_after: float | None) -> None:
        async with self.changed:
            server.load -= 1
            h = server.health
            if failed:
                cool = min(self.max_backoff_s, self.backoff_s * 2**h.fails)
                cool = cool / 2 + random.uniform(0, cool / 2)
                h.fails += 1
                h.down_until = max(h.down_until, time.monotonic() + max(
                    cool, min(retry_after or 0.0, self.max_backoff_s)))
            else:
                h.fails = 0
            self.changed.notify_all()


class OpenAIEngine:
    """Chat completions over HTTP; `generate` is sync, `agenerate` is the async core.
    `base_url` may list several servers of the same model."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        max_retries: int = 10,
        timeout_s: float = 600.0,
        server_supports_n: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: no server given")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.model_name = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.server_supports_n = server_supports_n
        self.cache_dir = cache_dir
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra_body = dict(extra_body or {})
        self.stats: Counter[str] = Counter()  # calls, retries by reason, cached/fetched samples
        self.health = {url: _Health() for url in self.base_urls}
        self._cache: RequestCache | None = None

    @property
    def cache(self) -> RequestCache | None:
        """Opened on first use and kept open: loading it is O(file) and shards call often."""
        if self._cache is None and self.cache_dir is not None:
            self._cache = RequestCache(self.cache_dir)
        return self._cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """Sync entry point; runs in a worker thread when an event loop is already running."""
        coro = self.agenerate(requests, params, progress)
        if not _loop_running():
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def agenerate(
        self, requests: Sequence[Request], params: SamplingParams, progress: Progress | None = None
    ) -> list[list[Completion]]:
        messages = [as_messages(r) for r in requests]
        keys = [request_key(self.model_name, m, params, self.extra_body) for m in messages]
        unique = dict(zip(keys, messages, strict=True))  # identical requests are sent once
        cache = self.cache
        done: dict[str, dict[int, Completion]] = {}
        for key in unique:
            done[key] = cache.get(key) if cache else {}
            hits = sum(1 for j in done[key] if j < params.n)
            self.stats["cached_samples"] += hits
            if progress is not None and hits:
                progress(hits)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                servers = _Servers([
                    _Server(url, await stack.enter_async_context(httpx.AsyncClient(
                        base_url=url, headers=headers, timeout=self.timeout_s, limits=limits)),
                        self.health[url])
                    for url in self.base_urls
                ], self.concurrency, self.backoff_s, self.max_backoff_s)

                def record(key: str, idx: int, comp: Completion) -> None:
                    done[key][idx] = comp
                    if cache is not None:
                        cache.put(key, idx, comp)
                    self.stats["fetched_samples"] += 1
                    if progress is not None:
                        progress(1)

                jobs = [
                    self._fill(servers, key, msgs, params, done[key], record)
                    for key, msgs in unique.items()
                ]
                outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            if cache is not None:
                cache.sync()
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:  # everything else is finished and cached; a re-run only redoes these
            raise EngineError(f"{len(errors)} of {len(unique)} requests failed: {errors[0]}")
        return [[done[k][j] for j in range(params.n)] for k in keys]

    async def _fill(
        self,
        servers: _Servers,
        key: str,
        messages: list[dict[str, str]],
        params: SamplingParams,
        have: dict[int, Completion],
        record: Callable[[str, int, Completion], None],
    ) -> None:
        """Fetch the samples of one request that are not cached yet."""
        if params.temperature <= 0 and params.n > 1:
            # greedy samples are one decode, copied: vLLM refuses `n` > 1 at temperature 0
            # ("n must be 1 when using greedy sampling"), which failed the whole stage
            missing = [j for j in range(params.n) if j not in have]
            if missing and not have:
                await self._fetch_one(servers, key, messages, params, missing.pop(0), record, have)
            first = next(iter(have.values()), None)
            if first is OVER_CONTEXT:
                self._over_context(have, missing)
            else:
                for j in missing:
                    record(key, j, first)
            return
        if not self.server_supports_n:
            missing = [j for j in range(params.n) if j not in have]
            outcomes = await asyncio.gather(
                *(self._fetch_one(servers, key, messages, params, j, record, have)
                  for j in missing),
                return_exceptions=True,  # let the other samples finish (and be cached) first
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return
        while missing := [j for j in range(params.n) if j not in have]:
            payload = self._payload(
                messages, params, len(missing), sample_seed(params.seed, messages, missing[0])
            )
            try:
                choices = await self._call(servers, payload)
            except _TooLong:
                self._over_context(have, missing)
                return
            if len(choices) < len(missing):
                self.stats["short_responses"] += 1  # the server ignored n: ask again for the rest
            for j, comp in zip(missing, choices, strict=False):
                record(key, j, comp)

    async def _fetch_one(
        self,
        servers: _Servers,
        key: str,
        messages: list[dict[str, str]],
        params: SamplingParams,
        idx: int,
        record: Callable[[str, int, Completion], None],
        have: dict[int, Completion],
    ) -> None:
        payload = self._payload(messages, params, 1, sample_seed(params.seed, messages, idx))
        try:
            record(key, idx, (await self._call(servers, payload))[0])
        except _TooLong:
            self._over_context(have, [idx])

    def _over_context(self, have: dict[int, Completion], missing: list[int]) -> None:
        """Empty samples for a request over the context, not cached: a server restarted with a
        longer `--max-model-len` answers it on the next run."""
        for j in missing:
            have[j] = OVER_CONTEXT
        self.stats["over_context"] += len(missing)

    def _payload(
        self, messages: list[dict[str, str]], params: SamplingParams, n: int, seed: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            **self.extra_body,
        }
        if n != 1:
            body["n"] = n
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        if continues(messages):  # vLLM's extra parameters: extend the last turn, no new header
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    async def _call(self, servers: _Servers, payload: dict[str, Any]) -> list[Completion]:
        """POST with retries; returns at least one parsed choice or raises EngineError. A failed
        call is retried at once when another server is up, else after a backoff."""
        stop = tuple(payload.get("stop", ()))
        continued = continues(payload["messages"])
        for attempt in range(self.max_retries + 1):
            server = await servers.acquire()
            retry_after: float | None = None
            said = ""
            try:
                self.stats["calls"] += 1
                self.stats[f"calls:{server.url}"] += 1
                resp = await server.client.post("/chat/completions", json=payload)
                out = _parse(resp, stop, continued)
            except _Retryable as err:
                reason, retry_after, said = err.reason, err.retry_after, err.said
            except httpx.TimeoutException:
                reason = "timeout"
                said = f"no answer in engine.timeout_s = {self.timeout_s:g} s"
            except httpx.TransportError as err:  # refused, reset, dropped mid-response
                reason = f"transport:{type(err).__name__}"
            except BaseException:  # a 4xx, too long, or cancelled: not the server's health
                await servers.release(server, False, None)
                raise
            else:
                await servers.release(server, False, None)
                return out
            await servers.release(server, True, retry_after)
            self.stats[f"retry:{reason}"] += 1
            if attempt == self.max_retries:
                where = f" from {server.url}" if len(servers.servers) > 1 else ""
                said = f": {' '.join(said.split())[:300]}" if said else ""
                raise EngineError(f"gave up after {attempt + 1} attempts (last: {reason}{where}{said})")
            if servers.up():
                continue  # another server is up: no reason to wait
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: retries don't stampede
            await asyncio.sleep(max(delay, min(retry_after or 0.0, self.max_backoff_s)))
        raise AssertionError("unreachable")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _parse(resp: httpx.Response, stop: tuple[str, ...], continued: bool = False) -> list[Completion]:
    if retryable(resp.status_code):
        after = resp.headers.get("retry-after")
        raise _Retryable(str(resp.status_code), float(after) if _is_number(after) else None,
                         resp.text)
    if resp.status_code in (400, 413, 422) and _over_context(resp.text):
        raise _TooLong(resp.text[:200])
    if resp.status_code >= 400:
        raise EngineError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        body = resp.json()
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        texts = [_with_reasoning(c["message"], continued) for c in choices]
        reasons = [c.get("finish_reason") for c in choices]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise _Retryable("malformed", said=resp.text) from err
    if not texts:
        raise _Retryable("no_choices", said=resp.text)
    if "abort" in reasons:  # vLLM aborted the request (shutdown, preemption): a partial text
        raise _Retryable("abort", said=resp.text)
    tokens = _split_tokens((body.get("usage") or {}).get("completion_tokens"), texts)
    out = []
    for text, reason, n_tok in zip(texts, reasons, tokens, strict=True):
        cut = first_stop(text, stop)
        if cut >= 0:  # some servers return the text past a stop string
            text, reason = text[:cut], "stop"
        out.append(Completion(text=text, finish_reason=_finish(reason), n_tokens=n_tok))
    return out


def _with_reasoning(message: dict[str, Any], continued: bool = False) -> str:
    """The completion as the model wrote it. A server run with a reasoning parser (`vllm serve
    --reasoning-parser`, SGLang, DeepSeek's API) returns the thought apart, in `reasoning` (vLLM
    since 0.11) or `reasoning_content`, and only the answer in `content`; it goes back into
    `<think>` here. With no content the thought is left open: the parser gives everything to
    `reasoning` when the model never closed it (cut by the budget, or never written).

    Without a parser, a template that pre-fills `<think>` (DeepSeek-R1-Distill, Qwen3) sends
    a closed thought with no opening tag, which gets its tag back here, as the transformers and
    vLLM engines restore the pre-fill. A thought such a server cut off has neither tag and
    cannot be told from an answer: serve those models with `--reasoning-parser`.

    A continuation (`continued`) gets no tag: the `<think>` is in the assistant prefix the
    caller prepends, and the text is only what the model wrote after it."""
    content, part_thought = _parts(message.get("content"))
    thought = message.get("reasoning") or message.get("reasoning_content") or part_thought
    if continued:
        if isinstance(thought, str) and thought and content:
            return f"{thought}</think>{content}"
        return thought if isinstance(thought, str) and thought else content
    if not isinstance(thought, str) or not thought or "</think>" in content:
        if "</think>" in content and "<think>" not in content:
            return "<think>" + content
        return content
    return f"<think>{thought}</think>{content}" if content else f"<think>{thought}"


def _parts(content: Any) -> tuple[str, str]:
    """(text, thought) of `content`. Some servers send a list of parts, stored as the completion
    as it was: `{"type": "text", "text": ...}`, and Mistral's reasoning models (Magistral) the
    thought as `{"type": "thinking", "thinking": [text parts]}`."""
    if isinstance(content, str):
        return content, ""
    if not isinstance(content, list):
        return "", ""
    text, thought = [], []
    for part in content:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            text.append(str(part.get("text") or ""))
        elif isinstance(part, dict) and part.get("type") == "thinking":
            inner = part.get("thinking")
            thought.append(inner if isinstance(inner, str) else _parts(inner)[0])
    return "".join(text), "".join(thought)


def _finish(reason: Any) -> str:
    """The server's own reason ("content_filter" stays visible in the candidates and inspect),
    "stop" when it gave none."""
    return reason if isinstance(reason, str) and reason else "stop"


def _split_tokens(total: Any, texts: list[str]) -> list[int]:
    """Per-choice token counts: exact for one choice; with several, the usage total is split
    in proportion to text length (the API reports only the sum)."""
    if not isinstance(total, int) or total < 0:
        return [0] * len(texts)
    if len(texts) == 1:
        return [total]
    chars = [len(t) for t in texts]
    whole = sum(chars) or len(texts)
    parts = [total * (c or (0 if sum(chars) else 1)) // whole for c in chars]
    parts[-1] += total - sum(parts)
    return parts


def _is_number(value: str | None) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
