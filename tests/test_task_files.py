"""Tasks you bring (`generate.tasks`, `eval.tasks`): reading, checks, and the flow's use of them."""

import json
from pathlib import Path

import polars as pl
import pytest

from thinkwheel.config import GenerateTasksConfig, TaskFilesConfig, parse_config
from thinkwheel.generators.seeds import seed_pool
from thinkwheel.generators.task_files import draw, load_task_files, read_rows
from thinkwheel.store import RunStore

try:  # the CLI runner helper lives with the CLI tests
    from test_cli import run_config
except ImportError:  # tests/ imported as a package
    from tests.test_cli import run_config

ROWS = [
    {"question": "What is 12 + 30?", "answer": 42, "id": "q1"},
    {"question": "What is 7 * 6?", "answer": "42", "id": "q2"},
    {"question": "What is 15 + 17?", "id": "q3"},  # no answer: sparse, not an error
    {"question": "Write a Python function `double(x)` that returns 2*x.",
     "tests": ["assert double(2) == 4"], "source": "my-crawl"},
]
MAP = {"prompt": "question", "reference": "answer"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_reads_the_same_rows(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": "What is 1 + 2?", "reference": "3"}, {"prompt": "What is 2 + 2?", "reference": "4"}]
    _jsonl(tmp_path / "t.jsonl", rows)
    (tmp_path / "t.json").write_text(json.dumps(rows))
    pl.DataFrame(rows).write_parquet(tmp_path / "t.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for name in ("t.jsonl", "t.json", "t.parquet", "ds"):
        assert read_rows(tmp_path / name) == rows, name
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="holds splits train, test: give .*dd/<split>"):
        read_rows(tmp_path / "dd")
    assert read_rows(tmp_path / "dd" / "test") == rows
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_rows(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="expected one of"):
        read_rows(_jsonl(tmp_path / "t.csv", rows))


def test_columns_map_domains_and_verifiers_are_inferred_and_nothing_is_lost(tmp_path):
    f = _jsonl(tmp_path / "mine.jsonl", ROWS)
    t = load_task_files(TaskFilesConfig(paths=[str(f)], columns=MAP))
    assert t["prompt"].to_list() == [r["question"] for r in ROWS]
    assert t["reference"].to_list() == ["42", "42", None, None]  # numbers become strings
    assert t["domain"].to_list() == ["math", "math", "math", "code"]
    assert t["verifier"].to_list() == ["math", "math", "math", "code"]
    assert set(t["family"]) == {"mine"} and set(t["source"]) == {"seed"}
    assert t["tests"][3].to_list() == ["assert double(2) == 4"]
    metas = [json.loads(m) for m in t["meta"]]
    assert metas[0] == {"id": "q1"} and metas[3] == {"source": "my-crawl"}
    with pytest.raises(ValueError, match=r"mine.jsonl: no column 'answr' \(mapped to 'reference'\)"):
        load_task_files(TaskFilesConfig(paths=[str(f)], columns={"prompt": "question",
                                                                 "reference": "answr"}))


def test_an_rl_set_in_verl_format_reads_with_a_column_map(tmp_path):
    """DAPO-Math / Eurus-style rows: the prompt as chat turns, the answer nested in
    reward_model.ground_truth. System text stays in front of the question."""
    rows = [
        {"data_source": "dapo", "prompt": [{"role": "user", "content": "What is 6 * 7?"}],
         "reward_model": {"style": "rule", "ground_truth": "42"}},
        {"data_source": "eurus", "prompt": [
            {"role": "system", "content": "Put the final answer after 'Answer:'."},
            {"role": "user", "content": "What is 2 + 3?"}],
         "reward_model": {"style": "rule", "ground_truth": 5}},
    ]
    f = _jsonl(tmp_path / "rl.jsonl", rows)
    cfg = TaskFilesConfig(paths=[str(f)], columns={"reference": "reward_model.ground_truth"})
    t = load_task_files(cfg)
    assert t["prompt"].to_list() == [
        "What is 6 * 7?", "Put the final answer after 'Answer:'.\n\nWhat is 2 + 3?"
    ]
    assert t["reference"].to_list() == ["42", "5"] and t["verifier"].to_list() == ["math", "math"]
    assert json.loads(t["meta"][1])["data_source"] == "eurus"
    typo = TaskFilesConfig(paths=[str(f)], columns={"reference": "reward_model.truth"})
    with pytest.raises(ValueError, match=r"no column 'reward_model.truth' \(mapped to 'reference'\)"):
        load_task_files(typo)


def test_bad_rows_and_unknown_verifiers_fail_when_read(tmp_path):
    def load(rows, **kw):
        return load_task_files(TaskFilesConfig(paths=[str(_jsonl(tmp_path / "t.jsonl", rows))]), **kw)

    with pytest.raises(ValueError, match="t.jsonl: row 2 has no prompt"):
        load([{"prompt": "What is 1 + 1?"}, {"prompt": "  "}])
    with pytest.raises(ValueError, match="t.jsonl: row 1: cannot infer a domain"):
        load([{"prompt": "Tell me a story."}])
    with pytest.raises(ValueError, match=r"row 1: prompt turns are \['user', 'assistant', 'user'\]"):
        load([{"prompt": [{"role": "user", "content": "What is 1 + 1?"},
                          {"role": "assistant", "content": "2"},
                          {"role": "user", "content": "And 2 + 2?"}]}])
    with pytest.raises(ValueError, match="row 1: prompt is a list but not of"):
        load([{"prompt": ["What is 1 + 1?"]}])
    with pytest.raises(ValueError, match="row 1: prompt is a int, not text"):
        load([{"prompt": 7}])
    with pytest.raises(ValueError, match="row 1: difficulty must be an integer, got 'hard'"):
        load([{"prompt": "What is 1 + 1?", "difficulty": "hard"}])
    io = load([{"prompt": "Write a Python program that doubles a number read from stdin.",
                "tests": [{"stdin": "2\n", "stdout": "4\n"}]}])  # an stdin/stdout test, as JSON
    assert json.loads(io["tests"][0][0]) == {"stdin": "2\n", "stdout": "4\n"}
    # rows of the wrong shape name their row (1 is the file's first line), not a traceback
    with pytest.raises(ValueError, match=r"row 2 is a list; a task is an object"):
        load([{"prompt": "What is 1 + 1?"}, [1, 2]])
    with pytest.raises(ValueError, match="row 1: meta is a list, not an object"):
        load([{"prompt": "What is 1 + 1?", "meta": [1, 2]}])
    with pytest.raises(ValueError, match="row 1: round must be an integer, got 'train'"):
        load([{"prompt": "What is 1 + 1?", "round": "train"}])
    with pytest.raises(ValueError, match="row 1: reference is a dict; give the answer as text"):
        load([{"prompt": "What is 1 + 1?", "reference": {"value": 2}}])
    # tests stored as a JSON string (many code sets): a list, not one test that asserts nothing
    code = "Write a Python function f(x) that returns x + 1."
    got = load([{"prompt": code, "tests": '["assert f(1) == 2", "assert f(2) == 3"]'}])
    assert got["tests"][0].to_list() == ["assert f(1) == 2", "assert f(2) == 3"]
    with pytest.raises(ValueError, match=r"row 1: the test 'f\(1\) == 2' is a comparison that asserts"):
        load([{"prompt": code, "tests": ["f(1) == 2"]}])
    with pytest.raises(ValueError, match="domain 'prose' has no built-in verifier"):
        load([{"prompt": "Tell me a story.", "domain": "prose"}])
    with pytest.raises(ValueError, match="unknown verifier 'nope'; known: code, math"):
        load([{"prompt": "What is 1 + 1?", "verifier": "nope"}])
    with pytest.raises(ValueError, match="cannot import 'no_such_module_tw'"):
        load([{"prompt": "What is 1 + 1?", "verifier": "no_such_module_tw:check"}])
    # a held-out row must be verifiable as given; a training row may get a reference by consensus
    rows = [{"prompt": "What is 1 + 1?", "reference": "2"}, {"prompt": "What is 3 + 1?"}]
    assert load(rows).height == 2
    with pytest.raises(ValueError, match=r"1 held-out row\(s\) cannot be verified .* row 2"):
        load(rows, held_out=True)
    plugin = [{"prompt": "Tell me a story.", "domain": "prose", "verifier": "think_format"}]
    assert load(plugin, held_out=True)["verifier"].to_list() == ["think_format"]
    # file-wide defaults fill only the rows that do not say
    rows = [{"prompt": "Tell me a story."}, {"prompt": "Sing.", "domain": "song", "verifier": "math"}]
    t = load_task_files(TaskFilesConfig(paths=[str(_jsonl(tmp_path / "s.jsonl", rows))],
                                        domain="prose", verifier="think_format"))
    assert t["domain"].to_list() == ["prose", "song"]
    assert t["verifier"].to_list() == ["think_format", "math"]


def test_a_file_is_parsed_once_while_unchanged_and_read_again_once_changed(tmp_path, monkeypatch):
    """A run reads your files before it starts and in every round's stages: a large set is
    parsed once, each call still gets its own round, and an edited file is read anew."""
    import os

    from thinkwheel.flows.steps import task_files as read_cached
    from thinkwheel.generators import task_files

    f = _jsonl(tmp_path / "t.jsonl", ROWS[:2] + [{"question": "What is 1 + 1?", "answer": 2,
                                                  "round": 7}])
    cfg = TaskFilesConfig(paths=[str(f)], columns=MAP)
    parsed = []
    monkeypatch.setattr(task_files, "seed_pool",
                        lambda rows, **kw: parsed.append(1) or seed_pool(rows, **kw))
    first = read_cached(cfg, 0)
    again = read_cached(cfg, 3)
    assert len(parsed) == 1 and first.drop("round").equals(again.drop("round"))
    assert first["round"].to_list() == [0, 0, 7] and again["round"].to_list() == [3, 3, 7]
    _jsonl(f, ROWS[:1])
    os.utime(f, ns=(1, 1))  # a new mtime even on a coarse clock
    assert read_cached(cfg, 3)["prompt"].to_list() == [ROWS[0]["question"]]
    assert len(parsed) == 2
    f.unlink()
    with pytest.raises(ValueError, match="no such file"):
        read_cached(cfg, 3)


def test_per_round_draw_is_seeded_fresh_each_round_and_keeps_file_order():
    t = pl.DataFrame({"task_id": [f"t{i:03d}" for i in range(200)]})
    assert draw(t, None, 0, 3).equals(t) and draw(t, 500, 0, 3).equals(t)
    r0, r1 = draw(t, 50, 0, 0), draw(t, 50, 0, 1)
    assert r0.height == r1.height == 50 and r0.equals(draw(t, 50, 0, 0))
    assert r0["task_id"].to_list() != r1["task_id"].to_list()
    assert r0["task_id"].to_list() == sorted(r0["task_id"].to_list())


def test_the_tasks_stage_uses_your_tasks_and_never_trains_on_your_eval_set(tmp_path):
    """Real procedural-shaped rows through the flow's tasks stage: templated rows are not
    near-deduped, a copy of an eval row is dropped with the eval item as drop_ref, and the eval
    split is the eval file only (families: [])."""
    from thinkwheel.flows.steps import heldout, make_tasks

    train = [{"prompt": f"What is {a} + {a + 1}?", "reference": str(2 * a + 1)} for a in range(10, 40)]
    short = {"prompt": "Double 21.", "reference": "42", "domain": "math"}  # too short to decontaminate
    train.append(short)
    test = [{"prompt": "What is 21 + 22?", "reference": "43", "family": "sums"},
            {"prompt": "What is 9 - 3?", "reference": "6"}, short]
    cfg = parse_config({
        "generate": {"tasks": {"paths": [str(_jsonl(tmp_path / "train.jsonl", train))]},
                     "procedural": {"per_family": 0}},
        "eval": {"families": [], "tasks": {"paths": [str(_jsonl(tmp_path / "test.jsonl", test))]}},
    })
    held = heldout(cfg)
    assert held["family"].to_list() == ["sums", "test", "test"]
    store = RunStore.create(tmp_path / "run", cfg)
    tasks = make_tasks(store, cfg, 0, "unused", lambda m: pytest.fail("no engine needed"))
    kept = tasks.filter(pl.col("drop_reason").is_null())
    assert kept.height == 29 and set(kept["source"]) == {"seed"}
    for prompt in ("What is 21 + 22?", "Double 21."):  # in the table, with the reason
        dropped = tasks.filter(pl.col("prompt") == prompt)
        assert dropped["drop_reason"].to_list() == ["contaminated"]
        assert dropped["drop_ref"][0].startswith("heldout:")


def test_rows_without_a_reference_get_one_by_consensus_on_the_model(tmp_path):
    """The bundled model labels an unlabeled row by majority vote (or drops it with a reason);
    labeled rows pass through untouched and cost no sampling."""
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.flows.steps import make_tasks
    from thinkwheel.generators.task_files import unverifiable

    rows = [{"prompt": "What is 3 + 4?", "reference": "7"}, {"prompt": "What is 2 + 5?"},
            {"prompt": "What is 60 + 8?"}]
    cfg = parse_config({
        "generate": {"tasks": GenerateTasksConfig(paths=[str(_jsonl(tmp_path / "t.jsonl", rows))])
                     .model_dump(), "procedural": {"per_family": 0},
                     "consensus": {"samples": 6}},
        "sampling": {"max_tokens": 64},
    })
    store = RunStore.create(tmp_path / "run", cfg)
    engines = []
    tasks = make_tasks(store, cfg, 0, "bundled-path",
                       lambda m: engines.append(HFEngine.load(_model())) or engines[-1])
    assert len(engines) == 1
    by_prompt = {r["prompt"]: r for r in tasks.to_dicts()}
    assert by_prompt["What is 3 + 4?"]["reference"] == "7"
    for p in ("What is 2 + 5?", "What is 60 + 8?"):
        r = by_prompt[p]  # labeled by agreement, or kept in the table with why not
        if r["drop_reason"] is None:
            assert r["reference"] is not None, r
        else:
            assert r["drop_reason"] in ("low_agreement", "tied_answers", "no_answers"), r
    assert tasks.filter(pl.col("drop_reason").is_null()).filter(unverifiable()).height == 0


def _model() -> str:
    from thinkwheel.assets import model_path

    return str(model_path())


def test_run_fails_before_starting_on_a_task_file_it_cannot_use(tmp_path, monkeypatch):
    import thinkwheel.flows.flywheel as fw

    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 1 + 1?", "verifier": "mine:check"}])
    _jsonl(tmp_path / "e.jsonl", [{"prompt": "What is 2 + 2?"}])

    def run_with(text: str):
        return run_config(text, tmp_path)

    code, out = run_with("generate: {tasks: {paths: [missing.jsonl]}}\n")
    # the key that names the file, and the file once ("missing.jsonl: missing.jsonl: ..." before)
    assert code == 2 and "error: generate.tasks: missing.jsonl: no such file or folder" in out
    code, out = run_with("generate: {tasks: {paths: [t.jsonl]}}\n")
    assert code == 2 and "t.jsonl: verifier 'mine:check': cannot import 'mine'" in out
    code, out = run_with("eval: {tasks: {paths: [e.jsonl]}}\n")
    assert code == 2 and "eval.tasks: e.jsonl: 1 held-out row(s) cannot be verified" in out
    code, out = run_with("verify: {plugins: ['json:no_such_fn']}\n")
    assert code == 2 and "verify.plugins: verifier 'json:no_such_fn': 'json' has no 'no_such_fn'" in out
    # Self-Instruct with nothing to start from, or a template that is not there: after the
    # base model's eval, minutes in; Evol-Instruct without seeds made nothing, silently
    for gen in ("self_instruct", "evol_instruct"):
        code, out = run_with(f"generate: {{procedural: {{per_family: 0}}, {gen}: {{enabled: true}}}}\n")
        assert code == 2 and f"generate.{gen} needs seed tasks to start from" in out, out
    code, out = run_with("generate: {self_instruct: {enabled: true, template: nope.txt}}\n")
    assert code == 2 and "generate.self_instruct.template: nope.txt: no such file" in out, out


def test_consensus_labelling_resumes_after_a_crash(tmp_path):
    """Killed after its first shard, the labelling of unlabeled rows restarts where it stopped:
    the re-run asks the model only about the rows it had not labelled, and ends as a run that
    never crashed does."""
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.flows.steps import make_tasks

    rows = [{"prompt": f"What is {a} + 2?"} for a in range(10, 15)]
    f = _jsonl(tmp_path / "t.jsonl", rows)
    cfg = parse_config({
        "generate": {"tasks": {"paths": [str(f)]}, "procedural": {"per_family": 0},
                     "consensus": {"samples": 4}},
        "sampling": {"max_tokens": 48, "shard_size": 2},
    })
    model = HFEngine.load(_model())
    asked: list[str] = []

    class Crashing:
        model_name = "m"

        def __init__(self, calls_before_crash: int | None):
            self.left = calls_before_crash

        def generate(self, requests, params):
            if self.left == 0:
                raise RuntimeError("killed")
            self.left = None if self.left is None else self.left - 1
            asked.extend(r[-1]["content"] for r in requests)
            return model.generate(requests, params)

    store = RunStore.create(tmp_path / "run", cfg)
    with pytest.raises(RuntimeError, match="killed"):
        make_tasks(store, cfg, 0, "m", lambda m: Crashing(1))
    assert sorted(set(asked)) == ["What is 10 + 2?", "What is 11 + 2?"]  # shard 0, on disk
    asked.clear()
    resumed = make_tasks(store, cfg, 0, "m", lambda m: Crashing(None))
    assert not (tmp_path / "run" / "round-0" / "shards").exists()  # labels stored: no copy left
    assert sorted(set(asked)) == ["What is 12 + 2?", "What is 13 + 2?", "What is 14 + 2?"]
    fresh = make_tasks(RunStore.create(tmp_path / "fresh", cfg), cfg, 0, "m",
                       lambda m: Crashing(None))
    cols = ["task_id", "prompt", "reference", "drop_reason"]
    assert resumed.select(cols).sort("prompt").equals(fresh.select(cols).sort("prompt"))
    assert resumed.height == 5


def test_your_rows_through_verify_filter_and_export(tmp_path):
    """The stages after sampling on your rows, for real: the plugin named by a row judges it,
    the curated sets carry your family and meta, and the card does not claim a license for
    your data (apache-2.0 is for data our generators made) unless you state one."""
    import sys
    import types

    import yaml

    from thinkwheel import records
    from thinkwheel.flows.steps import export, filter_and_select, make_tasks, verify

    mod = types.ModuleType("tw_kw_plugin")
    mod.has_keyword = lambda completion, task: json.loads(task["meta"])["keyword"] in completion
    sys.modules["tw_kw_plugin"] = mod
    rows = [{"prompt": "What is 10 + 32?", "reference": "42", "id": "m1"},
            {"prompt": "Name a red fruit.", "domain": "text", "keyword": "apple",
             "verifier": "tw_kw_plugin:has_keyword"}]
    f = _jsonl(tmp_path / "mine.jsonl", rows)
    try:
        for extra, license in (({}, "other"), ({"export": {"license": "cc-by-4.0"}}, "cc-by-4.0")):
            cfg = parse_config({"generate": {"tasks": {"paths": [str(f)]},
                                             "procedural": {"per_family": 0}}, **extra})
            store = RunStore.create(tmp_path / license, cfg)
            tasks = make_tasks(store, cfg, 0, "m", lambda m: pytest.fail("no engine needed"))
            answers = {"What is 10 + 32?": ["42", "41"], "Name a red fruit.": ["an apple", "a pear"]}
            cands = records.frame(
                [{"candidate_id": f"{t['task_id']}-{i}", "task_id": t["task_id"], "round": 0,
                  "sample_idx": i, "model": "m", "completion": f"<think>{a}</think>\n{a}",
                  "reasoning": a, "answer": a, "finish_reason": "stop"}
                 for t in tasks.to_dicts() for i, a in enumerate(answers[t["prompt"]])],
                records.CANDIDATES)
            store.write_table(0, "candidates", cands)
            verdicts = verify(store, cfg, 0)
            assert verdicts.sort("candidate_id")["passed"].to_list().count(True) == 2
            filter_and_select(store, cfg, 0)
            export(store, cfg, 0, "m")
            cur = store.round_dir(0) / "curated"
            sft = pl.read_parquet(cur / "sft.parquet")
            assert sorted(sft["family"]) == ["mine", "mine"] and set(sft["source"]) == {"seed"}
            grpo = pl.read_parquet(cur / "grpo.parquet")
            assert {json.loads(m).get("keyword") for m in grpo["meta"]} == {"apple", None}
            card = yaml.safe_load((cur / "README.md").read_text().split("---")[1])
            assert card["license"] == license
    finally:
        del sys.modules["tw_kw_plugin"]


def test_outputs_cut_at_the_token_budget_are_counted_and_reported(tmp_path):
    """The bundled model, for real, with a 4-token budget: every candidate and greedy answer is
    cut off. The manifest and eval.json count them and the run says to raise the budget,
    since otherwise the budget, not the model, sets the numbers."""
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.flows.progress import Silent, use_reporter
    from thinkwheel.flows.steps import evaluate, make_tasks, sample

    class Recorder(Silent):
        def __init__(self):
            self.messages: list[str] = []

        def message(self, text: str) -> None:
            self.messages.append(text)

    def rows(*xs):
        return [{"prompt": f"What is {a} + 5?", "reference": str(a + 5)} for a in xs]

    cfg = parse_config({
        "generate": {"tasks": {"paths": [str(_jsonl(tmp_path / "t.jsonl", rows(11, 12, 13)))]},
                     "procedural": {"per_family": 0}},
        "sampling": {"n": 2, "max_tokens": 4},
        "eval": {"families": [], "max_tokens": 4,
                 "tasks": {"paths": [str(_jsonl(tmp_path / "e.jsonl", rows(21, 22, 23)))]}},
    })
    store = RunStore.create(tmp_path / "run", cfg)
    engine = HFEngine.load(_model())
    with use_reporter(Recorder()) as rec:
        make_tasks(store, cfg, 0, "m", lambda m: engine)
        cands = sample(store, cfg, 0, _model(), lambda m: engine)
        result = evaluate(store, cfg, "base", _model(), lambda m: engine)
    assert cands.height == 6 and store.stage_entry(0, "sample")["truncated"] == 6
    assert result["truncated"] == result["n"] == 3
    text = " ".join(rec.messages)
    assert "round 0: candidates: 6 of 6 (100%) stopped at sampling.max_tokens (4 tokens)" in text
    assert "base model: held-out answers: 3 of 3 (100%) stopped at eval.max_tokens" in text


def test_rows_merged_or_split_without_an_error_are_said(tmp_path, monkeypatch):
    """A row given twice is one task, and one prompt with two references two tasks: both
    happened without a word (14 rows in, 13 anywhere)."""
    import thinkwheel.flows.flywheel as fw
    from thinkwheel.generators.task_files import load_task_files

    rows = [{"prompt": "What is 1 + 1?", "reference": "2"}, {"prompt": "What is 1 + 1?", "reference": "2"},
            {"prompt": "What is 2 + 2?", "reference": "4"}, {"prompt": "What is 2 + 2?", "reference": "5"}]
    f = _jsonl(tmp_path / "t.jsonl", rows)
    notes: list[str] = []
    assert load_task_files(TaskFilesConfig(paths=[str(f)]), notes=notes).height == 3
    assert notes[0].startswith("1 row(s) repeat an earlier row")
    assert notes[1].startswith("1 prompt(s) come with different references") and "2 + 2" in notes[1]

    def interrupted(cfg, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(fw, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    code, out = run_config("generate: {tasks: {paths: [t.jsonl]}}\n", tmp_path)
    assert code == 130 and "generate.tasks: 1 row(s) repeat an earlier row" in out


def test_the_tasks_stage_says_why_it_made_fewer_tasks_than_asked(tmp_path):
    """The default run asked 3,456 tasks and made 3,357 in silence: families with too few
    distinct tasks outside the held-out split, and tasks two difficulties both drew."""
    from thinkwheel.flows.steps import make_tasks

    cfg = parse_config({
        "generate": {"procedural": {"mix": [
            {"families": ["string_transform", "count_char"], "per_family": 32, "difficulty": [1, 2]},
        ]}},
        "eval": {"families": ["string_transform", "count_char"], "per_family": 20},
    })
    store = RunStore.create(tmp_path / "run", cfg)
    tasks = make_tasks(store, cfg, 0, "unused", lambda m: pytest.fail("no engine needed"))
    short = store.stage_entry(0, "tasks")["short"]
    asked, made = 4 * 32, tasks.height
    assert made < asked and short
    lost = sum(32 - int(n.split(": ")[1].split(" ")[0]) for n in short if "tasks, not" in n)
    twice = sum(int(n.split(" ")[0]) for n in short if "drawn twice" in n)
    assert lost > 0 and twice > 0
    assert lost + twice == asked - made  # every missing task is accounted for


def test_a_curriculum_slice_is_drawn_from_its_round_on(tmp_path):
    from thinkwheel.flows.steps import make_tasks

    mix = [{"families": ["addition"], "per_family": 6, "difficulty": 1},
           {"families": ["addition"], "per_family": 5, "difficulty": 2, "from_round": 1}]
    cfg = parse_config({"generate": {"procedural": {"mix": mix}},
                        "eval": {"families": ["addition"], "per_family": 4}})
    store = RunStore.create(tmp_path / "run", cfg)
    nothing = lambda m: pytest.fail("no engine needed")  # noqa: E731
    r0, r1 = make_tasks(store, cfg, 0, "m", nothing), make_tasks(store, cfg, 1, "m", nothing)
    assert r0["difficulty"].to_list() == [1] * 6
    assert sorted(r1["difficulty"].to_list()) == [1] * 6 + [2] * 5
    # round 0 made without the later slice is the same stage: reused, not redone
    alone = parse_config({"generate": {"procedural": {"mix": mix[:1]}},
                          "eval": {"families": ["addition"], "per_family": 4}})
    entry = store.stage_entry(0, "tasks")
    assert make_tasks(store, alone, 0, "m", nothing).equals(r0)
    assert store.stage_entry(0, "tasks") == entry


def test_consensus_draws_are_not_the_sampling_stages_draws(tmp_path):
    """Consensus used the sampling stage's seed, and the engines seed each sample from the
    seed, the prompt and its index: the sample stage drew the labelling votes again, so a
    model-labelled task's pass rate was its vote share and a wrong label passed as verified."""
    from thinkwheel.engines.base import Completion
    from thinkwheel.flows.steps import make_tasks, sampling_params

    seeds = []

    class Votes:
        def generate(self, requests, params, progress=None):
            seeds.append(params.seed)
            return [[Completion("<think>2+5=7</think>\n7", "stop", 4)] * params.n for _ in requests]

    rows = [{"prompt": "What is 2 + 5?"}]
    cfg = parse_config({
        "generate": {"tasks": GenerateTasksConfig(paths=[str(_jsonl(tmp_path / "t.jsonl", rows))])
                     .model_dump(), "procedural": {"per_family": 0}, "consensus": {"samples": 4}},
        "sampling": {"n": 4},
    })
    tasks = make_tasks(RunStore.create(tmp_path / "run", cfg), cfg, 0, "m", lambda m: Votes())
    assert tasks.filter(pl.col("drop_reason").is_null())["reference"].to_list() == ["7"]
    assert seeds and sampling_params(cfg, 0).seed not in seeds


def test_a_row_with_tests_is_code_however_its_prompt_reads(tmp_path):
    """A code row without a domain was read from its prompt alone: "for x = 3 the result is
    10" made it math, its tests were ignored and the model labelled it by vote."""
    rows = [{"prompt": "Return x squared plus 1, e.g. for x = 3 the result is 10.",
             "tests": ["assert f(3) == 10", "assert f(0) == 1"]}]
    t = load_task_files(TaskFilesConfig(paths=[str(_jsonl(tmp_path / "t.jsonl", rows))]))
    assert t["domain"].to_list() == ["code"] and t["verifier"].to_list() == ["code"]
    assert t["tests"][0].to_list() == rows[0]["tests"]


@pytest.mark.parametrize("tests", [
    [{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "6\n"}],
    '{"inputs": ["1\\n", "5\\n"], "outputs": ["2\\n", "6\\n"]}',  # APPS, as a string
    {"inputs": ["1\n", "5\n"], "outputs": ["2\n", "6\n"]},
])
def test_stdin_stdout_tests_in_their_usual_spellings_judge_programs(tests):
    """`{"input", "output"}` and APPS' lists were stored under their own names, which the
    sandbox ran as a dict expression: a wrong program passed and a right one failed."""
    from thinkwheel.generators.seeds import parse_tests
    from thinkwheel.verifiers import get_verifier

    parsed = parse_tests(tests)
    assert [json.loads(t) for t in parsed] == [{"stdin": "1\n", "stdout": "2\n"},
                                               {"stdin": "5\n", "stdout": "6\n"}]
    code = get_verifier("code", workers=1)
    task = {"tests": parsed}
    right = "<think>add one</think>\n```python\nprint(int(input()) + 1)\n```"
    wrong = "<think>guess</think>\n```python\nprint('nonsense')\n```"
    assert code.verify(right, task).passed is True and code.verify(wrong, task).passed is False
    with pytest.raises(ValueError, match="call-based tests"):
        parse_tests({"fn_name": "f", "inputs": [[1]], "outputs": [2]})


def test_a_code_prompt_given_twice_keeps_both_tests_and_a_bare_copy_is_the_labelled_task(tmp_path):
    """The second row's tests were dropped without a word (a code task's id is its prompt's);
    an unlabelled copy of a labelled prompt went to the model's vote, and the run trained on
    both the file's answer and the model's."""
    from thinkwheel.generators.task_files import load_task_files

    rows = [{"prompt": "Write f(x) returning x + 1.", "tests": ["assert f(1) == 2"]},
            {"prompt": "Write f(x) returning x + 1.", "tests": ["assert f(5) == 6", "assert f(1) == 2"]},
            {"prompt": "What is 17 * 23?", "reference": "391"},
            {"prompt": "What is 17 * 23?"}]
    notes: list[str] = []
    t = load_task_files(TaskFilesConfig(paths=[str(_jsonl(tmp_path / "t.jsonl", rows))]), notes=notes)
    assert t.height == 2
    by = {r["prompt"]: r for r in t.to_dicts()}
    assert by["Write f(x) returning x + 1."]["tests"] == ["assert f(1) == 2", "assert f(5) == 6"]
    assert by["What is 17 * 23?"]["reference"] == "391"
    assert any("repeat a prompt another row gives with one" in n for n in notes), notes
