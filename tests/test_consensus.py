import json
from collections.abc import Sequence
from fractions import Fraction

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.engines.base import Completion, as_messages
from thinkwheel.generators import codet
from thinkwheel.generators import consensus as cs
from thinkwheel.generators.self_instruct import load_template, render
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
        ScriptedEngine({}), tasks, config.ConsensusConfig(test_samples=0), FakeVerifiers()
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


# ------------------------------------------------------------ generated tests (CodeT)
def test_parse_tests_keeps_one_line_asserts_that_call_something():
    text = (
        "<think>cover the edge cases</think>\nHere are tests:\n```python\n"
        "assert add(1, 2) == 3\n"
        "  assert add(1, 2) == 3\n"  # the same test again
        "assert True\n"  # calls nothing
        "assert add(1,\n"  # does not parse
        "assert add(0, 0) == 0; import os\n"  # two statements
        "print(add(2, 2))\n"
        "assert add(-1, 1) == 0, 'negatives'\n```"
    )
    assert codet.parse_tests(text) == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0, 'negatives'"]
    assert codet.parse_tests("<think>assert add(1, 2) == 3") == []  # never finished thinking
    pooled = codet.pool_tests(["assert f(1) == 1\nassert f(2) == 2", "assert f(3) == 3"], limit=2)
    assert pooled == ["assert f(1) == 1", "assert f(3) == 3"]  # in turn, not first-come


def test_agreement_scores_programs_times_tests():
    # CodeT's case: three samples of a wrong program agree on one test; two samples of a right
    # one pass three. Score = samples x tests: 3 x 1 < 2 x 3. A program passing nothing is out.
    groups = codet.agreement(
        [frozenset({0}), frozenset({1, 2, 3}), frozenset({1, 2, 3}), frozenset()], [3, 1, 1, 4]
    )
    assert [(sorted(g.tests), g.members, g.votes, g.score) for g in groups] == [
        ([1, 2, 3], (1, 2), 2, 6),
        ([0], (0,), 3, 3),
    ]


def test_code_tasks_without_tests_get_generated_ones_checked_in_the_sandbox():
    """The engine is scripted (the boundary); tests and programs run in the real sandbox."""
    template = load_template("code_tests")
    fence = "<think>t</think>\n```python\n{}\n```"
    add_ok = "def add(a, b):\n    return a + b"
    prompts = {
        "add": "Write a Python function add(a, b) that returns the sum of a and b.",
        "junk": "Write a Python function junk() that returns None.",
        "sq": "Write a Python function sq(x) that returns x squared.",
        "mul": "Write a Python function mul(a, b) that returns the product.",
    }
    ask = {k: render(template, task=p) for k, p in prompts.items()}
    engine = ScriptedEngine(
        {
            ask["add"]: [
                "<think>t</think>\nassert add(1, 2) == 3\nassert add(2, 2) == 5\nassert len('ab') == 2",
                "<think>t</think>\n```python\nassert add(-1, 1) == 0\nassert add(1, 2) == 3\n```",
            ],
            prompts["add"]: [fence.format(add_ok), fence.format("def add(a, b):\n    return b + a"),
                             fence.format(add_ok), fence.format("def add(a, b):\n    return a - b")],
            ask["junk"]: ["<think>t</think>\nI cannot write tests.", "<think>unfinished"],
            ask["sq"]: ["<think>t</think>\nassert sq(1) == 1\nassert sq(2) == 4"] * 2,
            prompts["sq"]: [fence.format(f"def sq(x):\n    return {body}")
                            for body in ("x", "x * x", "1", "0")],
            ask["mul"]: ["<think>t</think>\nassert mul(2, 3) == 6\nassert mul(2, 2) == 5\n"
                         "assert mul(0, 7) == 0"] * 2,
        }
    )
    tasks = records.frame(
        [_code(prompts["add"], None, None), _code(prompts["junk"], None, None),
         _code(prompts["sq"], None, None), _code(prompts["mul"], "def mul(a, b):\n    return a * b", None)],
        records.TASKS,
    )
    cfg = config.ConsensusConfig(samples=4, test_samples=2, min_tests=2)
    kept, dropped = cs.consensus_references(engine, tasks, cfg)  # the registry's code verifier
    by_prompt = {r["prompt"]: r for r in kept.iter_rows(named=True)}
    assert set(by_prompt) == {prompts["add"], prompts["mul"]}
    add = by_prompt[prompts["add"]]
    # add(2, 2) == 5 is wrong and len('ab') == 2 passes an empty program: neither is kept.
    assert add["tests"] == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert add["reference"] == add_ok  # the most common program of the agreeing group
    meta = json.loads(add["meta"])
    assert meta["reference_source"] == "codet" and meta["agreeing_programs"] == 3
    assert meta["tests_generated"] == 4
    mul = by_prompt[prompts["mul"]]
    assert mul["tests"] == ["assert mul(2, 3) == 6", "assert mul(0, 7) == 0"]
    assert mul["reference"] == "def mul(a, b):\n    return a * b"
    assert prompts["mul"] not in [p for prompts_, _ in engine.calls for p in prompts_]  # not sampled
    reasons = dict(zip(dropped["prompt"], dropped["drop_reason"], strict=True))
    # sq: {x, 1} pass sq(1) only (2 programs x 1 test), x * x passes both (1 x 2): a tie.
    assert reasons == {prompts["junk"]: "no_tests_generated", prompts["sq"]: "tied_solutions"}
    # Kept tasks now verify: the reference passes the tests through the verifier itself.
    v = cs.registry_verify_fn()([cs.as_candidate(r["reference"]) for r in by_prompt.values()],
                                list(by_prompt.values()))
    assert [x.passed for x in v] == [True, True]


def test_generated_tests_need_enough_agreement():
    template = load_template("code_tests")
    p = "Write a Python function inc(x) that returns x plus one."
    fence = "<think>t</think>\n```python\n{}\n```"
    engine = ScriptedEngine(
        {
            render(template, task=p): ["assert inc(1) == 2\nassert inc(5) == 6"],
            p: [fence.format("def inc(x):\n    return x + 1")]
            + [fence.format(f"def inc(x):\n    return x + {k}") for k in (2, 3, 4)],
        }
    )
    tasks = records.frame([_code(p, None, None)], records.TASKS)
    lo = config.ConsensusConfig(samples=4, test_samples=1, min_agreement=0.0, min_tests=2)
    hi = config.ConsensusConfig(samples=4, test_samples=1, min_agreement=0.5, min_tests=2)
    # One program of four agrees with the tests: never enough (a group needs two samples).
    for cfg in (lo, hi):
        kept, dropped = cs.consensus_references(engine, tasks, cfg, FakeVerifiers())
        assert kept.height == 0 and dropped["drop_reason"].to_list() == ["low_agreement"]


def test_registry_verify_fn_builds_verifiers_from_the_runs_verify_settings():
    task = {"verifier": "math", "reference": "0.5", "prompt": "half as a percent?"}
    cand = "<think>t</think>\n50%"
    assert cs.registry_verify_fn()([cand], [task])[0].passed is True  # default: 50% is 0.5
    assert cs.registry_verify_fn(percent_policy="number")([cand], [task])[0].passed is False


def test_pass_matrix_runs_each_program_once_and_isolates_a_run_that_crashed():
    """The real sandbox: one run per program; a program that kills its interpreter on one test
    is re-checked a test at a time, so its other tests still count."""
    real = cs.registry_verify_fn()
    runs = []

    def counting(cands, tasks):
        runs.extend(len(t["tests"]) for t in tasks)
        return real(cands, tasks)

    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    programs = [
        "def add(a, b):\n    return a + b",
        "import os\ndef add(a, b):\n    if a < 0:\n        os._exit(0)\n    return a + b",
        "def add(a, b):\n    return 5",
    ]
    task = {"verifier": "code", "domain": "code", "prompt": "add"}
    (matrix,) = codet._pass_matrix(counting, [(task, programs, tests)])
    assert matrix == [frozenset({0, 1}), frozenset({0}), frozenset({2})]
    # three whole runs, then the crashed program's three tests alone
    assert runs == [3, 3, 3, 1, 1, 1]


def test_consensus_votes_are_counted_against_the_reference_not_along_a_chain():
    """The real math verifier: `1.67` matches `5/3` and `1.674` (a finer decimal rounds to it),
    but `5/3` and `1.674` differ, so their votes must not be summed through `1.67`."""
    engine = ScriptedEngine(
        {
            # 1.674 has 3/8 votes (5/3 and 1.67 another 3): no answer reaches min_agreement.
            "chain": _ans(*"1.67 5/3 5/3 1.674 1.674 1.674 2 3".split()),
            # 5/3 with 1.67 is 5/8; the one 1.674 does not verify against 5/3.
            "third": _ans(*"5/3 1.67 5/3 1.674 1.67 5/3 2 3".split()),
        }
    )
    tasks = _math_tasks(["chain", "third"])
    assert cs.majority_answers(tasks.to_dicts(), [engine.by_prompt["chain"]],
                               cs.registry_verify_fn()) == [
        [("1.674", 3), ("5/3", 3), ("2", 1), ("3", 1)]
    ]
    cfg = config.ConsensusConfig(samples=8, min_agreement=0.5)
    kept, dropped = cs.consensus_references(engine, tasks, cfg)  # the registry's math verifier
    assert dict(zip(dropped["prompt"], dropped["drop_reason"], strict=True)) == {
        "chain": "low_agreement"
    }
    assert kept["prompt"].to_list() == ["third"] and kept["reference"].to_list() == ["5/3"]
    assert json.loads(kept["meta"][0])["agreement"] == 0.625  # the true share, not 6/8


def _codet(p: str, right: str, wrong: str, tests: list[str], n_wrong: int = 2):
    """CodeT on one generated code task: the model writes `tests` once, then 3 right and
    `n_wrong` wrong solutions, run in the real sandbox (the registry's code verifier)."""
    fence = "<think>t</think>\n```python\n{}\n```"
    engine = ScriptedEngine(
        {
            render(load_template("code_tests"), task=p): ["<think>t</think>\n" + "\n".join(tests)],
            p: [fence.format(right)] * 3 + [fence.format(wrong)] * n_wrong,
        }
    )
    tasks = records.frame([_code(p, None, None)], records.TASKS)
    cfg = config.ConsensusConfig(samples=3 + n_wrong, test_samples=1, min_agreement=0.3, min_tests=2)
    return cs.consensus_references(engine, tasks, cfg)


def test_generated_tests_that_constant_stubs_pass_are_dropped():
    """The real sandbox: type and None checks pass any int-returning program, so five wrong
    samples (x + 2) outscored three right ones (2 * x) on them alone. A check some int fails
    (`double(0) == 0`, a sign) says something of the value and is kept."""
    p = "Write a Python function double(x) that returns twice x."
    right, wrong = "def double(x):\n    return 2 * x", "def double(x):\n    return x + 2"
    tests = ["assert isinstance(double(3), int)", "assert double(0) is not None",
             "assert double(1) > 0", "assert double(2) >= 0", "assert double(5) == 10",
             "assert double(0) == 0"]
    kept, dropped = _codet(p, right, wrong, tests, n_wrong=5)
    assert dropped.height == 0
    assert kept["reference"].to_list() == [right]
    # `double(2) >= 0` goes too: True and False both pass it
    assert kept["tests"].to_list() == [["assert double(1) > 0", "assert double(5) == 10",
                                        "assert double(0) == 0"]]
    assert json.loads(kept["meta"][0])["agreeing_programs"] == 3


@pytest.mark.parametrize(
    ("p", "right", "wrong", "tests"),
    [
        ("Write half(x), x divided by 2.", "def half(x):\n    return x / 2",
         "def half(x):\n    return x / 3",
         ["assert isinstance(half(3), float)", "assert half(3) == 1.5", "assert half(0) == 0"]),
        ("Write pair(x), the tuple (x, x).", "def pair(x):\n    return (x, x)",
         "def pair(x):\n    return (x, 0)",
         ["assert type(pair(1)) is tuple", "assert pair(2) == (2, 2)", "assert pair(0) == (0, 0)"]),
        ("Write counts(s), each character's count.",
         "def counts(s):\n    return {c: s.count(c) for c in s}",
         "def counts(s):\n    return {c: 1 for c in s}",
         ["assert isinstance(counts('ab'), dict)", "assert counts('aab') == {'a': 2, 'b': 1}",
          "assert counts('') == {}"]),
        ("Write uniq(xs), the set of xs.", "def uniq(xs):\n    return set(xs)",
         "def uniq(xs):\n    return set(xs[:1])",
         ["assert type(uniq([1])) is set", "assert uniq([1, 2, 1]) == {1, 2}", "assert uniq([]) == set()"]),
    ],
    ids=["float", "tuple", "dict", "set"],
)
def test_type_checks_of_floats_tuples_dicts_and_sets_are_dropped(p, right, wrong, tests):
    """A float, tuple, dict or set type check passes every program that returns one: with only the
    int, str, list and bool stubs it was kept and counted for the wrong group too."""
    kept, dropped = _codet(p, right, wrong, tests)
    assert dropped.height == 0 and kept["reference"].to_list() == [right]
    assert kept["tests"].to_list() == [tests[1:]]


def test_a_predicates_truth_tests_are_real_checks():
    """`assert is_even(4)` and `assert not is_even(3)` are what tests of a predicate look like:
    True and False each fail one, so they stay; a type check every bool passes goes."""
    p = "Write a Python function is_even(x) that says whether x is even."
    right, wrong = "def is_even(x):\n    return x % 2 == 0", "def is_even(x):\n    return x % 2 == 1"
    tests = ["assert is_even(4)", "assert not is_even(3)", "assert isinstance(is_even(2), bool)"]
    kept, dropped = _codet(p, right, wrong, tests)
    assert dropped.height == 0 and kept["reference"].to_list() == [right]
    assert kept["tests"].to_list() == [["assert is_even(4)", "assert not is_even(3)"]]
