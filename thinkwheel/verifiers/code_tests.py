"""A task's tests as the sandbox runs them: a list of code strings and stdin/stdout JSON.

Tests arrive in many shapes (one string, a list, a JSON array in a string, stdin/stdout
objects under several names, APPS' inputs/outputs lists). Every reader (task files, the
code verifier, its GRPO reward, verl's reward) goes through `parse_tests`, so no shape is run
as a bare expression that asserts nothing.
"""

from __future__ import annotations

import ast
import json
from typing import Any


def parse_tests(value: Any, where: str = "tests") -> list[str] | None:
    """One test or a list; an stdin/stdout test given as an object is stored as its JSON
    (`_io_tests`). A JSON array in a string (how many code sets store theirs) is that list:
    taken as one test, the list literal asserted nothing and every candidate passed. A test
    that is a bare comparison (`f(1) == 2`) also asserts nothing, and is an error that says so."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith(("[", "{")):
            try:
                value = json.loads(stripped)
            except ValueError:
                value = [value]
        else:
            value = [value]
    if isinstance(value, dict):  # APPS: {"inputs": [...], "outputs": [...]}
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: a test or a list of tests, not a {type(value).__name__}")
    tests = [t for one in value for t in _io_tests(one, where)]
    for t in tests:
        if _asserts_nothing(t):
            raise ValueError(f"{where}: the test {t.strip()[:60]!r} is a comparison that asserts "
                             f"nothing (every program passes it); write `assert {t.strip()[:40]}`")
    return tests or None


# what stdin/stdout test objects call their two sides, as ours: {"stdin", "stdout"}
_IO_NAMES = {"input": "stdin", "output": "stdout", "expected_output": "stdout"}


def _io_tests(test: Any, where: str) -> list[str]:
    """A test as stored: code as it is, an stdin/stdout object as {"stdin", "stdout"} JSON.
    `{"input", "output"}` and APPS' `{"inputs": [...], "outputs": [...]}` were kept under their
    own names, which the sandbox ran as a dict expression: every program passed."""
    if isinstance(test, str):
        return [test]
    if not isinstance(test, dict):
        raise ValueError(f"{where}: a test is code or an stdin/stdout object, not "
                         f"{type(test).__name__}")
    t = {_IO_NAMES.get(k, k): v for k, v in test.items()}
    if "stdout" in t:
        return [json.dumps({"stdin": t.get("stdin") or "", "stdout": t["stdout"]})]
    if "inputs" in t and "outputs" in t and "fn_name" not in t:
        ins, outs = t["inputs"], t["outputs"]
        if isinstance(ins, list) and isinstance(outs, list) and len(ins) == len(outs):
            return [json.dumps({"stdin": i, "stdout": o}) for i, o in zip(ins, outs, strict=True)]
    raise ValueError(f"{where}: a test object needs stdin and stdout (or input and output, or "
                     f"APPS' inputs and outputs lists of one length); got keys {sorted(test)}"
                     + ("; call-based tests (fn_name) are not read: write them as asserts"
                        if "fn_name" in test else ""))


def _asserts_nothing(test: str) -> bool:
    try:
        body = ast.parse(test).body
    except SyntaxError:
        return False  # the sandbox reports it as the test's own failure
    return bool(body) and all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Compare)
                              for s in body)
