"""Verifier protocol, verdicts and the registry.

A verifier answers `passed` True | False | None. None means "could not verify" (bad
reference, checker crash or timeout) and is never counted as correct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Candidate = Mapping[str, Any] | str  # a candidates row (uses "completion") or the raw text
Task = Mapping[str, Any]  # a tasks row: prompt, reference, tests, meta, ...

# The fixed `reason` vocabulary. Anything a verifier reports is one of these.
REASONS = (
    "ok",  # passed
    "wrong_answer",  # parsed fine, not equivalent / a test failed
    "no_answer",  # nothing extractable (e.g. <think> never closed, empty answer)
    "parse_error",  # the candidate's answer could not be parsed
    "bad_reference",  # the task's reference/tests could not be used -> passed None
    "timeout",  # the check overran its wall-clock bound
    "bad_format",  # think_format: not exactly one <think>...</think> + answer
    "runtime_error",  # code raised / crashed before finishing the tests
    "unsafe",  # code tried a forbidden operation (network, kill, write outside tmp, ...)
    "verifier_error",  # the verifier itself (or a plugin) raised -> passed None
)


@dataclass(frozen=True)
class Verdict:
    passed: bool | None
    score: float = 0.0
    reason: str = "ok"  # small fixed vocabulary: see REASONS
    detail: str = ""
    seconds: float = 0.0
    # each test's outcome, in the task's order, from a verifier that runs tests and got to the
    # end of them (code); None otherwise. Not stored in verdicts.parquet (`detail` says it).
    per_test: tuple[bool, ...] | None = None


@runtime_checkable
class Verifier(Protocol):
    name: str

    def verify(self, candidate: Candidate, task: Task) -> Verdict: ...

    def verify_batch(
        self, candidates: Sequence[Candidate], tasks: Sequence[Task]
    ) -> list[Verdict]: ...


def completion_text(candidate: Candidate) -> str:
    if isinstance(candidate, str):
        return candidate
    return str(candidate.get("completion") or "")


def error_verdict(err: BaseException, seconds: float = 0.0) -> Verdict:
    """A checker crash is 'could not verify', never a pass and never a crash of the caller."""
    return Verdict(None, 0.0, "verifier_error", f"{type(err).__name__}: {err}"[:500], seconds)


class SequentialBatch:
    """Mixin: `verify_batch` as a loop over `verify`, for verifiers with no cheaper batch path."""

    def verify_batch(
        self, candidates: Sequence[Candidate], tasks: Sequence[Task]
    ) -> list[Verdict]:
        return [self.verify(c, t) for c, t in zip(candidates, tasks, strict=True)]  # type: ignore[attr-defined]


_REGISTRY: dict[str, tuple[Callable[..., Verifier], str]] = {}


def register(name: str, origin: str | None = None) -> Callable[[Callable[..., Verifier]], Any]:
    """Decorator: register a verifier factory (class or function returning a Verifier).

    The origin defaults to "builtin" only inside thinkwheel and to "register:<module>" anywhere
    else: a user's verifier is then wrapped so one that raises costs a None verdict (not its
    whole batch), and its source file is part of the stage keys."""

    def deco(factory: Callable[..., Verifier]) -> Callable[..., Verifier]:
        module = getattr(factory, "__module__", None) or "?"
        origin_ = origin or (
            "builtin" if module.split(".")[0] == "thinkwheel" else f"register:{module}")
        if origin_ != "builtin":
            # a plugin named "math" lost to the built-in or replaced it, by import order
            from thinkwheel.verifiers.registry import _load_builtins

            _load_builtins()
            if _REGISTRY.get(name, (None, ""))[1] == "builtin":
                raise ValueError(f"{module}: {name!r} is a built-in verifier's name; register "
                                 "yours under another")
        _REGISTRY[name] = (factory, origin_)
        return factory

    return deco
