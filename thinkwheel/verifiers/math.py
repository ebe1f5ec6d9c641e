"""The `math` verifier: extract the final answer, parse both sides with sympy, compare.

Checks run in a shared pool of killable worker processes (`math_pool`), each under a
wall-clock bound; the reference is parsed once per worker and cached. `check_math` is the
same check in-process, for tests and for callers that already sandbox.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

from thinkwheel.verifiers.base import Candidate, Task, Verdict, completion_text, register
from thinkwheel.verifiers.math_equiv import equivalent
from thinkwheel.verifiers.math_extract import extract_answer, marked_answer
from thinkwheel.verifiers.math_parse import Answer, ParseError, latex_to_sympy, parse_answer
from thinkwheel.verifiers.math_pool import shared_pool

_JOB = "thinkwheel.verifiers.math:run_job"


@functools.lru_cache(maxsize=8192)
def parse_reference(reference: str) -> Answer | str:
    """Parsed reference, or the parse error message (cached: one parse per task per worker).

    A reference that is a worked solution rather than an answer (GSM8K's `... #### 72`, a
    MATH solution with `\\boxed{}`) is read by the answer it marks as final: parsed whole, such
    prose can come out as a product of symbols that no answer equals."""
    marked = marked_answer(reference)
    try:
        return parse_answer(marked or reference)
    except ParseError as err:
        return str(err)


def check_math(
    reference: str | None, completion: str, percent_policy: str = "fraction"
) -> tuple[bool | None, str, str]:
    """(passed, reason, detail) for one completion against one reference, in-process."""
    if reference is None or not str(reference).strip():
        return None, "bad_reference", "empty reference"
    ref = parse_reference(str(reference))
    if isinstance(ref, str):
        return None, "bad_reference", ref
    answer = extract_answer(completion)
    if answer is None:
        return False, "no_answer", ""
    try:
        cand = parse_answer(answer, hint=ref.kind)
    except ParseError as err:
        return False, "parse_error", f"{answer[:80]!r}: {err}"
    if cand.unevaluated and ref.kind == "number" and not ref.unevaluated:
        return False, "unevaluated", answer[:80]  # the question restated: `91 + 4` for 95
    if equivalent(ref, cand, percent_policy):
        return True, "ok", answer[:80]
    return False, "wrong_answer", answer[:80]


def warm_up() -> None:
    """Load the LaTeX parser once so the first real check is not charged for it."""
    latex_to_sympy("\\frac{1}{2}")  # plain forms no longer reach it, so call it directly
    check_math("\\frac{1}{2}", "</think>\\frac{1}{2}")
    parse_reference.cache_clear()


def run_job(job: tuple[str | None, str, str]) -> tuple[bool | None, str, str, float]:
    """Worker entry point: `check_math` plus the time it took."""
    start = time.perf_counter()
    try:
        passed, reason, detail = check_math(*job)
    except Exception as err:  # sympy can raise nearly anything on odd input
        passed, reason, detail = None, "verifier_error", f"{type(err).__name__}: {err}"[:300]
    return passed, reason, detail, time.perf_counter() - start


@register("math")
class MathVerifier:
    """Sympy-based final-answer checker with hard per-check time limits."""

    name = "math"

    def __init__(self, workers: int = 2, timeout_s: float = 5.0,
                 percent_policy: str = "fraction") -> None:
        if percent_policy not in ("fraction", "number", "either"):
            raise ValueError(f"percent_policy must be fraction|number|either, got {percent_policy!r}")
        self.workers, self.timeout_s, self.percent_policy = workers, timeout_s, percent_policy

    def verify(self, candidate: Candidate, task: Task) -> Verdict:
        return self.verify_batch([candidate], [task])[0]

    def verify_batch(self, candidates: Sequence[Candidate], tasks: Sequence[Task]) -> list[Verdict]:
        jobs = [
            (t.get("reference"), completion_text(c), self.percent_policy)
            for c, t in zip(candidates, tasks, strict=True)
        ]
        if not jobs:
            return []
        results = shared_pool(_JOB, self.workers).map(jobs, self.timeout_s)
        return [self._verdict(r) for r in results]

    async def averify_batch(self, candidates: Sequence[Candidate],
                            tasks: Sequence[Task]) -> list[Verdict]:
        return await asyncio.to_thread(self.verify_batch, candidates, tasks)

    def _verdict(self, result: tuple[str, object]) -> Verdict:
        status, value = result
        if status == "timeout":
            return Verdict(None, 0.0, "timeout", f"over {self.timeout_s}s", self.timeout_s)
        if status != "ok":
            return Verdict(None, 0.0, "verifier_error", str(value))
        passed, reason, detail, seconds = value  # type: ignore[misc]
        return Verdict(passed, 1.0 if passed else 0.0, reason, detail, seconds)
