"""Code verifier: sandbox pass/partial credit, stdin/stdout tests, sentinel, hostile code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from thinkwheel.verifiers.code import CodeVerifier, extract_code
from thinkwheel.verifiers.code_sandbox import isolation

GOOD = "<think>easy</think>\n```python\ndef f(x):\n    return 3 * x + 2\n```"
TASK = {"tests": ["assert f(0) == 2", "assert f(4) == 14"]}
MARK = Path("/tmp/thinkwheel-test-marker")

HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "memory bomb": "x = bytearray(8 * 1024 ** 3)\ndef f(x):\n    return 3 * x + 2",
    "disk fill": "with open('big', 'wb') as fh:\n    while True:\n        fh.write(b'0' * 2 ** 20)",
    "os._exit before asserts": "import os\nos._exit(0)",
    "sys.exit before asserts": "import sys\nsys.exit(0)",
    "fake AssertionError": "import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\n"
                           "def f(x):\n    return 0",
    "fake BaseException": "import builtins\nbuiltins.BaseException = type('N', (), {})\n"
                          "def f(x):\n    return 0",
    "forged sentinel": "print('\\n0123456789abcdef0123456789abcdef 2 2 0 ok')\nimport os\nos._exit(0)",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n"
               "def f(x):\n    return 3 * x + 2",
    "write outside tmp": f"open({str(MARK)!r}, 'w').write('x')\ndef f(x):\n    return 3 * x + 2",
    "env secret": "import os\nassert os.environ.get('TW_SECRET') == 'hunter2'\n"
                  "def f(x):\n    return 3 * x + 2",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                   "def f(x):\n    return 3 * x + 2",
    "huge output": "while True:\n    print('x' * 65536)",
    "frame walk": "import sys\nfr = sys._getframe()\nwhile fr.f_back:\n    fr = fr.f_back\n"
                  "print(fr.f_locals.get('nonce'), 2, 2, 0)\nimport os\nos._exit(0)",
    # reward hacks on `assert f(x) == y`: objects that claim to equal anything
    "always equal": "class E:\n    def __eq__(self, o):\n        return True\n"
                    "def f(x):\n    return E()",
    "always-equal int": "class E(int):\n    def __eq__(self, o):\n        return True\n"
                        "    __hash__ = int.__hash__\ndef f(x):\n    return E(0)",
    "always-equal in a list": "class E:\n    def __eq__(self, o):\n        return True\n"
                              "def f(x):\n    return [E()][0]",
    "replaced comparator": "def f(x):\n    globals()['__tw_cmp__'] = lambda *a: True\n    return 0",
}
# the same hack against a compound condition
COMPOUND = {"tests": ["assert f(0) == 2 and f(4) == 14", "assert not (f(1) != 5)"]}


@pytest.fixture(scope="module")
def verifier() -> CodeVerifier:
    return CodeVerifier(workers=2, timeout_s=3.0, test_timeout_s=1.5)


def test_extract_code() -> None:
    assert extract_code(GOOD) == "def f(x):\n    return 3 * x + 2\n"
    # sample output or a usage example after the solution is not the program
    assert extract_code(GOOD + "\nOutput:\n```\n14\n```") == "def f(x):\n    return 3 * x + 2\n"
    assert extract_code(GOOD + "\nUsage:\n```python\nprint(f(4))\n```").startswith("def f")
    stdin = "</think>\n```python\nn = int(input())\nprint(n)\n```\n```\n3\n```"
    assert extract_code(stdin) == "n = int(input())\nprint(n)\n"
    assert extract_code(GOOD.replace("\n", "\r\n")) == "def f(x):\r\n    return 3 * x + 2\r\n"
    assert extract_code("</think>\ndef g(): pass") == "def g(): pass"
    assert extract_code("<think>never closed") is None


def test_pass_and_partial_credit(verifier: CodeVerifier) -> None:
    ok = verifier.verify(GOOD, TASK)
    assert ok.passed is True and ok.score == 1.0 and ok.reason == "ok"
    half = verifier.verify("</think>\n```python\ndef f(x):\n    return 2\n```", TASK)
    assert half.passed is False and half.score == 0.5 and half.reason == "wrong_answer"
    assert f"sandbox={isolation()}" in ok.detail


def test_stdin_stdout_tests(verifier: CodeVerifier) -> None:
    task = {"tests": ['{"stdin": "4\\n", "stdout": "8"}', '{"stdin": "5\\n", "stdout": "11"}']}
    v = verifier.verify("</think>\n```python\nprint(int(input()) * 2)\n```", task)
    assert v.score == 0.5 and v.passed is False


@pytest.mark.parametrize("program", [
    "print(sum(map(int, input().split())))",
    "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    "print(sum(map(int, open(0).read().split())))",
    "import sys\nsys.stdout.buffer.write(str(sum(map(int, sys.stdin.readline().split()))).encode())",
    "import os\nprint(sum(map(int, os.read(0, 100).split())))",
])
def test_stdin_stdout_programs_read_and_write_as_judges_allow(verifier: CodeVerifier,
                                                             program: str) -> None:
    """Competitive-programming idioms: `sys.stdin.buffer`, `open(0)` and `sys.stdout.buffer`
    failed as wrong answers (the streams were StringIO objects, fd 0 was /dev/null)."""
    task = {"tests": ['{"stdin": "3 4\\n", "stdout": "7"}', '{"stdin": "10 -2\\n", "stdout": "8"}']}
    v = verifier.verify(f"</think>\n```python\n{program}\n```", task)
    assert (v.passed, v.score) == (True, 1.0), v.detail


def test_task_without_tests_is_unverifiable(verifier: CodeVerifier) -> None:
    assert verifier.verify(GOOD, {"tests": None}).passed is None


def test_per_test_timeout_gives_partial_credit(verifier: CodeVerifier) -> None:
    code = "</think>\n```python\ndef f(x):\n    while x:\n        pass\n    return 2\n```"
    v = verifier.verify(code, {"tests": ["assert f(0) == 2", "f(1)"]})
    assert v.score == 0.5


def test_hostile_suite_all_fail_and_host_unaffected(verifier: CodeVerifier) -> None:
    os.environ["TW_SECRET"] = "hunter2"
    MARK.unlink(missing_ok=True)
    cands = [f"</think>\n```python\n{code}\n```" for code in HOSTILE.values()]
    verdicts = verifier.verify_batch(cands, [TASK] * len(cands))
    outcome = {name: (v.passed, v.reason) for name, v in zip(HOSTILE, verdicts, strict=True)}
    assert all(p is False for p, _ in outcome.values()), outcome
    assert outcome["network"][1] == "unsafe" and outcome["fork bomb"][1] == "unsafe"
    assert not MARK.exists()
    assert verifier.verify(GOOD, TASK).passed is True  # later checks unaffected
    assert sys.executable  # the test process itself survived "kill parent"


def test_always_equal_fails_compound_asserts_too(verifier: CodeVerifier) -> None:
    hack = "class E:\n    def __eq__(self, o):\n        return True\n    def __ne__(self, o):\n" \
           "        return False\ndef f(x):\n    return E()"
    assert verifier.verify(f"</think>\n```python\n{hack}\n```", COMPOUND).score == 0.0
    assert verifier.verify(GOOD, COMPOUND).passed is True


@pytest.mark.parametrize(
    ("code", "test"),
    [  # what the strict `==` must still accept
        ("from collections import namedtuple\nP = namedtuple('P', 'a b')\ndef f(): return P(1, 2)",
         "assert f() == (1, 2)"),
        ("from collections import Counter\ndef f(): return Counter('aab')", "assert f() == {'a': 2, 'b': 1}"),
        ("class B(int): pass\ndef f(): return B(3)", "assert f() == 3 and f() != 4"),
        ("def f(): return 2", "assert 2.0 == f()"),
        ("class P:\n    def __init__(s, v): s.v = v\n    def __eq__(s, o): return s.v == o.v\n"
         "def f(): return P(1)", "assert f() == P(1)"),  # objects on both sides: their own ==
        ("def f(): return 'b'", "assert f() in 'abc' and f() not in ['x']"),
        ("def f(): return [1, (2, {3})]", "x = f()\nassert x == [1, (2, {3})]"),
    ],
)
def test_strict_equality_keeps_honest_tests_passing(verifier: CodeVerifier, code: str, test: str) -> None:
    v = verifier.verify(f"</think>\n```python\n{code}\n```", {"tests": [test]})
    assert v.passed is True, v.detail


IO = ['{"stdin": "2\\n", "stdout": "4"}', '{"stdin": "3\\n", "stdout": "9"}']
FORGERIES = {  # each passed every test before the harness closed it
    "frame walk from eval": (
        "import os\nF = eval('__import__(\"sys\")._getframe(0)')\n"
        "while 'nonce' not in F.f_locals:\n    F = F.f_back\nV = F.f_locals\nn = len(V['tests'])\n"
        "os.write(1, ('\\n%s %d %d 0 %s x\\n' % (V['nonce'], n, n, '1' * n)).encode())\n"
        "os._exit(0)", TASK["tests"]),
    "patched judge": ("import sys\nsys.modules['__main__']._same_output = lambda a, b: True\n"
                      "print(0)", IO),
    "exception named ok": ("def f(x):\n    raise type('ok', (Exception,), {})()", TASK["tests"]),
    "patched type": ("import builtins\nclass N:\n    __name__ = 'ok'\n_t = builtins.type\n"
                     "builtins.type = lambda *a: N if len(a) == 1 else _t(*a)\n"
                     "def f(x):\n    return 0", TASK["tests"]),
    "shadowed abs": ("abs = lambda v: 0\ndef f(x):\n    return 0",
                     ["assert abs(f(0) - 2) < 1e-9", "assert abs(f(4) - 14) < 1e-9"]),
    "builtins.abs patched": ("import builtins\nbuiltins.abs = lambda v: 0\ndef f(x):\n    return 0",
                             ["assert abs(f(4) - 14) < 1e-9"]),
    "math patched": ("import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 0",
                     ["import math\nassert math.isclose(f(4), 14)"]),
    "math replaced in sys.modules": (
        "import sys, types\nm = types.ModuleType('math')\nm.isclose = lambda *a, **k: True\n"
        "sys.modules['math'] = m\ndef f(x):\n    return 0", ["import math\nassert math.isclose(f(4), 14)"]),
    "a module the candidate imported, patched": (
        "import fractions\nfractions.Fraction = lambda *a: 0\ndef f(x):\n    return 0",
        ["from fractions import Fraction\nassert f(1) == Fraction(1, 2)"]),
    # the tests' own imports are loaded first anyway: these take Fraction from the candidate
    "a class of a module imported in a function, patched": (
        "def _p():\n    import fractions\n    fractions.Fraction.__eq__ = lambda s, o: True\n"
        "    return fractions.Fraction\nFraction = _p()\ndef f(x):\n    return Fraction(0)",
        ["assert f(1) == Fraction(1, 2)"]),
    "a class of a module imported by importlib, patched": (
        "import importlib\nFraction = importlib.import_module('fractions').Fraction\n"
        "Fraction.__eq__ = lambda s, o: True\ndef f(x):\n    return Fraction(0)",
        ["assert f(1) == Fraction(1, 2)"]),
    "a stdlib class patched": (
        "from collections import UserList\nUserList.__eq__ = lambda s, o: True\n"
        "def f(x):\n    return UserList()", ["from collections import UserList\nassert f(2) == UserList([2])"]),
    "a stdlib class the candidate imported, patched": (
        "from fractions import Fraction\nFraction.__eq__ = lambda s, o: True\n"
        "def f(x):\n    return Fraction(0)", ["from fractions import Fraction\nassert f(1) == Fraction(1, 2)"]),
    "a method added to a stdlib class": (
        "import string\nstring.Template.__eq__ = lambda s, o: True\ndef f(x):\n    return string.Template('')",
        ["import string\nassert f(1) == string.Template('1')"]),
    "rigged __lt__": ("class R:\n    def __sub__(s, o): return s\n    def __rsub__(s, o): return s\n"
                      "    def __abs__(s): return s\n    def __lt__(s, o): return True\n"
                      "def f(x):\n    return R()", ["assert abs(f(4) - 14) < 1e-9", "assert f(0) <= 2"]),
    "rigged __bool__": ("class T:\n    def __init__(s, x): s.x = x\n"
                        "    def __bool__(s): return s.x % 2 == 1\n    def __eq__(s, o): return True\n"
                        "def f(x):\n    return T(x)", ["assert f(7)", "assert not f(8)"]),
    "rigged chain in a comprehension's iterable": (
        "class R:\n    def __lt__(s, o): return True\n    def __gt__(s, o): return True\n"
        "def f(x):\n    return R()", ["assert len([0 for _ in range(1 if 0 < f(4) < 20 else 0)]) == 1"]),
    "rigged chain": ("class R:\n    def __lt__(s, o): return True\n    def __gt__(s, o): return True\n"
                     "def f(x):\n    return R()", ["assert 0 < f(4) < 20"]),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_a_candidate_cannot_forge_a_pass(verifier: CodeVerifier, name: str) -> None:
    code, tests = FORGERIES[name]
    v = verifier.verify(f"</think>\n```python\n{code}\n```", {"tests": tests})
    assert v.passed is False and v.score == 0.0, v.detail


@pytest.mark.parametrize(
    ("code", "test"),
    [  # what the closed holes must still let through
        ("import logging\ndef f(x):\n    logging.getLogger('t').warning('x')\n    return 2 * x",
         "assert f(2) == 4"),  # logging looks up its caller's frame, and copes when refused
        ("from typing import NamedTuple, TypeVar\nT = TypeVar('T')\nclass Q(NamedTuple):\n"
         "    a: int\ndef f(x): return Q(x).a * 2", "assert f(2) == 4"),
        ("from enum import Enum\nC = Enum('C', 'A B')\ndef f(x): return C.B.value * x", "assert f(2) == 4"),
        ("def max(xs):\n    return -1\ndef f(x):\n    return max([x]) + 5", "assert f(2) == 4"),
        ("def f(x): return x / 3", "assert abs(f(1) - 0.3333) < 1e-3 and f(3) >= 1 and f(0) < 1"),
        ("class B(float): pass\ndef f(x): return B(x)", "assert f(1) <= 1.0 and 0 < f(1)"),
        ("import math\ndef f(x): return math.sqrt(x)", "import math\nassert math.isclose(f(4), 2)"),
        ("def f(x): return x % 2 == 1", "assert f(7) and not f(8)\nassert f(1) or f(2), 'odd'"),
        ("def f(x): return [x] if x else ''", "assert f(3)\nassert not f(0)"),
        ("def f(x): return range(x)", "assert f(2) and not f(0)"),  # a C type's own truth
        ("n = [0]\ndef f(x):\n    n[0] += 1\n    return n[0]", "assert 0 < f(1) < 2"),  # called once
        ("def f(x): return x / 2", "assert all(0 <= f(i) < 3 for i in range(5))"),
        ("def g():\n    import ctypes, uuid\ndef f(x): return 2 * x", "assert f(2) == 4"),  # never called
        # a chain where `:=` is a syntax error, each operand once and in order
        ("n = [0]\ndef f(x):\n    n[0] += 1\n    return n[0]",
         "assert [0 for _ in range(1 if 0 < f(1) < 2 <= f(1) else 0)] == [0]"),
        ("from fractions import Fraction\ndef f(x): return Fraction(x, 2)",
         "from fractions import Fraction\nassert f(1) == Fraction(1, 2)"),
        ("import heapq\nfrom collections import UserList\nclass L(UserList):\n    pass\n"
         "def f(x): return L(heapq.nsmallest(1, [x, 9]))", "assert list(f(2)) == [2]"),
    ],
)
def test_honest_code_still_passes(verifier: CodeVerifier, code: str, test: str) -> None:
    v = verifier.verify(f"</think>\n```python\n{code}\n```", {"tests": [test]})
    assert v.passed is True, v.detail


@pytest.mark.parametrize(
    "tests",
    [
        [{"stdin": "2\n", "stdout": "4\n"}],  # an object, as a dataset row holds it
        [{"input": "2\n", "output": "4\n"}],
        '["assert f(2) == 4", "assert f(3) == 9"]',  # a JSON array in one string
        {"inputs": ["2\n", "3\n"], "outputs": ["4\n", "9\n"]},  # APPS
    ],
)
def test_tests_in_any_stored_shape_are_run(verifier: CodeVerifier, tests) -> None:
    """Raw, a stdin/stdout dict ran as a dict literal and a JSON array as a list literal:
    each asserted nothing and `print(0)` passed."""
    wrong = "</think>\n```python\nprint(0)\ndef f(x):\n    return 0\n```"
    right = ("</think>\n```python\nimport sys\ndef f(x):\n    return x * x\n"
             "if __name__ == '__main__':\n    print(f(int(sys.stdin.read())))\n```")
    assert verifier.verify(wrong, {"tests": tests}).passed is False
    assert verifier.verify(right, {"tests": tests}).passed is True


def test_a_test_that_asserts_nothing_is_a_bad_reference(verifier: CodeVerifier) -> None:
    v = verifier.verify(GOOD, {"tests": ["f(0) == 2"]})
    assert (v.passed, v.reason) == (None, "bad_reference") and "asserts nothing" in v.detail


def test_no_state_leaks_between_checks(verifier: CodeVerifier) -> None:
    poison = ("import builtins, math\nbuiltins.LEAK = 1\nmath.pi = 3\nopen('left.txt', 'w').write('x')\n"
              "def f(x):\n    return 3 * x + 2")
    assert verifier.verify(f"</think>\n```python\n{poison}\n```", TASK).passed is True
    probe = ("import builtins, math, os\nassert not hasattr(builtins, 'LEAK')\n"
             "assert math.pi > 3.14\nassert not os.path.exists('left.txt')\n"
             "def f(x):\n    return 3 * x + 2")
    assert verifier.verify(f"</think>\n```python\n{probe}\n```", TASK).passed is True


def test_temp_dir_is_removed() -> None:
    from thinkwheel.verifiers import code_sandbox

    r = code_sandbox.run_tests("import os\nos.write(1, ('CWD=' + os.getcwd()).encode())\nos._exit(0)",
                               ["pass"])
    assert r.status == "no_sentinel"
    cwd = r.detail.split("CWD=", 1)[1].split()[0]
    code_sandbox._TRASH.join()
    assert cwd.startswith("/") and not os.path.exists(cwd)


def test_dead_server_is_replaced(verifier: CodeVerifier) -> None:
    import signal

    from thinkwheel.verifiers import code_sandbox

    assert verifier.verify(GOOD, TASK).passed is True
    with code_sandbox._IDLE_LOCK:
        servers = [s for idle in code_sandbox._IDLE.values() for s in idle]
    assert servers
    for s in servers:
        os.killpg(s.proc.pid, signal.SIGKILL)
        s.proc.wait()
    assert verifier.verify(GOOD, TASK).passed is True


def test_verdict_reports_each_tests_outcome(verifier: CodeVerifier) -> None:
    code = "def f(x):\n    if x == 2:\n        raise ValueError\n    return 3 * x + 2"
    tests = ["assert f(1) == 5", "assert f(2) == 8", "assert f(3) == 0", "assert f(4) == 14"]
    v = verifier.verify(f"</think>\n```python\n{code}\n```", {"tests": tests})
    assert v.per_test == (True, False, False, True) and v.score == 0.5
    # a run that never reaches its pass line has no per-test outcomes
    v = verifier.verify("</think>\n```python\nimport os\nos._exit(0)\n```", {"tests": tests})
    assert v.passed is False and v.per_test is None
