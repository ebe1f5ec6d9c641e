"""False arithmetic in a reasoning trace: every `expr = value` claim (and `a < b`, `a >= b`, ...)
whose sides are both plain arithmetic is evaluated exactly, and a trace that states a false one
is flagged.

Why: an answer check accepts any trace that ends on the right number. On tasks a model rarely
solves, most such traces are lucky guesses with wrong steps (`7+6=15, ... = 43`): with the
bundled model, 43% of "verified" addition samples and 95% of linear-equation samples stated a
false equation (bench/flywheel.py, round 0). Training on them teaches wrong steps. Only
claims made of numbers and + - * / ( ) are checked; anything with a variable, a unit or a word
is left alone, so an honest trace is never flagged for what this module cannot read.

Pass the whole completion, not only its reasoning: a step written after `</think>` (or with no
tags at all) states the same thing, and a check that skipped it paid a policy to move its work
out of the tags.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction

_CLAUSE = re.compile(
    r"[,;:]\s+|\.\s+|\n|\?\s*|\b(?:so|then|thus|hence|therefore|and|gives|is)\b", re.IGNORECASE
)  # a clause ends at "?", so what follows it ("? no", "? Yes.") says if it was claimed
# A relation between two sides, captured so the check knows which one the trace claimed.
_RELATION = re.compile(r"(<=|>=|≤|≥|!=|≠|(?<![=<>!])=(?!=)|<|>)")
_HOLDS = {
    "=": operator.eq, "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
    "≤": operator.le, "≥": operator.ge, "!=": operator.ne, "≠": operator.ne,
}
_PLAIN = re.compile(r"^[\d\s.+\-*/()]+$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_SYMBOLS = {
    "×": "*", "·": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/", "−": "-", "$": "",
}
_MAX_EXPR_CHARS = 80  # a claim longer than this is not a step anyone writes out
# markup around a claim (`7+6=15`, **7+6=15**, \(7+6=15\)) is not part of it
_MARKUP = re.compile(r"\*\*|`|\\[()\[\]]|&(?=\s*[=<>≤≥])")  # and LaTeX's aligned `&=`
# an operation between numbers: what makes a line's last side a value to go on from
_OPERATION = re.compile(r"\d\s*(?:[+\-*/×·÷−]|\\times|\\cdot|\\div|\bx\b)\s*\(?\s*-?\d")
# end a clause: `<think>ok</think>7+6=15` claims 7+6=15; so do a LaTeX row break `\\` and
# an environment's \begin{aligned} / \end{aligned}
_BREAK = re.compile(r"</?think>|\\\\|\\(?:begin|end)\{\w+\*?\}")
# a list's bullet at the start of a line (`- 9 + 5 = 14`) is no minus sign
_BULLET = re.compile(r"(?m)^([ \t]*)[-*•](?=[ \t])")
_LIST_CUT = re.compile(r",\s*|\band\b", re.IGNORECASE)  # what joins the numbers of a list
# `7 x 6` and `7×6`; not `3x = 12` (no digit after x) nor hex `0x10` (no spaces)
_TIMES_X = re.compile(r"(?<=\d)(?:\s+x\s+|\s*×\s*)(?=\d)")
# what the trace says of the relation just before: "2 > 3 is false", "2 > 3: no", "is 7+6=15?"
_REFUTED = re.compile(
    r"\s*(?:(?:is|are|was)\s+)?(?:not\s+true|false|wrong|incorrect|untrue)\b|\s*[:?]\s*no\b"
    # a question, unless answered yes on its own ("=15? Yes, so", not "=15? Correct answer: 13")
    r"|\s*\?(?!\s*(?:yes|yep|yeah|correct|right|true|indeed|exactly)\s*(?:[.!,;]|$))",
    re.IGNORECASE,
)
# `45 / 8 = 5, remainder 5`: the clause after the comma makes the `=` an integer division
_REMAINDER = re.compile(r"[,;:]?\s*\(?\s*(?:with\s+(?:a\s+)?)?(?:remainder|rem\b|r\s*\d)", re.I)
_DIVISION = re.compile(r"/|÷|\\div")
# `7 + 6 is 15` claims 7 + 6 = 15 ("is" otherwise ends a clause: "the answer is 13"): an
# " is " before a number, whose last 80 characters before it end in arithmetic
_IS = re.compile(r"\s+is\s+(?=-?\d[\d,]*(?:\.\d+)?(?![\d.]*\s*[?%]))", re.IGNORECASE)
_ARITH_TAIL = re.compile(r"\d[\d\s.,]*(?:[+\-*/×·÷][\d\s.,()]*)+\d\)?$")


_ENDS_IN_NUMBER = re.compile(r"\d\s*$")
_LONE_NUMBER = re.compile(r"^\s*\$?-?[\d.,]+\s*$")
_VALUE = re.compile(r"^\s*\$?-?[\d.,]+(?:\s*/\s*\d+)?\s*$")  # a number or p/q: a value as written

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _value(node: ast.AST) -> Fraction:
    """Exact value of an allow-listed tree; ZeroDivisionError means not a claim we can judge."""
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_value(node.left), _value(node.right))
    raise ValueError("not plain arithmetic")


def evaluate(expr: str) -> Fraction | None:
    """The exact value of a plain arithmetic expression, or None if it is anything else."""
    expr = _TIMES_X.sub("*", expr)
    for sym, rep in _SYMBOLS.items():
        expr = expr.replace(sym, rep)
    expr = _THOUSANDS.sub("", expr).strip().rstrip(".…").strip()
    if expr.count("(") != expr.count(")"):  # "(7+6" and "15)" of a bracketed claim
        if expr.count("(") > expr.count(")") and expr.startswith("("):
            expr = expr[1:]
        elif expr.count(")") > expr.count("(") and expr.endswith(")"):
            expr = expr[:-1]
    if not expr or len(expr) > _MAX_EXPR_CHARS or not _PLAIN.match(expr):
        return None
    if not any(ch.isdigit() for ch in expr) or "**" in expr or "//" in expr:
        return None
    try:
        return _value(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _decimals(expr: str) -> int | None:
    """Decimal places of a lone decimal literal (a rounded value), else None."""
    expr = expr.replace("$", "")  # $3.33 is rounded as 3.33 is
    m = re.fullmatch(r"\s*-?\d*\.(\d+)\s*(?:\.{1,3}|…)?\s*", expr)  # 0.33, .33, 0.333...
    return len(m.group(1)) if m else None


def _agrees(left: str, a: Fraction, right: str, b: Fraction) -> bool:
    """Equal, or one side is a decimal that the other side rounds (or truncates) to: the
    coarser of two decimals is the rounded one, so a rounding chain `2/3 = 0.667 = 0.67` holds
    link by link while `1.04 = 1.1` does not."""
    if a == b:
        return True
    sides = [(d, v) for d, v in ((_decimals(left), a), (_decimals(right), b)) if d is not None]
    if not sides:
        return False
    places, coarse = min(sides, key=lambda s: s[0])
    fine = b if coarse is a else a
    scaled = fine * 10**places
    return coarse * 10**places in (math.floor(scaled + Fraction(1, 2)), math.trunc(scaled))


def _holds(left: str, a: Fraction, rel: str, right: str, b: Fraction) -> bool:
    return _agrees(left, a, right, b) if rel == "=" else _HOLDS[rel](a, b)


def _is_claims(text: str) -> str:
    """`7 + 6 is 15` written as `7 + 6 = 15` (looking back a claim's length from each " is ",
    so a long run of arithmetic costs no more than a short one)."""
    out, last = [], 0
    for m in _IS.finditer(text):
        tail = _ARITH_TAIL.search(text, max(last, m.start() - _MAX_EXPR_CHARS), m.start())
        if tail and "/" not in tail.group(0):  # "17 / 5 is 3, remainder 2": integer division
            out += [text[last:m.start()], " = "]
            last = m.end()
    return "".join(out) + text[last:] if out else text


def false_claims(text: str | None) -> list[str]:
    """The `lhs = rhs` (or `<`, `>`, `<=`, `>=`, `!=`) claims in `text` that are false, in order.

    Chains are read link by link: `2+3 = 5 < 4` states `2+3=5` (true) and `5<4` (false).
    """
    bad: list[str] = []
    text = _is_claims(_as_read(text or ""))
    cuts = list(_CLAUSE.finditer(text))
    starts = [0, *(m.end() for m in cuts)]
    ends = [*(m.start() for m in cuts), len(text)]
    listed = False  # the clause before ended a list of numbers: "12 and 8", "5, 10, and 15"
    last_side = ""  # the previous line's last side, which a row starting `= 16` goes on from
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        clause = text[start:end]
        pieces = _RELATION.split(clause)  # side, relation, side, relation, side ...
        if len(pieces) > 1 and not pieces[0].strip() and i and cuts[i - 1].group(0) == "\n":
            pieces[0] = last_side  # `7 + 9 \\ &= 17`: an aligned row continues the one above
        if clause.strip():
            # ...a row of arithmetic or a chain: not a list's last number ("add 12 and 8\n= 20")
            chain = len(pieces) > 1 or bool(_OPERATION.search(pieces[-1]))
            last_side = pieces[-1] if chain else ""
        was_listed = listed
        if clause.strip():  # ", and" leaves an empty clause between its two cuts
            listed = len(pieces) == 1 and bool(_ENDS_IN_NUMBER.search(clause))
        # only a comma or "and" goes on with a list; a new line or sentence starts afresh
        listed = listed and i < len(cuts) and bool(_LIST_CUT.fullmatch(cuts[i].group(0)))
        if len(pieces) < 3 or _REFUTED.match(text, end):  # asked or refuted, not claimed
            continue
        sides, rels = pieces[::2], pieces[1::2]
        values = [evaluate(p) for p in sides]
        if rels[-1] == "=" and values[-2] is not None and _DIVISION.search(sides[-2]) \
                and _REMAINDER.match(text, end):
            values[-2] = Fraction(math.floor(values[-2]))  # the quotient, its remainder after
        for i, rel in enumerate(rels):
            if i == 0 and was_listed and _LONE_NUMBER.match(sides[0]):
                continue  # "the sum of 12 and 8 = 20": the left side began in the clause before
            a, b = values[i], values[i + 1]
            left, right = sides[i], sides[i + 1]
            if a is not None and b is not None and not _holds(left, a, rel, right, b):
                bad.append(f"{left.strip()}{rel}{right.strip().rstrip('.')}")
    return bad


def _written(value: Fraction, like: str) -> str:
    """`value` as `like` writes a number: an integer, a decimal to its places, or p/q (a `$`
    before it kept)."""
    cur = "$" if like.lstrip().startswith("$") else ""
    if value.denominator == 1:
        return f"{cur}{value.numerator}"
    if m := re.search(r"\.(\d+)", like):
        places = len(m.group(1))
        q = round(value * 10**places)  # exact: float would write 1/3 as 0.3333333333333333148
        sign, q = ("-" if q < 0 else ""), abs(q)
        return f"{sign}{cur}{q // 10**places}.{q % 10**places:0{places}d}"
    return f"{cur}{value.numerator}/{value.denominator}"


def _as_read(text: str, *, same_length: bool = False) -> str:
    """What `false_claims` reads: tags and LaTeX breaks as new lines, markup and bullets as
    spaces. `same_length` pads each with spaces to its own length, every character where it
    was, so a claim `repair_head` finds in it is cut from `text` at the same place."""
    text = _BREAK.sub((lambda m: "\n" + " " * (len(m.group()) - 1)) if same_length else "\n", text)
    text = _BULLET.sub(r"\1 ", text)  # one character for one
    return _MARKUP.sub((lambda m: " " * len(m.group())) if same_length else " ", text)


def repair_head(text: str) -> str | None:
    """`text` up to its first false `expr = value` claim, with `value` replaced by the true
    value, or None when it states no false claim or the first one is not such a claim (an
    inequality, `7 + 6 is 15`, a false expression on the right: `14 = 9+6`).

    Why: a model continued from the corrected step writes a trace through the step it got
    wrong (the carry, the borrow) that resampling almost never yields (bench/step_resample.py),
    as a calculator fills in GSM8K's annotated steps (Cobbe et al. 2021). The claim is one
    `false_claims` finds in the whole text (lists, refutations, aligned rows), so a step it
    would not flag is never "corrected"; its clause is found by bisection over prefixes (a
    longer prefix states what a shorter one does), so a long trace costs a few checks."""
    bad = false_claims(text)
    if not bad:
        return None
    plain = _as_read(text, same_length=True)
    cuts = list(_CLAUSE.finditer(plain))
    starts = [0, *(m.end() for m in cuts)]
    ends = [*(m.start() for m in cuts), len(plain)]

    def states(j: int) -> bool:
        return any(c in bad for c in false_claims(text[: ends[j]]))

    lo, hi = 0, len(ends) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if states(mid) else (mid + 1, hi)
    for start, end in zip(starts[lo:], ends[lo:], strict=True):
        clause = plain[start:end]
        rels = list(_RELATION.finditer(clause))
        edges = [0, *(x for m in rels for x in (m.start(), m.end())), len(clause)]
        for i, rel in enumerate(rels):
            left, right = clause[edges[2 * i]:edges[2 * i + 1]], clause[edges[2 * i + 2]:edges[2 * i + 3]]
            if f"{left.strip()}{rel.group(0)}{right.strip().rstrip('.')}" not in bad:
                continue  # true, or refuted later in the text
            a = evaluate(left)
            if rel.group(0) != "=" or a is None or not _VALUE.match(right.rstrip(".")):
                return None  # the first false claim is not one this can rewrite
            pad = right[: len(right) - len(right.lstrip())]
            return text[: start + edges[2 * i + 2]] + pad + _written(a, right)
    return None
