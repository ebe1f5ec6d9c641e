"""The `code` verifier: extract the program from a completion, run its tests sandboxed.

`score` is the fraction of tests passed; `passed` is True only when all passed. Checks run
concurrently on a thread pool, each thread driving one sandboxed interpreter
(`code_sandbox.run_tests`), so `workers` bounds the number of live sandboxes.
"""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from thinkwheel.verifiers.base import Candidate, Task, Verdict, completion_text, register
from thinkwheel.verifiers.code_sandbox import Limits, run_tests
from thinkwheel.verifiers.code_tests import parse_tests

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\r?\n(.*?)```", re.S | re.I)
_READS_INPUT = {"input", "open", "stdin"}


def _is_program(block: str) -> bool:
    """It defines something (a function, a class, a lambda by name) or reads stdin: a
    solution, not the sample output or usage example a model often puts after one."""
    try:
        tree = ast.parse(block)
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return True
        if isinstance(node, ast.Name) and node.id in _READS_INPUT:
            return True
        if isinstance(node, ast.Attribute) and node.attr in _READS_INPUT:
            return True
    return False


def extract_code(completion: str) -> str | None:
    """The last ```python block after </think> that is a program (or else the last block, or
    the bare answer text), else None."""
    close = completion.rfind("</think>")
    if close == -1 and "<think>" in completion:
        return None  # never finished thinking
    answer = completion[close + len("</think>") :] if close != -1 else completion
    blocks = [b for b in _FENCE.findall(answer) if b.strip()]
    if blocks:
        return next((b for b in reversed(blocks) if _is_program(b)), blocks[-1])
    stripped = answer.strip()
    if stripped.startswith("```"):  # unterminated fence (truncated generation)
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
    return stripped or None


def _tests(task: Task) -> list[str]:
    """The task's tests in the sandbox's shape. Raw, a stdin/stdout dict ran as a dict literal
    and a JSON array in a string as a list literal: each asserted nothing, and any program
    passed (tasks from a file were parsed, tasks handed to `get_verifier` or `as_reward` not)."""
    return parse_tests(task.get("tests"), "the task's tests") or []


@register("code")
class CodeVerifier:
    """Sandboxed execution with a sentinel-judged pass and partial credit."""

    name = "code"

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, test_timeout_s: float | None = None,
                 memory_mb: int = 1024, site_packages: bool = False) -> None:
        self.workers = workers
        self.limits = Limits(test_timeout_s=test_timeout_s or min(5.0, timeout_s),
                             timeout_s=timeout_s, memory_mb=memory_mb,
                             site_packages=site_packages)

    def verify(self, candidate: Candidate, task: Task) -> Verdict:
        try:
            tests = _tests(task)
        except ValueError as err:
            return Verdict(None, 0.0, "bad_reference", str(err))
        if not tests:
            return Verdict(None, 0.0, "bad_reference", "task has no tests")
        code = extract_code(completion_text(candidate))
        if code is None:
            return Verdict(False, 0.0, "no_answer", "no code found")
        r = run_tests(code, tests, self.limits)
        if r.status == "error":
            return Verdict(None, 0.0, "verifier_error", r.detail, r.seconds)
        if r.status == "timeout":
            return Verdict(False, 0.0, "timeout", r.detail, r.seconds)
        if r.status == "unsafe":
            return Verdict(False, 0.0, "unsafe", r.detail, r.seconds)
        if r.status == "no_sentinel":
            return Verdict(False, 0.0, "runtime_error", r.detail, r.seconds)
        score = r.passed / r.total
        reason = "ok" if r.passed == r.total else "wrong_answer"
        if "load: " in r.detail and r.passed == 0:
            reason = "timeout" if "load: TimeoutError" in r.detail else "runtime_error"
        return Verdict(r.passed == r.total, score, reason, r.detail[:1000], r.seconds, r.per_test)

    def verify_batch(self, candidates: Sequence[Candidate], tasks: Sequence[Task]) -> list[Verdict]:
        pairs = list(zip(candidates, tasks, strict=True))
        if len(pairs) <= 1:
            return [self.verify(c, t) for c, t in pairs]
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(lambda p: self.verify(*p), pairs))

    async def averify_batch(self, candidates: Sequence[Candidate],
                            tasks: Sequence[Task]) -> list[Verdict]:
        return await asyncio.to_thread(self.verify_batch, candidates, tasks)
