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

from thinkwheel.generators.procedural import worked_steps

_AROUND = re.compile(r"\s*([-+*/=<>])\s*")  # `7 + 8 = 15` reads as `7+8=15`; other spaces stay


def missing_step(text: str, steps: Sequence[str]) -> str | None:
    """The first of `steps` (`9+5=14`) that `text` does not state after the ones before it,
    spaces around its signs aside and not inside a longer number (`19+5=14` and `9+5=14.5` are
    not `9+5=14`); None when it states them all."""
    text, at = _AROUND.sub(r"\1", text or ""), 0
    for step in steps:
        tight = re.escape(_AROUND.sub(r"\1", step))
        m = re.compile(rf"(?<!\d)(?<!\d\.){tight}(?!\.?\d)").search(text, at)
        if m is None:
            return step
        at = m.end()
    return None


def unstated_step(source: str | None, family: str | None, prompt: str | None, text: str | None
                  ) -> str | None:
    """The first worked step a completion of this task does not state, or None: for procedural
    tasks of a family with worked steps (`procedural.worked_steps`), None for any other task."""
    if not (source or "").startswith("procedural:"):
        return None
    steps = worked_steps(family or "", prompt or "")
    return missing_step(text or "", steps) if steps else None
