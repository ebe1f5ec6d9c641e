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

from thinkwheel.generators.procedural import worked_conclusion, worked_steps

_AROUND = re.compile(r"\s*([-+*/=<>])\s*")


def _tight(text: str) -> str:
    """`7 + 8 = 15` as `7+8=15`: spaces around signs dropped, other spaces kept."""
    return _AROUND.sub(r"\1", text)


def missing_step(text: str, steps: Sequence[str]) -> str | None:
    """The first of `steps` (`9+5=14`) that `text` does not state after the ones before it,
    spaces around its signs aside and not inside a longer number (`19+5=14` and `9+5=14.5` are
    not `9+5=14`); None when it states them all."""
    text, at = _tight(text or ""), 0
    for step in steps:
        tight = re.escape(_tight(step))
        m = re.compile(rf"(?<!\d)(?<!\d\.){tight}(?!\.?\d)").search(text, at)
        if m is None:
            return step
        at = m.end()
    return None


# the families with worked steps, and how they read: part of the hash of a filter stage with
# the step check on and of a sample stage with repair to the worked steps, so a run's rounds
# are not judged by two versions (2: linear_equation has worked steps; 3: multiplication adds
# its carry in a step of its own, and repair puts a column task's conclusion right)
STEPS_VERSION = 3
# a sentence that starts with "So" is the conclusion (`. So 81 - 2 = 89`, `. So, 81 - 2 = 89`),
# no step
_SO = re.compile(r"(?:^|[.!?>\n])\s*so\s*,?\s*$", re.IGNORECASE)
# a written step: numbers joined by signs, `=`, a number (`7+8+1=16`, `5-7=-2`, `1*3+1=4`,
# `-26 + 12 = -14`, `18/-2 = -9`)
_STEP = re.compile(r"(?<![\d.])-?\d+(?:\s*[-+*/]\s*-?\d+)+\s*=\s*-?\d+(?:\.\d+)?(?!\d)")


def worked_step_head(text: str, steps: Sequence[str]) -> str | None:
    """`text` up to its first written step that is not the worked one in its place, with the
    worked step written there instead; None when its steps are the worked ones, or when it
    writes none to put one in place of or skipped one (its step in that place is a later
    worked step: the words before it, `x = `, belong to that one).

    Why: repair by value (`arithmetic.repair_head`) corrects only false steps, and a step can
    be true and still not the algorithm's: after `11-2=9` a model that never learned to borrow
    writes `8-0=8` for 81 - 2, where the worked step is `7-0=7`. Nothing false, so nothing was
    corrected, and the bundled model's kept subtraction traces held almost no borrow at all."""
    cut = worked_step_cut(text, steps)
    return None if cut is None else text[: cut[0]] + cut[1]


def _lhs(step: str) -> str:
    """`7 + 8 = 15` -> `7+8`."""
    return _tight(step).split("=", 1)[0]


def worked_step_cut(text: str, steps: Sequence[str]) -> tuple[int, str] | None:
    """`worked_step_head` as (where `text` is cut, what is written after the cut)."""
    # the conclusion (`So 81 - 2 = 89`) is no step to put one in place of
    written = [m for m in _STEP.finditer(text) if not _SO.search(text, 0, m.start())]
    for j, step in enumerate(steps):
        if j < len(written) and _tight(written[j].group()) == _tight(step):
            continue
        if j < len(written):
            if _lhs(written[j].group()) in {_lhs(s) for s in steps[j + 1:]}:
                return None  # skipped: repair by value, if anything
            return written[j].start(), step
        return (written[j - 1].end(), ", " + step) if j else None
    return None


def conclusion_cut(text: str, conclusion: str, steps: Sequence[str] = ()
                   ) -> tuple[int, str] | None:
    """Where `text`'s conclusion (`So 177 * 6 = 1062`) starts, and the worked one to write in
    its place, its sentence ended (`17 * 6 = 102.`: a model continued from `= 102` writes on
    into `1028`), when it is not that; None when it is, or there is none. A sentence starting
    "So" that states one of the worked `steps` (`. So 1*6=6, 6+4=10.`) is a step, not the
    conclusion.

    Why: the bundled model reads the operand's length off the number of steps, so once its
    one-digit multiplications write the carry in a step of its own (three steps for 17 * 6), it
    concludes `So 177 * 6 = 1062` after steps that are all right: 449 of the 636 repaired
    multiplication traces of a round 0. Every claim in it holds, so neither repair saw it."""
    stated = {_lhs(s) for s in steps}
    for m in _STEP.finditer(text):
        if _SO.search(text, 0, m.start()) and _lhs(m.group()) not in stated:  # the first
            return None if _tight(m.group()) == _tight(conclusion) else (m.start(), f"{conclusion}.")
    return None


def task_steps(source: str | None, family: str | None, prompt: str | None) -> list[str] | None:
    """The worked steps of a procedural task of a family that has them, else None."""
    if not (source or "").startswith("procedural:"):
        return None
    return worked_steps(family or "", prompt or "")


def task_conclusion(source: str | None, family: str | None, prompt: str | None) -> str | None:
    """The worked conclusion (`17 * 6 = 102`) of a procedural task of a column family."""
    if not (source or "").startswith("procedural:"):
        return None
    return worked_conclusion(family or "", prompt or "")


def unstated_step(source: str | None, family: str | None, prompt: str | None, text: str | None
                  ) -> str | None:
    """The first worked step a completion of this task does not state, or None: for procedural
    tasks of a family with worked steps (`procedural.worked_steps`), None for any other task."""
    steps = task_steps(source, family, prompt)
    return missing_step(text or "", steps) if steps else None
