"""Registry and plugins: decorator, module:callable, entry points, crash containment."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from thinkwheel import records
from thinkwheel.verifiers import get_verifier, list_verifiers, register, verify_frame
from thinkwheel.verifiers import registry as reg
from thinkwheel.verifiers.base import Verdict
from thinkwheel.verifiers.think_format import check_format


@pytest.fixture()
def plugin_module() -> types.ModuleType:
    mod = types.ModuleType("tw_test_plugins")
    mod.exact = lambda completion, task: completion.strip() == task.get("reference")
    mod.half = lambda completion, task: 0.5
    mod.verdict = lambda completion, task: Verdict(True, 1.0, "ok", "custom")

    def boom(completion: str, task: dict) -> bool:
        raise RuntimeError("plugin exploded")

    mod.boom = boom
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def test_builtins_listed_with_origin() -> None:
    rows = dict(list_verifiers())
    assert rows["math"] == rows["code"] == rows["think_format"] == "builtin"


def test_decorator_registration() -> None:
    @register("tw_len3", origin="test")
    class Len3:
        name = "tw_len3"

        def verify(self, candidate, task):  # noqa: ANN001, ANN201
            return Verdict(len(candidate) == 3)

        def verify_batch(self, cands, tasks):  # noqa: ANN001, ANN201
            return [self.verify(c, t) for c, t in zip(cands, tasks, strict=True)]

    assert ("tw_len3", "test") in list_verifiers()
    assert get_verifier("tw_len3").verify("abc", {}).passed is True


def test_plain_functions_wrapped(plugin_module: types.ModuleType) -> None:
    v = get_verifier("tw_test_plugins:exact")
    assert v.verify("5", {"reference": "5"}).passed is True
    assert v.verify("6", {"reference": "5"}).passed is False
    half = get_verifier("tw_test_plugins:half").verify("x", {})
    assert half.passed is False and half.score == 0.5
    assert get_verifier("tw_test_plugins:verdict").verify("x", {}).detail == "custom"
    assert ("tw_test_plugins:exact", "module:callable") in list_verifiers()


def test_numpy_and_torch_scalars_are_verdicts() -> None:
    """`np.isclose(...)` gives np.bool_, which was "a verifier returned bool, not bool/float"."""
    import numpy as np
    import torch

    from thinkwheel.verifiers.registry import as_verdict

    assert as_verdict(np.isclose(0.1 + 0.2, 0.3)).passed is True
    assert as_verdict(np.float32(0.5)).score == 0.5 and as_verdict(np.float32(0.5)).passed is False
    assert as_verdict(torch.tensor(1.0)).passed is True
    with pytest.raises(TypeError, match="returned ndarray"):
        as_verdict(np.array([True, False]))


def test_raising_plugin_gives_none_not_crash(plugin_module: types.ModuleType) -> None:
    v = get_verifier("tw_test_plugins:boom")
    verdict = v.verify("x", {})
    assert verdict.passed is None and "plugin exploded" in verdict.detail
    assert [x.passed for x in v.verify_batch(["a", "b"], [{}, {}])] == [None, None]


def test_verify_frame_with_plugin(plugin_module: types.ModuleType) -> None:
    tasks = records.frame([{"task_id": "t", "reference": "5", "verifier": "tw_test_plugins:exact"},
                           {"task_id": "b", "reference": "5", "verifier": "tw_test_plugins:boom"}],
                          records.TASKS)
    cands = records.frame([{"candidate_id": "a", "task_id": "t", "completion": "5"},
                           {"candidate_id": "b", "task_id": "b", "completion": "5"}],
                          records.CANDIDATES)
    out = verify_frame(tasks, cands, workers=1, math_timeout_s=1, code_timeout_s=1,
                       percent_policy="fraction", plugins=["tw_test_plugins:exact"])
    assert out["passed"].to_list() == [True, None]


def test_format_weight_requires_the_think_format() -> None:
    """`verify.format_weight` > 0: a right answer outside the <think> format fails (it used to
    be a config key nothing read), a formatted one keeps passing, an unverifiable stays None."""
    tasks = records.frame([{"task_id": "t", "domain": "math", "reference": "12", "verifier": "math"},
                           {"task_id": "u", "reference": "1", "verifier": "no_such_verifier"}],
                          records.TASKS)
    texts = {"ok": "<think>5+7=12</think>\n12", "bare": "12", "wrong": "<think>5+7=13</think>\n13",
             "none": "<think>x</think>\n1"}
    cands = records.frame([{"candidate_id": c, "task_id": "u" if c == "none" else "t",
                            "completion": t, "answer": t.split("\n")[-1]} for c, t in texts.items()],
                          records.CANDIDATES)
    plain = verify_frame(tasks, cands, workers=1)
    assert plain["passed"].to_list() == [True, True, False, None]
    strict = verify_frame(tasks, cands, workers=1, format_weight=0.2)
    assert strict["passed"].to_list() == [True, False, False, None]
    assert strict["reason"][1] == "bad_format" and strict["score"].to_list()[:3] == pytest.approx(
        [1.0, 0.8, 0.2])


def test_entry_point_plugin(plugin_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="tw_ep_exact", value="tw_test_plugins:exact", group=reg.GROUP)
    monkeypatch.setattr(reg, "_entry_points", lambda: {"tw_ep_exact": ep})
    assert ("tw_ep_exact", "entry-point:tw_test_plugins:exact") in list_verifiers()
    assert get_verifier("tw_ep_exact").verify("5", {"reference": "5"}).passed is True


def test_unknown_verifier_raises_keyerror() -> None:
    with pytest.raises(KeyError):
        get_verifier("no_such_verifier")


@pytest.mark.parametrize(
    ("text", "tolerant", "ok"),
    [("<think>a</think>b", True, True), ("a</think>b", True, True), ("a</think>b", False, False),
     ("<think>a</think>", True, False), ("<think>a</think>b</think>c", True, False),
     ("<think><think>a</think>b", True, False), ("x<think>a</think>b", True, False),
     ("<think> </think>b", True, False), ("no tags", True, False),
     ("<think>.</think>.", True, False), ("<think>...</think>5", True, False),
     ("<think>ok</think> - ", True, False), ("<think>7+6=13</think>∞", True, True),
     ("<think>sorted of nothing</think>\n[]", True, True), ("<think>7 vs 3</think>>", True, True),
     ('<think>an empty string</think>""', True, True), ("<think>ok</think>…", True, False),
     ("<think>ok</think>\n\n**", True, False), ("<think>ok</think>$$", True, False),
     ("<think>π/2</think>π", True, True)],
)
def test_think_format(text: str, tolerant: bool, ok: bool) -> None:
    assert check_format(text, tolerant)[0] is ok
    assert get_verifier("think_format", tolerant=tolerant).verify(text, {}).passed is ok


def test_code_fingerprint_follows_a_plugins_source(tmp_path, monkeypatch) -> None:
    """Stage keys hold the plugin's source: a fixed plugin re-verifies instead of leaving the
    buggy one's verdicts in place. Built-ins are left to the recorded version."""
    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "fp_plugin_mod.py"
    src.write_text("def check(completion, task):\n    return True\n")
    first = reg.code_fingerprint(["fp_plugin_mod:check", "math", None])
    assert set(first) == {"fp_plugin_mod:check"}
    src.write_text("def check(completion, task):\n    return 'x' in completion\n")
    assert reg.code_fingerprint(["fp_plugin_mod:check"]) != first
    assert reg.code_fingerprint(["math", "code", "think_format"]) == {}


def test_code_fingerprint_follows_a_plugins_own_helpers(tmp_path, monkeypatch) -> None:
    """A plugin that imports its checks from a helper beside it: a fix in the helper left the
    old verdicts in place, since only the plugin's own file was hashed. Installed packages
    (json, numpy) are the environment's, not followed."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fp_helpers.py").write_text("def close(a, b):\n    return a == b\n")
    (tmp_path / "fp_uses_helpers.py").write_text(
        "import json\nimport numpy as np\nimport fp_helpers\nfrom fp_helpers import close\n\n"
        "def check(completion, task):\n    return close(completion, task['reference'])\n")
    first = reg.code_fingerprint(["fp_uses_helpers:check"])
    assert reg._source_files(reg.resolve("fp_uses_helpers:check")[0])[1:] == [
        str((tmp_path / "fp_helpers.py").resolve())]
    (tmp_path / "fp_helpers.py").write_text("def close(a, b):\n    return a.strip() == b\n")
    assert reg.code_fingerprint(["fp_uses_helpers:check"]) != first


def test_a_raising_plugin_is_named_not_just_counted(plugin_module: types.ModuleType) -> None:
    """A plugin that raises on every candidate read as "passed 0" in the run, its error only in
    verdicts.parquet: the verify stage now says which verifier raised and the first error."""
    from thinkwheel.verifiers.batch import verifier_errors

    tasks = records.frame([{"task_id": "t", "reference": "5", "verifier": "tw_test_plugins:boom"},
                           {"task_id": "u", "reference": "5", "verifier": "math"}], records.TASKS)
    cands = records.frame([{"candidate_id": c, "task_id": t, "completion": "<think>x</think> 5"}
                           for c, t in (("a", "t"), ("b", "t"), ("c", "u"))], records.CANDIDATES)
    verdicts = verify_frame(tasks, cands)
    note = verifier_errors(verdicts)
    assert note is not None and note.startswith("2 of 3 candidates could not be verified")
    assert "tw_test_plugins:boom failed on 2 (first: RuntimeError: plugin exploded)" in note
    assert verifier_errors(verdicts.filter(verdicts["verifier"] == "math")) is None


def test_thinkwheel_verify_names_a_raising_plugin_in_its_summary(plugin_module, tmp_path) -> None:
    """The summary counted `verifier_error: 2`; the error itself was only in the parquet."""
    from thinkwheel.verifiers.files import verify_file

    f = tmp_path / "c.jsonl"
    f.write_text('{"completion": "x"}\n{"completion": "y"}\n')
    summary = verify_file(f, "tw_test_plugins:boom", tmp_path / "v.parquet", workers=1)
    assert summary["reasons"] == {"verifier_error": 2}
    assert "tw_test_plugins:boom failed on 2 (first: RuntimeError: plugin exploded)" in summary["errors"]


def _checks_module(tmp_path, monkeypatch, name: str) -> None:
    """A user's plugin module beside them, registering verifiers by name, as the README shows
    (conftest.py restores the registry after each test)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.py").write_text(
        "from thinkwheel.verifiers import register\n\n"
        f"@register('{name}_exact')\n"
        "def exact():\n"
        "    return lambda completion, task: completion.split('</think>')[-1].strip() == task['reference']\n\n"
        f"@register('{name}_fussy')\n"
        "def fussy():\n"
        "    def check(completion, task):\n"
        "        if 'boom' in completion:\n"
        "            raise ValueError('cannot read it')\n"
        "        return True\n"
        "    return check\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])


def test_a_plugin_module_registers_its_verifiers_for_every_caller(tmp_path, monkeypatch) -> None:
    """`verify.plugins: [mychecks]` imports the module so its @register names resolve: before,
    only "module:callable" specs were loaded, so a task naming `mychecks_exact` was an unknown
    verifier in any process that had not imported mychecks itself (a resumed run, `train grpo`,
    a verl worker). The GRPO reward gets the plugins through the run's verify options."""
    from thinkwheel.config import GRPOTrainConfig, VerifyConfig
    from thinkwheel.train.rewards import grpo_rewards

    _checks_module(tmp_path, monkeypatch, "twmod_a")
    with pytest.raises(reg.UnknownVerifierError, match="twmod_a_exact"):
        reg.resolve("twmod_a_exact")
    correct, _ = grpo_rewards(GRPOTrainConfig(), VerifyConfig(plugins=["twmod_a"]))[0]
    got = correct(completions=["<think>x</think> 4", "<think>x</think> 5"],
                  reference=["4", "4"], verifier=["twmod_a_exact"] * 2)
    assert got == [1.0, 0.0]
    assert ("twmod_a_exact", "register:twmod_a") in list_verifiers()
    with pytest.raises(reg.UnknownVerifierError, match="plugin module 'twmod_nope': cannot import"):
        reg.load_plugins(["twmod_nope"])


def test_a_registered_user_verifier_that_raises_costs_one_verdict(tmp_path, monkeypatch) -> None:
    """@register gave every verifier the origin "builtin", so a user's was not wrapped: one
    candidate that made it raise turned its whole batch into errors, and its source was not
    in the stage keys."""
    _checks_module(tmp_path, monkeypatch, "twmod_b")
    reg.load_plugins(["twmod_b"])
    tasks = records.frame([{"task_id": "t", "reference": "4", "verifier": "twmod_b_fussy"}],
                          records.TASKS)
    cands = records.frame([{"candidate_id": c, "task_id": "t", "completion": text}
                           for c, text in (("a", "fine"), ("b", "boom"), ("c", "fine"))],
                          records.CANDIDATES)
    assert verify_frame(tasks, cands)["passed"].to_list() == [True, None, True]
    first = reg.code_fingerprint(["twmod_b_fussy", "twmod_b"])
    assert set(first) == {"twmod_b_fussy", "twmod_b"}
    (tmp_path / "twmod_b.py").write_text((tmp_path / "twmod_b.py").read_text() + "\n# fixed\n")
    assert reg.code_fingerprint(["twmod_b_fussy", "twmod_b"]) != first


def test_a_plugin_by_file_path_and_a_broken_plugin_module(tmp_path) -> None:
    """`verifier: "./checks.py:fn"` was a TypeError from importlib; a plugin with a SyntaxError
    or one that raises at import reached users as a traceback. A path works, and a broken
    module is one line naming it."""
    (tmp_path / "twfile_checks.py").write_text("def four(completion, task):\n    return '4' in completion\n")
    v = get_verifier(f"{tmp_path}/twfile_checks.py:four")
    assert v.verify("<think>x</think> 4", {}).passed is True
    assert reg.code_fingerprint([f"{tmp_path}/twfile_checks.py:four"])  # its source keys stages
    (tmp_path / "twbroken.py").write_text("def f(:\n")
    with pytest.raises(reg.UnknownVerifierError, match=r"importing .*twbroken.py' failed: SyntaxError"):
        reg.resolve(f"{tmp_path}/twbroken.py:f")
    (tmp_path / "twraises.py").write_text("raise RuntimeError('no config here')\n")
    with pytest.raises(reg.UnknownVerifierError, match="failed: RuntimeError: no config here"):
        reg.load_plugins([f"{tmp_path}/twraises.py"])
    with pytest.raises(reg.UnknownVerifierError, match="cannot import .*nowhere.py"):
        reg.resolve(f"{tmp_path}/nowhere.py:f")


def test_a_plugin_cannot_take_a_built_in_verifiers_name(tmp_path, monkeypatch) -> None:
    """`@register("math")` in a plugin lost to the built-in in a run and replaced it through
    the API, by import order, without a word either way."""
    from thinkwheel.verifiers import UnknownVerifierError, load_plugins

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tw_clash_checks.py").write_text(
        "from thinkwheel.verifiers import register\n\n"
        "@register('math')\n"
        "def anything(completion, task):\n    return True\n")
    with pytest.raises(UnknownVerifierError, match="'math' is a built-in verifier's name"):
        load_plugins(["tw_clash_checks"])
    assert dict(list_verifiers())["math"] == "builtin"
    assert get_verifier("math").verify("<think>x</think>5", {"reference": "6"}).passed is False


def test_a_plugins_bad_score_exit_or_signature_is_a_verifier_error_and_its_time_is_kept(
        plugin_module: types.ModuleType) -> None:
    """A score of 2.0 became a GRPO reward of 2.0 and NaN broke the summary's JSON; a plugin's
    sys.exit() ended `thinkwheel verify` with no word; every plugin verdict read 0 seconds; a
    function taking (completion, task, meta) failed on every row as a "factory"."""
    import math
    import time

    plugin_module.big = lambda completion, task: 2.0
    plugin_module.nan = lambda completion, task: math.nan
    plugin_module.over = lambda completion, task: Verdict(True, 1.5, "ok")
    plugin_module.leaves = lambda completion, task: sys.exit(3)
    plugin_module.slow = lambda completion, task: time.sleep(0.05) or True

    def three(completion, task, meta):  # noqa: ANN001, ANN202
        return True

    plugin_module.three = three
    for name, says in (("big", "score 2.0"), ("nan", "score nan"), ("over", "score 1.5"),
                       ("leaves", "SystemExit: 3")):
        v = get_verifier(f"tw_test_plugins:{name}")
        for verdict in (v.verify("x", {}), v.verify_batch(["x"], [{}])[0]):
            assert verdict.passed is None and verdict.reason == "verifier_error", name
            assert says in verdict.detail, (name, verdict.detail)
    slow = get_verifier("tw_test_plugins:slow")
    assert slow.verify("x", {}).seconds >= 0.04
    assert min(v.seconds for v in slow.verify_batch(["x", "y"], [{}, {}])) >= 0.04
    with pytest.raises(TypeError, match=r"takes \(completion, task\).*requires 3 arguments"):
        get_verifier("tw_test_plugins:three")


def test_verify_summary_names_the_verifiers_the_rows_used(plugin_module, tmp_path) -> None:
    """Rows that name their own verifier were summarised under --verifier's default, "math"."""
    from thinkwheel.verifiers.files import verify_file

    f = tmp_path / "c.jsonl"
    f.write_text('{"completion": "5", "reference": "5", "verifier": "tw_test_plugins:exact"}\n')
    summary = verify_file(f, "math", tmp_path / "v.parquet", workers=1)
    assert summary["verifier"] == "tw_test_plugins:exact" and summary["passed"] == 1
    f.write_text('{"completion": "5", "reference": "5", "verifier": "tw_test_plugins:exact"}\n'
                 '{"completion": "<think>x</think>5", "reference": "5"}\n')
    assert verify_file(f, "math", tmp_path / "v.parquet", workers=1)["verifier"] == \
        "math, tw_test_plugins:exact"
