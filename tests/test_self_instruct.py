import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.assets import MODEL_DIR
from thinkwheel.engines.base import Completion, SamplingParams, as_messages
from thinkwheel.generators import seeds as seeds_mod
from thinkwheel.generators import self_instruct as si


class ScriptedEngine:
    """The engine boundary: returns canned completions in order, records what it was asked."""

    model_name = "scripted"

    def __init__(self, texts: Sequence[str | Completion]):
        self.queue = list(texts)
        self.requests: list[str] = []
        self.params: list[SamplingParams] = []

    def generate(self, requests, params):
        self.params.append(params)
        out = []
        for r in requests:
            self.requests.append(as_messages(r)[-1]["content"])
            out.append([self._next() for _ in range(params.n)])
        return out

    def _next(self) -> Completion:
        t = self.queue.pop(0) if self.queue else "<think>x</think>\n"
        return t if isinstance(t, Completion) else Completion(t)


def _seeds() -> pl.DataFrame:
    rows = [
        {"domain": "math", "prompt": "What is 12 + 30?", "reference": "42", "difficulty": 1},
        {"domain": "math", "prompt": "Solve for x: 2x + 4 = 10", "reference": "3", "difficulty": 1},
        {"domain": "math", "prompt": "What is 7 * 8?", "reference": "56", "difficulty": 1},
        {
            "domain": "code",
            "prompt": "Write a Python function `f(x)` that returns 3*x + 2.",
            "reference": "def f(x):\n    return 3 * x + 2",
            "tests": ["assert f(0) == 2"],
            "difficulty": 1,
        },
    ]
    return seeds_mod.seed_pool(rows)


def _cfg(**kw) -> config.SelfInstructConfig:
    base = {"num_tasks": 4, "attempts_per_task": 2}
    return config.SelfInstructConfig(**(base | kw))


def test_parse_new_task():
    assert si.parse_new_task("<think>note</think>\nWhat is 3 + 4?") == "What is 3 + 4?"
    assert si.parse_new_task("<think>n</think>\nTask 9: Add 2 and 5.\nTask 10: x") == "Add 2 and 5."
    assert si.parse_new_task("no think tag here") == "no think tag here"
    assert si.parse_new_task("<think>only a note</think>") == ""
    # every way a model labels its task is a label, not part of it (they were kept as the prompt)
    for label in ("Task:", "New Task 7:", "new task:", "**Task 2:**", "Task 4.", "Task 5 -"):
        got = si.parse_new_task(f"<think>n</think>\n{label} What is 731 - 46?\n{label} x")
        assert got == "What is 731 - 46?", label
    assert si.parse_new_task("</think>Task-based: schedule 3 jobs.") == "Task-based: schedule 3 jobs."


def test_label_domain():
    assert si.label_domain("Write a Python function `g(s)` that reverses s.") == "code"
    assert si.label_domain("What is 345 + 78?") == "math"
    assert si.label_domain("Solve for y: 5y - 2 = 13") == "math"
    assert si.label_domain("Write a function `rev(s)` that reverses s.") == "code"
    assert si.label_domain("Find the value of the function f(x) = 2x + 3 at x = 4.") == "math"
    # GSM8K-style word problems ask "how much" as often as "how many"
    assert si.label_domain("Weng earns $12 an hour. She worked 50 minutes. How much did she "
                           "earn?") == "math"
    assert si.label_domain("How much wood would a woodchuck chuck?") is None  # no number
    assert si.label_domain("Tell me about rivers.") is None
    assert si.label_domain("Tell me about rivers.", fallback="math") == "math"


def test_rouge_threshold_is_the_config_knob():
    near = "<think>n</think>\nWhat is 12 + 30 + 1?"  # ROUGE-L 0.86 vs the seed "What is 12 + 30?"
    for threshold, reasons in ((0.7, ["not_novel"]), (0.9, [])):
        engine = ScriptedEngine([near])
        cfg = _cfg(num_tasks=1, attempts_per_task=1, rouge_threshold=threshold)
        _, dropped = si.self_instruct(engine, _seeds(), cfg, round=0, seed=0)
        assert dropped["drop_reason"].to_list() == reasons


def test_self_instruct_keeps_filters_and_labels():
    long = "word " * 200
    engine = ScriptedEngine(
        [
            "<think>new</think>\nCompute 15 times 4 and then subtract 9.",  # kept, math
            "<think>dup</think>\nWhat is 12 + 30?",  # duplicate of a seed
            "<think>n</think>\nHi",  # too short
            f"<think>n</think>\n{long}",  # too long
            "<think>n</think>\nDraw a picture of a cat with 3 legs.",  # banned
            Completion("<think>n</think>\nWhat is the sum of", finish_reason="length"),
            "<think>n</think>\nWrite a Python function `h(s)` that returns s in upper case.",
            "<think>n</think>\nWhat is 12 + 31?",  # near-duplicate (ROUGE-L)
        ]
    )
    kept, dropped = si.self_instruct(engine, _seeds(), _cfg(), round=3, seed=7)
    assert kept.columns == list(records.TASKS)
    assert kept["prompt"].to_list() == [
        "Compute 15 times 4 and then subtract 9.",
        "Write a Python function `h(s)` that returns s in upper case.",
    ]
    assert kept["domain"].to_list() == ["math", "code"]
    assert kept["verifier"].to_list() == ["math", "code"]
    assert kept["reference"].null_count() == 2
    assert set(kept["source"]) == {"self_instruct"}
    assert kept["round"].to_list() == [3, 3]
    assert kept["task_id"][0] == records.task_id("math", kept["prompt"][0], None)
    reasons = dropped["drop_reason"].to_list()
    assert sorted(reasons) == sorted(
        ["duplicate", "too_short", "too_long", "banned_content", "truncated", "not_novel"]
    )
    assert dropped["completion"].null_count() == 0
    # budget: num_tasks * attempts_per_task requests at most
    assert len(engine.requests) == 8


def test_prompts_show_k_in_context_tasks_seed_then_generated():
    seeds = seeds_mod.seed_pool(
        [{"domain": "math", "prompt": f"What is {i} + {i * 7 + 3}?"} for i in range(10)]
    )
    first = [f"Compute {a} times {a + 11} minus {a * 3}." for a in (2, 5)]
    script = [f"<think>n</think>\n{t}" for t in first] + ["<think>n</think>\nHi"]
    engine = ScriptedEngine(script + ["<think>n</think>\nFind the product of 13 and 71."])
    cfg = _cfg(num_tasks=3, seed_in_context=3, generated_in_context=2)
    kept, _ = si.self_instruct(engine, seeds, cfg, round=0, seed=1)
    assert len(engine.params) == 2  # batch 1: 3 requests, 1 rejected -> batch 2: 1 request
    # first batch: no generated tasks yet -> 5 seed tasks in context
    first_prompt = engine.requests[0]
    assert first_prompt.startswith("Write a new task like these examples.\n")
    assert first_prompt.endswith("\nNew task:")
    assert re.findall(r"^Task (\d+): ", first_prompt, re.M) == ["1", "2", "3", "4", "5"]
    # the later batch shows 3 seeds then the 2 generated tasks
    later = engine.requests[3]
    shown = re.findall(r"^Task \d+: (.*)$", later, re.M)
    assert len(shown) == 5
    assert set(shown[3:]) == set(first)
    assert set(shown[:3]) <= set(seeds["prompt"])
    meta = json.loads(kept["meta"][2])
    assert len(meta["in_context"]) == 5
    assert kept.height == 3


def test_template_override_and_file(tmp_path):
    engine = ScriptedEngine(["<think>n</think>\nCompute 19 times 23 plus 4."])
    tmpl = "EXAMPLES:\n{examples}\nYOURS:"
    kept, _ = si.self_instruct(
        engine, _seeds(), _cfg(num_tasks=1), round=0, seed=0, template=tmpl
    )
    assert engine.requests[0].startswith("EXAMPLES:\nTask 1: ")
    assert kept.height == 1
    f = tmp_path / "mine.txt"
    f.write_text("Mine {examples} end")
    assert si.load_template("self_instruct", f) == "Mine {examples} end"
    assert "{examples}" in si.load_template("self_instruct")
    with pytest.raises(FileNotFoundError):
        si.load_template("self_instruct", tmp_path / "missing.txt")


def test_deterministic_in_seed():
    def run(seed):
        e = ScriptedEngine(["<think>n</think>\nCompute 19 times 23 plus 4."])
        si.self_instruct(e, _seeds(), _cfg(num_tasks=1), round=0, seed=seed)
        return e.requests[0], e.params[0].seed

    assert run(5) == run(5)
    assert run(5)[1] != run(6)[1]


def test_seed_pool_and_default_seeds():
    pool = seeds_mod.seed_pool([{"prompt": "What is 2 + 9?"}, {"prompt": "Write a Python function"
                                " `f(s)` that returns s twice."}])
    assert pool["domain"].to_list() == ["math", "code"]
    assert pool["verifier"].to_list() == ["math", "code"]
    assert set(pool["source"]) == {"seed"}
    with pytest.raises(ValueError):
        seeds_mod.seed_pool([{"prompt": ""}])
    d = seeds_mod.default_seeds(n=12, seed=3)
    assert d.height == 12
    assert d["domain"].n_unique() == 2  # stratified over families: both domains present
    assert d.equals(seeds_mod.default_seeds(n=12, seed=3))


MODEL = Path(os.environ.get("THINKWHEEL_TEST_MODEL") or MODEL_DIR)  # override: try a checkpoint


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODEL / "config.json").is_file(),
    reason=f"bundled model not built yet at {MODEL} (the lead adds it; `thinkwheel pretrain`)",
)
def test_both_generators_with_bundled_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.generators import evol_instruct as ev

    engine = HFEngine(MODEL, batch_size=16)
    seeds = seeds_mod.default_seeds(n=18, seed=11)
    seed_prompts = seeds["prompt"].to_list()

    params = SamplingParams(n=1, temperature=1.0, max_tokens=64, seed=0)  # tasks are short
    kept, dropped = si.self_instruct(
        engine, seeds, config.SelfInstructConfig(num_tasks=4, attempts_per_task=2), round=1,
        seed=0, params=params,
    )
    assert kept.height >= 1, dropped["drop_reason"].value_counts()
    assert all(si.novel_mask(kept["prompt"].to_list(), seed_prompts, 0.7))
    assert set(kept["domain"]) <= {"math", "code"}
    assert kept["verifier"].null_count() == 0
    assert all(3 <= len(p.split()) <= 150 for p in kept["prompt"])

    kept_e, dropped_e = ev.evol_instruct(
        engine, seeds, config.EvolInstructConfig(num_tasks=4, attempts_per_task=2), round=1,
        seed=0, params=params,
    )
    assert kept_e.height >= 1, dropped_e["drop_reason"].value_counts()
    parents = dict(zip(seeds["task_id"], seeds["prompt"], strict=True))
    for row in kept_e.iter_rows(named=True):
        parent = parents.get(row["parent_id"]) or kept_e.filter(
            pl.col("task_id") == row["parent_id"]
        )["prompt"].item()
        assert ev.elimination_reason(row["prompt"], parent) is None
        assert row["prompt"] not in seed_prompts



@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"no model at {MODEL}")
def test_flow_generation_step_references_tasks_with_the_runs_sampling_settings():
    """The flow's LLM step on the bundled model for real: every generated task comes out either
    verifiable (a reference, or tests for code) or with a drop reason, and consensus samples
    with the run's sampling settings, not the library's short default."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.flows.steps import _llm_tasks

    class Recording(HFEngine):
        calls: list[SamplingParams] = []

        def generate(self, requests, params):
            self.calls.append(params)
            return super().generate(requests, params)

    cfg = config.parse_config(
        {
            "generate": {
                "self_instruct": {"enabled": True, "num_tasks": 6, "attempts_per_task": 2},
                "consensus": {"samples": 4, "test_samples": 2},
                "max_tokens": 64,
            },
            "sampling": {"max_tokens": 90},
        }
    )
    engine = Recording(MODEL, batch_size=16)
    tables = _llm_tasks(engine, seeds_mod.default_seeds(n=18, seed=11), cfg, 0)
    rows = pl.concat(tables, how="diagonal_relaxed")
    assert rows.height >= 6
    kept = rows.filter(pl.col("drop_reason").is_null())
    assert kept.height >= 1, rows["drop_reason"].value_counts()
    for r in kept.iter_rows(named=True):
        assert r["reference"] if r["verifier"] == "math" else r["tests"]
    assert {p.max_tokens for p in engine.calls if p.n == 4} == {90}  # consensus samples
    assert {p.max_tokens for p in engine.calls if p.n == 1} == {64}  # task generation


def test_near_duplicates_within_one_batch():
    t = "<think>n</think>\nCompute 15 times 4 and then subtract {}."
    engine = ScriptedEngine([t.format(9), t.format(8), "<think>n</think>\nName 3 prime numbers."])
    kept, dropped = si.self_instruct(engine, _seeds(), _cfg(num_tasks=3, attempts_per_task=1),
                                     round=0, seed=0)
    assert len(engine.params) == 1  # all three in one batch
    assert kept["prompt"].to_list()[0].endswith("subtract 9.")
    assert dropped["drop_reason"].to_list() == ["not_novel"]
    assert dropped["prompt"].to_list()[0].endswith("subtract 8.")


def test_a_new_operator_is_a_new_task():
    # the pool check must not call "3 - 4" already seen because "3 + 4" is in the pool
    assert si.normalise("What is 3 - 4?") != si.normalise("What is 3 + 4?")
    assert si.normalise("What is 3+4?") == si.normalise("what is 3 + 4")
