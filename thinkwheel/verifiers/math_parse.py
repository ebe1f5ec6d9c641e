"""Turn an answer string (LaTeX or plain text) into a comparable sympy value.

Plain numbers, fractions and scientific notation take a regex fast path; other plain forms
(simple expressions, `\\frac`, `\\sqrt`, relations, tuples, intervals, sets) go through the
small exact parser in `math_plain`; only what that declines reaches latex2sympy2_extended
(the parser Math-Verify also uses, ~100x slower). Results are cached by (text, hint). Every
decimal literal becomes an exact Rational and the answer is flagged `inexact`, so equality
is exact by default and tolerance is applied only where the text was inexact.

Ambiguous notation is read in the light of the reference (`hint`): `(1,2)` is an open
interval when the reference is an interval and a pair otherwise; `3,5` is 3.5 (decimal
comma) only when the reference is a single number; `1,000` is always one thousand.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sympy

from thinkwheel.verifiers.math_plain import MAX_EXP, parse_plain

_NUM = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_FRAC = re.compile(r"^([-+]?)\s*\\frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}$")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
_SCI = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DEC_COMMA = re.compile(r"^[-+]?\d+,\d+$")
_PERCENT = re.compile(r"(?:\\%|%|\s*\\text\{\s*percent\s*\}|\s+percent)\s*$", re.I)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_TRAILING_TEXT = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|textrm|mathrm)\s*\{\s*([^{}]*?)\s*\}\s*(\^\s*\{?\d\}?)?$")
_TRAILING_WORD = re.compile(r"^([-+]?[\d.,]*\d)\s+([a-zA-Z]{2,}(?:\s[a-zA-Z]+)?)\s*(\^\s*\{?\d\}?)?$")
# `5 m`: one letter is a unit only against a number reference; against `5m` it is the symbol
_TRAILING_LETTER = re.compile(r"^([-+]?[\d.,]*\d)\s+([a-zA-Z])\s*(\^\s*\{?\d\}?)?$")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_CURRENCY = re.compile(r"^(?:\\\$|\$|USD|€|£|\\euro)\s*|\s*(?:\\\$|dollars?|USD|euros?)$", re.I)
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~|\\displaystyle|\\left|\\right|\\big|\\Big")
_PLAIN_FUNCS = re.compile(r"\b(sqrt|sin|cos|tan|log|ln|exp)\b")
_WORDY = re.compile(r"^[A-Za-z][A-Za-z .'-]*$")
_PLAIN_CONSTANTS = frozenset({"pi", "infinity", "inf", "oo"})
# `x - y`, `a-b`: letters of at most two joined by a minus are algebra, not words (read as
# text they would lose the sign and equal `xy`)
_LETTER_ALGEBRA = re.compile(r"^[A-Za-z]{1,2}(?:\s*-\s*[A-Za-z]{1,2})+$")

# Numbers that say "approximately" in their text are still compared by value.
_LATEX_TIMES = {"\\times": "*", "\\cdot": "*"}


@dataclass(frozen=True)
class Answer:
    """A parsed answer. `decimal` is set when the whole answer was one decimal literal."""

    value: Any
    kind: str  # number | expr | set | tuple | interval | relation | matrix | text
    inexact: bool = False
    decimal: Decimal | None = None
    percent: bool = False
    unit: str | None = None
    # numbers joined by + - × ÷ as written (`91 + 4`, `\frac{1}{4}+\frac{1}{4}`): the sum asked
    # for, not its value; a numeric reference takes none (see `unevaluated`)
    unevaluated: bool = False


class ParseError(ValueError):
    pass


# markup that wraps numbers without changing what is computed: \left( ... \right), \{ \},
# |...|, [...], spacing, an empty \text{ }
_NUMERIC_MARKUP = re.compile(
    r"\\text\{\s*\}|\\(?:[dt]?frac|left|right|mathrm|,|;|!|\s|\{|\}|lvert|rvert|vert)|[{}\s|\[\]]"
)
_FRAC_BAR = re.compile(r"\}\s*\{")  # \frac{1}{-2}: the bar between numerator and denominator
_ARITH_ONLY = re.compile(r"^[\d.,()+\-*/×·÷]+$")
_BINARY_OP = re.compile(r"(?<=[\d.)])[+\-*×·÷]")  # after an operand: not a sign
_ASSIGNED = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=(?!=)")  # x =, x_1 =, x_{12} =


def unevaluated(text: str) -> bool:
    """Whether an answer is numbers joined by + - × ÷, left for the reader to compute.

    Against a numeric reference such an answer is the task restated: `\boxed{91 + 4}` for
    "What is 91 + 4?" (or `x = (-33 + 13)/(-5)` for an equation) is worth full marks to a
    value check, and a policy learns to copy the question. A fraction `a/b`, `\frac{a}{b}`,
    a signed number and scientific notation (`1.2 \times 10^{5}`: it has a power) are values.
    """
    s = _ASSIGNED.sub("", text.strip())
    for sym, rep in (("\\times", "×"), ("\\cdot", "·"), ("\\div", "÷")):
        s = s.replace(sym, rep)
    s = _NUMERIC_MARKUP.sub("", _FRAC_BAR.sub("/", s))
    return bool(_ARITH_ONLY.match(s)) and bool(_BINARY_OP.search(s))


# spellings of one unit, so `3 ft` is `3 feet` (equivalent() fails two units that differ);
# only common, unambiguous ones: an unlisted unit compares as written (singular)
_UNIT_SPELLINGS = {
    "m": "meter metre", "cm": "centimeter centimetre", "mm": "millimeter millimetre",
    "km": "kilometer kilometre", "ft": "foot feet", "in": "inch inches", "yd": "yard",
    "mi": "mile", "s": "sec second", "min": "minute", "h": "hr hrs hour", "yr": "year yrs",
    "kg": "kilogram kilo", "g": "gram", "lb": "lbs pound", "oz": "ounce", "l": "liter litre",
    "ml": "milliliter millilitre", "mph": "mi/h", "km/h": "kph",
}
_UNIT_ALIAS = {alias: unit for unit, spelled in _UNIT_SPELLINGS.items() for alias in spelled.split()}
# words that multiply the number before them: `6 million` is 6000000, not 6 of a unit
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9,
           "trillion": 10**12, "dozen": 12}
# words that change the value, so they are never a unit to ignore (`2 pi`, `10 factorial`,
# `3 squared`, `2 thirds`)
_MATH_WORDS = frozenset(
    "pi squared cubed factorial times plus minus over inverse root roots sqrt power powers "
    "infinity inf log ln sin cos tan exp mod half halves third fourth fifth sixth seventh "
    "eighth ninth tenth hundredth thousandth millionth".split()
)
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _unit_parts(raw: str, power: str | None) -> tuple[str, str]:
    """(base unit, power digits): `cm^2`, `\\text{ cm}^2`, `square cm`, `cm squared` all
    give ("cm", "2")."""
    u = re.sub(r"^\((.*)\)$", r"\1", raw.strip().lower().rstrip(".")).strip()
    m = re.fullmatch(r"(.*?)\s*\^\s*\{?(\d+)\}?", u)
    u, digits = (m.group(1), m.group(2)) if m else (u, re.sub(r"\D", "", power or ""))
    words = u.split()
    for first, last, n in (("square", "squared", "2"), ("sq", "squared", "2"),
                           ("cubic", "cubed", "3")):
        if len(words) > 1 and words[0] == first:
            words, digits = words[1:], digits or n
        elif len(words) > 1 and words[-1] == last:
            words, digits = words[:-1], digits or n
    return " ".join(words), digits


def _unit_name(raw: str, power: str | None) -> str:
    base, digits = _unit_parts(raw, power)
    base = _UNIT_ALIAS.get(base) or _UNIT_ALIAS.get(_singular(base)) or (
        base if base in _UNIT_SPELLINGS else _singular(base))
    return base + ("^" + digits if digits else "")


def _scale(words: str) -> tuple[int, str] | None:
    """`million people` -> (10**6, "people"); None when `words` starts with no scale word."""
    first, _, rest = words.strip().partition(" ")
    scale = _SCALES.get(_singular(first.lower()))
    return None if scale is None else (scale, rest.strip())


def _strip_units(s: str, hint: str | None = None) -> tuple[str, str | None]:
    if hint == "number" and (m := _TRAILING_LETTER.match(s)) and m.group(2) in _UNIT_SPELLINGS:
        return m.group(1).strip(), _unit_name(m.group(2), m.group(3))
    if _DEGREE.search(s):
        return _DEGREE.sub("", s).strip(), "degree"
    cur = _CURRENCY.sub("", s).strip()
    if cur != s.strip():
        scaled, unit = _strip_units(cur)  # `\\$6 million`: the scale still applies
        return (scaled if unit is None else cur), "$"
    for m in (_TRAILING_TEXT.match(s), _TRAILING_WORD.match(s)):
        if not (m and re.search(r"[A-Za-z]", m.group(2)) and _is_unit(m.group(2), scales=True)):
            continue
        number, words, power = m.group(1).strip(), m.group(2), m.group(3)
        scale = _scale(words)
        if scale is not None:
            if not _PLAIN_NUMBER.match(number) or power:
                return s, None  # `x million`: no number to scale, left as written to fail
            number, words = str(Decimal(number.replace(",", "")) * scale[0]), scale[1]
            if not words:
                return number, None
        if _is_unit(words):
            return number, _unit_name(words, power)
        return s, None
    return s, None


# what a unit never holds: a number, brackets, a list, a second answer (`5 \text{ or 6}`,
# `5 or six`); read as a unit it would be ignored, and the hedge would pass
_NOT_A_UNIT = re.compile(r"[\d()\[\],;]|\b(?:or|and|not?|but|maybe|either|nor|also|if|is|else|"
                         r"except|perhaps|possibly)\b", re.I)


def _is_unit(text: str, scales: bool = False) -> bool:
    """Whether `text` reads as a unit (with `scales`, it may also start with a scale word)."""
    bare = re.sub(r"\^\s*\{?\d+\}?", "", text).strip()  # `m^2` is a unit
    bare = re.sub(r"^\(([A-Za-z ./]+)\)$", r"\1", bare)  # and so is `(cm)`
    if _NOT_A_UNIT.search(bare):
        return False
    base = _unit_parts(text, None)[0]
    if scales and (scale := _scale(base)) is not None:
        base = scale[1]
        if not base:
            return True
    return bool(base) and not any(_singular(w) in _MATH_WORDS or w in _MATH_WORDS
                                  or _singular(w) in _SCALES for w in base.split())


def _plain_to_latex(s: str) -> str:
    """Plain-text math (`sqrt(2)/2`, `x**2`, `pi`) into the LaTeX the parser reads."""
    s = s.replace("**", "^")
    s = _PLAIN_FUNCS.sub(lambda m: "\\" + m.group(1), s)
    s = re.sub(r"\\sqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"\bpi\b", r"\\pi", s)
    s = re.sub(r"\b(?:oo|infinity|inf)\b", r"\\infty", s)
    return s


# `\text{3}`, `\textbf{12 apples}`: a number set in text (with a unit word) is the number
_TEXT_NUMBER = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|textrm)\s*\{\s*(-?\d[\d,]*(?:\.\d+)?(?:\\?%)?)"
    r"(\s+[A-Za-z][A-Za-z ]*)?\s*\}")


# Unicode math typed in plain text, spelled as the LaTeX the parsers read
_SQRT_SIGN = re.compile(r"√\s*(?:(\d+(?:\.\d+)?|[A-Za-z])|\(([^()]*)\)|\{([^{}]*)\})")
# an en dash is a minus sign, except between two numbers, where it is a range (`3–5`)
_EN_DASH = re.compile(r"(\d?)(\s*)–(\s*)(\d?)")


def _vulgar_fraction(ch: str) -> str:
    """`½` -> `\\frac{1}{2}`, from its Unicode decomposition (`<fraction> 1 ⁄ 2`)."""
    parts = unicodedata.decomposition(ch).split()
    if not parts or parts[0] != "<fraction>":
        return ch
    num, _, den = "".join(chr(int(h, 16)) for h in parts[1:]).partition("\u2044")
    return f"\\frac{{{num}}}{{{den}}}" if num.isdigit() and den.isdigit() else ch


def _unicode_math(s: str) -> str:
    s = _SQRT_SIGN.sub(lambda m: "\\sqrt{" + next(g for g in m.groups() if g is not None) + "}", s)
    s = s.replace("∞", "\\infty").replace("π", "\\pi ")
    s = re.sub(r"[\u00bc-\u00be\u2150-\u215e]", lambda m: _vulgar_fraction(m.group()), s)
    return _EN_DASH.sub(lambda m: m.group() if m.group(1) and m.group(4)
                        else f"{m.group(1)}{m.group(2)}-{m.group(3)}{m.group(4)}", s)


def normalize(text: str) -> str:
    s = _unicode_math(text.strip())
    s = _TEXT_NUMBER.sub(lambda m: m.group(1) + (m.group(2) or ""), s)
    s = s.replace("\\varnothing", "\\emptyset")
    s = _SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r"\\(?:mathrm|operatorname|text)\{e\}", "e", s)
    s = s.replace("\\infty", " \\infty ").replace("−", "-").replace("\u2009", " ")
    s = re.sub(r"(?<=\d) (?=\d{3}\b)", "", s)  # 1 000 000
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


def _decimal(s: str) -> Decimal | None:
    try:
        return Decimal(s)
    except (InvalidOperation, ValueError):
        return None


def _in_range(d: Decimal | None) -> Decimal | None:
    """A decimal literal whose exponent is past `MAX_EXP` (`1e-999999`) is refused: as an exact
    Rational it spends the whole check's time budget in arithmetic, to fail anyway. Its digits
    are not the cost: a 1,024-digit integer written out is fine."""
    if d is not None and d.is_finite() and abs(int(d.as_tuple().exponent)) > MAX_EXP:
        raise ParseError(f"exponent beyond ±{MAX_EXP}")
    return d


def _fast_number(s: str, hint: str | None) -> Answer | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    elif hint == "number" and _DEC_COMMA.match(s):
        s = s.replace(",", ".")
    if _NUM.match(s):
        d = _in_range(_decimal(s))
        if d is None:
            return None
        inexact = "." in s or "e" in s.lower()
        return Answer(sympy.Rational(str(d)) if inexact else sympy.Integer(int(d)), "number",
                      inexact, d if inexact else None)
    m = _SCI.match(s)
    if m:
        d = _in_range(_decimal(f"{m.group(1)}e{m.group(2)}"))
        if d is not None:
            return Answer(sympy.Rational(str(d)), "number", True, d)
    m = _FRAC.match(s) or _SLASH.match(s)
    if m:
        groups = m.groups()
        if len(groups) == 3:
            num, den = int(groups[1]), int(groups[2])
            num = -num if groups[0] == "-" else num
        else:
            num, den = int(groups[0]), int(groups[1])
        if den == 0:
            raise ParseError("division by zero")
        return Answer(sympy.Rational(num, den), "number")
    return None


def kind_of(value: Any) -> str:
    if isinstance(value, sympy.MatrixBase):
        return "matrix"
    if isinstance(value, sympy.FiniteSet):
        return "set"
    if isinstance(value, sympy.Set):
        return "interval"
    if isinstance(value, (sympy.Tuple, tuple, list)):
        return "tuple"
    if isinstance(value, sympy.core.relational.Relational):
        return "relation"
    if isinstance(value, sympy.Basic) and not value.free_symbols:
        return "number"
    return "expr"


def _exact(value: Any) -> tuple[Any, bool]:
    """Replace Floats by the exact Rationals they were written as."""
    if isinstance(value, sympy.MatrixBase):
        floats = set().union(*(e.atoms(sympy.Float) for e in value))
    elif isinstance(value, sympy.Basic):
        floats = value.atoms(sympy.Float)
    else:
        return value, False
    if not floats:
        return value, False
    return value.xreplace({f: sympy.Rational(str(f)) for f in floats}), True


def _unwrap_assignment(value: Any) -> Any:
    """`x = 5` -> 5, `x \\in (1,2)` -> (1,2), `x=2 or x=3` -> {2, 3}; true equations stay."""
    if isinstance(value, sympy.Eq) and isinstance(value.lhs, sympy.Symbol):
        rhs = value.rhs
        if isinstance(rhs, sympy.Set) or value.lhs not in getattr(rhs, "free_symbols", ()):
            if isinstance(rhs, sympy.Set) or not rhs.free_symbols:
                return rhs
    if isinstance(value, sympy.FiniteSet) and value.args and all(
        isinstance(a, sympy.Eq) and isinstance(a.lhs, sympy.Symbol) for a in value.args
    ):
        syms = {a.lhs for a in value.args}
        if len(syms) == 1:
            return sympy.FiniteSet(*(_unwrap_assignment(a) for a in value.args))
    return value


def _chain_as_set(value: Any) -> Any:
    """`1 < x < 2` (parsed as And(1 < x, x < 2)) -> the interval (1, 2), which is what it
    says: as an And it equalled no interval answer. One variable only."""
    if not (isinstance(value, sympy.And) and len(value.free_symbols) == 1
            and all(isinstance(a, sympy.core.relational.Relational) for a in value.args)):
        return value
    try:
        return value.as_set()
    except Exception:  # sympy cannot solve it: leave it as written
        return value


# `x < 2 or x > 3`: what a solution set of inequalities is written as
_OR = re.compile(r"\s*(?:\\text\{\s*or\s*\}|\\lor\b|\\vee\b|\bor\b)\s*")


def _disjunction(s: str, hint: str | None, plain_only: bool) -> Answer | None:
    """`x<2 or x>3` (`\\lor`, `\\vee`) as the union of its parts' solution sets, when every
    part is an inequality in one and the same variable; None otherwise. The parser read `or`
    as a comma, a set of two relations that equalled no interval answer."""
    parts = _OR.split(s)
    if len(parts) < 2:
        return None
    try:
        answers = [parse_answer(p, hint, plain_only) for p in parts]
    except ParseError:
        return None
    rels = [a.value for a in answers]
    if not all(a.kind == "relation" and not isinstance(a.value, sympy.Eq) for a in answers) or \
            len(set().union(*(r.free_symbols for r in rels))) != 1 or \
            any(len(r.free_symbols) != 1 for r in rels):
        return None
    try:
        union = sympy.Union(*(r.as_set() for r in rels))
    except Exception:  # sympy cannot solve one: leave it to the parser
        return None
    return Answer(union, kind_of(union), any(a.inexact for a in answers))


def latex_to_sympy(s: str) -> Any:
    """latex2sympy2_extended with our normalisation settings (the slow, general path)."""
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    cfg = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True,
                              nits=False, boxed="none")
    return latex2sympy(s, normalization_config=cfg)


def parse_answer(text: str, hint: str | None = None, plain_only: bool = False) -> Answer:
    """Parse one answer. Raises ParseError when nothing sensible comes out. `plain_only`
    refuses what needs latex2sympy (which has no time bound), for callers outside the pool."""
    result = _parse_cached(text, hint, plain_only)
    if isinstance(result, str):
        raise ParseError(result)
    return result


@functools.lru_cache(maxsize=16384)
def _parse_cached(text: str, hint: str | None, plain_only: bool = False) -> Answer | str:
    """Answers repeat across samples of one task; Answer is immutable, so cache it (or the
    error message: a cached exception would grow its traceback on every re-raise)."""
    try:
        return _parse(text, hint, plain_only)
    except ParseError as err:
        return str(err)


def _parse(text: str, hint: str | None, plain_only: bool = False) -> Answer:
    s = normalize(text)
    if not s:
        raise ParseError("empty answer")
    percent = bool(_PERCENT.search(s))
    if percent:
        s = _PERCENT.sub("", s).strip()
    s, unit = _strip_units(s, hint)
    written_out = unevaluated(s)
    fast = _fast_number(s, hint)
    if fast is not None:
        return Answer(fast.value, "number", fast.inexact, fast.decimal, percent, unit)
    if (union := _disjunction(s, hint, plain_only)) is not None:
        return union
    inner = _TEXT_CMD.sub(lambda m: m.group(1), s).strip()
    if "\\" not in s and inner.lower() in _PLAIN_CONSTANTS:
        s = inner.lower()  # `pi`, `Infinity`: math, read below as \pi, \infty
    elif _WORDY.match(inner) and (len(inner.replace(" ", "")) > 1 or "\\text" in s) and not (
        _LETTER_ALGEBRA.match(inner) and "\\text" not in s  # `\text{x-y}` is still a word
    ):
        word = re.sub(r"[^a-z0-9]", "", inner.lower())
        return Answer(word, "text", unit=unit)
    if "\\" not in s:
        s = _plain_to_latex(s)
    plain = parse_plain(s)
    if plain is not None:
        value, literal_inexact = plain
    elif plain_only:
        raise ParseError("not a plain form")
    else:
        literal_inexact = False
        try:
            value = latex_to_sympy(s)
        except Exception as err:  # the parser raises bare Exception on bad input
            raise ParseError(f"{type(err).__name__}: {str(err)[:120]}") from None
    if value is None or (isinstance(value, (list, tuple)) and not value):
        raise ParseError("parser returned nothing")
    if isinstance(value, list):
        value = sympy.Tuple(*value)
    value = _unwrap_assignment(value)
    value = _chain_as_set(value)
    value, inexact = _exact(value)
    inexact = inexact or literal_inexact
    kind = kind_of(value)
    if hint == "tuple" and isinstance(value, sympy.Interval) and value.left_open and value.right_open:
        value, kind = sympy.Tuple(value.start, value.end), "tuple"
    elif hint == "interval" and isinstance(value, sympy.Tuple) and len(value) == 2:
        value, kind = sympy.Interval.open(value[0], value[1]), "interval"
    return Answer(value, kind, inexact, None, percent, unit, written_out)
