import json
import re
from collections.abc import Sequence

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.engines.base import Completion, as_messages
from thinkwheel.generators import evol_instruct as ev
from thinkwheel.generators import seeds as seeds_mod


class ScriptedEngine:
    """The engine boundary: canned completions, chosen by a function of the prompt or in order."""

    model_name = "scripted"

    def __init__(self, texts: Sequence[str | Completion] = (), fn=None):
        self.queue = list(texts)
        self.fn = fn
        self.requests: list[str] = []

    def generate(self, requests, params):
        out = []
        for r in requests:
            prompt = as_messages(r)[-1]["content"]
            self.requests.append(prompt)
            out.append([self._next(prompt) for _ in range(params.n)])
        return out

    def _next(self, prompt: str) -> Completion:
        if self.fn is not None:
            t = self.fn(prompt)
        else:
            t = self.queue.pop(0) if self.queue else "<think>x</think>\n"
        return t if isinstance(t, Completion) else Completion(t)


PARENT = "What is 68 + 98?"


def _parents(prompts=(PARENT,)) -> pl.DataFrame:
    return seeds_mod.seed_pool([{"domain": "math", "prompt": p, "difficulty": 2} for p in prompts])


def _cfg(**kw) -> config.EvolInstructConfig:
    return config.EvolInstructConfig(**({"num_tasks": 1, "attempts_per_task": 1} | kw))


@pytest.mark.parametrize(
    ("child", "reason"),
    [
        ("I'm sorry, I cannot rewrite this task.", "sorry"),
        ("the of and , . ? to", "only_stopwords"),
        ("Harder task: What is 680 + 98?", "leaked_template"),
        ("#Rewritten Prompt#: What is 680 + 981?", "leaked_template"),
        ("Given prompt says compute 680 + 981.", "leaked_template"),
        ("What is 68 + 98?", "no_information_gain"),
        ("What is 98 + 68?", "no_information_gain"),
        ("What is 680 + 981 - 17?", None),
        ("What is 68 - 98?", None),  # a new operator symbol is information
    ],
)
def test_elimination_rules(child, reason):
    assert ev.elimination_reason(child, PARENT) == reason


def test_long_text_mentioning_sorry_is_not_eliminated():
    child = "A shop says sorry and refunds 3 of 17 items costing 4 dollars each. " * 8
    assert ev.elimination_reason(child, PARENT) is None


def test_evol_prompts_follow_templates():
    tm = ev.templates_for(config.EvolInstructConfig())
    assert ev.evol_prompt(tm, "T", "deepen") == (
        "Rewrite this task to be harder (deepen).\nTask: T\nHarder task:"
    )
    assert ev.evol_prompt(tm, "T", "breadth") == (
        "Write a different task in the same domain as this one.\nTask: T\nNew task:"
    )


def test_lineage_and_elimination_in_stage():
    engine = ScriptedEngine(
        [
            "<think>bigger numbers</think>\nTask: What is 681 + 983?",  # the template's label
            "<think>n</think>\nWhat is 68 + 98?",
            "<think>n</think>\nSorry, I can't.",
            "<think>n</think>\n```python\ndef f(x):\n    return x + 1\n```",
        ]
    )
    cfg = _cfg(num_tasks=4, operators=["add_constraints"])
    kept, dropped = ev.evol_instruct(engine, _parents(), cfg, round=2, seed=0)
    parent_id = _parents()["task_id"][0]
    assert kept.columns == list(records.TASKS)
    assert kept["prompt"].to_list() == ["What is 681 + 983?"]
    row = kept.row(0, named=True)
    assert row["parent_id"] == parent_id
    assert row["source"] == "evol:add_constraints"
    assert row["reference"] is None
    assert (row["domain"], row["verifier"], row["round"], row["difficulty"]) == ("math", "math", 2, 3)
    meta = json.loads(row["meta"])
    assert meta["depth"] == 1 and meta["operator"] == "add_constraints"
    assert meta["root_id"] == parent_id
    assert sorted(dropped["drop_reason"]) == ["bad_start", "no_information_gain", "sorry"]
    assert set(dropped["parent_id"]) <= {parent_id, row["task_id"]}  # the child may evolve too
    lin = ev.lineage(kept)
    assert lin.row(0) == (row["task_id"], parent_id, "add_constraints", 1)


def test_children_evolve_again_up_to_max_depth():
    counter = iter(range(100, 10_000, 37))

    def evolve(prompt: str) -> str:
        return f"<think>n</think>\nWhat is {next(counter)} + {next(counter)} * 3?"

    engine = ScriptedEngine(fn=evolve)
    cfg = _cfg(num_tasks=6, operators=["deepen"], max_depth=3)
    kept, _ = ev.evol_instruct(engine, _parents(), cfg, round=0, seed=1)
    depths = [json.loads(m)["depth"] for m in kept["meta"]]
    assert kept.height == 6
    assert max(depths) <= 3
    assert max(depths) >= 2  # with one parent, later batches must evolve children
    ids = set(kept["task_id"]) | set(_parents()["task_id"])
    assert set(kept["parent_id"]) <= ids
    # the child's parent really is the task shown in its prompt
    by_id = {r["task_id"]: r["prompt"] for r in kept.to_dicts()} | {
        _parents()["task_id"][0]: PARENT
    }
    shown = [re.search(r"Task: (.*)\n", p).group(1) for p in engine.requests]
    assert [by_id[p] for p in kept["parent_id"]] == shown


def test_max_depth_stops_evolution():
    parents = seeds_mod.seed_pool([{"domain": "math", "prompt": PARENT, "meta": {"depth": 2}}])
    engine = ScriptedEngine(["<think>n</think>\nWhat is 1 + 2 + 3?"])
    kept, dropped = ev.evol_instruct(engine, parents, _cfg(max_depth=2), round=0, seed=0)
    assert kept.height == 0 and dropped.height == 0 and engine.requests == []


def test_breadth_keeps_domain_and_difficulty():
    engine = ScriptedEngine(["<think>n</think>\nSolve for x: 3x + 2 = 17"])
    kept, _ = ev.evol_instruct(engine, _parents(), _cfg(operators=["breadth"]), round=0, seed=0)
    assert kept["source"].to_list() == ["evol:breadth"]
    assert kept["difficulty"].to_list() == [2]
    assert engine.requests[0].startswith("Write a different task in the same domain")


def test_unknown_operator_rejected():
    with pytest.raises(ValueError, match="unknown evol operators"):
        ev.evol_instruct(ScriptedEngine(), _parents(), _cfg(operators=["shout"]), round=0, seed=0)


def test_template_dir_override(tmp_path):
    (tmp_path / "evol_in_depth.txt").write_text("#Given Prompt# {task} [{operator}] ->")
    (tmp_path / "evol_in_breadth.txt").write_text("Other: {task}")
    cfg = _cfg(operators=["deepen"], template_dir=str(tmp_path))
    engine = ScriptedEngine(["<think>n</think>\nWhat is 1234 + 5678 * 2?"])
    kept, _ = ev.evol_instruct(engine, _parents(), cfg, round=0, seed=0)
    assert engine.requests == [f"#Given Prompt# {PARENT} [deepen] ->"]
    assert kept.height == 1
