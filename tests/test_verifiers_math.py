"""Math verifier: extraction, the labelled equivalence suite, pool limits, verify_frame."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from thinkwheel import records
from thinkwheel.verifiers import verify_frame
from thinkwheel.verifiers.math import MathVerifier, check_math
from thinkwheel.verifiers.math_extract import extract_answer, last_boxed

SUITE = Path(__file__).parent / "data" / "math_equiv.jsonl"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>2+2</think>\nThe answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("reasoning without opening tag</think> 42", "42"),
        ("<think>never closed 42", None),
        ("<think>a</think>\\boxed{\\frac{\\sqrt{3}}{\\{2\\}}}", "\\frac{\\sqrt{3}}{\\{2\\}}"),
        # two different boxed answers hedge (a GRPO reward hack): no answer; a repeated one is one
        ("<think>a</think> \\boxed{5} or \\boxed{6}", None),
        ("<think>\\boxed{4}?</think> so x = \\boxed{5}, that is $\\boxed{5}$.", "5"),
        ("<think>a</think> so the final answer is: 12.", "12"),
        ("<think>a</think> work\n#### 1,000", "1,000"),
        ("<think>a</think>\nAnswer: $x = 5$", "x = 5"),
        ("<think>a</think>", None),
        # a box inside a box is one answer, not a hedge
        ("<think>a</think> \\boxed{\\boxed{5}}", "5"),
        ("<think>a</think> \\boxed{\\boxed{\\boxed{5}}}", "5"),
        # ...but boxes inside one that says more are answers of their own: a hedge
        ("<think>a</think> \\boxed{\\boxed{5} \\text{ or } \\boxed{6}}", None),
        ("<think>a</think> \\boxed{5 \\text{ or } \\boxed{6}}", None),
        # Minerva's format: the inner cue wins, a closing sentence is not part of the answer...
        ("<think>a</think>Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("<think>a</think>The final answer is 5. Let me know if you have questions.", "5"),
        # ...unless it is anything but a known sign-off: it may take the answer back
        ("<think>a</think>The final answer is 5. Wait, actually it is six.",
         "5. Wait, actually it is six"),
        ("<think>a</think>The final answer is 5. Hmm, let me recompute: it should be six.",
         "5. Hmm, let me recompute: it should be six"),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "verdict"),
    [
        # the question restated is no answer to a numeric reference (a GRPO reward hack)...
        ("\\boxed{91 + 4}", "95", (False, "unevaluated")),
        ("91 + 4", "95", (False, "unevaluated")),
        ("x = (-33 + 13)/(-5)", "4", (False, "unevaluated")),
        ("\\boxed{\\frac{1}{4}+\\frac{1}{4}}", "1/2", (False, "unevaluated")),
        ("\\boxed{91+4 \\text{ apples}}", "95", (False, "unevaluated")),
        ("\\boxed{3 \\div 4}", "0.75", (False, "unevaluated")),
        # ...while fractions, signs and scientific notation are values, and an expression
        # reference takes an expression
        ("\\boxed{2/4}", "1/2", (True, "ok")),
        ("\\boxed{\\frac{-3}{4}}", "-0.75", (True, "ok")),
        ("\\boxed{1.2\\times 10^{5}}", "120000", (True, "ok")),
        ("\\boxed{3 + 2\\sqrt{2}}", "3+2\\sqrt{2}", (True, "ok")),
        ("\\boxed{2+3}", "2+3", (True, "ok")),
        # negative fractions are values, and wrapping a sum does not hide it
        ("\\boxed{\\frac{1}{-2}}", "-0.5", (True, "ok")),
        ("\\boxed{\\frac{-1}{-2}}", "0.5", (True, "ok")),
        ("\\boxed{|91+4|}", "95", (False, "unevaluated")),
        ("\\boxed{x_1 = 91 + 4}", "95", (False, "unevaluated")),
        # a chain of arithmetic whose links hold answers its last side; a false one, nothing
        ("\\boxed{91+4=95}", "95", (True, "ok")),
        ("91 + 4 = 95", "95", (True, "ok")),
        ("\\boxed{500 + 500 = 1,000}", "1000", (True, "ok")),
        ("\\boxed{91+4=96}", "95", (False, "wrong_answer")),
        ("\\boxed{2+2=5}", "5", (False, "wrong_answer")),
        ("\\boxed{96 = 95}", "95", (False, "wrong_answer")),
        # a sentence is not an answer without a cue ("Not 95.", "95 or more" must not pass)
        ("The sum is 95.", "95", (False, "wrong_answer")),
        ("Not 95.", "95", (False, "wrong_answer")),
        # a box that restates another is one answer; `3,5` is no restatement of 35
        ("\\boxed{95}, i.e. \\boxed{95.0}", "95", (True, "ok")),
        ("\\boxed{x=4}, so \\boxed{4}", "4", (True, "ok")),
        ("\\boxed{4}, so \\boxed{5}", "5", (False, "no_answer")),
        ("\\boxed{35}, i.e. \\boxed{3,5}", "3.5", (False, "no_answer")),
        # plain `infinity` is now read as \\infty (it was text), so this box restates the first
        ("\\boxed{\\infty}, i.e. \\boxed{infinity}", "\\infty", (True, "ok")),
        ("\\boxed{\\infty}, i.e. \\boxed{-\\infty}", "\\infty", (False, "no_answer")),
    ],
)
def test_answers_as_written(answer: str, reference: str, verdict: tuple[bool, str]) -> None:
    assert check_math(reference, f"<think>work</think>{answer}")[:2] == verdict


def test_long_chains_and_odd_boxes_are_read_at_once() -> None:
    """A regex over chains of `=` backtracked exponentially (40 links: hours, in-process in
    the vote and consensus stages); `\\boxed{inf}` raised in the restated-box check."""
    assert extract_answer("</think>\\boxed{" + "1111=" * 40 + "x}").endswith("=x")
    assert extract_answer("</think>\\boxed{" + "12 + 15 = 27 + 18 = " * 8 + "300 apples}")
    assert extract_answer("</think>\\boxed{infinity}") == "infinity"
    assert extract_answer("</think>\\boxed{1e99999999}") == "1e99999999"


def test_a_number_past_the_exponent_bound_fails_fast() -> None:
    """`1e-999999` as an exact Rational took the check's whole time budget (a timeout, no
    verdict); it is a parse error at once."""
    assert check_math("5", "</think>\\boxed{1e-999999}")[:2] == (False, "parse_error")
    assert check_math("5", "</think>\\boxed{2.5\\times 10^{-2000}}")[:2] == (False, "parse_error")
    assert check_math("1e300", "</think>\\boxed{10^{300}}")[0] is True


def test_last_boxed_nested_braces() -> None:
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}} x") == "\\frac{a}{b^{2}}"
    assert last_boxed("no box") is None


def test_equivalence_suite_is_large_and_balanced() -> None:
    rows = [json.loads(line) for line in SUITE.read_text().splitlines()]
    assert len(rows) >= 400
    assert sum(not r["expected"] for r in rows) / len(rows) >= 0.30


def test_equivalence_suite_all_correct() -> None:
    wrong = []
    for line in SUITE.read_text().splitlines():
        r = json.loads(line)
        passed, reason, _ = check_math(r["reference"], f"<think>x</think>\\boxed{{{r['candidate']}}}",
                                       r.get("percent_policy", "fraction"))
        if passed is not r["expected"]:
            wrong.append((r["reference"], r["candidate"], r["expected"], reason))
    assert wrong == []


@pytest.mark.parametrize(
    ("policy", "candidate", "expected"),
    [("fraction", "0.5", True), ("fraction", "50", False), ("number", "50", True),
     ("number", "0.5", False), ("either", "50", True), ("either", "0.5", True)],
)
def test_percent_policy(policy: str, candidate: str, expected: bool) -> None:
    assert check_math("50\\%", f"</think>{candidate}", policy)[0] is expected


def test_unparseable_reference_is_none_never_true() -> None:
    passed, reason, _ = check_math("\\frac{", "</think> 5")
    assert passed is None and reason == "bad_reference"
    assert check_math(None, "</think> 5")[0] is None


def test_no_answer_and_parse_error() -> None:
    assert check_math("5", "<think>unfinished")[1] == "no_answer"
    assert check_math("5", "</think>\\boxed{\\frac{}")[1] in ("parse_error", "wrong_answer")


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    return MathVerifier(workers=2, timeout_s=2.0)


def test_pool_batch_and_timeout_recovery(verifier: MathVerifier) -> None:
    task = {"reference": "2"}
    out = verifier.verify_batch(
        ["</think> 2", "</think> 3", "</think>\\boxed{9^{9^{9^{9}}}}", "</think> \\frac{4}{2}"],
        [task] * 4,
    )
    assert [v.passed for v in out] == [True, False, None, True]
    assert out[2].reason == "timeout"
    assert verifier.verify("</think> 2", task).passed is True  # pool still serves


def test_pool_from_thread_and_event_loop(verifier: MathVerifier) -> None:
    got: list[bool | None] = []
    t = threading.Thread(target=lambda: got.append(verifier.verify("</think>7", {"reference": "7"}).passed))
    t.start()
    t.join(60)
    assert got == [True]
    out = asyncio.run(verifier.averify_batch(["</think>7", "</think>8"], [{"reference": "7"}] * 2))
    assert [v.passed for v in out] == [True, False]


def test_verify_frame_mixed_verifiers() -> None:
    tasks = records.frame([
        {"task_id": "m", "domain": "math", "prompt": "1+1", "reference": "2", "verifier": "math"},
        {"task_id": "c", "domain": "code", "prompt": "f", "tests": ["assert f(1) == 2"],
         "verifier": "code"},
        {"task_id": "n", "domain": "math", "prompt": "?", "reference": "1", "verifier": "nope"},
    ], records.TASKS)
    cands = records.frame([
        {"candidate_id": "1", "task_id": "m", "completion": "<think>a</think> 2"},
        {"candidate_id": "2", "task_id": "m", "completion": "<think>a</think> 3"},
        {"candidate_id": "3", "task_id": "c", "completion": "</think>\n```python\ndef f(x):\n    return 2*x\n```"},
        {"candidate_id": "4", "task_id": "n", "completion": "</think> 1"},
        {"candidate_id": "5", "task_id": "missing", "completion": "</think> 1"},
    ], records.CANDIDATES)
    out = verify_frame(tasks, cands, workers=2, math_timeout_s=5, code_timeout_s=10,
                       percent_policy="fraction", plugins=[])
    assert list(out.columns[: len(records.VERDICTS)]) == list(records.VERDICTS)
    assert out["candidate_id"].to_list() == ["1", "2", "3", "4", "5"]
    assert out["passed"].to_list() == [True, False, True, None, None]
    assert out["reason"].to_list()[3:] == ["verifier_error", "bad_reference"]


PLAIN_FORMS = ["2x+1", "x^2+5x+4", "(x+1)(x+4)", "\\frac{\\sqrt{3}}{2}", "\\sqrt[3]{8}", "2\\pi",
               "\\frac12", "0.5x-1.25", "-2^2", "x/2/3", "e^{2}", "y = 6x + 16", "x \\ge 3",
               "3<x", "(1,2]", "(3,1)", "[2,2]", "(1,2,3)", "\\{3,1,2\\}", "1, 2",
               "(-\\infty,3)\\cup(4,\\infty)", "\\frac{1}{2004!}", "2^{10}", "i"]


@pytest.mark.parametrize("text", PLAIN_FORMS)
def test_plain_parser_agrees_with_latex2sympy(text: str) -> None:
    import sympy

    from thinkwheel.verifiers.math_parse import _exact, latex_to_sympy
    from thinkwheel.verifiers.math_plain import parse_plain

    fast = parse_plain(text)
    assert fast is not None, text
    value, inexact = fast
    slow, slow_inexact = _exact(latex_to_sympy(text))
    assert inexact == slow_inexact
    if isinstance(slow, sympy.Expr):
        assert isinstance(value, sympy.Expr) and (value == slow or sympy.simplify(value - slow) == 0)
    elif isinstance(slow, sympy.core.relational.Relational):
        assert type(value) is type(slow)
        assert sympy.simplify(value.lhs - slow.lhs) == 0 and sympy.simplify(value.rhs - slow.rhs) == 0
    else:
        assert type(value) is type(slow) and value == slow


@pytest.mark.parametrize("text", ["f(x)", "x^23", "3 4", "E", "2e5", "x_1", "\\sin x", "1<x<3",
                                  "x \\ne 3", "2^3^2", "0.1234567890123456", "10^{100000}",
                                  "\\frac{1}{0}", "(x, y)", "\\begin{pmatrix}1\\end{pmatrix}"])
def test_plain_parser_declines_ambiguous_or_costly_forms(text: str) -> None:
    from thinkwheel.verifiers.math_plain import parse_plain

    assert parse_plain(text) is None


def test_parse_results_are_cached_including_errors() -> None:
    from thinkwheel.verifiers.math_parse import ParseError, _parse_cached, parse_answer

    first = parse_answer("\\frac{3}{4}x + 1")
    assert parse_answer("\\frac{3}{4}x + 1") is first
    for _ in range(2):
        with pytest.raises(ParseError):
            parse_answer("\\frac{")
    assert _parse_cached.cache_info().hits >= 2


@pytest.mark.parametrize(
    ("reference", "right", "wrong"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
         "clips altogether in April and May.\n#### 72", "72", "24"),  # GSM8K's answer field
        ("We have $x^2=9$, so the positive root is $\\boxed{3}$.", "3", "9"),  # a MATH solution
        ("The final answer is \\frac{1}{2}.", "0.5", "2"),
    ],
)
def test_a_worked_solution_reference_is_read_by_its_marked_answer(reference, right, wrong) -> None:
    assert check_math(reference, f"<think>x</think>\n{right}")[:2] == (True, "ok")
    assert check_math(reference, f"<think>x</think>\n{wrong}")[:2] == (False, "wrong_answer")


# --- review findings 4-7 and the smaller issues (/tmp/review-verifiers/report.md) ---


@pytest.mark.parametrize(
    ("completion", "reference", "verdict"),
    [
        # the same answer boxed twice in other notation (R1's inline box, then "Final Answer")
        ("Thus $p=\\boxed{\\frac12}$.\n\nAnswer: $\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", (True, "ok")),
        ("Each box has $\\boxed{5}$ apples.\n\n**Final Answer**\n\\[\\boxed{5 \\text{ apples}}\\]",
         "5", (True, "ok")),
        ("She makes $\\boxed{\\$18}$ a day.\n\nFinal answer: \\boxed{18}", "18", (True, "ok")),
        ("\\boxed{0.5}, that is \\boxed{50\\%}", "50\\%", (True, "ok")),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}, or \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", (True, "ok")),
        ("\\boxed{x = 4}, so \\boxed{4 \\text{ cm}}", "4", (True, "ok")),
        # two different answers are still a hedge, whatever the notation
        ("Thus $p=\\boxed{\\frac12}$.\n\nAnswer: $\\boxed{\\dfrac{1}{3}}$", "\\frac{1}{3}", (False, "no_answer")),
        ("$\\boxed{5}$ apples.\n\n**Final Answer** \\boxed{6 \\text{ apples}}", "6", (False, "no_answer")),
        ("$\\boxed{\\$18}$ a day.\n\nFinal answer: \\boxed{19}", "19", (False, "no_answer")),
        ("\\boxed{5 \\text{ cm}} or \\boxed{5 \\text{ m}}", "5 \\text{ m}", (False, "no_answer")),
        ("\\boxed{50} or \\boxed{50\\%}", "50\\%", (False, "no_answer")),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}, or \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", (False, "no_answer")),
        ("\\boxed{1} \\boxed{1.0} \\boxed{1.00} \\boxed{\\frac22} \\boxed{\\frac33} \\boxed{2}", "2",
         (False, "no_answer")),
    ],
)
def test_equivalent_boxes_are_one_answer(completion: str, reference: str, verdict: tuple) -> None:
    assert check_math(reference, f"<think>x</think>{completion}")[:2] == verdict


def test_box_comparison_never_calls_the_unbounded_parser() -> None:
    """Extraction runs in-process (vote, consensus) with no time limit: only the bounded plain
    parser reads boxes, so a tower that hangs latex2sympy is an unreadable box, and the pair a
    hedge, at once."""
    assert extract_answer("</think>\\boxed{9^{9^{9^{9}}}} or \\boxed{2}") is None
    assert extract_answer("</think>\\boxed{inf} or \\boxed{1e99999999}") is None
    start = time.perf_counter()  # nor simplify: this pair took 20 s
    assert extract_answer("</think>\\boxed{(x+1)^{1000}} \\boxed{(x^2+2x+1)^{500}}") is None
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("completion", "reference", "verdict"),
    [
        ("#### Step 1\nMultiply 6 by 7, which gives forty-two apples in all of the baskets.\n"
         "#### Conclusion\nThe answer is 42.", "42", (True, "ok")),
        ("#### Final Answer\nThe total is $42$.", "42", (True, "ok")),
        ("#### Step 1\nMultiply 6 by 7, which gives forty-one apples in all of the baskets.\n"
         "#### Conclusion\nThe answer is 41.", "42", (False, "wrong_answer")),
        # GSM8K's own marker still reads
        ("6 * 7 = 42\n#### 42", "42", (True, "ok")),
        ("#### Work\n6 * 7 = 42\n#### -41", "42", (False, "wrong_answer")),
        ("#### Work\nin dollars\n#### $1,000", "1000", (True, "ok")),
    ],
)
def test_a_markdown_heading_is_no_gsm8k_marker(completion: str, reference: str, verdict: tuple) -> None:
    assert check_math(reference, f"<think>x</think>{completion}")[:2] == verdict


@pytest.mark.parametrize(
    ("reference", "answer", "passed"),
    [
        # a decimal finer than a rounded decimal reference passes when it rounds to it...
        ("1.67", "1.6667", True), ("3.14", "3.1416", True), ("-1.67", "-1.6667", True),
        ("1.67", "1.665", True),
        # ...and not when it rounds elsewhere, is coarser, or the reference is too short to be
        # a rounding (0.5 may be exact)
        ("1.67", "1.68", False), ("1.67", "1.6", False), ("1.67", "1.675", False),
        ("3.14", "3.1459", False), ("0.5", "0.54", False),
    ],
)
def test_a_finer_decimal_matches_a_rounded_reference(reference: str, answer: str, passed: bool) -> None:
    assert check_math(reference, f"</think>\\boxed{{{answer}}}")[0] is passed


@pytest.mark.parametrize(
    ("reference", "answer", "passed"),
    [
        # scale words multiply; math words are no unit to ignore
        ("6", "6 \\text{ million}", False), ("6000000", "6 \\text{ million}", True),
        ("1500000", "\\$1.5 million", True), ("6000000", "6 million people", True),
        ("2", "2 dozen", False), ("24", "2 dozen", True),
        ("2", "2 pi", False), ("2\\pi", "2 pi", True), ("10", "10 factorial", False),
        ("3", "3 squared", False), ("2", "2 thirds", False),
        # one unit spelled two ways is one unit; two units are still two
        ("3\\text{ feet}", "3\\text{ ft}", True), ("5\\text{ m}", "5\\text{ meters}", True),
        ("5\\text{ h}", "5 hours", True), ("5\\text{ ft}^2", "5 square feet", True),
        ("5\\text{ ft}^2", "5 \\text{ sq ft}", True), ("5 \\text{ cm}", "5 \\text{ (cm)}", True),
        ("5\\text{ m}", "5\\text{ cm}", False), ("3\\text{ feet}", "3\\text{ yards}", False),
        ("5\\text{ ft}^2", "5 \\text{ feet}", False), ("5\\text{ min}", "5 hours", False),
        ("5", "5 \\text{ apples}", True),
        # a bare one-letter unit against a number reference; against `5m` it is the symbol
        ("5", "5 m", True), ("25", "25 m^2", True), ("5", "6 m", False), ("5m", "5 m", True),
        ("5", "5 x", False), ("5\\text{ m}", "5 s", False),
    ],
)
def test_units_scales_and_math_words(reference: str, answer: str, passed: bool) -> None:
    assert check_math(reference, f"</think>\\boxed{{{answer}}}")[0] is passed


@pytest.mark.parametrize(
    ("reference", "answer", "passed"),
    [
        ("\\pi", "pi", True), ("\\pi", "Pi", True), ("2\\pi", "2π", True), ("\\pi", "3", False),
        ("\\infty", "infinity", True), ("\\infty", "∞", True), ("-\\infty", "-∞", True),
        ("-\\infty", "infinity", False), ("-\\infty", "∞", False),
        ("\\sqrt{2}", "√2", True), ("\\sqrt{23}", "√23", True), ("2\\sqrt{3}", "2√3", True),
        ("\\sqrt{x+1}", "√(x+1)", True), ("\\sqrt{3}", "√2", False),
        ("\\frac{1}{2}", "½", True), ("\\frac{3}{2}", "1½", True), ("\\frac{1}{3}", "½", False),
        ("-5", "–5", True), ("5", "–5", False), ("x-5", "x – 5", True),
        ("-2", "3–5", False),  # an en dash between numbers is a range, not a minus
    ],
)
def test_plain_text_and_unicode_math(reference: str, answer: str, passed: bool) -> None:
    assert check_math(reference, f"</think>\\boxed{{{answer}}}")[0] is passed


@pytest.mark.parametrize(
    ("reference", "answer", "passed"),
    [("(1,2)", "1 < x < 2", True), ("[-1,3)", "-1 \\le x < 3", True), ("1<x<2", "(1,2)", True),
     ("(1,2)", "1 \\le x < 2", False), ("(1,3)", "1 < x < 2", False)],
)
def test_a_chained_inequality_is_an_interval(reference: str, answer: str, passed: bool) -> None:
    assert check_math(reference, f"</think>\\boxed{{{answer}}}")[0] is passed


_U = "(-\\infty,2)\\cup(3,\\infty)"


@pytest.mark.parametrize(
    ("reference", "answer", "passed"),
    [(_U, "x<2 or x>3", True), (_U, "x<2 \\text{ or } x>3", True), (_U, "x < 2 \\lor x > 3", True),
     (_U, "x<2 \\vee x>3", True), ("x<2 \\text{ or } x>3", "x>3 \\text{ or } x<2", True),
     ("(-\\infty,-1]\\cup[4,\\infty)", "x\\le -1 \\text{ or } x \\ge 4", True),
     (_U, "x\\le 2 \\text{ or } x>3", False), (_U, "x<2 or x>4", False), (_U, "x<2 or y>3", False),
     ("x<2", "x<2 or x>3", False), ("2", "2 or 3", False), ("x<2", "x<2, x>3", False)],
)
def test_inequalities_joined_by_or_are_their_union(reference: str, answer: str, passed: bool) -> None:
    """The parser read `or` as a comma: a set of two relations, equal to no interval answer."""
    assert check_math(reference, f"</think>\\boxed{{{answer}}}")[0] is passed
