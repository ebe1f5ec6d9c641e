"""Inspect: funnel, drop reasons, slices and samples computed from a hand-built round."""

from __future__ import annotations

import json

import polars as pl
import pytest
from rich.console import Console

from thinkwheel import records
from thinkwheel.curated import export
from thinkwheel.curated import inspect as ins
from thinkwheel.curated.demo import demo_run

# Two tasks, 8 candidates. (task, passed, drop_reason): worked out by hand below.
PLAN = [
    (0, True, None),
    (0, True, "dedup:minhash"),
    (0, True, "decontam:humaneval"),
    (0, False, "failed_verification"),
    (1, True, None),
    (1, None, "unverified"),
    (1, True, "cap:keep_per_task"),
    (1, False, "failed_verification"),
]
TASK_ROWS = [
    ("math", "addition", 1, "procedural:addition", "What is 2 + 2?", "4"),
    ("code", "linear_function", 2, "evol:deepen", "Write `f(x)` returning x + 1.", "def f(x): ..."),
]


def _round() -> dict[str, pl.DataFrame]:
    tasks, cands, verdicts, filtered = [], [], [], []
    for domain, family, diff, source, prompt, ref in TASK_ROWS:
        tid = records.task_id(domain, prompt, ref)
        tasks.append(
            {"task_id": tid, "round": 0, "domain": domain, "family": family, "difficulty": diff,
             "source": source, "prompt": prompt, "reference": ref, "verifier": domain}
        )  # fmt: skip
    for i, (ti, passed, drop) in enumerate(PLAN):
        tid = tasks[ti]["task_id"]
        cid = f"c{i}"
        reasoning = "r" * (10 * (i + 1))
        cands.append(
            {"candidate_id": cid, "task_id": tid, "round": 0, "sample_idx": i, "model": "m",
             "completion": f"<think>{reasoning}</think>\nans{i}", "reasoning": reasoning,
             "answer": f"ans{i}", "n_tokens": 5 + i}
        )  # fmt: skip
        reason = {True: "match", False: "mismatch [x]", None: "timeout"}[passed]
        verdicts.append({"candidate_id": cid, "task_id": tid, "verifier": "v", "passed": passed,
                         "reason": reason})  # fmt: skip
        filtered.append({"candidate_id": cid, "task_id": tid, "drop_reason": drop})
    return {
        "tasks": records.frame(tasks, records.TASKS),
        "candidates": records.frame(cands, records.CANDIDATES),
        "verdicts": records.frame(verdicts, records.VERDICTS),
        "filtered": records.frame(filtered, records.FILTERED),
    }


def test_funnel_counts_from_verdicts_and_drop_reasons():
    f = ins.funnel(_round())
    assert f["stage"].to_list() == ins.FUNNEL
    # 5 passed; among them 1 decontam, no quality drop, 1 dedup, 1 cap; kept = 2, in the
    # filters' order (a dedup drop used to be counted before a decontamination one)
    assert f["count"].to_list() == [2, 8, 5, 4, 4, 3, 2]
    assert f["pct"].to_list() == [None, 100.0, 62.5, 50.0, 50.0, 37.5, 25.0]
    assert f["pct_of_previous"].to_list()[2:] == [62.5, 80.0, 100.0, 75.0, 66.7]


def test_funnel_with_unverified_samples_kept_follows_the_filters():
    """`export.verified_only: false` keeps failed samples: the funnel counted "verified" from
    the verdicts (5) and then subtracted the filters' drops among those, so kept (6) exceeded
    deduped (3)."""
    r = _round()
    kept_all = r["filtered"].with_columns(
        pl.when(pl.col("drop_reason").is_in(["failed_verification", "unverified"]))
        .then(None).otherwise(pl.col("drop_reason")).alias("drop_reason"))
    f = ins.funnel({**r, "filtered": kept_all})
    assert f["count"].to_list() == [2, 8, 8, 7, 7, 6, 5]
    # the row says verification let everything through, and how many really passed
    passed = int(r["verdicts"]["passed"].fill_null(False).sum())
    assert f["stage"][2] == f"verified: off ({passed} passed)" and passed < 8
    assert ins.funnel(r)["stage"][2] == "verified"


def test_funnel_counts_the_tasks_that_were_sampled():
    r = _round()
    dropped = r["tasks"].head(1).with_columns(
        pl.lit("t-dup").alias("task_id"), pl.lit("near_duplicate").alias("drop_reason")
    )
    f = ins.funnel({**r, "tasks": pl.concat([r["tasks"], dropped], how="diagonal_relaxed")})
    assert f["count"].to_list()[0] == 2  # the task dropped before sampling is not one of them


def test_funnel_of_unfinished_round_has_nulls():
    r = _round()
    f = ins.funnel({"tasks": r["tasks"], "candidates": r["candidates"]})
    assert f["count"].to_list() == [2, 8, None, None, None, None, None]
    f2 = ins.funnel({**r, "filtered": r["filtered"].head(0)})
    assert f2["count"].to_list()[2:] == [5, None, None, None, None]


def test_drop_reasons_ranked_with_stage():
    d = ins.drop_reasons(ins.record_table(_round()))
    assert d.row(0, named=True) == {
        "reason": "failed_verification", "stage": "verify", "count": 2, "pct": 25.0,
    }  # fmt: skip
    got = dict(zip(d["reason"], d["stage"], strict=True))
    assert got == {
        "failed_verification": "verify", "cap:keep_per_task": "cap",
        "decontam:humaneval": "decontam", "dedup:minhash": "dedup", "unverified": "verify",
    }  # fmt: skip
    assert d["count"].sum() == 6


def test_pass_rate_slices():
    t = ins.record_table(_round())
    by_family = {r["family"]: r for r in ins.pass_rates(t, "family").iter_rows(named=True)}
    assert by_family["addition"]["pass_rate"] == 0.75
    assert by_family["linear_function"]["pass_rate"] == 0.5  # the unverified one counts as no
    assert by_family["linear_function"]["unverified"] == 1
    assert by_family["addition"]["kept"] == 1 and by_family["addition"]["tasks"] == 1
    src = ins.pass_rates(t, "source")["source"].to_list()
    assert src == ["evol:deepen", "procedural"]  # procedural:<family> folds into one
    assert ins.pass_rates(t, "difficulty")["difficulty"].to_list() == [1, 2]


def test_pass_rates_leave_repaired_candidates_out_of_the_rate():
    """A step-repaired candidate is kept data but no sample the model wrote alone: the rate is
    the model's own, the repaired one is counted beside it."""
    r = _round()
    assert "repaired" not in ins.pass_rates(ins.record_table(r), "family").columns
    bare = ins.pass_rates(ins.record_table(r).drop("gen_params"), "family").row(0, named=True)
    assert (bare["candidates"], bare["pass_rate"]) == (4, 0.75)  # no repair marks: every row
    own = r["candidates"].row(0, named=True)
    fixed = {**own, "candidate_id": "c-fixed", "sample_idx": 8,
             "gen_params": records.dumps({"n": 2, "repairs": 2})}
    r["candidates"] = pl.concat([r["candidates"], records.frame([fixed], records.CANDIDATES)])
    r["verdicts"] = pl.concat([r["verdicts"], r["verdicts"].head(1).with_columns(
        candidate_id=pl.lit("c-fixed"))])
    r["filtered"] = pl.concat([r["filtered"], r["filtered"].head(1).with_columns(
        candidate_id=pl.lit("c-fixed"), drop_reason=pl.lit(None, pl.Utf8))])
    add = ins.pass_rates(ins.record_table(r), "family").row(0, named=True)
    assert add["family"] == "addition" and add["pass_rate"] == 0.75  # as without it
    assert (add["candidates"], add["passed"], add["repaired"], add["kept"]) == (4, 3, 1, 2)


def test_length_stats():
    s = {
        (r["field"], r["subset"]): r
        for r in ins.length_stats(ins.record_table(_round())).to_dicts()
    }
    assert s[("reasoning_chars", "all")]["max"] == 80
    assert s[("reasoning_chars", "all")]["mean"] == 45.0
    # kept: c0 (10 chars) and c4 (50 chars)
    assert s[("reasoning_chars", "kept")]["mean"] == 30.0 and s[("tokens", "kept")]["n"] == 2


def test_summary_is_json_and_renders():
    rounds, manifest, evals, _ = demo_run(tasks_per_round=16, rounds=2)
    s = ins.summarize(rounds, manifest, evals)
    again = json.loads(json.dumps(s))
    assert set(again["rounds"]) == {"0", "1"}
    assert [e["round"] for e in again["eval"]] == [0, 1]
    assert again["eval"][1]["accuracy"] == evals[1]["accuracy"]
    for r in again["rounds"].values():
        counts = [x["count"] for x in r["funnel"]]
        assert counts[1] == 64 and counts[1] >= counts[2] >= counts[3] >= counts[4] >= counts[5]
        assert r["stages"]["candidates"]["count"] == 64
    console = Console(width=120, record=True)
    console.print(ins.render_summary(s))
    out = console.export_text()
    assert "decontaminated" in out and "round 1" in out and "pass rate by source" in out


def test_sample_records_filters():
    rounds = {0: _round(), 1: _round()}
    kept = ins.sample_records(rounds, n=10, reason="kept")
    assert sorted(kept["candidate_id"].to_list()) == ["c0", "c0", "c4", "c4"]
    assert set(ins.sample_records(rounds, n=10, reason="dedup", round=1)["candidate_id"]) == {"c1"}
    assert ins.sample_records(rounds, n=10, reason="verify", round=0).height == 3
    sql = ins.sample_records(rounds, n=10, where="family = 'addition' AND passed", round=0)
    assert sorted(sql["candidate_id"]) == ["c0", "c1", "c2"]
    py = ins.sample_records(rounds, n=10, where='pl.col("reasoning").str.len_chars() > 60')
    assert sorted(set(py["candidate_id"])) == ["c6", "c7"]
    two = ins.sample_records(rounds, n=2, seed=3)
    assert two.height == 2 and two.equals(ins.sample_records(rounds, n=2, seed=3))
    row = ins.sample_records(rounds, n=1, where="candidate_id = 'c3'", round=0).row(0, named=True)
    assert row["passed"] is False and row["verdict_reason"] == "mismatch [x]"
    assert row["prompt"] == "What is 2 + 2?" and row["status"] == "dropped"
    console = Console(width=100, record=True)
    console.print(ins.render_samples(pl.DataFrame([row])))
    text = console.export_text()
    assert "mismatch [x]" in text and "failed_verification" in text and "rrrrrrrrrr" in text


@pytest.mark.parametrize(
    "bad",
    [
        "__import__('os').system('true')",
        "pl.col('a').map_elements(print)",
        "pl.read_csv('/etc/passwd')",
        "pl.col('a').__class__",
        "[x for x in pl.col('a')]",
        "open('/etc/passwd')",
        "pl.col('a') ==",
    ],
)
def test_where_rejects_unsafe_or_broken(bad):
    with pytest.raises(ValueError):
        ins.where_expr(bad)


def test_where_errors_are_one_line_value_errors():
    with pytest.raises(ValueError, match="--where"):
        ins.sample_records({0: _round()}, where="no_such_column > 3")
    with pytest.raises(ValueError):
        ins.where_expr("pl.lit(3).cast(pl.Int64) + ")


def test_dataset_inspect(tmp_path):
    r = _round()
    kept = r["filtered"].filter(pl.col("drop_reason").is_null())["candidate_id"]
    sft = export.sft_frame(r["tasks"], r["candidates"], kept, "sys")
    grpo = export.grpo_frame(r["tasks"], export.task_pass_rates(r["verdicts"]))
    export.write_dataset(sft, grpo, tmp_path / "d", formats=("parquet",))
    s = ins.dataset_summary(export.read_dataset(tmp_path / "d"))
    assert s["sft"]["rows"] == 2 and s["sft"]["think_format_ok"] == 2
    assert s["sft"]["by_family"] == {"addition": 1, "linear_function": 1}
    assert s["grpo"]["rows"] == 2 and s["grpo"]["pass_rate"]["max"] == 0.75
    console = Console(width=100, record=True)
    console.print(ins.render_dataset_summary(s))
    assert "think_format_ok" in console.export_text()
    # a dataset from elsewhere with a nested tag in one row: that row is not the format
    nested = sft.with_columns(pl.col("messages").list.eval(pl.struct(
        pl.element().struct.field("role"),
        pl.element().struct.field("content").str.replace("</think>", " </think> x </think>"),
    )))
    assert ins.dataset_summary({"sft": pl.concat([sft, nested.head(1)])})["sft"][
        "think_format_ok"] == 2


def test_tasks_dropped_before_sampling_are_shown():
    """Your task file's rows dropped as contaminated or without a consensus reference have no
    candidates: they were in no view but tasks.parquet, and `--reason contaminated` said
    nothing was dropped for it."""
    r = _round()
    gone = r["tasks"].head(1).with_columns(
        pl.lit("t-gone").alias("task_id"), pl.lit("contaminated").alias("drop_reason"))
    r["tasks"] = pl.concat([r["tasks"], gone], how="diagonal_relaxed")
    s = ins.summarize({0: r})
    assert s["rounds"]["0"]["task_drops"] == [
        {"reason": "contaminated", "source": "procedural:addition", "tasks": 1}]
    console = Console(width=120, record=True)
    console.print(ins.render_summary(s))
    assert "tasks dropped before sampling" in console.export_text()
    with pytest.raises(ValueError, match="1 task\\(s\\) were dropped for it before sampling"):
        ins.sample_records({0: r}, reason="contaminated")
    assert ins.summarize({0: _round()})["rounds"]["0"]["task_drops"] == []


def test_numbers_print_without_rounding_to_a_perfect_score():
    assert [ins._fmt(v) for v in (0.9996, 0.99996, 1.0, 0.0, 0.131, 82.94, 3)] == [
        "0.9996", "0.9999", "1.0", "0.0", "0.131", "82.9", "3"]
