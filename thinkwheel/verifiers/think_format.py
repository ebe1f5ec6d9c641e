"""The `think_format` verifier: exactly one well-formed `<think>…</think>`, then an answer.

Tolerant mode (the default) accepts a completion without the opening `<think>`, because
chat templates that pre-fill it make the model's text start inside the thought; strict mode
requires the tag in the text. A naive format reward is always 0 under such templates.
A thought needs a letter or digit and an answer more than sentence punctuation: as a GRPO
reward, `<think>.</think>.` would otherwise pay for the form with nothing in it.
"""

from __future__ import annotations

import re
import string

from thinkwheel.verifiers.base import (
    Candidate,
    SequentialBatch,
    Task,
    Verdict,
    completion_text,
    register,
)


def check_format(text: str, tolerant: bool = True) -> tuple[bool, str]:
    """(ok, why) for one completion."""
    opens, closes = text.count("<think>"), text.count("</think>")
    if closes != 1:
        return False, f"{closes} closing </think> tags"
    head, answer = text.split("</think>", 1)
    if opens > 1:
        return False, f"{opens} opening <think> tags"
    if opens == 0 and not tolerant:
        return False, "missing <think>"
    if opens == 1 and head.lstrip() and not head.lstrip().startswith("<think>"):
        return False, "text before <think>"
    reasoning = head.split("<think>", 1)[-1]
    if not reasoning.strip():
        return False, "empty reasoning"
    if not _WORD.search(reasoning):
        return False, "no letter or digit in the reasoning"
    if not answer.strip():
        return False, "empty answer"
    if not answer.strip(_BLANK):
        return False, "only punctuation in the answer"
    return True, ""


_WORD = re.compile(r"[^\W_]")
# what ends or joins a sentence, and markdown or LaTeX markup: an answer of only these says
# nothing. Brackets, quotes and operators are answers (`[]` for "what does sorted([])
# return?", `>` for a comparison).
_BLANK = ".,;:!?…-–—*_#`$" + string.whitespace


@register("think_format")
class ThinkFormatVerifier(SequentialBatch):
    name = "think_format"

    def __init__(self, tolerant: bool = True, **_: object) -> None:
        self.tolerant = tolerant

    def verify(self, candidate: Candidate, task: Task) -> Verdict:
        ok, why = check_format(completion_text(candidate), self.tolerant)
        return Verdict(ok, 1.0 if ok else 0.0, "ok" if ok else "bad_format", why)
