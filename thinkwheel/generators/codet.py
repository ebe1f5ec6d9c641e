"""Tests for generated code tasks, written by the model and chosen by dual execution agreement
(CodeT, Chen et al. 2022).

Why: a Self-Instruct or Evol-Instruct code task arrives as a prompt alone, and the code
verifier cannot judge a solution without tests. The engine writes candidate tests
(`test_samples` completions of the `code_tests` template, parsed to one assert per line) and
candidate solutions (`samples`); every distinct solution runs against every test in the
sandbox (one run per solution, see `_pass_matrix`). Solutions that pass the same set of tests
form a group, scored (solutions in the group) x (tests in the set), as in CodeT:
independently sampled programs agreeing with independently sampled tests is evidence for both.
The best group's tests become the task's tests and its most common program the reference.

A test that checks nothing is removed first: one an empty program passes
(`assert len("ab") == 2`), and one that every constant of a kind passes (`assert
isinstance(f(3), int)`, `assert f(0) is not None`: all of 0, 1, 2, -1, -2; floats, strings,
lists, tuples, dicts, sets and bools likewise; not None, which a `-> None` function's test
`assert f(x) is None` rightly expects). Every sampled program that returns the right type
passes such a test, so it would add to the score of every group and let a large wrong group
outscore a right one. A test some constant of each kind
fails is a real check and is kept: `assert f(0) == 0`, `assert f(5) > 0`, and a predicate's
`assert is_prime(7)` and `assert not is_prime(4)` (False, or True, fails them).

A task is dropped, with the reason, when no test parses, no solution passes a test, the best
group holds fewer than `min_agreement` of the samples, two groups tie, or fewer than
`min_tests` tests are agreed on. A task that already has a reference solution keeps it and
gets the generated tests that reference passes (no solutions are sampled).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from thinkwheel import config
from thinkwheel.engines.base import Engine, SamplingParams
from thinkwheel.generators.consensus import VerifyFn, as_candidate, chat_requests, with_meta
from thinkwheel.verifiers.base import Verdict
from thinkwheel.verifiers.code import extract_code

EMPTY_PROGRAM = "pass"
# Stub results by kind: each kind's values differ in value, sign, emptiness and truth, so a
# test every value of one kind passes (a type or not-None check) says nothing of the value.
STUB_KINDS: tuple[tuple[Any, ...], ...] = (
    (0, 1, 2, -1, -2), (0.0, 0.5, -1.5, 2.5), ("", "a"), ([], [0]), ((), (0,)), ({}, {"a": 1}),
    (set(), {0}), (True, False),
)
STUB_RESULTS: tuple[Any, ...] = tuple(v for kind in STUB_KINDS for v in kind)
_BUILTINS = frozenset(dir(builtins))
_FENCE_LINE = re.compile(r"^\s*```")


def parse_tests(text: str) -> list[str]:
    """The distinct one-line asserts that call something, in order, from a test completion.

    Only the answer after `</think>` counts (an unfinished think block gives none); fence lines
    and prose are skipped, and a line must parse as a single `assert` statement."""
    close = text.rfind("</think>")
    if close == -1 and "<think>" in text:
        return []
    answer = text[close + len("</think>") :] if close != -1 else text
    seen: dict[str, None] = {}
    for line in answer.splitlines():
        line = line.strip()
        if not line.startswith("assert") or _FENCE_LINE.match(line):
            continue
        try:
            tree = ast.parse(line)
        except SyntaxError:
            continue
        if (
            len(tree.body) == 1
            and isinstance(tree.body[0], ast.Assert)
            and any(isinstance(node, ast.Call) for node in ast.walk(tree.body[0]))
        ):
            seen.setdefault(line, None)
    return list(seen)


def stub_programs(tests: Sequence[str]) -> list[str]:
    """Per value in `STUB_RESULTS`, a program whose functions all return that value: one
    `def` for each non-builtin name the tests use (the called function, and any other name,
    which does no harm); none when the tests use no such name."""
    names = sorted(
        {n.id for t in tests for n in ast.walk(ast.parse(t))
         if isinstance(n, ast.Name) and n.id not in _BUILTINS}
    )
    return [
        "\n".join(f"def {name}(*args, **kwargs):\n    return {value!r}" for name in names)
        for value in STUB_RESULTS
    ] if names else []


def vacuous_tests(empty: frozenset[int], stubs: Sequence[frozenset[int]]) -> set[int]:
    """Tests the empty program passes, or that every stub of one kind passes (`stubs` in
    `STUB_RESULTS` order)."""
    out = set(empty)
    at = 0
    for kind in STUB_KINDS:
        passed = stubs[at : at + len(kind)]
        at += len(kind)
        if len(passed) == len(kind):
            out |= frozenset.intersection(*passed)
    return out


def pool_tests(completions: Sequence[str], limit: int) -> list[str]:
    """Up to `limit` distinct tests, taken in turn from each completion so one verbose sample
    does not fill the budget alone."""
    parsed = [parse_tests(c) for c in completions]
    out: dict[str, None] = {}
    for rank in range(max((len(p) for p in parsed), default=0)):
        for tests in parsed:
            if rank < len(tests) and len(out) < limit:
                out.setdefault(tests[rank], None)
    return list(out)


@dataclass(frozen=True)
class Group:
    tests: frozenset[int]  # indices of the tests every member passes, and no others
    members: tuple[int, ...]  # indices of the distinct solutions in the group
    votes: int  # sampled solutions in the group (distinct solutions weighted by count)

    @property
    def score(self) -> int:
        return self.votes * len(self.tests)


def agreement(passed: Sequence[frozenset[int]], counts: Sequence[int]) -> list[Group]:
    """Groups of solutions by the exact set of tests they pass, best CodeT score first.

    Solutions that pass nothing form no group."""
    by_set: dict[frozenset[int], list[int]] = {}
    for i, tests in enumerate(passed):
        if tests:
            by_set.setdefault(tests, []).append(i)
    groups = [Group(t, tuple(m), sum(counts[i] for i in m)) for t, m in by_set.items()]
    return sorted(groups, key=lambda g: (-g.score, -g.votes, sorted(g.tests)))


def _pass_matrix(
    verify_fn: VerifyFn, jobs: Sequence[tuple[dict[str, Any], list[str], list[str]]]
) -> list[list[frozenset[int]]]:
    """Per job (task, programs, tests): per program, the indices of the tests it passes.

    Each program runs once against all of its job's tests, as the verify stage will run them
    later, and the code verifier reports each test's outcome. A run that did not get to the
    end of its tests (a timeout, a crash that took the interpreter, a verifier without
    per-test outcomes) is checked again one test at a time, so one bad test cannot hide
    another's result. An unverifiable check (passed None) counts as not passed."""
    sets: list[list[set[int]]] = [[set() for _ in programs] for _, programs, _ in jobs]
    whole = [
        (j, p) for j, (_, programs, tests) in enumerate(jobs) if tests for p in range(len(programs))
    ]
    verdicts = _checks(verify_fn, [(jobs[j][0], jobs[j][1][p], jobs[j][2]) for j, p in whole])
    alone = []
    for (j, p), v in zip(whole, verdicts, strict=True):
        if v.per_test is not None and len(v.per_test) == len(jobs[j][2]):
            sets[j][p].update(t for t, ok in enumerate(v.per_test) if ok)
        else:
            alone += [(j, p, t) for t in range(len(jobs[j][2]))]
    verdicts = _checks(
        verify_fn, [(jobs[j][0], jobs[j][1][p], [jobs[j][2][t]]) for j, p, t in alone]
    )
    for (j, p, t), v in zip(alone, verdicts, strict=True):
        if v.passed is True:
            sets[j][p].add(t)
    return [[frozenset(s) for s in per_job] for per_job in sets]


def _checks(
    verify_fn: VerifyFn, checks: Sequence[tuple[dict[str, Any], str, list[str]]]
) -> Sequence[Verdict]:
    """One batched verifier call over (task, program, tests) triples."""
    if not checks:
        return []
    cands = [as_candidate(code) for _, code, _ in checks]
    return verify_fn(cands, [{**task, "reference": None, "tests": tests} for task, _, tests in checks])


def generated_tests(
    engine: Engine,
    rows: list[dict[str, Any]],
    idx: list[int],
    params: SamplingParams,
    verify_fn: VerifyFn,
    system_prompt: str | None,
    cfg: config.ConsensusConfig,
    drop: Callable[..., None],
) -> dict[int, dict[str, Any]]:
    """Code tasks without tests: {row index: row with tests (and reference) filled in}."""
    from thinkwheel.generators.self_instruct import load_template, render

    template = load_template("code_tests", cfg.tests_template)
    asks = [render(template, task=rows[i]["prompt"]) for i in idx]
    outs = engine.generate(chat_requests(asks, system_prompt), replace(params, n=cfg.test_samples))
    pools = {
        i: pool_tests([c.text for c in o], cfg.max_tests) for i, o in zip(idx, outs, strict=True)
    }

    generated = {i: len(pools[i]) for i in idx}
    # Tests the empty program or two different constant stubs pass check nothing.
    probes = _pass_matrix(
        verify_fn, [(rows[i], [EMPTY_PROGRAM, *stub_programs(pools[i])], pools[i]) for i in idx]
    )
    for i, (empty, *stubs) in zip(idx, probes, strict=True):
        vacuous = vacuous_tests(empty, stubs)
        pools[i] = [t for k, t in enumerate(pools[i]) if k not in vacuous]
    todo = []
    for i in idx:
        if pools[i]:
            todo.append(i)
        else:
            drop(i, "no_tests_generated", f"0 usable tests in {cfg.test_samples} completions")

    kept: dict[int, dict[str, Any]] = {}
    with_ref = [i for i in todo if rows[i]["reference"]]
    for i, (ref_passes,) in zip(
        with_ref,
        _pass_matrix(verify_fn, [(rows[i], [rows[i]["reference"]], pools[i]) for i in with_ref]),
        strict=True,
    ):
        tests = [t for k, t in enumerate(pools[i]) if k in ref_passes]
        if len(tests) < cfg.min_tests:
            drop(i, "too_few_tests", f"the reference passes {len(tests)}/{len(pools[i])} tests")
            continue
        meta = with_meta(rows[i], tests_source="generated", tests_generated=generated[i])
        kept[i] = {**rows[i], "tests": tests, "meta": meta}

    without = [i for i in todo if not rows[i]["reference"]]
    if not without:
        return kept
    outs = engine.generate(
        chat_requests([rows[i]["prompt"] for i in without], system_prompt), params
    )
    programs = {}
    for i, o in zip(without, outs, strict=True):
        codes = [extract_code(c.text) for c in o]
        programs[i] = Counter(c.strip("\n").rstrip() for c in codes if c and c.strip())
    matrix = _pass_matrix(verify_fn, [(rows[i], list(programs[i]), pools[i]) for i in without])
    for i, passed in zip(without, matrix, strict=True):
        codes, counts = list(programs[i]), list(programs[i].values())
        groups = agreement(passed, counts)
        detail = f"{len(pools[i])} tests, {sum(counts)}/{params.n} programs, {len(groups)} groups"
        if not groups:
            drop(i, "no_passing_solution", detail)
            continue
        best = groups[0]
        detail += f", best {best.votes} programs x {len(best.tests)} tests"
        if best.votes < max(2, cfg.min_agreement * params.n):
            drop(i, "low_agreement", detail)
        elif len(groups) > 1 and groups[1].score == best.score:
            drop(i, "tied_solutions", detail)
        elif len(best.tests) < cfg.min_tests:
            drop(i, "too_few_tests", detail)
        else:
            reference = max(best.members, key=lambda m: counts[m])
            meta = with_meta(
                rows[i],
                reference_source="codet",
                tests_source="generated",
                tests_generated=generated[i],
                agreeing_programs=best.votes,
                consensus_samples=params.n,
            )
            kept[i] = {
                **rows[i],
                "reference": codes[reference],
                "tests": [t for k, t in enumerate(pools[i]) if k in best.tests],
                "meta": meta,
            }
    return kept
