import json
from collections.abc import Sequence
from fractions import Fraction

import polars as pl

from thinkwheel import config, records
from thinkwheel.engines.base import Completion, as_messages
from thinkwheel.generators import consensus as cs
from thinkwheel.verifiers.base import Verdict, completion_text
from thinkwheel.verifiers.code import extract_code
from thinkwheel.verifiers.math_extract import extract_answer


class ScriptedEngine:
    """The engine boundary: per prompt, a list of completions to hand out as the n samples."""

    model_name = "scripted"

    def __init__(self, by_prompt: dict[str, Sequence[str]]):
        self.by_prompt = by_prompt
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, requests, params):
        prompts = [as_messages(r)[-1]["content"] for r in requests]
        self.calls.append((prompts, params.n))
        return [[Completion(t) for t in self.by_prompt[p][: params.n]] for p in prompts]


def _frac(text: str | None) -> Fraction | None:
    try:
        return Fraction(text.replace(" ", "")) if text else None
    except (ValueError, ZeroDivisionError):
        return None


class FakeVerifiers:
    """Stands in for the registry: math = exact rational equality, code = exec in-process
    (trusted test strings only), and counts calls so tests can see what was checked."""

    def __init__(self):
        self.pairs = 0

    def __call__(self, cands, tasks):
        self.pairs += len(cands)
        return [self._one(completion_text(c), t) for c, t in zip(cands, tasks, strict=True)]

    def _one(self, text, task):
        if task["verifier"] == "math":
            a, r = _frac(extract_answer(text)), _frac(task["reference"])
            if r is None:
                return Verdict(None, reason="bad_reference")
            return Verdict(a == r, reason="ok" if a == r else "wrong_answer")
        env: dict = {}
        try:
            exec(extract_code(text), env)
            for t in task["tests"]:
                exec(t, env)
        except AssertionError:
            return Verdict(False, reason="test_failed", detail="assert")
        except Exception as err:
            return Verdict(False, reason="runtime_error", detail=type(err).__name__)
        return Verdict(True)


def _ans(*answers: str) -> list[str]:
    return [f"<think>working</think>\n{a}" for a in answers]


def _math_tasks(prompts: Sequence[str], reference=None) -> pl.DataFrame:
    return records.frame(
        [
            {"task_id": records.task_id("math", p, None), "domain": "math", "prompt": p,
             "reference": reference, "verifier": "math", "meta": '{"depth": 1}'}
            for p in prompts
        ],
        records.TASKS,
    )


def test_majority_grouped_by_equivalence():
    engine = ScriptedEngine(
        {
            "A": _ans("1/2", "0.5", "\\boxed{2/4}", "3", "1/2", "7", "0.5", "3"),
            "B": _ans("1", "2", "3", "4", "5", "6", "1", "2"),
            "C": _ans("5", "6", "5", "6", "5", "6", "6", "5"),
        }
    )
    v = FakeVerifiers()
    cfg = config.ConsensusConfig(samples=8, min_agreement=0.5)
    kept, dropped = cs.consensus_references(engine, _math_tasks(["A", "B", "C"]), cfg, v)
    assert kept["prompt"].to_list() == ["A"]
    assert _frac(kept["reference"][0]) == Fraction(1, 2)  # 5 of 8 agree across spellings
    meta = json.loads(kept["meta"][0])
    assert meta["agreement"] == 0.625 and meta["reference_source"] == "consensus"
    assert meta["depth"] == 1  # existing meta kept
    assert kept["task_id"][0] == records.task_id("math", "A", None)  # id stable for lineage
    reasons = dict(zip(dropped["prompt"], dropped["drop_reason"], strict=True))
    assert reasons == {"B": "low_agreement", "C": "tied_answers"}
    assert engine.calls[0][1] == 8


def test_string_grouping_without_verifier_does_not_merge_spellings():
    groups = cs.majority_answers(
        [{"verifier": "math"}], [_ans("1/2", "0.5", "2/4", "1/2", "3", "0.5", "1 / 2")], None
    )
    # spaces are ignored by the string key; "0.5" and "2/4" stay separate without a verifier
    assert groups[0] == [("1/2", 3), ("0.5", 2), ("2/4", 1), ("3", 1)]
    merged = cs.majority_answers(
        [{"verifier": "math"}], [_ans("1/2", "0.5", "2/4", "1/2", "3", "0.5", "1 / 2")],
        FakeVerifiers(),
    )
    assert merged[0] == [("1/2", 6), ("3", 1)]


def test_threshold_is_configurable_and_no_answers_dropped():
    engine = ScriptedEngine({"A": _ans("4", "4", "4", "5", "6"), "B": ["<think>never closed"] * 5})
    lo = config.ConsensusConfig(samples=5, min_agreement=0.6)
    hi = config.ConsensusConfig(samples=5, min_agreement=0.8)
    kept, dropped = cs.consensus_references(engine, _math_tasks(["A", "B"]), lo, FakeVerifiers())
    assert kept["reference"].to_list() == ["4"]
    assert dropped["drop_reason"].to_list() == ["no_answers"]
    kept, dropped = cs.consensus_references(engine, _math_tasks(["A"]), hi, FakeVerifiers())
    assert kept.height == 0 and dropped["drop_reason"].to_list() == ["low_agreement"]


def test_tasks_with_reference_pass_through_without_sampling():
    engine = ScriptedEngine({})
    kept, dropped = cs.consensus_references(
        engine, _math_tasks(["A"], reference="3"), config.ConsensusConfig(), FakeVerifiers()
    )
    assert kept["reference"].to_list() == ["3"] and dropped.height == 0
    assert engine.calls == []


def _code(prompt, reference, tests):
    return {"task_id": records.task_id("code", prompt, reference), "domain": "code",
            "prompt": prompt, "reference": reference, "tests": tests, "verifier": "code"}


def test_code_tests_validated_against_reference():
    tasks = records.frame(
        [
            _code("good", "def f(x):\n    return x + 1", ["assert f(1) == 2"]),
            _code("bad", "def f(x):\n    return x + 1", ["assert f(1) == 3"]),
            _code("none", "def f(x):\n    return x", None),
        ],
        records.TASKS,
    )
    kept, dropped = cs.consensus_references(
        ScriptedEngine({}), tasks, config.ConsensusConfig(), FakeVerifiers()
    )
    assert kept["prompt"].to_list() == ["good"]
    reasons = dict(zip(dropped["prompt"], dropped["drop_reason"], strict=True))
    assert reasons == {"bad": "reference_fails_tests", "none": "no_tests"}
    assert "test_failed" in dropped.filter(pl.col("prompt") == "bad")["detail"].item()


def test_code_without_reference_gets_a_passing_sample():
    fence = "<think>t</think>\n```python\n{}\n```"
    engine = ScriptedEngine(
        {
            "sq": [fence.format("def f(x):\n    return x + x"),
                   fence.format("def f(x):\n    return x * x")],
            "never": [fence.format("def f(x):\n    return 0")] * 2,
        }
    )
    tasks = records.frame(
        [_code("sq", None, ["assert f(3) == 9"]), _code("never", None, ["assert f(1) == 5"])],
        records.TASKS,
    )
    kept, dropped = cs.consensus_references(
        engine, tasks, config.ConsensusConfig(samples=2), FakeVerifiers()
    )
    assert kept["reference"].to_list() == ["def f(x):\n    return x * x"]
    assert dropped["drop_reason"].to_list() == ["no_passing_solution"]


def test_default_uses_registry_verifiers_for_code_and_math():
    tasks = pl.concat(
        [
            records.frame(
                [
                    _code("good", "def f(x):\n    return x + 1", ["assert f(1) == 2"]),
                    _code("bad", "def f(x):\n    return x + 1", ["assert f(1) == 3"]),
                ],
                records.TASKS,
            ),
            _math_tasks(["half"]),
        ]
    )
    engine = ScriptedEngine({"half": _ans("1/2", "0.5", "\\frac{1}{2}", "7")})
    cfg = config.ConsensusConfig(samples=4, min_agreement=0.75)
    kept, dropped = cs.consensus_references(engine, tasks, cfg)  # no verify_fn: the registry
    assert kept["prompt"].to_list() == ["good", "half"]
    assert dropped["drop_reason"].to_list() == ["reference_fails_tests"]
    assert json.loads(kept["meta"][1])["agreement"] == 0.75


def test_verify_with_dispatches_by_verifier_name():
    class Named:
        def __init__(self, name, passed):
            self.name, self.passed = name, passed

        def verify_batch(self, cands, tasks):
            return [Verdict(self.passed, reason=self.name) for _ in cands]

    fn = cs.verify_with({"math": Named("math", True), "code": Named("code", False)})
    out = fn(["a", "b", "c"], [{"verifier": "code"}, {"verifier": "math"}, {"verifier": "x"}])
    assert [(v.passed, v.reason) for v in out] == [
        (False, "code"), (True, "math"), (None, "unknown_verifier")
    ]
