"""Procedural task families whose answers are computed exactly.

Every family is a function `(rng, difficulty) -> Problem`: a prompt, an exact reference
(sympy for math, a reference solution that passes its tests for code) and a worked
`<think>` trace. The trace is what the bundled model is pre-trained on; the flywheel itself
only uses prompt/reference/tests. Generation is seeded per (seed, family, difficulty, index),
so a task set is identical across processes and independent of which families are asked for.
"""

from __future__ import annotations

import json
import operator
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import polars as pl
import sympy

from thinkwheel import records


@dataclass(frozen=True)
class Problem:
    prompt: str
    reference: str
    trace: str  # the worked reasoning that goes inside <think>...</think>
    answer: str  # the text after </think> in a perfect completion
    tests: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


Family = Callable[[random.Random, int], Problem]
MATH: dict[str, Family] = {}
CODE: dict[str, Family] = {}


def _family(registry: dict[str, Family]) -> Callable[[Family], Family]:
    def deco(fn: Family) -> Family:
        registry[fn.__name__] = fn
        return fn

    return deco


def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _column_add(a: int, b: int) -> str:
    """Digit-by-digit addition, least significant digit first (how the model computes)."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}" if carry else f"{x}+{y}={s}")
        carry = s // 10
    return ", ".join(steps)


def _column_sub(a: int, b: int) -> str:
    """Digit-by-digit a - b for a >= b >= 0, with borrows."""
    da, db = str(a)[::-1], str(b)[::-1]
    borrow, steps = 0, []
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        borrow = 1 if x < y else 0
        steps.append(f"{x + 10 * borrow}-{y}={x + 10 * borrow - y}")
    return ", ".join(steps)


def _column_mul(a: int, b: int) -> str:
    """Digit-by-digit a * b for a one-digit b, least significant digit first, one fact per
    step: the carry is added in a step of its own (`4*4=16, 16+1=17`, not `4*4+1=17`).

    Why: a fused step is a fact of a 9x9x9 table, each seen in a handful of tasks, and the
    bundled model, pretrained on it, got it wrong (`1*3+1=5`); split, it is a table fact and a
    small sum, each seen in dozens. Retrained on the same kept traces rewritten so, round 1's
    model solved 17 and 11 of the 40 held-out multiplication tasks (SFT seeds 0 and 1), not 8."""
    parts, carry = [], 0
    for d in str(a)[::-1]:
        p = int(d) * b
        parts.append(f"{d}*{b}={p}, {p}+{carry}={p + carry}" if carry else f"{d}*{b}={p}")
        carry = (p + carry) // 10
    return ", ".join(parts)


def column_steps(family: str, a: int, b: int) -> str | None:
    """The steps this module's trace for `a <op> b` shows (before `So ...`), for addition,
    subtraction and multiplication (by one digit column by column, by two digits as two
    partial products); None for any other family. What a faithful trace writes: the step
    check (filters/steps.py) and bench/repair_traces.py compare with it. (The bundled model
    was pretrained with the carry fused into the multiplication, `4*4+1=17`; repair to the
    worked steps, `sampling.repair_steps`, teaches it the split.)"""
    if family == "addition":
        return _column_add(a, b)
    if family == "subtraction":
        steps = _column_sub(max(a, b), min(a, b))
        return f"{a} < {b}, so compute {b} - {a} and negate. {steps}" if a < b else steps
    if family == "multiplication":
        if b < 10:
            return _column_mul(a, b)
        t, u = divmod(b, 10)
        return f"{a}*{u}={a * u}, {a}*{t}0={a * t * 10}, {a * u}+{a * t * 10}={a * b}"
    return None


_OPERANDS = {"addition": "+", "subtraction": "-", "multiplication": "*"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _operands(family: str, prompt: str) -> tuple[int, int] | None:
    """(a, b) of a column family's task `What is a <op> b?`, None for another prompt."""
    op = _OPERANDS.get(family)
    m = re.fullmatch(rf"What is (\d+) {re.escape(op)} (\d+)\?", prompt.strip()) if op else None
    return (int(m[1]), int(m[2])) if m else None


def worked_steps(family: str, prompt: str) -> list[str] | None:
    """The `=` steps of the worked solution to this family's task `prompt` (`What is 79 +
    85?` -> `9+5=14`, `7+8+1=16`), or None when the family has no such steps or the prompt is
    not one it writes. The column steps (a linear equation's two: `17 - 5 = 12`, `12/3 = 4`),
    not the conclusion: a trace that states them derived its answer, one that does not
    reached it some other way."""
    if family == "linear_equation":
        m = _LINEAR.fullmatch(prompt.strip())
        return list(linear_steps(int(m[1]), int(m[2] + m[3]), int(m[4]))) if m else None
    ab = _operands(family, prompt)
    steps = column_steps(family, *ab) if ab else None
    if steps is None:
        return None
    return [s for s in steps.rsplit(". ", 1)[-1].split(", ") if "=" in s]


def worked_conclusion(family: str, prompt: str) -> str | None:
    """The equation a column family's trace concludes with (`So 17 * 6 = 102.` -> `17 * 6 =
    102`): the task restated, and its value. None for other families and prompts."""
    ab = _operands(family, prompt)
    if ab is None:
        return None
    op = _OPERANDS[family]
    return f"{ab[0]} {op} {ab[1]} = {_APPLY[op](*ab)}"


_LINEAR = re.compile(r"Solve for x: (-?\d+)x ([+-]) (\d+) = (-?\d+)")


@_family(MATH)
def addition(rng: random.Random, difficulty: int) -> Problem:
    a, b = _num(rng, difficulty + 1), _num(rng, rng.randint(1, difficulty + 1))
    ref = str(sympy.Integer(a) + sympy.Integer(b))
    return Problem(f"What is {a} + {b}?", ref, f"{_column_add(a, b)}. So {a} + {b} = {ref}.", ref)


@_family(MATH)
def subtraction(rng: random.Random, difficulty: int) -> Problem:
    a, b = _num(rng, difficulty + 1), _num(rng, rng.randint(1, difficulty + 1))
    ref = str(sympy.Integer(a) - sympy.Integer(b))
    trace = column_steps("subtraction", a, b)
    return Problem(f"What is {a} - {b}?", ref, f"{trace}. So {a} - {b} = {ref}.", ref)


@_family(MATH)
def multiplication(rng: random.Random, difficulty: int) -> Problem:
    a, b = _num(rng, difficulty + 1), rng.randint(2, 9 if difficulty < 3 else 99)
    ref = str(sympy.Integer(a) * sympy.Integer(b))
    trace = column_steps("multiplication", a, b)
    return Problem(f"What is {a} * {b}?", ref, f"{trace}. So {a} * {b} = {ref}.", ref)


@_family(MATH)
def fraction_addition(rng: random.Random, difficulty: int) -> Problem:
    top = 4 + 3 * difficulty
    a, c = rng.randint(1, top), rng.randint(1, top)
    b, d = rng.randint(2, top), rng.randint(2, top)
    x, y = sympy.Rational(a, b), sympy.Rational(c, d)
    s = x + y
    lcm = sympy.ilcm(b, d)
    na, nc = a * (lcm // b), c * (lcm // d)
    trace = f"common denominator {lcm}: {na}/{lcm} + {nc}/{lcm} = {na + nc}/{lcm}"
    if sympy.Rational(na + nc, lcm).q != lcm:
        trace += f", simplify by {sympy.igcd(na + nc, lcm)} to {s}"
    ref = str(s)
    return Problem(f"What is {a}/{b} + {c}/{d}?", ref, f"{trace}. So the sum is {ref}.", ref)


@_family(MATH)
def linear_equation(rng: random.Random, difficulty: int) -> Problem:
    x0 = rng.randint(-9 * difficulty, 9 * difficulty)
    a = rng.choice([k for k in range(-3 - 2 * difficulty, 4 + 2 * difficulty) if k not in (0, 1)])
    b = rng.randint(-20 * difficulty, 20 * difficulty)
    c = a * x0 + b
    ref = str(sympy.Rational(c - b, a))  # exact: the unique root of a*x + b = c
    lhs = f"{a}x + {b}" if b >= 0 else f"{a}x - {-b}"
    move, divide = linear_steps(a, b, c)
    trace = f"{a}x = {move}, x = {divide}"
    return Problem(f"Solve for x: {lhs} = {c}", ref, f"{trace}. So x = {ref}.", ref)


def linear_steps(a: int, b: int, c: int) -> tuple[str, str]:
    """The two `=` steps of the worked solution of `a x + b = c`, as its trace writes them:
    b moved across (`17 - 5 = 12`), then the division (`12/3 = 4`)."""
    move = f"{c} - {b}" if b >= 0 else f"{c} + {-b}"
    return f"{move} = {c - b}", f"{c - b}/{a} = {sympy.Rational(c - b, a)}"


def _code_answer(src: str) -> str:
    return f"```python\n{src}\n```"


def _code(prompt: str, src: str, trace: str, fn_name: str, cases: Iterable[tuple]) -> Problem:
    ns: dict = {}
    exec(src, ns)  # our own reference source, never model output
    tests = []
    for args in cases:
        got = ns[fn_name](*args)
        tests.append(f"assert {fn_name}({', '.join(repr(a) for a in args)}) == {got!r}")
    return Problem(prompt, src, trace, _code_answer(src), tuple(tests))


@_family(CODE)
def linear_function(rng: random.Random, difficulty: int) -> Problem:
    a, b = rng.randint(2, 3 + 3 * difficulty), rng.randint(1, 5 + 5 * difficulty)
    op = rng.choice(["+", "-"])
    name = rng.choice(_NAMES)
    src = f"def {name}(x):\n    return {a} * x {op} {b}"
    prompt = f"Write a Python function `{name}(x)` that returns {a}*x {op} {b}."
    trace = f"multiply x by {a}, then {'add' if op == '+' else 'subtract'} {b}"
    return _code(prompt, src, trace, name, [(v,) for v in (0, 1, 3, -2, 10)])


_NAMES = ["f", "g", "h", "solve", "compute", "calc", "transform", "result"]
_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "rocket", "garden"]


@_family(CODE)
def string_transform(rng: random.Random, difficulty: int) -> Problem:
    k = rng.randint(2, 2 + difficulty)
    kinds = {
        "reversed": ("s[::-1]", "slice with step -1"),
        "in upper case": ("s.upper()", "use str.upper"),
        f"repeated {k} times": (f"s * {k}", f"multiply the string by {k}"),
        f"without its first {k} characters": (f"s[{k}:]", f"slice from index {k}"),
        f"with only its first {k} characters": (f"s[:{k}]", f"slice up to index {k}"),
        "with its characters sorted": ("''.join(sorted(s))", "sort the characters, join them"),
        "followed by its reverse": ("s + s[::-1]", "concatenate s and s[::-1]"),
        # s.capitalize() also lower-cases the rest, which the prompt does not ask for; every
        # test input is lower case, where it and s[:1].upper() + s[1:] agree, so the tests
        # accept either reading. (Kept: a new reference would change these tasks' task_ids.)
        "with the first letter in upper case": ("s.capitalize()", "use str.capitalize"),
        f"with its last {k} characters removed": (f"s[:-{k}]", f"slice up to index -{k}"),
    }
    what = rng.choice(sorted(kinds))
    expr, trace = kinds[what]
    name = rng.choice(_NAMES)
    src = f"def {name}(s):\n    return {expr}"
    prompt = f"Write a Python function `{name}(s)` that returns the string s {what}."
    words = rng.sample(_WORDS, 3)
    return _code(prompt, src, trace, name, [(w,) for w in words] + [("",), (_long_word(words, k),)])


def _long_word(words: list[str], k: int) -> str:
    """A lower-case test word longer than k + 1, made of the task's own words (no draw from
    its rng, so the task drawn is unchanged): `_WORDS` are 5-6 letters, shorter than k at
    higher levels, where `return s` passes "its first 5 characters" on them all."""
    long = "".join(words)
    while len(long) < k + 2:
        long += long
    return long


@_family(CODE)
def list_filter_sum(rng: random.Random, difficulty: int) -> Problem:
    k = rng.randint(0, 3 + 3 * difficulty)
    word = rng.choice(["greater than", "less than", "even and greater than"])
    cond = {
        "greater than": f"x > {k}",
        "less than": f"x < {k}",
        "even and greater than": f"x % 2 == 0 and x > {k}",
    }[word]
    name = rng.choice(_NAMES)
    src = f"def {name}(xs):\n    return sum(x for x in xs if {cond})"
    prompt = (
        f"Write a Python function `{name}(xs)` that returns the sum of the numbers in xs"
        f" that are {word} {k}."
    )
    trace = f"keep x when {cond}, then sum"
    cases = [([rng.randint(-5, 15) for _ in range(rng.randint(3, 6))],) for _ in range(4)] + [([],)]
    return _code(prompt, src, trace, name, cases + _boundary_cases(k))


def _boundary_cases(k: int) -> list[tuple[list[int]]]:
    """Lists around the threshold k, from k alone (no draw from the task's rng, so the task
    drawn is unchanged): the random lists above seldom hold k itself, so `x >= k` for `x > k`
    passed them, and at higher levels (k up to 3 + 3d, lists in -5..15) not even a value
    above k, so `return 0` did. k and k + 1 are one even and one odd, k + 1 and k + 2 too,
    and so are the two negatives (`x % 2 == 0` for "even and greater than 0" differs there)."""
    return [([k],), ([k - 1],), ([k + 1],), ([k + 2],), ([k + 2, k + 1, k, k - 1, -k - 3, -k - 4],)]


@_family(CODE)
def count_char(rng: random.Random, difficulty: int) -> Problem:
    ch, name = rng.choice("abcdefghiklmnoprstuw"), rng.choice(_NAMES)
    src = f"def {name}(s):\n    return s.count({ch!r})"
    prompt = (
        f"Write a Python function `{name}(s)` that returns how many times the letter {ch!r}"
        " appears in s."
    )
    trace = f"count {ch!r} with str.count"
    words = rng.sample(_WORDS, 3)
    cases = [(w,) for w in words] + [(ch + words[0] + ch,), (words[0] + words[1],)]
    return _code(prompt, src, trace, name, cases)


FAMILIES: dict[str, Family] = {**MATH, **CODE}


def domain_of(family: str) -> str:
    return "math" if family in MATH else "code"


def resolve_families(families: Iterable[str] | str) -> list[str]:
    """Expand "all" / "math" / "code" and reject unknown names with a clear message."""
    if isinstance(families, str):
        families = [families]
    out: list[str] = []
    for f in families:
        names = {"all": list(FAMILIES), "math": list(MATH), "code": list(CODE)}.get(f, [f])
        for n in names:
            if n not in FAMILIES:
                raise ValueError(f"unknown task family {n!r}; known: {', '.join(FAMILIES)}")
            if n not in out:
                out.append(n)
    return out


def make_problem(family: str, difficulty: int, seed: int, index: int) -> Problem:
    rng = random.Random(f"{seed}:{family}:{difficulty}:{index}")
    return FAMILIES[family](rng, difficulty)


def problem_row(problem: Problem, family: str, difficulty: int, round: int, seed: int) -> dict:
    domain = domain_of(family)
    return {
        "task_id": records.task_id(domain, problem.prompt, problem.reference),
        "round": round,
        "domain": domain,
        "family": family,
        "difficulty": difficulty,
        "source": f"procedural:{family}",
        "parent_id": None,
        "prompt": problem.prompt,
        "reference": problem.reference,
        "tests": list(problem.tests) if domain == "code" else None,
        "verifier": "math" if domain == "math" else "code",
        "meta": json.dumps({"seed": seed, **problem.meta}, sort_keys=True),
    }


_FN_NAME = re.compile(r"`\w+\(")


def canonical(prompt: str) -> str:
    """The task a prompt asks for, without its function name: `f(x)` and `solve(x)` returning
    3*x + 2 are one task (an eval item renamed is still the eval item)."""
    return _FN_NAME.sub("`fn(", prompt)


def generate_tasks(
    families: Iterable[str] | str = ("all",),
    per_family: int = 12,
    difficulty: int = 1,
    seed: int = 1234,
    round: int = 0,
    exclude_prompts: Iterable[str] = (),
    notes: list[str] | None = None,
) -> pl.DataFrame:
    """`per_family` distinct tasks of each family, deterministic in `seed`.

    Prompts in `exclude_prompts` (e.g. the held-out eval split) are skipped, compared by
    `canonical` form so a renamed copy of an excluded task is skipped too, and duplicates
    within the set are re-drawn, so the result never leaks the eval set. A family with fewer
    distinct tasks than asked (count_char has one per letter) gives what it has, and `notes`
    gets a line saying so: a shortfall nobody is told of reads as lost tasks.
    """
    excluded = {canonical(p) for p in exclude_prompts}
    rows = []
    for family in resolve_families(families):
        seen: set[str] = set()
        index, held = 0, 0
        while len(seen) < per_family and index < per_family * 50:
            p = make_problem(family, difficulty, seed, index)
            index += 1
            if p.prompt in seen:
                continue
            if canonical(p.prompt) in excluded:
                held += 1
                continue
            seen.add(p.prompt)
            rows.append(problem_row(p, family, difficulty, round, seed))
        if notes is not None and len(seen) < per_family:
            why = f" ({held:,} of them held-out ones)" if held else ""
            notes.append(f"{family} (difficulty {difficulty}): {len(seen)} tasks, not "
                         f"{per_family}: {index:,} draws found no other distinct task{why}")
    return records.frame(rows, records.TASKS)
