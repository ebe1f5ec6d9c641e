"""The step check: a procedural task's kept trace states its worked steps, in order."""

from __future__ import annotations

import random

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.filters import stage
from thinkwheel.filters.steps import (
    conclusion_cut,
    missing_step,
    task_conclusion,
    task_steps,
    worked_step_head,
)
from thinkwheel.generators import procedural


@pytest.mark.parametrize(
    ("reasoning", "missing"),
    [
        ("11-5=6, 1-0=1. So 21 - 5 = 16.", None),
        ("11 - 5 = 6,\n1 - 0 = 1", None),  # spaces and lines aside
        ("11-5=6, 2-0=2. So 21 - 5 = 16.", "1-0=1"),  # true steps, a guessed answer
        ("1-0=1, 11-5=6", "1-0=1"),  # out of order
        ("11-5=6, 21-0=21", "1-0=1"),  # not inside a longer number
        ("11-5=6, 1-0=1.5", "1-0=1"),
        ("11-5=6. 1-0=1.", None),  # a sentence's full stop is no decimal point
        ("11-5=6.\n1-0=1", None),
        ("11-5=6.1-0=1", "11-5=6"),  # but written without a space it reads as 6.1
        ("", "11-5=6"),
    ],
)
def test_missing_step(reasoning: str, missing: str | None) -> None:
    assert missing_step(reasoning, ["11-5=6", "1-0=1"]) == missing


@pytest.mark.parametrize(
    ("text", "head"),
    [
        # a true step off the algorithm: the borrow's 8 is left at 8
        ("<think>11-2=9, 8-0=8. So 81 - 2 = 89.</think> 89", "<think>11-2=9, 7-0=7"),
        ("<think>1-2=9, 8-0=8.</think> 89", "<think>11-2=9"),  # false or not, the first
        ("<think>11 - 2 = 3, 8-0=8.</think>", "<think>11-2=9"),
        ("<think>11-2=9. So 81 - 2 = 89.</think>", "<think>11-2=9, 7-0=7"),  # one left out
        ("<think>11-2=9</think> 9", "<think>11-2=9, 7-0=7"),  # stopped after the first
        ("<think>11 - 2 = 9, 7 - 0 = 7. So 81 - 2 = 80.</think> 80", None),  # the steps are right
        ("<think>So it is 79.</think> 79", None),  # no step to put one in place of
        ("<think>11-2=9, 17-0=17.</think>", "<think>11-2=9, 7-0=7"),  # not a part of a number
        # only a sentence starting "So" is the conclusion: a step after "so" is still a step
        ("<think>A borrow, so 11-2=9, 7-0=7. So 81 - 2 = 80.</think> 80", None),
        ("<think>A borrow, so 11-2=9, 8-0=8.</think>", "<think>A borrow, so 11-2=9, 7-0=7"),
        ("<think>7-0=7. So 81 - 2 = 79.</think> 79", None),  # skipped: nothing in its place
    ],
)
def test_worked_step_head(text: str, head: str | None) -> None:
    assert worked_step_head(text, ["11-2=9", "7-0=7"]) == head


@pytest.mark.parametrize(
    ("text", "head"),
    [
        # -3x + 18 = 0 with b miscopied: true arithmetic on the wrong number
        ("<think>-3x = 0 - 11 = -11, x = -11/-3 = 4. So x = 4.</think> 4", "<think>-3x = 0 - 18 = -18"),
        ("<think>-3x = 0 - 18 = -18, x = -18/-3 = 7. So x = 7.</think> 7",
         "<think>-3x = 0 - 18 = -18, x = -18/-3 = 6"),
        ("<think>-3x = 0 - 18 = -18, x = -18/-3 = 6. So x = 6.</think> 6", None),
        # the first step skipped: `x = ` is the second's, so no step goes in after it
        ("<think>-3x = -18, x = -18/-3 = 7. So x = 7.</think> 7", None),
    ],
)
def test_worked_step_head_of_a_linear_equation(text: str, head: str | None) -> None:
    steps = procedural.worked_steps("linear_equation", "Solve for x: -3x + 18 = 0")
    assert worked_step_head(text, steps) == head


@pytest.mark.parametrize(
    ("text", "head"),
    [
        # the bundled model's fused carry step, true but not the worked one
        ("<think>3*4=12, 4*4+1=17. So 43 * 4 = 172.</think> 172", "<think>3*4=12, 4*4=16"),
        # continued from there, it left the carry out
        ("<think>3*4=12, 4*4=16. So 43 * 4 = 162.</think> 162", "<think>3*4=12, 4*4=16, 16+1=17"),
        ("<think>3*4=12, 4*4=16, 16+1=17. So 43 * 4 = 172.</think> 172", None),
    ],
)
def test_worked_step_head_of_a_multiplication(text: str, head: str | None) -> None:
    steps = procedural.worked_steps("multiplication", "What is 43 * 4?")
    assert worked_step_head(text, steps) == head
    assert (missing_step(text, steps) is None) == (head is None)


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        # the steps are right; the task restated is not (the operand read off three steps)
        ("<think>7*6=42, 1*6=6, 6+4=10. So 177 * 6 = 1062.</think> 1062", (33, "17 * 6 = 102.")),
        ("<think>7*6=42, 1*6=6, 6+4=10. So 17 * 6 = 112.</think> 112", (33, "17 * 6 = 102.")),
        ("<think>7*6=42, 1*6=6, 6+4=10. So 17 * 6 = 102.</think> 102", None),
        ("<think>7*6=42, 1*6=6, 6+4=10. so 17*6 = 102. So 177 * 6 = 1062.</think>", None),
        ("<think>7*6=42, 1*6=6, 6+4=10.</think> 102", None),  # no conclusion to put right
        ("<think>7*6=42, 1*6=6, 6+4=10, 17*6=102.</think> 102", None),  # no "So": a step
        ("<think>7*6=42, 1*6=6, 6+4=10. So, 177 * 6 = 1062.</think> 1062", (34, "17 * 6 = 102.")),
        # a worked step in a sentence that starts with "So" is a step, not the conclusion
        ("<think>7*6=42. So 1*6=6, 6+4=10. So 17 * 6 = 102.</think> 102", None),
        ("<think>So 7*6=42, 1*6=6, 6+4=10. So 17 * 6 = 102.</think> 102", None),
        ("<think>7*6=42. So 1*6=6, 6+4=10. So 177 * 6 = 1062.</think> 1062", (36, "17 * 6 = 102.")),
    ],
)
def test_conclusion_cut(text: str, cut: tuple[int, str] | None) -> None:
    steps = ["7*6=42", "1*6=6", "6+4=10"]
    assert conclusion_cut(text, "17 * 6 = 102", steps) == cut
    if cut:  # cut where the conclusion's equation starts
        assert text[: cut[0]].endswith(("So ", "So, ")) and text[cut[0]:].startswith("17")


def test_the_worked_conclusion_is_the_gold_traces() -> None:
    """A column family's gold trace concludes with its worked conclusion; other families and
    other prompts have none."""
    assert task_conclusion("procedural:subtraction", "subtraction", "What is 27 - 62?") == (
        "27 - 62 = -35")
    assert task_conclusion("self_instruct", "subtraction", "What is 27 - 62?") is None
    assert task_conclusion("procedural:addition", "addition", "What is 27 - 62?") is None
    assert task_conclusion("procedural:linear_equation", "linear_equation",
                           "Solve for x: 2x + 1 = 5") is None
    rng = random.Random(7)
    for family in ("addition", "subtraction", "multiplication"):
        for level in range(1, 6):
            for _ in range(40):
                p = procedural.MATH[family](rng, level)
                end = task_conclusion(f"procedural:{family}", family, p.prompt)
                assert p.trace.endswith(f"So {end}.")
                assert conclusion_cut(f"<think>{p.trace}</think> {p.answer}", end) is None


def test_only_procedural_tasks_of_families_with_worked_steps_have_them() -> None:
    assert task_steps("procedural:subtraction", "subtraction", "What is 81 - 2?") == ["11-2=9", "7-0=7"]
    assert task_steps("self_instruct", "subtraction", "What is 81 - 2?") is None
    assert task_steps("procedural:linear_equation", "linear_equation", "Solve for x: 2x + 1 = 5") == [
        "5 - 1 = 4", "4/2 = 2"]
    assert task_steps("procedural:count_char", "count_char", "How many") is None


def test_worked_steps_are_the_gold_traces() -> None:
    """Every column family's gold trace states its own worked steps; other families have none."""
    assert procedural.worked_steps("addition", "What is 79 + 85?") == ["9+5=14", "7+8+1=16"]
    assert procedural.worked_steps("subtraction", "What is 27 - 62?") == ["12-7=5", "5-2=3"]
    assert procedural.worked_steps("multiplication", "What is 43 * 12?") == [
        "43*2=86", "43*10=430", "86+430=516"]
    assert procedural.worked_steps("addition", "What is 79 - 85?") is None  # not its prompt
    assert procedural.worked_steps("linear_equation", "Solve for x: -3x + 18 = 0") == [
        "0 - 18 = -18", "-18/-3 = 6"]
    assert procedural.worked_steps("linear_equation", "Solve for x: 2x - 13 = -29") == [
        "-29 + 13 = -16", "-16/2 = -8"]
    assert procedural.worked_steps("fraction_addition", "What is 1/2 + 1/3?") is None
    for family in ("addition", "subtraction", "multiplication", "linear_equation"):
        rng = random.Random(5)
        for level in range(1, 6):
            for _ in range(50):
                p = procedural.MATH[family](rng, level)
                steps = procedural.worked_steps(family, p.prompt)
                # every `=` step of the trace before its conclusion, not a part of them
                claims = [s for s in p.trace.rsplit(". So ", 1)[0].rsplit(". ", 1)[-1]
                          .split(", ") if "=" in s]
                if family == "linear_equation":  # `3x = 17 - 5 = 12`: the steps after `3x =`
                    claims = [c.split(" = ", 1)[1] for c in claims]
                assert steps == claims
                text = f"<think>{p.trace}</think> {p.answer}"
                assert missing_step(text, steps) is None and worked_step_head(text, steps) is None


def _filter(rows: list[tuple[str, str, str]], cfg: config.FilterConfig) -> pl.DataFrame:
    tasks = records.frame([
        {"task_id": "add", "prompt": "What is 37 + 6?", "reference": "43",
         "family": "addition", "source": "procedural:addition"},
        {"task_id": "own", "prompt": "What is 37 + 6?", "reference": "43", "family": "addition",
         "source": "self_instruct"},  # a prompt of the same shape that no generator worked out
    ], records.TASKS)
    cands = records.frame([
        {"candidate_id": c, "task_id": t, "sample_idx": i, "completion": text,
         "reasoning": records.split_think(text)[0], "answer": records.split_think(text)[1]}
        for i, (c, t, text) in enumerate(rows)
    ], records.CANDIDATES)
    verdicts = records.frame([{"candidate_id": c, "passed": True} for c, _, _ in rows],
                             records.VERDICTS)
    return stage.filter_candidates(tasks, cands, verdicts, cfg, {})


def _drops(out: pl.DataFrame) -> dict[str, tuple]:
    return dict(zip(out["candidate_id"], zip(out["drop_reason"], out["drop_ref"], strict=True),
                    strict=True))


def test_the_filter_drops_a_trace_whose_steps_do_not_lead_to_its_answer() -> None:
    rows = [
        ("faithful", "add", "<think>7+6=13, 3+0+1=4. So 37 + 6 = 43.</think>\n43"),
        ("leap", "add", "<think>7+6=13, 3+0=3. So 37 + 6 = 43.</think>\n43"),
        ("false", "add", "<think>7+6=14, 3+0=3. So 37 + 6 = 43.</think>\n43"),
        ("not ours", "own", "<think>7+6=13, 3+0=3. So 37 + 6 = 43.</think>\n43"),
        ("after the tags", "add", "<think>Add by columns.</think>\n7+6=13, 3+0+1=4, so 43"),
    ]
    on = config.FilterConfig.model_validate({"quality": {"check_steps": True}})
    out = _filter(rows, on)
    assert _drops(out) == {
        "faithful": (None, None),
        "leap": ("missing_step", "3+0+1=4"),
        "false": ("false_arithmetic", "7+6=14"),  # the first reason wins
        "not ours": (None, None),
        "after the tags": (None, None),  # the whole completion is read, as for false steps
    }
    assert stage.funnel(out)["drop_reasons"]["missing_step"] == 1
    # off by default (its hash: tests/test_config.py)
    assert _drops(_filter(rows, config.FilterConfig()))["leap"] == (None, None)
