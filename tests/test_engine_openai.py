"""The openai engine against a real HTTP server on 127.0.0.1 backed by a tiny random Llama.

Every injected fault (429, 500, slow responses past the client timeout, malformed JSON,
dropped connections, ignored `n`) must leave the results exactly as a clean run's: nothing
lost, nothing duplicated, same order. A crashed run (a child process killed mid-flight)
resumes from the on-disk cache and re-sends only the unfinished requests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from thinkwheel.config import EngineConfig  # noqa: E402
from thinkwheel.engines.base import Completion, SamplingParams  # noqa: E402
from thinkwheel.engines.cache import RequestCache, request_key  # noqa: E402
from thinkwheel.engines.local_server import FaultPlan, LocalServer  # noqa: E402
from thinkwheel.engines.openai import EngineError, OpenAIEngine, sample_seed  # noqa: E402

REQUESTS = [f"What is {i} + {3 * i + 1}?" for i in range(12)]
PARAMS = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=5)


def _load_tiny_builder():
    spec = importlib.util.spec_from_file_location(
        "_tiny_model", Path(__file__).with_name("test_engine_hf.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_model


@pytest.fixture(scope="module")
def hf_engine(tmp_path_factory: pytest.TempPathFactory):
    from thinkwheel.engines.hf import HFEngine

    path = _load_tiny_builder()(tmp_path_factory.mktemp("tiny") / "model")
    return HFEngine(path, batch_size=64)


@pytest.fixture(scope="module")
def clean(hf_engine) -> list[list[Completion]]:
    """What the model itself says, each request under the seed the engine sends for it: the
    reference every HTTP run must reproduce."""
    return [hf_engine.generate([r], replace(PARAMS, seed=sample_seed(PARAMS.seed, [_user(r)], 0)))[0]
            for r in REQUESTS]


def texts(out: list[list[Completion]]) -> list[list[tuple[str, str]]]:
    return [[(c.text, c.finish_reason) for c in row] for row in out]


def test_clean_run_matches_the_model(hf_engine, clean) -> None:
    with LocalServer(hf_engine) as srv:
        eng = OpenAIEngine(srv.base_url, "tiny", concurrency=8)
        out = eng.generate(REQUESTS + REQUESTS[:2], PARAMS)  # the repeats are sent once
        assert srv.stats.requests == len(REQUESTS)
        assert srv.batches < srv.stats.requests  # concurrent requests were batched
    assert texts(out[: len(REQUESTS)]) == texts(clean)
    assert texts(out[len(REQUESTS) :]) == texts(clean[:2])
    # the API reports only a total per response; it is split over the choices, sum preserved
    tokens = [sum(c.n_tokens for c in row) for row in out]
    assert tokens == [sum(c.n_tokens for c in row) for row in clean + clean[:2]]


def test_every_fault_loses_and_duplicates_nothing(hf_engine, clean) -> None:
    script = ("429", "ok", "500", "ok", "malformed", "ok", "drop", "ok", "slow", "ok", "ok")
    with LocalServer(hf_engine, faults=FaultPlan(script, slow_s=4.0)) as srv:
        eng = OpenAIEngine(
            srv.base_url, "tiny", concurrency=6, timeout_s=3.0, backoff_s=0.01, max_retries=20
        )
        out = eng.generate(REQUESTS, PARAMS)
        faults = dict(srv.stats.faults)
    assert texts(out) == texts(clean)
    assert all(faults.get(f, 0) > 0 for f in ("429", "500", "malformed", "drop", "slow"))
    retries = {k: v for k, v in eng.stats.items() if k.startswith("retry:")}
    assert {"retry:429", "retry:500", "retry:malformed", "retry:timeout"} <= retries.keys()
    assert any(k.startswith("retry:transport") for k in retries)
    assert eng.stats["fetched_samples"] == len(REQUESTS) * PARAMS.n  # none twice


def test_server_ignoring_n_and_fan_out(hf_engine) -> None:
    with LocalServer(hf_engine, supports_n=False) as srv:
        looped = OpenAIEngine(srv.base_url, "tiny").generate(REQUESTS[:4], PARAMS)
        assert srv.stats.requests == 4 * PARAMS.n  # asked for n, got 1, asked for the rest
    with LocalServer(hf_engine) as srv:
        fanned = OpenAIEngine(srv.base_url, "tiny", server_supports_n=False)
        out = fanned.generate(REQUESTS[:4], PARAMS)
        assert srv.stats.requests == 4 * PARAMS.n  # one single-sample call per sample
    for rows in (looped, out):
        assert all(len(row) == PARAMS.n and len({c.text for c in row}) == PARAMS.n for row in rows)
    assert texts(looped) == texts(out)  # same per-sample seeds either way


def test_short_responses_are_completed(hf_engine) -> None:
    with LocalServer(hf_engine, faults=FaultPlan(("short",))) as srv:
        eng = OpenAIEngine(srv.base_url, "tiny")
        out = eng.generate(REQUESTS[:3], PARAMS)
        assert srv.stats.requests == 3 * PARAMS.n
    assert eng.stats["short_responses"] == 3 * (PARAMS.n - 1)
    assert all(len({c.text for c in row}) == PARAMS.n for row in out)


CHILD = """
import os, sys
from thinkwheel.engines.base import SamplingParams
from thinkwheel.engines.openai import OpenAIEngine
url, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = [0]
def crash_after(k):
    seen[0] += k
    if seen[0] >= limit:
        os._exit(17)  # a hard crash: no cleanup, requests still in flight
reqs = [f"What is {i} + {3 * i + 1}?" for i in range(12)]
OpenAIEngine(url, "tiny", concurrency=4, cache_dir=cache).generate(
    reqs, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=5), progress=crash_after)
"""


def test_crash_then_resume_sends_only_unfinished(hf_engine, clean, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with LocalServer(hf_engine) as srv:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, srv.base_url, str(cache_dir), "16"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 17, child.stderr
        first_run = srv.stats.requests
    with RequestCache(cache_dir) as cache:
        have = {r: len(cache.get(request_key("tiny", [_user(r)], PARAMS))) for r in REQUESTS}
    done = [r for r, k in have.items() if k == PARAMS.n]
    assert 16 <= sum(have.values()) < len(REQUESTS) * PARAMS.n and done
    with LocalServer(hf_engine) as srv:
        eng = OpenAIEngine(srv.base_url, "tiny", concurrency=4, cache_dir=cache_dir)
        out = eng.generate(REQUESTS, PARAMS)
        resent = set(srv.stats.by_prompt)
        assert srv.stats.requests == len(REQUESTS) - len(done)
    assert resent == set(REQUESTS) - set(done)
    assert first_run >= len(done)
    assert eng.stats["cached_samples"] == sum(have.values())
    assert [row[0].text for row in out] == [row[0].text for row in clean]  # sample 0 as the model says it
    assert all(len({c.text for c in row}) == PARAMS.n for row in out)
    with LocalServer(hf_engine) as srv:  # a third run is free
        again = OpenAIEngine(srv.base_url, "tiny", cache_dir=cache_dir).generate(REQUESTS, PARAMS)
        assert srv.stats.requests == 0
    assert again == out


def test_replicas_share_the_load_and_a_dead_one_costs_nothing(hf_engine, clean) -> None:
    """Several servers of one model (`vllm serve` on each node) are one engine: the calls
    spread over them, and a server that is down from the start, or dies mid-run, costs retries
    on the others, not the run nor a single sample."""
    with socket.socket() as s:  # a port that was free: connections to it are refused
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"

    class DiesAfter(LocalServer):
        def next_fault(self, prompt: str) -> str:  # after two answers, its backend is gone:
            fault = super().next_fault(prompt)  # every connection is dropped unanswered
            return fault if self.stats.requests <= 2 else "drop"

    with LocalServer(hf_engine) as a, LocalServer(hf_engine) as b:
        eng = OpenAIEngine([a.base_url, b.base_url], "tiny", concurrency=2)
        assert texts(eng.generate(REQUESTS, PARAMS)) == texts(clean)
        assert a.stats.requests > 2 and b.stats.requests > 2
        assert a.stats.requests + b.stats.requests == len(REQUESTS)
    with LocalServer(hf_engine) as live:
        eng = OpenAIEngine([dead_url, live.base_url], "tiny", concurrency=4, backoff_s=0.05)
        assert texts(eng.generate(REQUESTS, PARAMS)) == texts(clean)
        assert live.stats.requests == len(REQUESTS)
        # its 4 workers' first calls, then one probe at a time, not a share of every call
        assert 4 <= eng.stats[f"calls:{dead_url}"] <= 6
        assert any(k.startswith("retry:transport") for k in eng.stats)
        before = eng.stats[f"calls:{dead_url}"]  # the flow's next shard: no new burst
        assert texts(eng.generate(REQUESTS[:6], PARAMS)) == texts(clean[:6])
        assert eng.stats[f"calls:{dead_url}"] - before <= 1
    with LocalServer(hf_engine) as live, DiesAfter(hf_engine) as dying:
        eng = OpenAIEngine([dying.base_url, live.base_url], "tiny", concurrency=1, backoff_s=0.05)
        assert texts(eng.generate(REQUESTS, PARAMS)) == texts(clean)
        assert dying.stats.requests > 2 and live.stats.requests == len(REQUESTS) - 2
        assert any(k.startswith("retry:transport") for k in eng.stats)  # it did go away
    assert eng.stats["fetched_samples"] == len(REQUESTS) * PARAMS.n  # none twice


def test_api_key_comes_from_the_environment(hf_engine, monkeypatch) -> None:
    from thinkwheel.engines.factory import make_engine

    cfg = EngineConfig(kind="openai", model="tiny", api_key_env="TW_TEST_KEY", max_retries=0)
    with LocalServer(hf_engine, api_key="s3cret") as srv:
        cfg.base_url = srv.base_url
        monkeypatch.delenv("TW_TEST_KEY", raising=False)
        with pytest.raises(EngineError, match="401"):
            make_engine(cfg).generate(REQUESTS[:1], PARAMS)
        monkeypatch.setenv("TW_TEST_KEY", "s3cret")
        out = make_engine(cfg).generate(REQUESTS[:1], PARAMS)
    assert len(out[0]) == PARAMS.n


def test_sync_generate_inside_a_running_loop(hf_engine, clean) -> None:
    async def caller() -> list[list[Completion]]:
        with LocalServer(hf_engine) as srv:
            return OpenAIEngine(srv.base_url, "tiny").generate(REQUESTS[:2], PARAMS)

    assert texts(asyncio.run(caller())) == texts(clean[:2])


def test_gives_up_with_a_clear_error_and_keeps_the_rest(hf_engine, tmp_path: Path) -> None:
    with LocalServer(hf_engine, faults=FaultPlan(("ok", "500", "500", "500"))) as srv:
        eng = OpenAIEngine(
            srv.base_url, "tiny", concurrency=1, max_retries=1, backoff_s=0.0, cache_dir=tmp_path
        )
        with pytest.raises(EngineError, match="gave up after 2 attempts"):
            eng.generate(REQUESTS[:3], PARAMS)
    eng.close()
    assert 0 < len(RequestCache(tmp_path)) < 3 * PARAMS.n


def test_cache_survives_a_torn_line(tmp_path: Path) -> None:
    key = request_key("m", [_user("q")], PARAMS)
    assert key == request_key(
        "m", [_user("q")], SamplingParams(**{**PARAMS.as_dict(), "n": 9, "stop": ()})
    )
    assert key != request_key("m", [_user("q")], SamplingParams(seed=6))
    with RequestCache(tmp_path) as cache:
        cache.put(key, 0, Completion("a", "stop", 3))
    path = tmp_path / "completions.jsonl"
    path.write_bytes(path.read_bytes() + b'{"key": "' + key.encode() + b'", "idx": 1, "compl')
    with RequestCache(tmp_path) as cache:
        assert cache.torn_lines == 1 and cache.get(key) == {0: Completion("a", "stop", 3)}
        cache.put(key, 1, Completion("b", "length", 8))
    with RequestCache(tmp_path) as cache:
        assert cache.torn_lines == 1 and set(cache.get(key)) == {0, 1}
        cache.compact()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["idx"] for x in lines] == [0, 1]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


class _Scripted:
    """Fixed completions: the split under test is the server's and the client's, not the model's."""

    model_name = "scripted"
    script = (
        ("<think>3+4=7</think>\n7", "stop"),
        ("<think>\n3+4=7\n</think>\n\n7", "stop"),
        ("<think>3+4 is", "length"),  # the budget ran out inside the thought
        ("7", "stop"),  # never opened: the parser files it all as thought
        ("3+4=7</think>\n7", "stop"),  # the template pre-filled <think> (R1-Distill, Qwen3)
    )

    def generate(self, requests, params, progress=None):
        return [
            [Completion(text=t, finish_reason=f, n_tokens=4) for t, f in self.script[: params.n]]
            for _ in requests
        ]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_thought_returned_apart_goes_back_into_think(field) -> None:
    """`vllm serve --reasoning-parser` returns the thought in its own field and only the answer
    as content; read naively, every sample would lose its <think> block and fail the format."""
    from thinkwheel.records import split_think

    params = SamplingParams(n=5, temperature=1.0, max_tokens=8, seed=1)
    with LocalServer(_Scripted(), reasoning_field=field) as srv:
        out = OpenAIEngine(srv.base_url, "m").generate(["What is 3 + 4?"], params)[0]
    got = [(c.text, c.finish_reason) for c in out]
    assert got[:3] == list(_Scripted.script[:3])
    assert got[3] == ("<think>7", "stop")
    assert got[4] == ("<think>3+4=7</think>\n7", "stop")
    assert split_think(got[0][0]) == ("3+4=7", "7")
    with LocalServer(_Scripted()) as srv:  # no parser: the text as the model wrote it, and the
        plain = OpenAIEngine(srv.base_url, "m").generate(["What is 3 + 4?"], params)[0]
    # pre-filled tag the server's template wrote (a closing tag without an opening one)
    assert [(c.text, c.finish_reason) for c in plain] == [*_Scripted.script[:4], got[4]]


def test_the_servers_finish_reason_is_kept_and_an_aborted_call_is_asked_again(tmp_path) -> None:
    """A filtered completion was recorded as "stop", so it read as finished text. An aborted
    one (vLLM shutting down, preempting) is a partial text: it was cached for good and passed
    the quality filter; the call is retried instead."""

    class Finishes(_Scripted):
        script = (("7", "stop"), ("<think>3+", "length"), ("", "content_filter"), ("7", None))

    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=1)
    with LocalServer(Finishes()) as srv:
        out = OpenAIEngine(srv.base_url, "m").generate(["What is 3 + 4?"], params)[0]
    assert [c.finish_reason for c in out] == ["stop", "length", "content_filter", "stop"]

    class AbortsOnce(_Scripted):
        calls = 0

        def generate(self, requests, params, progress=None):
            AbortsOnce.calls += 1
            reason = "abort" if AbortsOnce.calls == 1 else "stop"
            return [[Completion(text="<think>3+4=7</think>7"[: 9 if reason == "abort" else None],
                                finish_reason=reason, n_tokens=4)] for _ in requests]

    one = SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=1)
    with LocalServer(AbortsOnce()) as srv:
        eng = OpenAIEngine(srv.base_url, "m", backoff_s=0.0, cache_dir=tmp_path)
        got = eng.generate(["What is 3 + 4?"], one)[0][0]
    assert (got.text, got.finish_reason) == ("<think>3+4=7</think>7", "stop")
    assert eng.stats["retry:abort"] == 1 and AbortsOnce.calls == 2


def test_a_request_over_the_context_is_an_empty_sample_not_a_failed_shard(tmp_path: Path) -> None:
    """vLLM answers a prompt (+ max_tokens) over the context with HTTP 400: it failed the whole
    shard, and every re-run failed on the same task. It is now an empty sample with
    finish_reason context_length, not cached (a server given a longer context answers it)."""
    class Short(LocalServer):
        def complete(self, body: dict, fault: str):
            if "LONG" in body["messages"][-1]["content"]:
                msg = ("This model's maximum context length is 512 tokens. However, you "
                       "requested 900 tokens (836 in the messages, 64 in the completion).")
                return 400, json.dumps({"object": "error", "message": msg, "code": 400}).encode()
            return super().complete(body, fault)

    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=1)
    for supports_n in (True, False):
        with Short(_Scripted()) as srv:
            eng = OpenAIEngine(srv.base_url, "m", cache_dir=tmp_path / str(supports_n),
                               server_supports_n=supports_n)
            out = eng.generate(["What is 3 + 4?", "LONG " * 400], params)
        assert [c.finish_reason for c in out[1]] == ["context_length"] * 2 and out[1][0].text == ""
        assert out[0][0].text == _Scripted.script[0][0]
        assert eng.stats["over_context"] == 2
        eng.close()
        with RequestCache(tmp_path / str(supports_n)) as cache:
            assert cache.get(request_key("m", [_user("LONG " * 400)], params)) == {}
            assert len(cache.get(request_key("m", [_user("What is 3 + 4?")], params))) == 2


def test_extra_body_reaches_the_server_and_the_cache_key(tmp_path: Path) -> None:
    seen: list[dict] = []

    class Recording(LocalServer):
        def complete(self, body: dict, fault: str):
            seen.append(body)
            return super().complete(body, fault)

    params = SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=1)
    extra = {"top_k": 20, "chat_template_kwargs": {"enable_thinking": True}}
    with Recording(_Scripted()) as srv:
        OpenAIEngine(srv.base_url, "m", extra_body=extra).generate(["q"], params)
    assert seen[0]["top_k"] == 20 and seen[0]["chat_template_kwargs"] == {"enable_thinking": True}
    msgs = [{"role": "user", "content": "q"}]
    assert request_key("m", msgs, params, {}) == request_key("m", msgs, params)
    assert request_key("m", msgs, params, extra) != request_key("m", msgs, params)
    cfg = EngineConfig(kind="openai", extra_body=extra)
    from thinkwheel.engines.factory import make_engine

    assert make_engine(cfg).extra_body == extra


@pytest.mark.parametrize("msg", [
    "This model's maximum context length is 512 tokens.",  # vLLM, OpenAI
    "the request exceeds the available context size, try increasing it",  # llama.cpp
    "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens",  # TGI
    "Input validation error: `inputs` must have less than 4096 tokens. Given: 5000",  # TGI
    "The decoder prompt (length 900) is longer than the maximum model length of 512.",  # vLLM
])
def test_every_servers_wording_of_a_request_over_the_context(msg) -> None:
    """llama.cpp's and TGI's wordings failed the shard, and every re-run on the same task."""
    from thinkwheel.engines.openai import _over_context

    assert _over_context(msg)


def test_greedy_samples_seeds_parts_and_the_servers_own_words(tmp_path: Path) -> None:
    """vLLM refuses n > 1 at temperature 0, which failed the stage; one seed per call made
    round k+1 (seed + 1) repeat round k's samples on vLLM, which seeds a call's sample j
    `seed + j`; content sent as a list of parts was stored as a list; and an error after
    the retries said only "last: 503", not what the server said."""
    seen: list[dict] = []

    class VllmLike(LocalServer):
        def complete(self, body: dict, fault: str):
            seen.append(body)
            if body.get("n", 1) > 1 and body["temperature"] == 0:
                return 400, b'{"message": "n must be 1 when using greedy sampling"}'
            if "parts" in body["messages"][-1]["content"]:
                msg = {"role": "assistant", "content": [{"type": "text", "text": "<think>a</think>"},
                                                       {"type": "thinking", "thinking": "x"},
                                                       {"type": "text", "text": "7"}]}
                return 200, json.dumps({"choices": [{"index": 0, "message": msg,
                                                     "finish_reason": "stop"}]}).encode()
            if "oom" in body["messages"][-1]["content"]:
                return 503, b'{"message": "CUDA out of memory. Tried to allocate 2.00 GiB"}'
            return super().complete(body, fault)

    with VllmLike(_Scripted()) as srv:
        eng = OpenAIEngine(srv.base_url, "m", backoff_s=0.0, max_retries=1)
        greedy = eng.generate(["What is 3 + 4?"], SamplingParams(n=3, temperature=0.0, seed=1))
        assert [c.text for c in greedy[0]] == [_Scripted.script[0][0]] * 3
        assert [b.get("n", 1) for b in seen] == [1]

        seen.clear()
        prompts = ["What is 3 + 4?", "What is 5 + 6?"]
        for seed in (5, 6):  # two rounds' sampling seeds
            eng.generate(prompts, SamplingParams(n=4, temperature=1.0, seed=seed))
        streams = [{b["seed"] + j for j in range(4)} for b in seen]
        assert len(seen) == 4 and all(a.isdisjoint(b) for i, a in enumerate(streams)
                                      for b in streams[i + 1:])

        assert eng.generate(["parts"], SamplingParams(n=1, seed=1))[0][0].text == "<think>a</think>7"
    from thinkwheel.engines.openai import _with_reasoning

    magistral = {"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "7+6=13"}]},
                             {"type": "text", "text": "13"}]}
    assert _with_reasoning(magistral) == "<think>7+6=13</think>13"
    with VllmLike(_Scripted()) as srv:
        eng = OpenAIEngine(srv.base_url, "m", backoff_s=0.0, max_retries=1)
        with pytest.raises(EngineError, match="last: 503: .*CUDA out of memory"):
            eng.generate(["oom"], SamplingParams(n=1, seed=1))


@pytest.mark.parametrize("field", [None, "reasoning"])
def test_a_trailing_assistant_message_is_continued(field) -> None:
    """A request ending in an assistant message (a corrected reasoning prefix) asks vLLM's
    server to extend that message, and its text is only what follows the prefix: the `<think>`
    put back on a fresh reply is already in the prefix the caller prepends."""
    seen: list[dict] = []

    class Recording(LocalServer):
        def complete(self, body: dict, fault: str):
            seen.append(body)
            return super().complete(body, fault)

    class Suffix(_Scripted):
        script = (("3+4=7</think>\n7", "stop"),)

    class Open(_Scripted):
        script = (("so 3+4 is", "length"),)  # the budget ran out, still inside the thought

    params = SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=1)
    prefix = [_user("What is 3 + 4?"), {"role": "assistant", "content": "<think>Adding: "}]
    with Recording(Suffix(), reasoning_field=field) as srv:
        fresh, cont = OpenAIEngine(srv.base_url, "m").generate(["What is 3 + 4?", prefix], params)
    by_last_role = {b["messages"][-1]["role"]: b for b in seen}
    assert by_last_role["assistant"]["continue_final_message"] is True
    assert by_last_role["assistant"]["add_generation_prompt"] is False
    assert not {"continue_final_message", "add_generation_prompt"} & by_last_role["user"].keys()
    assert by_last_role["assistant"]["seed"] == sample_seed(1, prefix, 0)
    assert fresh[0].text == "<think>3+4=7</think>\n7"
    assert cont[0].text == "3+4=7</think>\n7"
    with LocalServer(Open(), reasoning_field=field) as srv:
        cut = OpenAIEngine(srv.base_url, "m").generate([prefix], params)[0][0]
    assert (cut.text, cut.finish_reason) == ("so 3+4 is", "length")


@pytest.mark.parametrize("status, retried", [
    (520, True), (522, True), (524, True), (529, True),  # Cloudflare's, an overloaded API's
    (503, True), (408, True), (425, True),
    (501, False), (505, False), (404, False),  # no retry changes these answers
])
def test_every_transient_status_is_retried(status, retried) -> None:
    """README and the module say 5xx is retried, but only 500/502/503/504 were: a hosted
    API's 520/524/529 stopped the run on its first call."""
    class FailsOnce(LocalServer):
        calls = 0

        def complete(self, body: dict, fault: str):
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                return status, b'{"message": "upstream error"}'
            return super().complete(body, fault)

    params = SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=1)
    with FailsOnce(_Scripted()) as srv:
        eng = OpenAIEngine(srv.base_url, "m", backoff_s=0.0, max_retries=2)
        if retried:
            assert eng.generate(["What is 3 + 4?"], params)[0][0].text == _Scripted.script[0][0]
            assert eng.stats[f"retry:{status}"] == 1
        else:
            with pytest.raises(EngineError, match=f"HTTP {status}"):
                eng.generate(["What is 3 + 4?"], params)
            assert FailsOnce.calls == 1
