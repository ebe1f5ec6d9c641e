"""Evaluation metrics: greedy accuracy, unbiased pass@k, maj@k grouping, held-out split."""

from __future__ import annotations

import itertools
import json
import math

import polars as pl
import pytest
import sympy

from thinkwheel import records
from thinkwheel.config import EvalConfig
from thinkwheel.engines.base import Completion, SamplingParams, as_messages
from thinkwheel.train import evaluate as ev


class ScriptedEngine:
    """Engine protocol stand-in: per prompt, a greedy text and a list of sampled texts."""

    model_name = "scripted"

    def __init__(self, script: dict[str, tuple[str, list[str]]]):
        self.script = script
        self.calls: list[SamplingParams] = []

    def generate(self, requests, params):
        self.calls.append(params)
        out = []
        for req in requests:
            greedy, samples = self.script[as_messages(req)[-1]["content"]]
            texts = [greedy] * params.n if params.temperature == 0 else samples[: params.n]
            out.append([Completion(text=t, n_tokens=len(t.split())) for t in texts])
        return out


def fake_verify(tasks: pl.DataFrame, cands: pl.DataFrame) -> pl.DataFrame:
    """Math by sympy equality (None when unparseable), code by running its asserts."""
    by_id = {t["task_id"]: t for t in tasks.to_dicts()}
    rows = []
    for c in cands.to_dicts():
        t = by_id[c["task_id"]]
        ans = c["answer"]
        if t["domain"] == "math":
            try:
                ok = sympy.simplify(sympy.sympify(ans) - sympy.sympify(t["reference"])) == 0
            except (sympy.SympifyError, SyntaxError, TypeError):
                ok = None
        else:
            code = ev.FENCE.findall(ans)[-1] if ev.FENCE.findall(ans) else ans
            try:
                exec(code + "\n" + "\n".join(t["tests"]), {})
                ok = True
            except Exception:
                ok = False
        rows.append(
            {
                "candidate_id": c["candidate_id"],
                "task_id": c["task_id"],
                "verifier": t["verifier"],
                "passed": ok,
                "reason": {True: "ok", False: "wrong_answer", None: "unparseable"}[ok],
                "detail": f"got {ans!r}, want {t['reference']!r}",
            }
        )
        rows.append(  # an extra format verdict must not override the task's own verifier
            {
                "candidate_id": c["candidate_id"],
                "task_id": c["task_id"],
                "verifier": "think_format",
                "passed": False,
                "reason": "bad_format",
            }
        )
    return records.frame(rows, records.VERDICTS)


def task(domain, family, prompt, reference, tests=None):
    return {
        "task_id": records.task_id(domain, prompt, reference),
        "round": 0,
        "domain": domain,
        "family": family,
        "prompt": prompt,
        "reference": reference,
        "tests": tests,
        "verifier": domain,
    }


def think(answer: str) -> str:
    return f"<think>work</think>\n{answer}"


CODE_OK = "```python\ndef f(x):\n    return x + 1\n```"
CODE_BAD = "```python\ndef f(x): return x+2\n```"
CODE_BAD_REFORMATTED = (
    "```python\ndef f(x):\n    # same program, other layout\n    return x + 2\n```"
)

TASKS = records.frame(
    [
        task("math", "addition", "What is 5 + 7?", "12"),
        task("math", "fraction_addition", "What is 1/4 + 1/4?", "1/2"),
        task(
            "code",
            "linear_function",
            "Write f(x) = x + 1.",
            "def f(x): return x + 1",
            ["assert f(1) == 2"],
        ),
        task("math", "addition", "What is 1 + 1?", "2"),
    ],
    records.TASKS,
)
SCRIPT = {
    # greedy right; samples: one right, three equal wrong ones -> pass@4 = 1, maj@4 = 0
    "What is 5 + 7?": (think("12"), [think("13"), think("12"), think("13"), think("13")]),
    # greedy wrong; "2/6" and "1/3" are one answer for the verifier -> that group outvotes "1/2"
    "What is 1/4 + 1/4?": (think("1/3"), [think("1/2"), think("2/6"), think("1/3"), think("")]),
    # two correct vs two wrong that differ only in layout: tie, the first sample (wrong) wins
    "Write f(x) = x + 1.": (
        think(CODE_OK),
        [think(CODE_BAD), think(CODE_OK), think(CODE_BAD_REFORMATTED), think(CODE_OK)],
    ),
    # greedy unverifiable (None); samples mostly right -> maj 1
    "What is 1 + 1?": (think("@@"), [think("2"), think("2"), think("3"), think("@@")]),
}


def test_metrics_per_task_and_summary():
    engine = ScriptedEngine(SCRIPT)
    per_task = ev.score_tasks(engine, TASKS, fake_verify, k=4, max_tokens=32, seed=3)
    got = {r["task_id"]: r for r in per_task.to_dicts()}
    t = TASKS["task_id"].to_list()
    assert [got[i]["greedy_passed"] for i in t] == [True, False, True, False]
    assert [got[i]["n_correct"] for i in t] == [1, 1, 2, 2]
    assert [got[i]["maj_at_k"] for i in t] == [False, False, False, True]
    assert all(got[i]["pass_at_k"] == 1.0 for i in t)
    assert [p.temperature for p in engine.calls] == [0.0, 0.8]
    assert engine.calls[1].n == 4 and engine.calls[1].seed == 3

    res = ev.summarize(per_task, k=4)
    assert res["n"] == 4 and res["k"] == 4
    assert res["accuracy"] == 0.5 and res["pass_at_k"] == 1.0 and res["maj_at_k"] == 0.25
    assert res["per_domain"]["math"] == {
        "n": 3,
        "accuracy": 1 / 3,
        "clean_accuracy": 1 / 3,
        "pass_at_k": 1.0,
        "maj_at_k": 1 / 3,
    }
    assert res["per_family"]["linear_function"]["accuracy"] == 1.0
    assert res["per_family"]["addition"]["n"] == 2
    assert res["unverified"] == 1


def test_each_answer_is_kept_with_its_task_and_why_it_failed():
    """The per-task rows are what a run stores as eval-answers.parquet: the task, the greedy
    answer and its own verifier's reason (not the extra format verdict's)."""
    per_task = ev.score_tasks(ScriptedEngine(SCRIPT), TASKS, fake_verify, k=1, max_tokens=8, seed=0)
    got = {r["prompt"]: r for r in per_task.to_dicts()}
    frac = got["What is 1/4 + 1/4?"]
    assert (frac["reference"], frac["answer"], frac["passed"]) == ("1/2", "1/3", False)
    assert frac["verdict_reason"] == "wrong_answer" and "'1/3'" in frac["verdict_detail"]
    assert frac["verifiers"] == "math,think_format"
    ok = got["What is 5 + 7?"]
    assert (ok["passed"], ok["verdict_reason"], ok["reasoning"]) == (True, "ok", "work")
    unparsed = got["What is 1 + 1?"]
    assert unparsed["passed"] is None and unparsed["verdict_reason"] == "unparseable"
    assert not unparsed["greedy_passed"]


def test_an_empty_task_set_scores_to_empty_answers_and_an_n0_summary():
    """An eval file set that filters to nothing crashed on the empty candidates' missing
    `eval_kind` column, though `summarize` has an n = 0 block for it."""
    full = ev.score_tasks(ScriptedEngine(SCRIPT), TASKS, fake_verify, k=2, max_tokens=8, seed=0)
    engine = ScriptedEngine(SCRIPT)
    empty = ev.score_tasks(engine, TASKS.head(0), fake_verify, k=2, max_tokens=8, seed=0)
    assert empty.height == 0 and empty.schema == full.schema  # reads back like any answers
    res = ev.evaluate(engine, TASKS.head(0), fake_verify, k=2, max_tokens=8, seed=0)
    assert res["n"] == 0 and res["accuracy"] == 0.0 and res["per_family"] == {}
    cands = ev.eval_candidates(engine, TASKS.head(0), n=2, max_tokens=8, seed=0,
                               temperature=0.8, system_prompt=None)
    assert cands.height == 0 and "eval_kind" in cands.columns


def test_why_comes_from_the_tasks_own_verifier_without_a_task_id_column():
    def no_task_id(tasks, cands):  # a plugin's verdict frame need not repeat the task id
        return fake_verify(tasks, cands).drop("task_id")

    per_task = ev.score_tasks(ScriptedEngine(SCRIPT), TASKS, no_task_id, k=1, max_tokens=8, seed=0)
    ok = per_task.filter(pl.col("prompt") == "What is 5 + 7?").row(0, named=True)
    assert (ok["passed"], ok["verdict_reason"]) == (True, "ok")  # not think_format's bad_format


def test_inspect_eval_compares_each_answer_with_the_model_before():
    from thinkwheel.curated.inspect import BASE_ROUND, eval_samples

    def answers(script):
        return ev.score_tasks(ScriptedEngine(script), TASKS, fake_verify, k=1, max_tokens=8, seed=0)

    later = {**SCRIPT, "What is 1/4 + 1/4?": (think("1/2"), []),  # fixed
             "What is 5 + 7?": (think("11"), []),  # broken
             "What is 1 + 1?": ("<think>1+1=3, so 2</think>\n2", [])}  # fixed, by luck
    stored = {BASE_ROUND: answers(SCRIPT), 0: answers(later)}
    df, counts = eval_samples(stored, n=10)
    assert counts == {"passed": 3, "failed": 1, "lucky": 1, "truncated": 0, "unverified": 0,
                      "fixed": 2, "broken": 1}
    assert df["model"].unique().to_list() == ["round 0"]
    fixed, _ = eval_samples(stored, n=10, reason="fixed")
    assert sorted(fixed["prompt"]) == ["What is 1 + 1?", "What is 1/4 + 1/4?"]
    lucky, _ = eval_samples(stored, n=10, reason="lucky")
    assert lucky["prompt"].to_list() == ["What is 1 + 1?"]
    base, base_counts = eval_samples(stored, n=10, round=BASE_ROUND, where="family = 'addition'")
    assert base.height == 2 and base_counts["unverified"] == 1 and base_counts["fixed"] == 0
    with pytest.raises(ValueError, match="one of passed, failed"):
        eval_samples(stored, reason="wrong")
    with pytest.raises(ValueError, match="no held-out answers for round 3; stored: base, 0"):
        eval_samples(stored, round=3)

    # the report's table: per model and family, passed, fixed and broken (none for the first)
    from thinkwheel.curated.inspect import eval_changes
    from thinkwheel.curated.report import render_report

    changes = {(r["model"], r["family"]): r for r in eval_changes(stored).to_dicts()}
    assert changes[("round 0", "addition")] == {
        "model": "round 0", "family": "addition", "n": 2, "passed": 1, "fixed": 1, "broken": 1}
    assert changes[("base", "addition")]["fixed"] is None
    page = render_report({}, evals={}, answers=stored)
    assert "fixed and broken against the model before" in page and "fraction_addition" in page


def test_clean_accuracy_does_not_count_a_right_answer_reached_through_a_false_step():
    lucky = {
        "What is 5 + 7?": ("<think>5+7=13, minus 1 is 12</think>\n12", []),
        "What is 1 + 1?": ("<think>1+1=2</think>\n2", []),
    }
    adds = TASKS.filter(pl.col("family") == "addition")
    res = ev.evaluate(ScriptedEngine(lucky), adds, fake_verify, k=1, max_tokens=8, seed=0)
    assert res["accuracy"] == 1.0 and res["clean_accuracy"] == 0.5

    def last_word(tasks, cands):  # the reference as the answer's last word
        ref = dict(zip(tasks["task_id"], tasks["reference"], strict=True))
        return records.frame([{"candidate_id": c["candidate_id"], "task_id": c["task_id"],
                               "verifier": "math", "passed": c["answer"].split()[-1] == ref[c["task_id"]]}
                              for c in cands.to_dicts()], records.VERDICTS)

    moved = {"What is 5 + 7?": ("<think>Add.</think>\n5+7=13, minus 1 is 12", []),
             "What is 1 + 1?": ("1+1=3, so 2", [])}  # no tags: the whole text is the answer
    res = ev.evaluate(ScriptedEngine(moved), adds, last_word, k=1, max_tokens=8, seed=0)
    assert res["accuracy"] == 1.0 and res["clean_accuracy"] == 0.0


def test_maj_merges_wrong_math_answers_through_the_verifier():
    """Without the verifier merging 2/6 with 1/3, the tie would go to the correct first sample."""
    calls = []

    def counting_verify(tasks, cands):
        calls.append(cands.height)
        return fake_verify(tasks, cands)

    fraction = TASKS.filter(pl.col("family") == "fraction_addition")
    res = ev.evaluate(ScriptedEngine(SCRIPT), fraction, counting_verify, k=4, max_tokens=8, seed=0)
    assert res["maj_at_k"] == 0.0
    assert len(calls) == 2 and calls[1] == 1  # one pair of distinct wrong answers checked

    one_wrong = {
        "What is 1/4 + 1/4?": (think("1/2"), [think("1/2"), think("2/6"), think("5/7"), think("")])
    }
    res = ev.evaluate(ScriptedEngine(one_wrong), fraction, fake_verify, k=4, max_tokens=8, seed=0)
    assert res["maj_at_k"] == 1.0  # three singleton groups: the earliest (correct) wins


def test_k1_is_greedy_only():
    engine = ScriptedEngine(SCRIPT)
    res = ev.evaluate(
        engine, TASKS, fake_verify, k=1, max_tokens=16, seed=0, system_prompt="Be brief."
    )
    assert len(engine.calls) == 1 and engine.calls[0].temperature == 0.0
    assert res["accuracy"] == res["pass_at_k"] == res["maj_at_k"] == 0.5


def test_pass_at_k_matches_brute_force():
    for n, c, k in [(4, 1, 2), (5, 2, 3), (10, 3, 1), (6, 0, 2), (6, 6, 4), (8, 5, 4)]:
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert math.isclose(ev.pass_at_k(n, c, k), expected)
    with pytest.raises(ValueError):
        ev.pass_at_k(2, 1, 3)


def test_n_more_than_k_samples_feed_pass_at_k():
    engine = ScriptedEngine(SCRIPT)
    first = TASKS.head(1)  # samples: 13, 12, 13, 13 -> c=1 of n=4
    res = ev.evaluate(engine, first, fake_verify, k=2, n=4, max_tokens=8, seed=0)
    assert math.isclose(res["pass_at_k"], 0.5)
    assert res["maj_at_k"] == 0.0  # first two samples: 13 vs 12 tie, 13 came first


def test_candidates_follow_the_schema():
    seen = []

    def capture(tasks, cands):
        seen.append(cands)
        return fake_verify(tasks, cands)

    ev.evaluate(ScriptedEngine(SCRIPT), TASKS.head(2), capture, k=2, max_tokens=8, seed=0)
    cands = seen[0]
    assert cands.columns[: len(records.CANDIDATES)] == list(records.CANDIDATES)
    assert cands["candidate_id"].n_unique() == cands.height == 2 * (1 + 2)
    row = cands.row(0, named=True)
    assert row["reasoning"] == "work" and row["answer"] == "12" and row["model"] == "scripted"


def test_heldout_split_is_fixed_by_its_seed():
    cfg = EvalConfig(per_family=3)
    a, b = ev.heldout_tasks(cfg), ev.heldout_tasks(cfg)
    assert a.equals(b) and a.height == 3 * a["family"].n_unique() and a["family"].n_unique() >= 7
    other = ev.heldout_tasks(EvalConfig(per_family=3, seed=1234))
    assert set(a["prompt"]) != set(other["prompt"])
    assert set(a["domain"]) == {"math", "code"}


def test_the_bundled_models_corpus_solves_no_held_out_math_task():
    """The split's math half is what the flywheel's gains are measured on: no pretraining
    conversation solves one of its tasks. (Its code half is in the corpus under other
    function names, every form of it: README, "What the held-out split measures".)"""
    from thinkwheel import pretrain
    from thinkwheel.config import BUNDLED_HELD_OUT
    from thinkwheel.generators.procedural import canonical

    held = ev.heldout_tasks(EvalConfig(per_family=BUNDLED_HELD_OUT))
    math_forms = {canonical(p) for p, d in zip(held["prompt"], held["domain"], strict=True) if d == "math"}
    convs = pretrain.build_corpus(3000, 0, set(held["prompt"]))
    solved = [c for c in convs if c[-1]["content"].startswith("<think>")
              and canonical(next(m["content"] for m in c if m["role"] == "user")) in math_forms]
    assert len(math_forms) == 200 and solved == []


def test_real_verifiers_when_present():
    verifiers = pytest.importorskip("thinkwheel.verifiers")
    verify_frame = getattr(verifiers, "verify_frame", None)
    if verify_frame is None:
        pytest.skip("thinkwheel.verifiers.verify_frame not written yet")
    math_only = TASKS.filter(pl.col("domain") == "math")
    res = ev.evaluate(
        ScriptedEngine(SCRIPT),
        math_only,
        lambda t, c: verify_frame(t, c),
        k=4,
        max_tokens=8,
        seed=0,
    )
    assert math.isclose(res["accuracy"], 1 / 3) and res["pass_at_k"] == 1.0


def test_with_the_hf_engine_on_a_tiny_model(tmp_path):
    """The real engine path: greedy + sampled generation from a tiny random Llama."""
    pytest.importorskip("thinkwheel.engines.hf")
    from thinkwheel.engines.hf import HFEngine

    try:
        from test_train_sft import TEMPLATE_MARKED, build_tiny_model
    except ImportError:
        from tests.test_train_sft import TEMPLATE_MARKED, build_tiny_model

    engine = HFEngine(build_tiny_model(tmp_path, TEMPLATE_MARKED), batch_size=8)
    tasks = TASKS.head(2)
    per_task = ev.score_tasks(engine, tasks, fake_verify, k=2, max_tokens=6, seed=0)
    assert per_task["n_samples"].to_list() == [2, 2]
    assert per_task["greedy_completion"].str.len_chars().min() > 0
    res = ev.summarize(per_task, k=2)
    assert set(res) >= {"accuracy", "per_family", "per_domain", "n", "pass_at_k", "maj_at_k", "k"}
    assert res["n"] == 2 and res["k"] == 2 and set(res["per_domain"]) == {"math"}


def test_sampling_stop_reaches_the_engine_in_sampling_and_eval(tmp_path):
    """`sampling.stop` ends generations in sampling, consensus and eval alike. The eval stage
    re-runs when it is set, or when the system prompt changes."""
    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.config import RunConfig, parse_config
    from thinkwheel.flows import steps
    from thinkwheel.store import RunStore

    class Recording:
        model_name = "rec"

        def __init__(self):
            self.params: list[SamplingParams] = []

        def generate(self, requests, params, progress=None):
            self.params.append(params)
            return [[Completion(text="<think>1+1=2</think>\n2")] * params.n for _ in requests]

    small = {"eval": {"families": ["addition"], "per_family": 3}}
    plain, stopped = parse_config(small), parse_config({**small, "sampling": {"stop": ["\nuser"]}})
    assert steps.sampling_params(stopped, 1).stop == ("\nuser",)
    assert steps.sampling_params(plain, 1).stop == ()
    store = RunStore.create(tmp_path / "run", RunConfig(name="s"))
    engine = Recording()
    steps.evaluate(store, plain, "base", str(MODEL_DIR), lambda _: engine)
    steps.evaluate(store, plain, "base", str(MODEL_DIR), lambda _: engine)  # done: skipped
    assert [p.stop for p in engine.params] == [()]
    steps.evaluate(store, stopped, "base", str(MODEL_DIR), lambda _: engine)
    assert [p.stop for p in engine.params] == [(), ("\nuser",)]
    # the eval prompts carry the system prompt: a new one is a new eval, it was skipped
    prompted = stopped.model_copy(deep=True)
    prompted.export.system_prompt = "Answer in French."
    steps.evaluate(store, prompted, "base", str(MODEL_DIR), lambda _: engine)
    assert len(engine.params) == 3


def test_a_runs_eval_keeps_its_answers_and_inspect_shows_them(tmp_path):
    """`round-k/eval-answers.parquet` (eval-base-answers.parquet for the base model) is written
    with eval.json; an eval without it is re-run, and `inspect --eval` reads it."""
    from typer.testing import CliRunner

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.cli import app
    from thinkwheel.config import RunConfig, parse_config
    from thinkwheel.flows import steps
    from thinkwheel.store import RunStore

    class Two:
        model_name = "two"
        calls = 0

        def generate(self, requests, params, progress=None):
            Two.calls += 1
            return [[Completion(text="<think>1+1=2</think>\nThe answer is $\\boxed{2}$.")]
                    for _ in requests]

    cfg = parse_config({"eval": {"families": ["addition"], "per_family": 4}})
    store = RunStore.create(tmp_path / "run", RunConfig(name="a"))
    result = steps.evaluate(store, cfg, "base", str(MODEL_DIR), lambda _: Two())
    answers = pl.read_parquet(store.root / "eval-base-answers.parquet")
    assert answers.height == 4 == result["n"]
    assert answers["answer"].to_list() == ["The answer is $\\boxed{2}$."] * 4
    assert set(answers["verdict_reason"]) <= {"wrong_answer", "ok"}
    assert answers["greedy_passed"].mean() == result["accuracy"]
    steps.evaluate(store, cfg, "base", str(MODEL_DIR), lambda _: Two())
    assert Two.calls == 1  # reused
    (store.root / "eval-base-answers.parquet").unlink()  # a run from before answers were kept
    steps.evaluate(store, cfg, "base", str(MODEL_DIR), lambda _: Two())
    assert Two.calls == 2 and (store.root / "eval-base-answers.parquet").is_file()

    runner = CliRunner()
    r = runner.invoke(app, ["inspect", str(store.root), "--eval", "--round", "-1", "--reason",
                            "failed", "--samples", "2"])
    assert r.exit_code == 0, r.output
    failed = int((~answers["greedy_passed"]).sum())
    assert f"failed {failed}" in r.output and "base · held-out · addition" in r.output
    assert "failed by math (wrong_answer)" in r.output and "detail: 2" in r.output
    r = runner.invoke(app, ["inspect", str(store.root), "--eval", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["counts"]["passed"] == int(answers["greedy_passed"].sum())
    r = runner.invoke(app, ["inspect", str(store.root), "--eval", "--round", "2"])
    assert r.exit_code != 0 and "no held-out answers for round 2; stored: base" in r.output
