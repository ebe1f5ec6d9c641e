"""Find the final answer in a model completion.

Order: the text after `</think>` (a missing opening `<think>` is fine; an unclosed one means
the model never finished thinking, so there is no answer), then inside it the last
`\\boxed{}` (nested braces), "final answer is", "answer:"/"answer is", "####", a short
one-line answer as a whole, and finally the last `$...$` span or number.
"""

from __future__ import annotations

import re

_CUES = [
    re.compile(r"final answer\s*(?:is|:)\s*:?\s*(.+)", re.I),
    re.compile(r"####\s*(.+)"),
    re.compile(r"\banswer\s*(?:is|:)\s*:?\s*(.+)", re.I),
]
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$]+?)\$", re.S)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?%?|-?\.\d+")
_SHORT = 80


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with nested braces, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    return None if start == -1 else _boxed_at(text, start)


def all_boxed(text: str) -> list[str]:
    """The contents of every `\\boxed{}` / `\\fbox{}` in `text`, in order."""
    starts = sorted(m.start() for m in re.finditer(r"\\boxed|\\fbox", text))
    return [b for at in starts if (b := _boxed_at(text, at)) is not None]


def _boxed_at(text: str, start: int) -> str | None:
    i = text.find("{", start)
    if i == -1 or text[start:i].strip() not in ("\\boxed", "\\fbox"):
        rest = text[start + len("\\boxed") :].strip()  # "\boxed 5"
        return rest.split()[0].rstrip(".$") if rest and rest[0] != "{" else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced


def clean(answer: str) -> str:
    """Strip delimiters and decoration around an answer: $, \\( \\), markdown bold, final dot."""
    s = answer.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        if s.endswith(".") and not re.search(r"\d\.$", s[-2:] if len(s) > 1 else s):
            s = s[:-1]
        elif s.endswith("."):
            s = s[:-1]
        for a, b in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
            if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
                s = s[len(a) : len(s) - len(b)]
        if s == before:
            break
    return s.strip()


def _marked(text: str) -> tuple[bool, str | None]:
    """(whether `text` marks a final answer, that answer): the last `\\boxed{}`, else the last
    hit of the first cue that occurs; a marker with nothing after it marks no answer."""
    boxed = last_boxed(text)
    if boxed is not None:
        return True, clean(boxed) or None
    for cue in _CUES:
        hits = cue.findall(text)
        if hits:
            line = hits[-1].strip().splitlines()[0] if hits[-1].strip() else ""
            return True, clean(line) or None
    return False, None


def marked_answer(text: str) -> str | None:
    """The answer a worked solution marks as final (`\\boxed{}`, "####", "final answer is",
    "answer:"), or None. For references: GSM8K's answers end `#### 72` and MATH's solutions box
    theirs. Unlike `extract_answer` it never guesses a trailing number, since a reference the
    verifier misreads would mark right answers wrong."""
    return _marked(text)[1]


def extract_answer(completion: str) -> str | None:
    """The final answer text of a completion, or None when there is none."""
    close = completion.rfind("</think>")
    if close == -1:
        if "<think>" in completion:
            return None  # reasoning never closed: truncated or malformed
        answer = completion
    else:
        answer = completion[close + len("</think>") :]
    answer = answer.strip()
    if not answer or len({clean(b) for b in all_boxed(answer)}) > 1:
        return None  # `\\boxed{5} or \\boxed{6}` hedges (a GRPO reward hack); it answers nothing
    marked, value = _marked(answer)
    if marked:
        return value
    if len(answer) <= _SHORT and "\n" not in answer:
        return clean(answer) or None
    spans = _MATH_SPAN.findall(answer)
    if spans:
        last = next(g for g in spans[-1] if g)
        return clean(last) or None
    numbers = _NUMBER.findall(answer)
    return numbers[-1].rstrip(",") if numbers else None
