import polars as pl
import pytest

from thinkwheel import records
from thinkwheel.generators import selection


def _cands(spec: dict[str, int]) -> pl.DataFrame:
    """spec: task_id -> number of candidates; ids are '<task>-<i>'."""
    rows = [
        {"candidate_id": f"{t}-{i}", "task_id": t, "sample_idx": i, "completion": f"c{i}"}
        for t, n in spec.items()
        for i in range(n)
    ]
    return records.frame(rows, records.CANDIDATES)


def _verdicts(outcomes: dict[str, bool | None], verifier: str = "math") -> list[dict]:
    return [
        {"candidate_id": c, "task_id": c.rsplit("-", 1)[0], "verifier": verifier, "passed": p}
        for c, p in outcomes.items()
    ]


def test_pass_rates_counts_null_as_not_correct():
    v = records.frame(
        _verdicts({"a-0": True, "a-1": False, "a-2": None, "a-3": True, "b-0": False}),
        records.VERDICTS,
    )
    pr = selection.pass_rates(v)
    a = pr.filter(pl.col("task_id") == "a").row(0, named=True)
    assert (a["n"], a["n_passed"], a["n_failed"], a["n_unverified"]) == (4, 2, 1, 1)
    assert a["pass_rate"] == pytest.approx(0.5)
    assert pr.filter(pl.col("task_id") == "b")["pass_rate"].item() == 0.0
    assert pr.columns == list(selection.PASS_RATES)
    # nothing verified: no pass rate, not 0.0 ("never solved")
    none = selection.pass_rates(records.frame(_verdicts({"c-0": None, "c-1": None}), records.VERDICTS))
    assert none["pass_rate"].to_list() == [None] and none["n_unverified"].to_list() == [2]


def test_pass_rates_combines_verifiers_per_candidate():
    # a-0 passes math but fails the format check -> failed; a-1 passes both; a-2 math null.
    rows = _verdicts({"a-0": True, "a-1": True, "a-2": None}) + _verdicts(
        {"a-0": False, "a-1": True, "a-2": True}, verifier="think_format"
    )
    pr = selection.pass_rates(records.frame(rows, records.VERDICTS)).row(0, named=True)
    assert (pr["n"], pr["n_passed"], pr["n_failed"], pr["n_unverified"]) == (3, 1, 1, 1)


def test_select_sft_keeps_at_most_k_verified_unfiltered():
    cands = _cands({"a": 6, "b": 3})
    outcomes = {f"a-{i}": True for i in range(6)} | {"b-0": False, "b-1": None, "b-2": True}
    v = records.frame(_verdicts(outcomes), records.VERDICTS)
    filtered = records.frame(
        [
            {"candidate_id": "a-0", "task_id": "a", "drop_reason": "near_duplicate"},
            {"candidate_id": "a-1", "task_id": "a", "drop_reason": None},
        ],
        records.FILTERED,
    )
    kept = selection.select_sft(cands, v, filtered, keep_per_task=3)
    assert kept.columns == list(records.CANDIDATES)
    # a-0 filtered, then the first 3 remaining by sample_idx; b: only the passed one.
    assert sorted(kept["candidate_id"]) == ["a-1", "a-2", "a-3", "b-2"]

    d = selection.sft_decisions(cands, v, filtered, keep_per_task=3)
    reasons = dict(zip(d["candidate_id"], d["drop_reason"], strict=True))
    assert reasons["a-0"] == "near_duplicate"
    assert reasons["a-4"] == reasons["a-5"] == selection.OVER_K
    assert reasons["b-0"] == selection.FAILED
    assert reasons["b-1"] == selection.UNVERIFIED
    assert d.height == cands.height  # nothing dropped silently


def test_select_sft_candidate_without_verdict_is_not_kept():
    cands = _cands({"a": 2})
    v = records.frame(_verdicts({"a-0": True}), records.VERDICTS)
    kept = selection.select_sft(cands, v, None, keep_per_task=5)
    assert kept["candidate_id"].to_list() == ["a-0"]
    d = selection.sft_decisions(cands, v, None, keep_per_task=5)
    assert d.filter(pl.col("candidate_id") == "a-1")["drop_reason"].item() == "no_verdict"


def test_select_sft_rejects_bad_k():
    with pytest.raises(ValueError):
        selection.select_sft(_cands({"a": 1}), records.frame([], records.VERDICTS), None, 0)


def test_select_grpo_band_inclusive_and_unsampled_excluded():
    tasks = records.frame(
        [{"task_id": t, "prompt": f"p{t}", "domain": "math"} for t in "abcde"], records.TASKS
    )
    pr = records.frame(
        [
            {"task_id": "a", "pass_rate": 0.0, "n": 4},
            {"task_id": "b", "pass_rate": 0.2, "n": 5},
            {"task_id": "c", "pass_rate": 0.5, "n": 4},
            {"task_id": "d", "pass_rate": 1.0, "n": 4},
        ],
        selection.PASS_RATES,
    )
    out = selection.select_grpo(tasks, pr, (0.2, 0.8))
    assert out["task_id"].to_list() == ["b", "c"]
    assert out["pass_rate"].to_list() == [0.2, 0.5]
    assert out.columns[: len(records.TASKS)] == list(records.TASKS)
    assert selection.select_grpo(tasks, pr, (0.0, 1.0))["task_id"].to_list() == list("abcd")
    with pytest.raises(ValueError):
        selection.select_grpo(tasks, pr, (0.8, 0.2))


def test_selection_end_to_end_from_verdicts():
    cands = _cands({"a": 4, "b": 4})
    outcomes = {"a-0": True, "a-1": False, "a-2": True, "a-3": False}
    outcomes |= {f"b-{i}": True for i in range(4)}
    v = records.frame(_verdicts(outcomes), records.VERDICTS)
    tasks = records.frame([{"task_id": t, "prompt": t} for t in "ab"], records.TASKS)
    grpo = selection.select_grpo(tasks, selection.pass_rates(v), (0.2, 0.8))
    assert grpo["task_id"].to_list() == ["a"]  # b is all-pass: no GRPO signal
    sft = selection.select_sft(cands, v, None, keep_per_task=2)
    assert sorted(sft["candidate_id"]) == ["a-0", "a-2", "b-0", "b-1"]


def test_empty_verdicts_give_empty_frames():
    empty = records.frame([], records.VERDICTS)
    assert selection.pass_rates(empty).height == 0
    assert selection.select_sft(_cands({"a": 2}), empty, None, 3).height == 0
