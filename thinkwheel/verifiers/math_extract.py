"""Find the final answer in a model completion.

Order: the text after `</think>` (a missing opening `<think>` is fine; an unclosed one means
the model never finished thinking, so there is no answer), then inside it the last
`\\boxed{}` (nested braces), "final answer is", "####" followed by a value, "answer:"/
"answer is", a short one-line answer as a whole, and finally the last `$...$` span or number.
Two boxes are a hedge (no answer) unless they give the same answer in different notation.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

_CUES = [
    re.compile(r"final answer\s*(?:is|:)\s*:?\s*(.+)", re.I),
    # GSM8K's `#### 72`; a markdown heading (`#### Step 1`) is no answer marker
    re.compile(r"####[ \t]*(?=[*_]*[ \t]*[-+\u2212\u2013$\\\d.(\[{])(.+)"),
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
    """The contents of every `\\boxed{}` / `\\fbox{}` in `text`, nested ones too, in order;
    a box that holds nothing but another box (`\\boxed{\\boxed{5}}`) only wraps it and is left
    out, so that is one answer while `\\boxed{\\boxed{5} or \\boxed{6}}` is two."""
    starts = sorted(m.start() for m in re.finditer(r"\\boxed|\\fbox", text))
    boxes = [b for at in starts if (b := _boxed_at(text, at)) is not None]
    return [b for b in boxes if not _only_a_box(b)]


def _only_a_box(content: str) -> bool:
    c = content.strip()
    inner = _boxed_at(c, 0) if c.startswith(("\\boxed", "\\fbox")) else None
    return inner is not None and c in (f"\\boxed{{{inner}}}", f"\\fbox{{{inner}}}")


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
    hit = _cue_hit(text)
    if hit is None:
        return False, None
    return True, _after_cue(hit.splitlines()[0] if hit else "") or None


def _cue_hit(text: str) -> str | None:
    """What follows the last hit of the first cue that occurs ("" for a bare cue), or None."""
    return next((hits[-1].strip() for cue in _CUES if (hits := cue.findall(text))), None)


# the sign-offs that follow an answer ("$5$. I hope it is correct."): only these are cut, since
# any other sentence may take the answer back ("5. Hmm, let me recompute: it is six.")
_TRAILING_SENTENCE = re.compile(r"^(.*?\S)\.\s+([^\d$\\]*)$")
_SIGN_OFF = re.compile(r"^(?:i hope (?:it|this|that) (?:is|was) (?:correct|right|helpful)|"
                       r"(?:i )?hope (?:it|this|that) helps|let me know if you have (?:any )?"
                       r"(?:other |more |further )?questions|this is the final answer)[.!]*$", re.I)


def _after_cue(line: str) -> str:
    """The answer on a cue's line. Minerva's format nests two cues ("Final Answer: The final
    answer is $5$. I hope it is correct."): the inner cue wins, and a known sign-off after it
    is not part of the answer."""
    value = clean(line)
    for _ in range(3):
        inner = _cue_hit(value)
        if inner and inner != value:
            value = clean(inner)
            continue
        m = _TRAILING_SENTENCE.match(value)
        if m and _SIGN_OFF.match(m.group(2).strip()):
            value = clean(m.group(1))
            continue
        break
    return value


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
    if not answer or _hedges(all_boxed(answer)):
        return None  # `\\boxed{5} or \\boxed{6}` hedges (a GRPO reward hack); it answers nothing
    marked, value = _marked(answer)
    if marked:
        return _chain_result(value) if value else value
    if len(answer) <= _SHORT and "\n" not in answer:
        return _chain_result(clean(answer)) or None
    spans = _MATH_SPAN.findall(answer)
    if spans:
        last = next(g for g in spans[-1] if g)
        return clean(last) or None
    numbers = _NUMBER.findall(answer)
    return numbers[-1].rstrip(",") if numbers else None



_LITERAL = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d{1,40}(?:\.\d{1,40})?")


def _chain_result(value: str | None) -> str | None:
    """`91 + 4 = 95` answers 95: the last side of a chain of plain arithmetic whose links all
    hold and that ends in a number (the parser reads the chain as an equation, which no number
    equals). A chain with a false link (`2+2=5`) stays as written, and fails."""
    if value is None or "=" not in value:
        return value
    from thinkwheel.filters.arithmetic import evaluate

    sides = [p.strip() for p in value.split("=")]
    last = sides[-1]
    if len(sides) < 2 or not _LITERAL.fullmatch(last) or len(value) > 200:
        return value
    values = [evaluate(p) for p in sides]
    if None in values or len(set(values)) != 1:
        return value
    return last


_MAX_SPELLINGS = 4  # more distinct boxes than this is a hedge, not one answer restated


def _hedges(boxes: list[str]) -> bool:
    """Whether the boxes give more than one answer. Boxes restating the last one in other
    notation (`\\frac12` / `\\dfrac{1}{2}`, `\\$18` / `18`, `5` / `5 \\text{ apples}`) are one
    answer; it is the last box that is graded, so only its equivalents are let through."""
    keys = {_box_key(b): b for b in boxes}
    if len(keys) <= 1:
        return False
    if len(keys) > _MAX_SPELLINGS:
        return True
    last_key = _box_key(boxes[-1])
    last = _box_value(boxes[-1])
    return last is None or any(
        key != last_key and not _same_box(last, _box_value(box)) for key, box in keys.items()
    )


def _same_box(a: Any, b: Any) -> bool:
    """Two parsed boxes say the same. Extraction also runs in-process (the vote and consensus
    stages) with no time limit, so only what compares at once is compared by value: rational
    numbers and words through `equivalent`, anything else by sympy's canonical form
    (`\\frac{1}{\\sqrt{2}}` is `\\frac{\\sqrt{2}}{2}`), never by simplify (`(x+1)^{1000}`
    against `(x^2+2x+1)^{500}` took 20 s)."""
    if b is None:
        return False
    from thinkwheel.verifiers.math_equiv import equivalent

    if all(x.kind == "text" or (x.kind == "number" and x.value.is_Rational) for x in (a, b)):
        return equivalent(a, b) or equivalent(b, a)
    return a.value == b.value and (a.unit, a.percent) == (b.unit, b.percent)


def _box_value(box: str) -> Any:
    """A box parsed as the verifier parses answers, or None (then only its text counts). Only
    the small exact parser: latex2sympy has no time bound (`9^{9^{9^{9}}}` hangs it)."""
    from thinkwheel.verifiers.math_parse import ParseError, parse_answer

    try:
        return parse_answer(_chain_result(clean(box)) or "", plain_only=True)
    except ParseError:
        return None


def _box_key(box: str) -> object:
    """What a boxed answer says, so a box that restates another (`\\boxed{95}, i.e.
    \\boxed{95.0}`, `\\boxed{x=4}, so \\boxed{4}`) is not read as a second answer. Only plain
    decimals are read as values (`3,5` is not 35; `inf` and `1e99999999` stay text)."""
    s = re.sub(r"^[A-Za-z]\s*=(?!=)", "", clean(box)).replace(" ", "")
    if _LITERAL.fullmatch(s):
        return Fraction(Decimal(s.replace(",", "")))
    return s
