"""The one interface every LLM backend implements."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
Request = Sequence[Message] | str  # chat messages, or a bare user prompt


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "context_length" | a server's own
    n_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where the first of the stop strings starts in `text`, or -1: every engine, and GRPO's
    rewards, cut a completion there."""
    return min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)


# a request longer than the model's context: no text, rather than a failed shard (a served
# model) or text generated past the model's positions (transformers)
OVER_CONTEXT = Completion(text="", finish_reason="context_length", n_tokens=0)


@runtime_checkable
class Engine(Protocol):
    """`generate` returns, for each request, `params.n` completions in sample order, and calls
    `progress` with the number of samples just finished, as they finish."""

    model_name: str

    def generate(
        self,
        requests: Sequence[Request],
        params: SamplingParams,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]: ...


def as_messages(request: Request) -> list[dict[str, str]]:
    if isinstance(request, str):
        return [{"role": "user", "content": request}]
    return [dict(m) for m in request]


def request_for(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The chat request for a task prompt: [system?, user]. Sampling, eval and training share it,
    so the model sees the same context everywhere."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def sequence_seed(seed: int, messages: Sequence[Mapping[str, str]], sample_idx: int) -> int:
    """A 32-bit seed for one sequence, from the run seed, the request content and the sample:
    no two prompts, samples or rounds (whose seeds differ by one) share a stream."""
    blob = json.dumps([seed, list(messages), sample_idx], sort_keys=True).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "little")
