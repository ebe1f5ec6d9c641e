"""Step repair: traces continued from their first false step, corrected."""

from __future__ import annotations

import polars as pl

from thinkwheel import records
from thinkwheel.engines.base import Completion, SamplingParams
from thinkwheel.filters.arithmetic import false_claims
from thinkwheel.generators.repair import own_verdicts, repaired


class Scripted:
    """An engine that answers a continued turn by what its script says comes after the head."""

    def __init__(self, script: dict[str, str]) -> None:
        self.script, self.calls = script, []

    def generate(self, requests, params, progress=None):
        self.calls.append(requests)
        assert params.n == 1
        return [[Completion(self.script[r[-1]["content"]], n_tokens=3)] for r in requests]


def test_a_broken_trace_is_continued_from_each_corrected_step() -> None:
    engine = Scripted({
        "<think>9+5=14": ", 7+8+1=15. So 79 + 85 = 155.</think>\n155",  # errs again
        "<think>9+5=14, 7+8+1=16": ". So 79 + 85 = 164.</think>\n164",
    })
    reqs = [[{"role": "user", "content": "What is 79 + 85?"}]]
    outs = [[Completion("<think>9+5=16, 7+8+1=15. So 79 + 85 = 155.</think>\n155"),
             Completion("<think>9+5=15, 7+8=15.</think>\n155")]]
    got = repaired(engine, reqs, outs, SamplingParams(n=2, temperature=0.8), 4)
    (c, repairs), = got.values()
    assert c.text == "<think>9+5=14, 7+8+1=16. So 79 + 85 = 164.</think>\n164"
    assert repairs == 2 and c.n_tokens == 6 and not false_claims(c.text)
    # each call continues the user's request as an assistant turn holding the corrected head
    assert [r[0][-1] for r in engine.calls] == [
        {"role": "assistant", "content": "<think>9+5=14"},
        {"role": "assistant", "content": "<think>9+5=14, 7+8+1=16"}]
    assert all(r[0][:-1] == reqs[0] for r in engine.calls)
    # one repair allowed: the trace still states a false step, so there is nothing to add
    assert repaired(Scripted(engine.script), reqs, outs, SamplingParams(n=2), 1) == {}


def test_only_tasks_whose_every_sample_is_broken_are_repaired() -> None:
    engine = Scripted({"<think>2+2=4": ". So 4.</think>\n4"})
    reqs = [[{"role": "user", "content": "q"}]] * 3
    outs = [
        [Completion("<think>2+2=5.</think>5"), Completion("<think>2+2=4.</think>4")],  # one clean
        [Completion("<think>2+2=5.</think>5"), Completion("")],  # one empty
        [Completion("<think>so 2 > 3.</think>5"), Completion("<think>2+2=5.</think>5")],
    ]
    got = repaired(engine, reqs, outs, SamplingParams(n=2), 3)
    # the third task's first sample states only an inequality: its second is the one repaired
    assert list(got) == [2] and got[2][0].text == "<think>2+2=4. So 4.</think>\n4"
    assert repaired(engine, reqs, outs, SamplingParams(n=2), 0) == {}


def test_with_worked_steps_a_true_step_off_the_algorithm_is_repaired_too() -> None:
    """`81 - 2` by a model that does not borrow: `11-2=9, 8-0=8` states nothing false, so repair
    by value corrects only the conclusion, a leap the step check drops; with the task's worked
    steps the `8-0=8` is put right as `7-0=7`. A task without worked steps is repaired by value."""
    engine = Scripted({"<think>11-2=9, 7-0=7": ". So 81 - 2 = 79.</think>\n79",
                       "<think>11-2=9, 8-0=8. So 81 - 2 = 79": ".</think>\n79"})
    reqs = [[{"role": "user", "content": "What is 81 - 2?"}]] * 2
    wrong = [Completion("<think>11-2=9, 8-0=8. So 81 - 2 = 89.</think>\n89")] * 2
    outs = [wrong, wrong]
    leap = (Completion("<think>11-2=9, 8-0=8. So 81 - 2 = 79.</think>\n79", n_tokens=3), 1)
    assert repaired(engine, reqs, outs, SamplingParams(n=2), 4) == {0: leap, 1: leap}
    assert repaired(engine, reqs, outs, SamplingParams(n=2), 4, [["11-2=9", "7-0=7"], None]) == {
        0: (Completion("<think>11-2=9, 7-0=7. So 81 - 2 = 79.</think>\n79", n_tokens=3), 1),
        1: leap}
    # a sample that states the worked steps is clean, as the step check reads it: no repair
    right = [Completion("<think>11-2=9, 7-0=7. So 81 - 2 = 79.</think>\n79"), wrong[0]]
    assert repaired(engine, reqs[:1], [right], SamplingParams(n=2), 4, [["11-2=9", "7-0=7"]]) == {}


def test_with_its_worked_conclusion_a_task_restated_wrongly_is_repaired_too() -> None:
    """17 * 6 in three steps, all right, then `So 177 * 6 = 1062`: every claim holds, so only
    the worked conclusion can see it; it is written in, its sentence ended (continued from `=
    102`, the bundled model wrote on into `1028`), and the model writes the answer."""
    steps, end = [["7*6=42", "1*6=6", "6+4=10"]], ["17 * 6 = 102"]
    head = "<think>7*6=42, 1*6=6, 6+4=10. So 17 * 6 = 102."
    engine = Scripted({head: "</think>\n102",
                       "<think>7*6=42, 1*6=6": ", 6+4=10. So 177 * 6 = 1062.</think>\n1062"})
    reqs = [[{"role": "user", "content": "What is 17 * 6?"}]]
    outs = [[Completion("<think>7*6=42, 1*6=6, 6+4=10. So 177 * 6 = 1062.</think>\n1062")]]
    assert repaired(engine, reqs, outs, SamplingParams(n=1), 4, steps) == {}  # nothing false
    got = repaired(engine, reqs, outs, SamplingParams(n=1), 4, steps, end)
    assert got == {0: (Completion(f"{head}</think>\n102", n_tokens=3), 1)}
    # the fused step first (the step before the conclusion), then the conclusion: two repairs
    outs = [[Completion("<think>7*6=42, 1*6+4=10. So 17 * 6 = 102.</think>\n102")]]
    got = repaired(engine, reqs, outs, SamplingParams(n=1), 4, steps, end)
    assert got == {0: (Completion(f"{head}</think>\n102", n_tokens=6), 2)}
    assert [r[0][-1]["content"] for r in engine.calls[-2:]] == ["<think>7*6=42, 1*6=6", head]


def test_a_false_claim_before_the_step_to_put_right_is_corrected_first() -> None:
    """A head that kept an earlier false claim could never come out clean: repair by value goes
    first, and a claim it cannot rewrite (an inequality) leaves the task unrepaired, no call."""
    steps = [["11-2=9", "7-0=7"]]
    reqs = [[{"role": "user", "content": "What is 81 - 2?"}]]
    engine = Scripted({"<think>1.5 + 1.5 = 3": ", 11-2=9, 7-0=7. So 81 - 2 = 79.</think>\n79"})
    outs = [[Completion("<think>1.5 + 1.5 = 4, 11-2=9, 8-0=8. So 81 - 2 = 89.</think>\n89")]]
    got = repaired(engine, reqs, outs, SamplingParams(n=1), 4, steps)
    assert got[0][0].text == "<think>1.5 + 1.5 = 3, 11-2=9, 7-0=7. So 81 - 2 = 79.</think>\n79"
    engine = Scripted({})
    outs = [[Completion("<think>81 = 80 + 2, so 11-2=9, 8-0=8. So 81 - 2 = 89.</think>\n89")]]
    assert repaired(engine, reqs, outs, SamplingParams(n=1), 4, steps) == {} and not engine.calls


def test_a_new_version_of_the_worked_steps_redoes_the_stages_that_read_them(monkeypatch) -> None:
    """linear_equation gained worked steps after runs were made with the step check on: their
    filter stages (and sample stages with repair_steps) must not be reused as they were."""
    from thinkwheel.config import parse_config
    from thinkwheel.flows import steps

    on = parse_config({"sampling": {"repair": 4, "repair_steps": True}})
    off = parse_config({"sampling": {"repair": 4}})
    before = steps._generation(on), steps._generation(off)
    monkeypatch.setattr(steps, "STEPS_VERSION", steps.STEPS_VERSION + 1)
    assert steps._generation(on) != before[0] and steps._generation(off) == before[1]


def test_pass_rates_leave_repaired_traces_out() -> None:
    gen = records.dumps(SamplingParams(n=1).as_dict())
    fixed = records.dumps({**SamplingParams(n=1).as_dict(), "repairs": 1})
    cands = pl.DataFrame({"candidate_id": ["a", "b"], "gen_params": [gen, fixed]})
    verdicts = pl.DataFrame({"candidate_id": ["a", "b"], "passed": [False, True]})
    assert own_verdicts(cands, verdicts)["candidate_id"].to_list() == ["a"]


def test_the_funnel_shows_repaired_candidates_only_when_repair_is_on(capsys) -> None:
    from thinkwheel.cli import print_summary
    from thinkwheel.flows.flywheel import _funnel_markdown

    row = {"round": 0, "tasks": 4, "candidates": 9, "passed": 3, "kept": 2, "sft": 2, "grpo": 1,
           "accuracy": 0.5, "clean_accuracy": 0.5}
    base = {"accuracy": 0.25, "clean_accuracy": 0.25}
    for fixed in (None, 1):
        md = _funnel_markdown([{**row, "repaired": fixed}], base).splitlines()
        assert len({line.count("|") for line in md}) == 1  # every row as wide as the header
        assert ("repaired" in md[0]) is (fixed is not None)
        assert md[-1].startswith("| 0 | 4 | 9 | " + ("1 | 3" if fixed else "3"))
        print_summary({"base": base, "rounds": [{**row, "repaired": fixed}]})
        printed = capsys.readouterr().out
        assert printed.count("┳") == (9 if fixed else 8)  # one column more


def test_a_continuation_refused_or_empty_ends_the_repair() -> None:
    """A server refuses a continuation over its context with an empty answer: the head alone
    states no false step, and was stored as a repaired trace."""

    class Refusing:
        def generate(self, requests, params, progress=None):
            return [[Completion("", finish_reason="context_length")] for _ in requests]

    outs = [[Completion("<think>9+5=16.</think>16")]]
    reqs = [[{"role": "user", "content": "What is 9 + 5?"}]]
    assert repaired(Refusing(), reqs, outs, SamplingParams(n=1), 3) == {}


def test_dpo_pairs_leave_out_repaired_traces_that_were_not_kept() -> None:
    from thinkwheel.generators.repair import dpo_candidates

    gen = records.dumps(SamplingParams(n=1).as_dict())
    fixed = records.dumps({**SamplingParams(n=1).as_dict(), "repairs": 1})
    cands = pl.DataFrame({"candidate_id": ["own", "kept", "failed"], "gen_params": [gen, fixed, fixed]})
    assert dpo_candidates(cands, ["kept"])["candidate_id"].to_list() == ["own", "kept"]


def test_repair_does_not_regenerate_the_tasks() -> None:
    """The tasks stage's key covers the sampling settings (the model writes and labels tasks
    under them); step repair only adds candidates, so turning it on keeps them."""
    from thinkwheel.config import parse_config
    from thinkwheel.flows.steps import _generation

    off, on = parse_config({}), parse_config({"sampling": {"repair": 4}})
    assert _generation(off, repair=False) == _generation(on, repair=False)
    assert _generation(off) != _generation(on)  # the sample stage re-samples


def test_the_sft_set_and_its_card_say_which_traces_were_repaired() -> None:
    from thinkwheel.curated.card import dataset_card
    from thinkwheel.curated.export import sft_frame

    task = {"task_id": "t", "round": 0, "domain": "math", "family": "addition",
            "source": "procedural:addition", "prompt": "What is 9 + 5?", "reference": "14",
            "verifier": "math"}
    gen = SamplingParams(n=1).as_dict()
    cands = records.frame([
        {"candidate_id": c, "task_id": "t", "round": 0, "sample_idx": i, "model": "m",
         "completion": text, "reasoning": text[7:-11], "answer": "14",
         "gen_params": records.dumps(g)}
        for i, (c, text, g) in enumerate([
            ("own", "<think>9+5=14</think>\n14", gen),
            ("fixed", "<think>9+5=14.</think>\n14", {**gen, "repairs": 2})])
    ], records.CANDIDATES)
    sft = sft_frame(records.frame([task], records.TASKS), cands, ["own", "fixed"], "sys")
    assert dict(zip(sft["candidate_id"], sft["repairs"], strict=True)) == {"own": 0, "fixed": 2}
    card = dataset_card(sft, sft.head(0))
    assert "1 of the 2 SFT solutions were repaired" in card
    assert "were repaired" not in dataset_card(sft.filter(pl.col("repairs") == 0), sft.head(0))
