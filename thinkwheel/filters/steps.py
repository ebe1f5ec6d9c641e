"""The step check: a verified trace of a task whose generator knows the worked steps must state
them, in order.

Why: a trace can state only true steps and reach the verified answer without its steps leading
there (`11-5=6, 2-0=2. So 21 - 5 = 16.`): the answer is a guess, or, in a step-repaired trace,
the checker's correction of the conclusion (`sampling.repair`). The false-arithmetic filter
cannot see it, since every claim holds. The procedural families compute each task's worked
solution, so for theirs the check is exact: process supervision from the generator, where an
outcome verifier checks only the answer (Lightman et al. 2023 check steps with a learned model).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPACE = re.compile(r"\s+")


def missing_step(reasoning: str, steps: Sequence[str]) -> str | None:
    """The first of `steps` (`9+5=14`) that `reasoning` does not state after the ones before
    it, spaces aside and not inside a longer number (`19+5=14` is not `9+5=14`); None when it
    states them all."""
    text, at = _SPACE.sub("", reasoning or ""), 0
    for step in steps:
        m = re.compile(rf"(?<!\d)(?<!\d\.){re.escape(_SPACE.sub('', step))}(?!\.?\d)").search(text, at)
        if m is None:
            return step
        at = m.end()
    return None
