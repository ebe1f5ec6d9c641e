"""Quality checks and the candidate filter stage: every drop explained, funnel from the column."""

from __future__ import annotations

import polars as pl

from thinkwheel import config, records
from thinkwheel.filters import quality, stage
from thinkwheel.verifiers.think_format import check_format

REASONING = (
    "First add the ones digits five plus eight which gives thirteen so write three and carry "
    "one then add the tens digits four plus seven plus the carry which gives twelve"
)


def _cands(rows: list[dict]) -> pl.DataFrame:
    df = records.frame(rows, records.CANDIDATES)
    split = [records.split_think(c) for c in df["completion"].to_list()]
    return df.with_columns(
        pl.Series("reasoning", [s[0] for s in split], dtype=pl.Utf8),
        pl.Series("answer", [s[1] for s in split], dtype=pl.Utf8),
    )


def test_quality_reasons_each_check() -> None:
    good = f"<think>{REASONING}</think>\n423"
    rows = [
        {"completion": good},
        {"completion": REASONING + "</think>\n423"},  # pre-filled <think>: fine
        {"completion": "<think>" + REASONING},
        {"completion": "423"},
        {"completion": f"<think>{REASONING}</think>\n   "},
        {"completion": f"<think>{REASONING}</think>\n" + "x" * 700},
        {"completion": "<think>" + "carry the one " * 30 + "</think>\n423"},
        {"completion": "<think>" + "\ufffd\x01" * 40 + REASONING + "</think>\n423"},
        {"completion": "<think>Let 𝑥 ≤ 3 and π ≈ 3.14, so the total is €5 × 2.</think>\n10"},
        {"completion": f"<think>{REASONING}</think> wait </think>\n423"},
        {"completion": f"<think>{REASONING} <think>again</think>\n423"},
        {"completion": f"<think>{REASONING}</think>\n423 <think>"},
        {"completion": f"Sure! <think>{REASONING}</think>\n423"},
        {"completion": f"  \n<think>{REASONING}</think>\n423"},  # leading blanks: fine
    ]
    got = quality.quality_reasons(_cands(rows), max_completion_chars=600).to_list()
    assert got == [
        None,
        None,
        "unclosed_think",
        "missing_think",
        "empty_answer",
        "too_long",
        "repetitive",
        "garbage",
        None,  # unicode maths and currency are text, not garbage
        "malformed_think",
        "malformed_think",
        "malformed_think",
        "malformed_think",
        None,
    ]
    relaxed = quality.quality_reasons(_cands(rows[3:4]), require_think=False).to_list()
    assert relaxed == [None]
    # the filter and the think_format verifier (the GRPO format reward) agree on the tags
    for row, reason in zip(rows, got, strict=True):
        if reason == "malformed_think":
            assert not check_format(row["completion"])[0]
    assert check_format(rows[-1]["completion"])[0]


def test_repeated_ngram_ratio_orders_texts() -> None:
    r = quality.repeated_ngram_ratio(pl.Series([REASONING, "a b c " * 20, "", "one two"]))
    assert r[0] == 0.0 and r[1] > 0.9 and r[2] == 0.0 and r[3] == 0.0


def test_answer_leak_needs_a_standalone_span() -> None:
    assert quality.answer_leaks("What is 345 + 78? (Hint: it is 423.)", "423")
    assert not quality.answer_leaks("What is 4230 + 1?", "423")  # near miss: part of a number
    assert not quality.answer_leaks("Solve 3x + 2 = 17", "5")  # too short to judge
    # an operand of the task's own expression is a coincidence, not the answer given away
    assert not quality.answer_leaks("Solve for x: 5x + 44 = -11", "-11")
    assert quality.answer_leaks("Solve for x: 5x + 44 = -11. The answer is -11.", "-11")
    code = "def f(x):\n    return 3 * x + 2"
    assert not quality.answer_leaks("Unlike def f(x): return 3 * x + 20, return 3x+2", code)
    assert quality.answer_leaks("Fix this:\ndef f(x):\n  return 3 * x + 2\n", code)


def _tasks() -> pl.DataFrame:
    return records.frame(
        [
            {"task_id": "t1", "prompt": "What is 345 + 78?", "reference": "423"},
            {"task_id": "t2", "prompt": "What is 12 + 500? It is 512.", "reference": "512"},
            {
                "task_id": "t3",
                "prompt": "Write a function. Check if in given list of numbers, are any two "
                "numbers closer to each other than given threshold. >>> has_close_elements("
                "[1.0, 2.0, 3.0], 0.5) False",
                "reference": "def f(): pass",
            },
        ],
        records.TASKS,
    )


def test_filter_candidates_explains_every_drop() -> None:
    alt = "Line up the numbers in columns and add the units then the tens then the hundreds"
    cands = _cands(
        [
            {
                "candidate_id": "c0",
                "task_id": "t1",
                "sample_idx": 0,
                "completion": f"<think>{REASONING} and that is all</think>\n423",
            },
            {
                "candidate_id": "c1",
                "task_id": "t1",
                "sample_idx": 1,
                "completion": f"<think>{REASONING}</think>\n423",
            },
            {
                "candidate_id": "c2",
                "task_id": "t1",
                "sample_idx": 2,
                "completion": f"<think>{alt}</think>\n423",
            },  # different path: kept
            {
                "candidate_id": "c3",
                "task_id": "t1",
                "sample_idx": 3,
                "completion": f"<think>{REASONING}</think>\n422",
            },
            {
                "candidate_id": "c4",
                "task_id": "t1",
                "sample_idx": 4,
                "completion": f"<think>{REASONING}</think>\n423",
            },
            {"candidate_id": "c5", "task_id": "t1", "sample_idx": 5, "completion": "<think>no end"},
            {
                "candidate_id": "c6",
                "task_id": "t2",
                "sample_idx": 0,
                "completion": f"<think>{REASONING}</think>\n512",
            },
            {
                "candidate_id": "c7",
                "task_id": "t3",
                "sample_idx": 0,
                "completion": f"<think>{REASONING}</think>\ndef f(): pass",
            },
        ]
    )
    verdicts = records.frame(
        [
            {"candidate_id": "c0", "passed": True},
            {"candidate_id": "c1", "passed": True},
            {"candidate_id": "c1", "passed": True, "verifier": "think_format"},
            {"candidate_id": "c2", "passed": True},
            {"candidate_id": "c3", "passed": False},
            {"candidate_id": "c4", "passed": None},  # c4 has a None verdict
            {"candidate_id": "c5", "passed": True},
            {"candidate_id": "c6", "passed": True},
            {"candidate_id": "c7", "passed": True},
        ],
        records.VERDICTS,
    )
    bench = {
        "toy": [
            "Check if in given list of numbers, are any two numbers closer to each other than "
            "given threshold. >>> has_close_elements([1.0, 2.0, 3.0], 0.5) False"
        ]
    }
    out = stage.filter_candidates(_tasks(), cands, verdicts, config.FilterConfig(), bench)
    assert out.columns == list(records.FILTERED)
    got = dict(
        zip(out["candidate_id"], zip(out["drop_reason"], out["drop_ref"], strict=True), strict=True)
    )
    assert got == {
        "c0": ("near_duplicate", "c1"),  # same path, longer: the shorter c1 survives
        "c1": (None, None),
        "c2": (None, None),
        "c3": ("not_verified", None),
        "c4": ("unverifiable", None),
        "c5": ("unclosed_think", None),
        "c6": ("answer_leak", None),
        "c7": ("contaminated", "toy:0"),
    }
    f = stage.funnel(out)
    assert [f[s] for s in stage.FUNNEL_STAGES] == [8, 6, 5, 3, 2, 2]
    assert f["contaminated_by"] == {"toy": 1}
    assert set(f["drop_reasons"]) <= set(stage.DROP_REASONS)


def test_filter_candidates_without_benchmarks_or_verdicts() -> None:
    cands = _cands(
        [
            {
                "candidate_id": "c0",
                "task_id": "t1",
                "sample_idx": 0,
                "completion": "<think>a</think>1",
            }
        ]
    )
    out = stage.filter_candidates(
        _tasks(), cands, records.frame([], records.VERDICTS), config.FilterConfig(), None
    )
    assert out["drop_reason"].to_list() == ["unverifiable"]


def test_a_task_wide_reason_marks_each_passing_sample() -> None:
    """A passing sample with a false step in a task whose answer is in its prompt was dropped as
    false_arithmetic, the task-wide answer_leak nowhere: the GRPO export, which leaves out the
    tasks dropped whole, took it in at pass rate 0.5. A benchmark copy likewise."""
    tasks = records.frame([
        {"task_id": "leak", "domain": "math", "family": "addition", "verifier": "math",
         "prompt": "Hint: the result is 157. What is 123 + 34?", "reference": "157"},
        {"task_id": "copy", "domain": "math", "family": "addition", "verifier": "math",
         "prompt": "Toy benchmark item: what is 123 plus 34, the sum of two numbers?",
         "reference": "157"},
    ], records.TASKS)
    false_step = "3+4=7, 2+3=6, 1+0=1. So 123 + 34 = 157."
    cands = _cands([{"candidate_id": f"{t}-0", "task_id": t, "reasoning": false_step, "answer": "157",
                     "completion": f"<think>{false_step}</think>\n157"} for t in ("leak", "copy")])
    verdicts = records.frame([{"candidate_id": f"{t}-0", "passed": True} for t in ("leak", "copy")],
                             records.VERDICTS)
    bench = {"toy": ["Toy benchmark item: what is 123 plus 34, the sum of two numbers?"]}
    out = stage.filter_candidates(tasks, cands, verdicts, config.FilterConfig(), bench)
    got = dict(zip(out["candidate_id"], out["drop_reason"], strict=True))
    assert got == {"leak-0": "answer_leak", "copy-0": "contaminated"}


def test_a_sample_cut_at_the_token_budget_is_no_training_example() -> None:
    """A code sample cut at max_tokens inside its fence can pass its tests (the fence need not
    close), and went into the SFT set, teaching the model to stop mid-block."""
    code = "<think>add one</think>\n```python\ndef f(x):\n    return x + 1\n"
    tasks = records.frame([{"task_id": "t", "domain": "code", "family": "f", "verifier": "code",
                            "prompt": "Write f(x) returning x + 1.", "reference": "def f(x): return x + 1"}],
                          records.TASKS)
    # so is one a hosted API's content filter stopped part-way (it was kept)
    reasons = ("length", "stop", "content_filter")
    cands = _cands([{"candidate_id": f"c{i}", "task_id": "t", "sample_idx": i, "completion": code,
                     "finish_reason": reason} for i, reason in enumerate(reasons)])
    verdicts = records.frame([{"candidate_id": f"c{i}", "passed": True} for i in (0, 1, 2)],
                             records.VERDICTS)
    out = stage.filter_candidates(tasks, cands, verdicts, config.FilterConfig())
    got = dict(zip(out["candidate_id"], out["drop_reason"], strict=True))
    assert got == {"c0": "truncated", "c1": None, "c2": "truncated"}


def test_samples_that_did_not_think_dedup_on_their_answer() -> None:
    """Empty texts never pair in MinHash, so ten copies of one bare answer all survived the
    reasoning dedup: a sample with an empty <think> is judged by its answer instead."""
    completions = [
        "<think></think>\n423",
        "<think> </think>\n\n423",
        "<think></think>\nThe answer is 423, found by adding the columns.",
        f"<think>{REASONING}</think>\n423",
        "<think></think>\n423",
    ]
    cands = _cands([
        {"candidate_id": f"c{i}", "task_id": "t1", "sample_idx": i, "completion": text}
        for i, text in enumerate(completions)
    ])  # fmt: skip
    verdicts = records.frame(
        [{"candidate_id": f"c{i}", "passed": True} for i in range(len(completions))],
        records.VERDICTS,
    )
    out = stage.filter_candidates(_tasks(), cands, verdicts, config.FilterConfig(), None)
    got = dict(zip(out["candidate_id"], zip(out["drop_reason"], out["drop_ref"], strict=True),
                   strict=True))
    assert got == {
        "c0": (None, None),
        "c1": ("near_duplicate", "c0"),
        "c2": (None, None),  # a different answer
        "c3": (None, None),  # it reasoned: judged on its reasoning, as before
        "c4": ("near_duplicate", "c0"),
    }


def test_a_task_listed_twice_is_filtered_once() -> None:
    """Tasks of two calls concatenated list a task twice: decontamination joined on it and
    raised (or, on a join that allowed it, doubled the task's candidates)."""
    bench = {"toy": [_tasks()["prompt"][2]]}
    cands = _cands([
        {"candidate_id": f"c{i}", "task_id": t, "sample_idx": i,
         "completion": f"<think>{REASONING} {i}</think>\n{a}"}
        for i, (t, a) in enumerate([("t1", "423"), ("t3", "def f(): pass"), ("t1", "423")])
    ])  # fmt: skip
    verdicts = records.frame(
        [{"candidate_id": f"c{i}", "passed": True} for i in range(3)], records.VERDICTS
    )
    once = stage.filter_candidates(_tasks(), cands, verdicts, config.FilterConfig(), bench)
    twice = stage.filter_candidates(
        pl.concat([_tasks(), _tasks()]), cands, verdicts, config.FilterConfig(), bench
    )
    assert twice.equals(once)
    assert once["drop_reason"].to_list() == [None, "contaminated", "near_duplicate"]
