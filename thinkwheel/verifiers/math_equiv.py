"""Mathematical equivalence of two parsed answers.

Rules (each one chosen so a wrong answer can never pass by rounding):
- integers and fractions compare exactly (`1/2004!` is not `1/2006!`);
- a side written with decimals is compared with a relative tolerance (`rel_tol`, 1e-9), and
  a lone decimal with >= 3 significant digits also matches an exact value it correctly
  rounds (`0.333` ~ `1/3`, `3.1416` ~ `pi`; `0.33` is not `1/3`; `1e-7` is not `2e-7`), and
  so does a finer decimal (`1.6667` ~ reference `1.67`; `1.68` and `1.6` are not); an
  integer reference only takes a decimal within 1/2 of it (`1.23e4` is not `12345`);
- symbolic values: `simplify(a - b) == 0` under an operation-count bound, with random
  numeric probes to reject quickly and to confirm identities simplify cannot close;
- equations are equal when they have the same solution set (one is a non-zero constant
  multiple of the other); univariate inequalities compare as real sets;
- intervals compare endpoints and open/closed ends; sets are order-free, tuples ordered;
- percentages follow `percent_policy`: "fraction" (default: 50% is 0.5, not 50), "number"
  (50% is 50), or "either"; two percentages compare as written;
- units: when both sides name a unit and they differ the answer is wrong (5 cm is not 5 m;
  common spellings are one unit: ft/feet, m/meters); a unit on one side only is ignored.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import sympy

from thinkwheel.verifiers.math_parse import Answer

MAX_OPS = 400  # larger differences skip simplify() and rely on numeric probes
_REL_TOL = 1e-9


def _num(x: Any, digits: int = 40) -> Any:
    try:
        return sympy.N(x, digits)
    except Exception:
        return None


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if getattr(a, "is_finite", None) is False or getattr(b, "is_finite", None) is False:
        return a == b
    gap = _rel_gap(a, b)
    return gap is not None and gap <= rel_tol


def _rounds_to(exact: Any, dec: Decimal) -> bool:
    """True when `dec` (>= 3 significant digits) is `exact` correctly rounded."""
    if len(dec.as_tuple().digits) < 3 or not getattr(exact, "is_number", False):
        return False
    v = _num(exact, 50)
    if v is None or not v.is_real:
        return False
    half_ulp = Decimal(1).scaleb(dec.as_tuple().exponent) / 2
    return abs(Decimal(str(v)) - dec) <= half_ulp


def _rounds_off_to(finer: Decimal, ref: Decimal) -> bool:
    """True when the decimal `finer`, with at least the places of `ref` (>= 3 significant
    digits, like `_rounds_to`), rounds half-up to `ref`: `1.6667` is `1.67`, as `5/3` is,
    while `1.68` and `1.6` are not (a coarser decimal says less than the reference)."""
    exp = ref.as_tuple().exponent
    if len(ref.as_tuple().digits) < 3 or not isinstance(exp, int):
        return False
    if finer.as_tuple().exponent > exp:  # type: ignore[operator]
        return False
    try:
        return finer.quantize(Decimal(1).scaleb(exp), rounding=ROUND_HALF_UP) == ref
    except InvalidOperation:
        return False


def _rel_gap(x: Any, y: Any, digits: int = 40) -> float | None:
    """|x - y| / max(|x|, |y|) evaluated numerically, or None when it does not evaluate."""
    vx, vy = _num(x, digits), _num(y, digits)
    if vx is None or vy is None or not (vx.is_number and vy.is_number):
        return None
    try:
        diff = abs(_num(vx - vy, digits))
        scale = max(abs(vx), abs(vy))
        if scale == 0:
            return 0.0
        return float(diff / scale)
    except (TypeError, ValueError):
        return None


def _zero(x: Any, y: Any) -> bool:
    """Is `x - y` identically zero? Probes reject fast; simplify (bounded) or probes confirm."""
    if x.is_finite is False or y.is_finite is False:  # oo, -oo, zoo: only equal to themselves
        return x == y
    d = x - y
    if d == 0:
        return True
    syms = sorted(d.free_symbols, key=str)
    rng = random.Random(0)
    confirmed = 0
    for _ in range(4 if syms else 1):
        point = {s: sympy.Rational(rng.randint(-97, 97), rng.randint(1, 13)) + sympy.Rational(1, 7)
                 for s in syms}
        gap = _rel_gap(x.xreplace(point), y.xreplace(point))
        if gap is None:
            continue
        if not gap <= 1e-25:  # also catches nan
            return False  # a witness point where the two differ
        confirmed += 1
    if sympy.count_ops(d) <= MAX_OPS:
        try:
            if sympy.expand(d) == 0 or (simple := sympy.simplify(d)) == 0:
                return True
        except Exception:
            pass
        else:
            if not syms and simple.is_Rational:
                return False  # exactly non-zero: `2^{2024} - 1` is not `2^{2024}`, though the
                # 40-digit probe above cannot tell them apart
    return confirmed == (4 if syms else 1)


def _same_number(a: Answer, b: Answer, va: Any, vb: Any, rel_tol: float) -> bool:
    if va.is_Rational and vb.is_Rational and not (a.inexact or b.inexact):
        return va == vb
    if a.inexact or b.inexact:
        if va == vb:
            return True
        if va.is_Integer and not a.inexact:
            # an integer reference is never matched by a decimal further than 1/2 from it,
            # which a relative tolerance or rounding would let through (`1000000001.0` for
            # 10^9, `1.23e4` for 12345: any integer's first three digits); a decimal reference
            # is the rounded one and still takes the exact integer it rounds
            gap = _num(vb - va, 50) if vb.is_number else None
            if gap is None or not abs(gap) < sympy.Rational(1, 2):
                return False
        for lone, other, other_ans in ((a.decimal, vb, b), (b.decimal, va, a)):
            if lone is not None and not other_ans.inexact and _rounds_to(other, lone):
                return True
        if a.decimal is not None and b.decimal is not None and _rounds_off_to(b.decimal, a.decimal):
            return True
        return _close(va, vb, rel_tol)
    return _zero(va, vb)


def _eq_expr(rel: Any) -> Any:
    return rel.lhs - rel.rhs


def _ratio_varies(ex: Any, ey: Any) -> bool:
    """True when `ex / ey` takes two different exact values: then it is not a constant, and
    the (costly) simplify below could only confirm that. Rational points only, so a witness
    is exact; no witness proves nothing and leaves the decision to simplify."""
    syms = sorted((ex.free_symbols | ey.free_symbols), key=str)
    if not syms:
        return False
    rng = random.Random(2)
    seen = None
    for _ in range(3):
        point = {s: sympy.Rational(rng.randint(-97, 97), rng.randint(1, 13)) + sympy.Rational(1, 7)
                 for s in syms}
        num, den = ex.xreplace(point), ey.xreplace(point)
        if not (num.is_Rational and den.is_Rational) or den == 0:
            continue
        if seen is None:
            seen = num / den
        elif num / den != seen:
            return True
    return False


def _same_equation(x: Any, y: Any) -> bool:
    ex, ey = _eq_expr(x), _eq_expr(y)
    if _zero(ex, ey):
        return True
    if ey == 0 or ex == 0:
        return False
    if _ratio_varies(ex, ey):
        return False
    try:  # rational ratios (all lines, conics): cancel finds the constant simplify would
        quick = sympy.cancel(ex / ey) if sympy.count_ops(ex / ey) <= MAX_OPS else None
    except Exception:
        quick = None
    if quick is not None and not quick.free_symbols:
        return quick != 0 and quick.is_finite is not False
    ratio = sympy.simplify(ex / ey) if sympy.count_ops(ex / ey) <= MAX_OPS else None
    return ratio is not None and not ratio.free_symbols and ratio != 0 and ratio.is_finite is not False


def _as_set(rel: Any) -> Any:
    syms = rel.free_symbols
    if len(syms) != 1:
        return None
    try:
        return rel.as_set()
    except Exception:
        return None


def _same_relation(x: Any, y: Any) -> bool:
    if isinstance(x, sympy.Eq) and isinstance(y, sympy.Eq):
        return _same_equation(x, y)
    if isinstance(x, sympy.Eq) != isinstance(y, sympy.Eq):
        return False
    sx, sy = _as_set(x), _as_set(y)
    if sx is not None and sy is not None and x.free_symbols == y.free_symbols:
        return same_value(sx, sy)
    # multivariate: a > b normalised to (a - b) > 0 / >= 0; equal when a positive multiple
    def norm(r: Any) -> tuple[Any, bool]:
        strict = isinstance(r, (sympy.StrictGreaterThan, sympy.StrictLessThan))
        d = r.lhs - r.rhs if isinstance(r, (sympy.GreaterThan, sympy.StrictGreaterThan)) else r.rhs - r.lhs
        return d, strict

    (dx, strict_x), (dy, strict_y) = norm(x), norm(y)
    if strict_x != strict_y:
        return False
    ratio = sympy.simplify(dx / dy)
    return not ratio.free_symbols and bool(ratio.is_positive)


def _match_all(xs: list[Any], ys: list[Any]) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        for i, y in enumerate(left):
            if same_value(x, y):
                del left[i]
                break
        else:
            return False
    return True


def _same_set(x: Any, y: Any) -> bool:
    if isinstance(x, sympy.FiniteSet) and isinstance(y, sympy.FiniteSet):
        return _match_all(list(x.args), list(y.args))
    if isinstance(x, sympy.Interval) and isinstance(y, sympy.Interval):
        return (x.left_open == y.left_open and x.right_open == y.right_open
                and same_value(x.start, y.start) and same_value(x.end, y.end))
    if isinstance(x, sympy.Union) and isinstance(y, sympy.Union):
        return _match_all(list(x.args), list(y.args))
    return x == y


def same_value(x: Any, y: Any, a: Answer | None = None, b: Answer | None = None,
               rel_tol: float = _REL_TOL) -> bool:
    """Equivalence of two sympy values (structure first, then numbers/expressions)."""
    a = a or Answer(x, "expr")
    b = b or Answer(y, "expr")
    if isinstance(x, str) or isinstance(y, str):
        return isinstance(x, str) and isinstance(y, str) and x == y
    if x == y and not (a.inexact or b.inexact):
        return True
    if isinstance(x, sympy.MatrixBase) or isinstance(y, sympy.MatrixBase):
        if not (isinstance(x, sympy.MatrixBase) and isinstance(y, sympy.MatrixBase)):
            return False
        return x.shape == y.shape and all(same_value(p, q) for p, q in zip(x, y, strict=True))
    if isinstance(x, sympy.FiniteSet) and len(x) == 1 and not isinstance(y, sympy.Set):
        return same_value(x.args[0], y, a, b, rel_tol)
    if isinstance(y, sympy.FiniteSet) and len(y) == 1 and not isinstance(x, sympy.Set):
        return same_value(x, y.args[0], a, b, rel_tol)
    rel = sympy.core.relational.Relational
    if isinstance(x, rel) or isinstance(y, rel):
        if isinstance(x, rel) and isinstance(y, rel):
            return _same_relation(x, y)
        r, other = (x, y) if isinstance(x, rel) else (y, x)
        if isinstance(other, sympy.Set) and not isinstance(r, sympy.Eq):
            s = _as_set(r)
            return s is not None and _same_set(s, other)
        return False
    if isinstance(x, sympy.Set) or isinstance(y, sympy.Set):
        return isinstance(x, sympy.Set) and isinstance(y, sympy.Set) and _same_set(x, y)
    if isinstance(x, sympy.Tuple) or isinstance(y, sympy.Tuple):
        return (isinstance(x, sympy.Tuple) and isinstance(y, sympy.Tuple) and len(x) == len(y)
                and all(same_value(p, q) for p, q in zip(x, y, strict=True)))
    if not (isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr)):
        return x == y
    if x.is_number and y.is_number:
        return _same_number(a, b, x, y, rel_tol)
    if a.inexact or b.inexact:
        return _zero(x, y) or _close_everywhere(x, y, rel_tol)
    return _zero(x, y)


def _close_everywhere(x: Any, y: Any, rel_tol: float) -> bool:
    syms = sorted((x - y).free_symbols, key=str)
    rng = random.Random(1)
    for _ in range(4):
        point = {s: sympy.Rational(rng.randint(-50, 50), 7) for s in syms}
        if not _close(x.xreplace(point), y.xreplace(point), max(rel_tol, 1e-9)):
            return False
    return True


def _variants(ans: Answer, policy: str) -> list[Any]:
    if not ans.percent or ans.kind != "number":
        return [ans.value]
    frac = ans.value / 100
    return {"fraction": [frac], "number": [ans.value], "either": [frac, ans.value]}[policy]


def equivalent(ref: Answer, cand: Answer, percent_policy: str = "fraction",
               rel_tol: float = _REL_TOL) -> bool:
    """Does `cand` say the same thing as `ref`? (see the module docstring for the rules)"""
    if ref.unit and cand.unit and ref.unit != cand.unit:
        return False
    if ref.kind == "text" or cand.kind == "text":
        return ref.kind == cand.kind and ref.value == cand.value
    if ref.percent and cand.percent:
        percent_policy = "number"  # both in percent: as written (under "either", 5000% matched
        # 50% by reading one as a number and the other as a fraction)
    for rv in _variants(ref, percent_policy):
        for cv in _variants(cand, percent_policy):
            # a percent reading changes the literal, so the lone-decimal rounding rule is off
            ra = ref if rv is ref.value else Answer(rv, ref.kind, ref.inexact)
            ca = cand if cv is cand.value else Answer(cv, cand.kind, cand.inexact)
            if same_value(rv, cv, ra, ca, rel_tol):
                return True
    return False
