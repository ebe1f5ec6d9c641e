"""A small exact parser for the plain answer forms, so most answers skip the LaTeX parser.

latex2sympy (ANTLR, pure Python) costs tens of milliseconds per answer; this reads the
common forms in well under one: integers, decimals, + - * / ^, implicit products (`2x`,
`(x+1)(x+2)`), `\\frac`, `\\sqrt`, `\\pi`, `\\infty`, `e`, small factorials, one relation
(= < > \\le \\ge), tuples, intervals, `\\{...\\}` sets, bare `1, 2` lists and `\\cup`.

It mirrors latex2sympy's readings (`e` is Euler's number, `i` a plain symbol, `(a, b)` an
open interval when a < b and a tuple otherwise, relations and unions unevaluated) and
returns None for anything else or anything ambiguous (`f(x)`, `x^23`, `3 4`, capitals,
commands it does not know, long decimals, huge powers), so the caller falls back to
latex2sympy and the two paths never disagree. Decimals become exact Rationals and are
reported, as the LaTeX path reports Floats, so tolerance applies only to inexact text.
"""

from __future__ import annotations

import re
from typing import Any

import sympy

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|([a-z])|(\\[a-zA-Z]+|\\[{}])|([-+*/^!()\[\],=<>{}]))")
_RELATIONS = {"=": sympy.Eq, "<": sympy.StrictLessThan, ">": sympy.StrictGreaterThan,
              "\\le": sympy.LessThan, "\\leq": sympy.LessThan,
              "\\ge": sympy.GreaterThan, "\\geq": sympy.GreaterThan}
_MUL_OPS = {"*", "\\cdot", "\\times"}
MAX_EXP = 1000  # a bigger literal power goes to the LaTeX path (which keeps it unevaluated)
_MAX_FACTORIAL = 3000
_MAX_DIGITS = 40
_MAX_DECIMAL_DIGITS = 15  # a double holds 15 digits, so Floats and exact text agree


class _Bail(Exception):
    """Not a plain form: let latex2sympy read it."""


def _tokens(s: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    s = s.rstrip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None:
            raise _Bail
        pos = m.end()
        kind = ("num", "sym", "cmd", "op")[m.lastindex - 1]  # type: ignore[operator]
        out.append((kind, m.group(m.lastindex)))  # type: ignore[arg-type]
    return out


def _finite_set(*items: Any) -> Any:
    """latex2sympy's FiniteSet subclass (it remembers the written order), for equal results."""
    from latex2sympy2_extended.sets import FiniteSet

    return FiniteSet(*items)


def _is_value(v: Any) -> bool:
    return isinstance(v, sympy.Expr)


class _Parser:
    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.i = 0
        self.inexact = False

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _Bail
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise _Bail

    # answer := item (',' item)*         a bare list is a set, as latex2sympy reads it
    def answer(self) -> Any:
        items = [self.item()]
        while self.peek() == ("op", ","):
            self.take()
            items.append(self.item())
        if self.peek() is not None:
            raise _Bail
        if len(items) == 1:
            return items[0]
        if not all(_is_value(v) for v in items):
            raise _Bail
        return _finite_set(*items)

    # item := union | expr [relop expr]
    def item(self) -> Any:
        left = self.expr()
        if isinstance(left, sympy.Set):
            while self.peek() == ("cmd", "\\cup"):
                self.take()
                right = self.expr()
                if not isinstance(right, sympy.Set):
                    raise _Bail
                left = sympy.Union(left, right, evaluate=False)
            return left
        tok = self.peek()
        if tok is not None and tok[1] in _RELATIONS:
            self.take()
            if tok[1] == "<" and self.peek() == ("op", "="):
                raise _Bail
            right = self.expr()
            nxt = self.peek()
            if not (_is_value(left) and _is_value(right)) or (nxt and nxt[1] in _RELATIONS):
                raise _Bail  # chains and relations between non-values are the parser's job
            return _RELATIONS[tok[1]](left, right, evaluate=False)
        if isinstance(left, sympy.Tuple) and self.peek() == ("cmd", "\\cup"):
            raise _Bail
        return left

    # expr := ['+'|'-'] term (('+'|'-') term)*
    def expr(self) -> Any:
        sign = 1
        if self.peek() in (("op", "-"), ("op", "+")):
            sign = -1 if self.take()[1] == "-" else 1
        value = self.term()
        if not _is_value(value):
            if sign != 1:
                raise _Bail
            return value  # a tuple, interval or set stands alone
        value = -value if sign == -1 else value
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            rhs = self.term()
            if not _is_value(rhs):
                raise _Bail
            value = value + rhs if op == "+" else value - rhs
        return value

    # term := factor ((* | / | \cdot | \times | juxtaposition) factor)*
    def term(self) -> Any:
        start = self.i
        value = self.factor()
        if (self.i == start + 1 and self.toks[start][0] == "num" and value.is_Integer
                and self.peek() is not None and self.peek()[1] == "\\frac"):
            # `1\frac{1}{2}` is the mixed number 3/2, as latex2sympy2_extended (Math-Verify)
            # reads it; taken as a product it was 1/2, and passed against that
            rhs = self.factor()
            if not (_is_value(rhs) and rhs.is_Rational and rhs.is_positive):
                raise _Bail
            value = value + rhs
        while True:
            tok = self.peek()
            if tok is None:
                return value
            if tok[1] in _MUL_OPS or tok[1] == "/":
                self.take()
                rhs = self.factor()
                if not (_is_value(value) and _is_value(rhs)):
                    raise _Bail
                if tok[1] == "/":
                    if rhs == 0:
                        raise _Bail
                    value = value / rhs
                else:
                    value = value * rhs
            elif tok[0] == "sym" or tok[1] in ("(", "{", "\\frac", "\\sqrt", "\\pi"):
                if tok[0] == "sym" and self._next_is(1, "("):
                    raise _Bail  # `f(x)` is a function call to latex2sympy
                rhs = self.factor()
                if not (_is_value(value) and _is_value(rhs)):
                    raise _Bail
                value = value * rhs
            elif tok[0] == "num":
                raise _Bail  # `3 4`, `x2`: readings differ between parsers
            else:
                return value

    def _next_is(self, ahead: int, text: str) -> bool:
        j = self.i + ahead
        return j < len(self.toks) and self.toks[j][1] == text

    # factor := atom ['^' exponent] ['!']
    def factor(self) -> Any:
        start = self.peek()
        if start is not None and start[0] == "sym" and self._next_is(1, "("):
            raise _Bail
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            exp = self.single()
            if self.peek() in (("op", "^"), ("op", "!")) or not _is_value(base):
                raise _Bail
            if exp.is_Rational and (abs(exp.p) > MAX_EXP or exp.q > MAX_EXP):
                raise _Bail
            if base == 0 and exp.is_number and not exp.is_positive:
                raise _Bail
            base = base**exp
        if self.peek() == ("op", "!"):
            self.take()
            if not (start and start[0] == "num" and base.is_Integer and 0 <= base <= _MAX_FACTORIAL):
                raise _Bail
            base = sympy.factorial(base)
        return base

    def single(self) -> Any:
        """A one-character argument (`x^2`, `\\sqrt2`) or a braced group."""
        tok = self.peek()
        if tok == ("op", "{"):
            return self.braced()
        if tok is not None and tok[0] == "num" and len(tok[1]) == 1:
            return self.atom()
        if tok is not None and tok[0] == "sym":
            return self.atom()
        raise _Bail

    def braced(self) -> Any:
        self.expect("{")
        value = self.expr()
        self.expect("}")
        if not _is_value(value):
            raise _Bail
        return value

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return self.number(text)
        if kind == "sym":
            return sympy.E if text == "e" else sympy.Symbol(text)
        if text == "\\pi":
            return sympy.pi
        if text == "\\infty":
            return sympy.oo
        if text == "{":
            self.i -= 1
            return self.braced()
        if text == "\\frac":
            return self.frac()
        if text == "\\sqrt":
            return self.sqrt()
        if text in ("(", "["):
            return self.group(text)
        if text == "\\{":
            return self.finite_set()
        raise _Bail

    def number(self, text: str) -> Any:
        if "." in text:
            digits = text.replace(".", "").lstrip("0")
            if len(digits) > _MAX_DECIMAL_DIGITS:
                raise _Bail
            self.inexact = True
            return sympy.Rational(text)
        if len(text) > _MAX_DIGITS:
            raise _Bail
        return sympy.Integer(text)

    def frac(self) -> Any:
        tok = self.peek()
        if tok is not None and tok[0] == "num" and len(tok[1]) == 2 and "." not in tok[1]:
            self.take()  # \frac12
            return sympy.Rational(int(tok[1][0]), int(tok[1][1])) if tok[1][1] != "0" else _bail()
        num = self.single()
        den = self.single()
        if den == 0:
            raise _Bail
        return num / den

    def sqrt(self) -> Any:
        index = None
        if self.peek() == ("op", "["):
            self.take()
            index = self.expr()
            self.expect("]")
            if not (_is_value(index) and index.is_Integer and 2 <= index <= 100):
                raise _Bail
        radicand = self.single()
        return sympy.sqrt(radicand) if index is None else sympy.root(radicand, index)

    def group(self, opener: str) -> Any:
        items = [self.expr()]
        while self.peek() == ("op", ","):
            self.take()
            items.append(self.expr())
        closer = self.take()[1]
        if closer not in (")", "]") or not all(_is_value(v) for v in items):
            raise _Bail
        if len(items) == 1:
            if opener == "(" and closer == ")":
                return items[0]
            raise _Bail
        if len(items) > 2:
            if opener == "(" and closer == ")":
                return sympy.Tuple(*items)
            raise _Bail
        left, right = items
        if left.free_symbols or right.free_symbols:
            raise _Bail  # symbolic endpoints: leave the reading to latex2sympy
        left_open, right_open = opener == "(", closer == ")"
        try:  # latex2sympy's rule: an "interval" that would be empty is a tuple
            if (left_open and right_open and right <= left) or (
                not left_open and not right_open and right < left
            ):
                return sympy.Tuple(left, right)
        except TypeError:
            raise _Bail from None
        return sympy.Interval(left, right, left_open=left_open, right_open=right_open)

    def finite_set(self) -> Any:
        if self.peek() == ("cmd", "\\}"):
            raise _Bail
        items = [self.expr()]
        while self.peek() == ("op", ","):
            self.take()
            items.append(self.expr())
        self.expect("\\}")
        if not all(_is_value(v) for v in items):
            raise _Bail
        return _finite_set(*items)


def _bail() -> Any:
    raise _Bail


def parse_plain(text: str) -> tuple[Any, bool] | None:
    """(sympy value, written with decimals) for a plain form, else None (use latex2sympy)."""
    try:
        toks = _tokens(text)
        if not toks:
            return None
        p = _Parser(toks)
        value = p.answer()
    except (_Bail, TypeError, ValueError, ZeroDivisionError, RecursionError):
        return None
    if isinstance(value, sympy.Expr) and value.has(sympy.zoo, sympy.nan):
        return None
    return value, p.inexact
