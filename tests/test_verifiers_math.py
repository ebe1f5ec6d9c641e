"""Math verifier: extraction, the labelled equivalence suite, pool limits, verify_frame."""

from __future__ import annotations

import asyncio
import json
import threading
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
        ("\\boxed{\\infty}, i.e. \\boxed{infinity}", "\\infty", (False, "no_answer")),
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
