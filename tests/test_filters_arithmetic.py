"""The false-arithmetic check: exact on plain claims, silent on everything it cannot read."""

from __future__ import annotations

from fractions import Fraction

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.filters import stage
from thinkwheel.filters.arithmetic import evaluate, false_claims
from thinkwheel.generators import procedural


def test_every_procedural_gold_trace_is_clean() -> None:
    """A correct worked trace must never be flagged, in any family or level."""
    flagged = []
    for family in procedural.FAMILIES:
        for level in range(1, 6):
            for i in range(60):
                p = procedural.make_problem(family, level, i, 0)
                if false_claims(p.trace) or false_claims(f"{p.trace}\n{p.answer}"):
                    flagged.append((family, level, p.trace))
    assert flagged == []


@pytest.mark.parametrize(
    ("text", "claims"),
    [
        ("7+6=15, 3+0+1=4. So 37 + 6 = 43.", ["7+6=15"]),  # right answer, wrong step
        ("7+6=13, 3+0+1=4. So 37 + 6 = 43.", []),
        ("-2x = 5 + 13 = 18, x = 18/-2 = -8. So x = -8.", ["18/-2=-8"]),
        ("common denominator 14: 22/14 + 6/14 = 26/14", ["22/14 + 6/14=26/14"]),
        ("$3 \\times 4 = 13$", ["$3 \\times 4=13$"]),
        ("12 ÷ 4 = 3 and 2 × 5 = 10", []),
        ("10/3 = 3.33, and 2/3 = 0.67", []),  # rounded decimals are honest
        ("10/3 = 3.5", ["10/3=3.5"]),
        ("1,000 + 2,500 = 3,500", []),
        ("(2 + 3) * 4 = 20 = 5 * 4 = 21", ["5 * 4=21"]),  # each link of a chain
        ("35 < 26, so compute 35 - 26 = 9", ["35<26"]),  # a false comparison
        ("since 3 < 7, borrow: 13 - 7 = 6", []),
        ("2 + 3 = 5 > 4 and 9 >= 10", ["9>=10"]),
        ("<think>8 ≤ 2*4, 1 ≠ 1</think>", ["1≠1"]),
        # a relation the trace asks about or refutes is not a claim
        ("2 > 3 is false, so skip it", []),
        ("-1 > 0 is False; 2 > 3: no", []),
        ("is 7+6=15? no, 7+6=13", []),
        ("2+2=5 is wrong, 2+2=4", []),
        ("1/3 = 0.333... and 1/3 = .33", []),  # truncated decimals
        # markup and brackets around a claim are not part of it
        ("**7+6=15**, `8+8=17`, \\(9+9=19\\)", ["7+6=15", "8+8=17", "9+9=19"]),
        ("(7+6=15) and ((2+3)*4 = 21)", ["(7+6=15)", "((2+3)*4=21)"]),
        # a step outside the tags is a step: after </think>, or with no tags at all
        ("<think>ok</think>7+6=15, so 13", ["7+6=15"]),
        ("7 x 6 = 43, 7+6 &= 15, 3x = 12", ["7 x 6=43", "7+6=15"]),  # x as times; aligned &=
        # a list's last number is not a left side: "12 and 8 = 20" sums, it claims no 8 = 20
        ("The sum of 12 and 8 = 20. Adding 5, 10, and 15 = 30.", []),
        ("9+5=14, carry 1, 8+8+1=15", ["8+8+1=15"]),  # a step after "carry 1" is still read
        ("7+6=13, and 5 = 6", ["5=6"]),
        # rounding link by link, and in dollars
        ("2/3 = 0.667 = 0.67, $10 / 3 = $3.33", []),
        ("13 = 13.4", ["13=13.4"]),
        ("1.04 = 1.1", ["1.04=1.1"]),  # 1.04 rounds to 1.0
        # a list goes on over commas and "and" only: a new line or sentence starts afresh
        ("We get 15\n15 = 16", ["15=16"]),
        ("so far 7.\n6 = 13", ["6=13"]),
        ("<think>total is 12</think>\n5 = 4", ["5=4"]),
        ("In hex, 0x10 = 16.", []),  # not 0 times 10
        # "is" between arithmetic and a number claims it; a question mark answered yes too
        ("7 + 6 is 15, and 12 - 5 is 7", ["7 + 6=15"]),
        ("7+6=15? Yes, so 13", ["7+6=15"]),
        ("the answer is 13; is 7+6=15? No wait", []),
        ("What is 7+6? 7 + 6 = 15.", ["7 + 6=15"]),  # a step right after a question
        # ...but a question followed by anything else is still a question
        ("Is 2 + 2 = 5? Correct answer: 4. 1 + 1 = 3? Right?", []),
        ("17 / 5 is 3, remainder 2", []),  # integer division in prose
        ("45 / 8 = 5, remainder 5", []),  # ...and with "=": the quotient
        ("45 ÷ 8 = 5; r 5. 100/7 = 14 (remainder 2)", []),
        ("45 / 8 = 6, remainder 5", ["45 / 8=6"]),  # the quotient is still checked
        ("45 / 8 = 5, so 5 * 8 = 40", ["45 / 8=5"]),  # no remainder follows: 45/8 is 5.625
        ("\\begin{aligned} 7 + 6 &= 15 \\\\ 2 + 2 &= 5 \\end{aligned}", ["7 + 6=15", "2 + 2=5"]),
        # a row that starts with the relation goes on from the row above
        ("\\begin{aligned} x &= 7 + 9 \\\\ &= 17 \\\\ &= 16 + 1 \\end{aligned}", ["7 + 9=17"]),
        ("91 + 4\n= 96\n= 95 + 1", ["91 + 4=96"]),
        ("7 + 9 \\\\ &= 16 \\\\ &= 8 \\times 2", []),
        ("Step 2\n= 5, so 7 = 7", []),  # a line of words is no side
        ("so 9 = 9.\nThen = 10", []),  # continues only across a line, from a side
        # ...from arithmetic or a chain, not from a list's last number
        ("We add 12 and 8\n= 20, so the answer is 20.", []),
        ("We add 3 and 4\n= 7", []),
        ("Numbers: 3, 4\n= 7", []),
        ("So far the total is 5\n> 3 + 4 = 7 more", []),
        ("7 + 9 \\\\ & = 17 \\\\ &< 15", ["7 + 9=17", "17<15"]),
        ("3 \\times 4\n= 13", ["3 \\times 4=13"]),
        ("7 x 6\n= 43", ["7 x 6=43"]),
        ("12 − 8\n= 5", ["12 − 8=5"]),
    ],
)
def test_false_claims(text: str, claims: list[str]) -> None:
    assert false_claims(text) == claims


@pytest.mark.parametrize(
    "text",
    [
        "2x = 10, so x = 5",  # a variable: not plain arithmetic
        "assert f(2) == 4 and a <= 3 >= 1",
        "speed = 60 km/h = 1 km per minute",
        "5/0 = 1",  # undefined: not judged
        "2**100 = 1",
        "x == 3 = 4",
        "",
    ],
)
def test_unreadable_claims_are_left_alone(text: str) -> None:
    assert false_claims(text) == []


def test_evaluate_is_exact() -> None:
    assert evaluate("1/3 + 1/6") == Fraction(1, 2)
    assert evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate("-(4 - 6) * 3") == 6
    assert evaluate("__import__('os')") is None
    assert evaluate("3 apples") is None


def test_filter_drops_false_arithmetic_with_the_claim_as_ref() -> None:
    tasks = records.frame(
        [{"task_id": "t1", "prompt": "What is 37 + 6?", "reference": "43"}], records.TASKS
    )
    rows = [
        ("c0", "<think>7+6=15, 3+0+1=4. So 37 + 6 = 43.</think>\n43"),  # lucky
        ("c1", "<think>7+6=13, 3+0+1=4. So 37 + 6 = 43.</think>\n43"),
        ("c2", "<think>7+6=15, 3+1=5. So 37 + 6 = 55.</think>\n55"),  # wrong answer first
        ("c3", "<think>Add the units.</think>\n7+6=15, 3+0+1=4, so 43"),  # the step after the tags
    ]
    cands = records.frame(
        [
            {
                "candidate_id": c, "task_id": "t1", "sample_idx": i, "completion": text,
                "reasoning": records.split_think(text)[0], "answer": records.split_think(text)[1],
            }
            for i, (c, text) in enumerate(rows)
        ],
        records.CANDIDATES,
    )
    verdicts = records.frame(
        [{"candidate_id": c, "passed": c != "c2"} for c, _ in rows], records.VERDICTS
    )
    out = stage.filter_candidates(tasks, cands, verdicts, config.FilterConfig(), {})
    got = dict(zip(out["candidate_id"], zip(out["drop_reason"], out["drop_ref"], strict=True), strict=True))
    assert got == {
        "c0": ("false_arithmetic", "7+6=15"),
        "c1": (None, None),
        "c2": ("not_verified", None),
        "c3": ("false_arithmetic", "7+6=15"),
    }
    assert stage.funnel(out)["drop_reasons"]["false_arithmetic"] == 2

    off = config.FilterConfig()
    off.quality.check_arithmetic = False
    kept = stage.filter_candidates(tasks, cands, verdicts, off, {})
    assert kept.filter(pl.col("drop_reason").is_null())["candidate_id"].sort().to_list() == [
        "c0", "c1", "c3"]


@pytest.mark.parametrize(
    ("text", "head"),
    [
        # the first false step, its value corrected; what followed it is gone
        ("<think>9+5=16, 7+8+1=15. So 79 + 85 = 155.</think>\n155", "<think>9+5=14"),
        ("<think>5-6=1, 8-1=7.", "<think>5-6=-1"),
        ("x = 2+2 = 5 = 5", "x = 2+2 = 4"),  # a chain: the false link
        ("12/4 + 4/4 = 5/4, simplify", "12/4 + 4/4 = 4"),
        ("1/2 + 1/3 = 0.9 so", "1/2 + 1/3 = 0.8"),  # 5/6 to the places written
        ("1/2 + 1/4 = 1/2 so", "1/2 + 1/4 = 3/4"),
        # a list's last number is not the sum's left side: the first false step is later
        ("add 12 and 8 = 20, so 3+4=8", "add 12 and 8 = 20, so 3+4=7"),
        # a bullet is no minus sign: `- 9 + 5 = 14` is true, the next step is the false one
        ("<think>Add:\n- 9 + 5 = 14\n- 7 + 8 + 1 = 15\nSo", "<think>Add:\n- 9 + 5 = 14\n- 7 + 8 + 1 = 16"),
        # a refuted claim is passed over; markup before the claim stays as written
        ("Is 9+5=16? No, 9+5=14. Then 7+8+1=15.", "Is 9+5=16? No, 9+5=14. Then 7+8+1=16"),
        ("**Step 1:** 9 + 5 = 16, then", "**Step 1:** 9 + 5 = 14"),
        ("$5 + $6 = $12", "$5 + $6 = $11"),
        ("1/3 = 0.3334 so", "1/3 = 0.3333"),  # to the places written
    ],
)
def test_repair_head_corrects_the_first_false_step(text: str, head: str) -> None:
    from thinkwheel.filters.arithmetic import repair_head

    assert repair_head(text) == head
    assert not false_claims(repair_head(text))


@pytest.mark.parametrize(
    "text",
    ["2+2=4, so 4", "7+6=15? no, 7+6=13", "2 > 3 so 5", "7 + 6 is 15 so", "no numbers", "",
     "14 = 9+6 so",  # the false side is an expression: its value is not what to write there
     "2 > 3, so 2+2=5"],  # the first false claim is an inequality: left for the filter
)
def test_repair_head_leaves_what_it_cannot_rewrite(text: str) -> None:
    """True traces, refuted claims, inequalities, `is` claims and false expressions are not
    rewritten."""
    from thinkwheel.filters.arithmetic import repair_head

    assert repair_head(text) is None


def test_a_bullet_is_not_a_minus_sign() -> None:
    assert false_claims("Steps:\n- 9 + 5 = 14\n* 3 * 4 = 12\n• 2 + 2 = 4") == []
    assert false_claims("- 9 + 5 = 15") == ["9 + 5=15"]
    assert false_claims("x\n-9 + 5 = -4") == []  # a negative number is still one


def test_repair_head_on_a_long_trace_is_a_few_checks() -> None:
    """The first false clause is found by bisection: a 24k-character trace used to take
    minutes (one whole-prefix check per clause)."""
    from thinkwheel.filters import arithmetic
    from thinkwheel.filters.arithmetic import repair_head

    text = "".join(f"{i}+1={i + 1}, " for i in range(2000)) + "2+2=5"
    calls = []
    real = arithmetic.false_claims

    def counted(t):
        calls.append(1)
        return real(t)

    arithmetic.false_claims = counted
    try:
        assert repair_head(text).endswith(", 2+2=4")
    finally:
        arithmetic.false_claims = real
    assert len(calls) < 20


def test_a_corrected_decimal_is_exact_to_the_places_written() -> None:
    from thinkwheel.filters.arithmetic import _written

    # through a float, 1/3 to 19 places was 0.3333333333333333148: still false
    assert _written(Fraction(1, 3), "0.3333333333333333334") == "0.3333333333333333333"
    assert _written(Fraction(-7, 4), " $1.2") == "-$1.8" and _written(Fraction(6), "7.5") == "6"
