"""as_reward: TRL GRPO reward functions from verifiers."""

from __future__ import annotations

import asyncio

from thinkwheel.train.rewards import as_async_reward, as_reward, completion_as_text


def test_completion_as_text_forms() -> None:
    assert completion_as_text("x") == "x"
    conv = [{"role": "assistant", "content": "<think>a</think>5"}]
    assert completion_as_text(conv) == "<think>a</think>5"


def test_format_reward_string_and_conversational() -> None:
    reward = as_reward("think_format", weight=0.5)
    out = reward(prompts=["p", "p"], completions=[[{"role": "assistant", "content": "<think>a</think>b"}],
                                                   "no tags"], completion_ids=[[1], [2]])
    assert out == [0.5, 0.0]
    assert reward.__name__ == "think_format_reward"


def test_math_reward_reads_reference_column_and_none_for_bad_reference() -> None:
    reward = as_reward("math", workers=1)
    out = reward(prompts=["q"] * 3, completions=["</think>5", "</think>6", "</think>5"],
                 reference=["5", "5", "\\frac{"])
    assert out == [1.0, 0.0, None]


def test_per_row_verifier_column_and_async_form() -> None:
    reward = as_reward(None)
    out = reward(prompts=["q", "q"], completions=["<think>a</think>b", "</think>\n```python\ndef f(x):\n    return x\n```"],
                 verifier=["think_format", "code"], tests=[None, ["assert f(1) == 1", "assert f(2) == 3"]])
    assert out == [1.0, 0.5]
    areward = as_async_reward("think_format")
    assert asyncio.run(areward(prompts=["q"], completions=["x"])) == [0.0]


def test_check_arithmetic_zeroes_a_lucky_right_answer() -> None:
    lucky = "<think>7+6=15, 3+0+1=4. So 37 + 6 = 43.</think>43"
    honest = "<think>7+6=13, 3+0+1=4. So 37 + 6 = 43.</think>43"
    wrong = "<think>7+6=13. So 37 + 6 = 44.</think>44"
    cols = {"prompts": ["What is 37 + 6?"] * 4, "reference": ["43", "43", "43", "\\frac{"]}
    comps = [lucky, honest, wrong, lucky]
    assert as_reward("math", workers=1)(completions=comps, **cols) == [1.0, 1.0, 0.0, None]
    strict = as_reward("math", workers=1, check_arithmetic=True)
    assert strict(completions=comps, **cols) == [0.0, 1.0, 0.0, None]  # None stays unverifiable
    # moving the false step out of the tags, or dropping the tags, earns nothing either
    moved = ["<think>ok</think>7+6=15, so \\boxed{43}", "7+6=15, 3+0+1=4, so \\boxed{43}"]
    assert strict(completions=moved, prompts=cols["prompts"][:2], reference=["43"] * 2) == [0.0, 0.0]


def test_grpo_rewards_follow_the_config() -> None:
    from thinkwheel.config import GRPOTrainConfig
    from thinkwheel.train.rewards import grpo_rewards

    lucky = "<think>7+6=15, 3+0+1=4. So 37 + 6 = 43.</think>43"
    cols = {"prompts": ["What is 37 + 6?"], "reference": ["43"], "verifier": ["math"]}
    rewards, weights = grpo_rewards(GRPOTrainConfig(format_weight=0.3))
    assert weights == [1.0, 0.3]
    assert rewards[0](completions=[lucky], **cols) == [0.0]
    assert rewards[1](completions=[lucky], **cols) == [1.0]  # the format is fine
    loose, _ = grpo_rewards(GRPOTrainConfig(check_arithmetic=False))
    assert loose[0](completions=[lucky], **cols) == [1.0]
    # the trainer restores a pre-filled <think> before scoring: a text without one wrote none
    untagged = "7+6=13, 3+0+1=4</think>43"
    assert rewards[1](completions=[untagged], **cols) == [1.0]  # tolerant: pre-fill unknown
    strict, _ = grpo_rewards(GRPOTrainConfig(), strict_format=True)
    assert strict[1](completions=[untagged, lucky], **cols) == [0.0, 1.0]


def test_grpo_rewards_judge_with_the_runs_verify_settings() -> None:
    """`verify.percent_policy: number` reads "50%" as 50 in the verify stage and eval; GRPO's
    reward used the library default and scored the same answer 0."""
    from thinkwheel.config import GRPOTrainConfig, VerifyConfig
    from thinkwheel.train.rewards import grpo_rewards

    def task_reward(verify: VerifyConfig | None) -> list[float | None]:
        (correct, _), _ = grpo_rewards(GRPOTrainConfig(), verify)
        return correct(prompts=["q"], completions=["<think>half of 100</think>\n50%"],
                       reference=["50"], verifier=["math"])

    assert task_reward(VerifyConfig(percent_policy="number")) == [1.0]
    assert task_reward(VerifyConfig(percent_policy="fraction")) == [0.0]
    assert task_reward(None) == [0.0]  # no run: the library default, fraction


def test_a_plugin_verifier_sees_the_same_task_in_grpo_as_in_the_verify_stage(tmp_path):
    """A user's row carries an extra field (kept in `meta`); the plugin that judged the flow's
    samples with it must get it again as a GRPO reward, through the exported grpo set."""
    import json
    import sys
    import types

    import polars as pl

    from thinkwheel.config import TaskFilesConfig
    from thinkwheel.curated import export
    from thinkwheel.generators.task_files import load_task_files
    from thinkwheel.train.grpo import grpo_dataset
    from thinkwheel.train.rewards import as_reward
    from thinkwheel.verifiers import verify_frame

    mod = types.ModuleType("tw_meta_plugin")
    prompts_seen = []

    def has_keyword(completion, task):
        prompts_seen.append(task["prompt"])
        return json.loads(task["meta"])["keyword"] in completion

    mod.has_keyword = has_keyword
    sys.modules["tw_meta_plugin"] = mod
    try:
        f = tmp_path / "t.jsonl"
        f.write_text(json.dumps({"prompt": "Name a fruit.", "domain": "text", "keyword": "apple",
                                 "verifier": "tw_meta_plugin:has_keyword"}) + "\n")
        tasks = load_task_files(TaskFilesConfig(paths=[str(f)]))
        cands = pl.DataFrame({"candidate_id": ["a", "b"], "task_id": [tasks["task_id"][0]] * 2,
                              "completion": ["<think>x</think>\napple", "<think>x</think>\npear"]})
        assert verify_frame(tasks, cands)["passed"].to_list() == [True, False]
        grpo = export.grpo_frame(tasks, {}, system_prompt="s")
        columns = {c: grpo[c].to_list() * 2 for c in grpo.columns if c != "prompt"}
        chats = list(grpo_dataset(grpo)["prompt"])  # what TRL hands the reward: the whole chat
        assert chats[0][0] == {"role": "system", "content": "s"}
        reward = as_reward(None)(prompts=chats * 2,
                                 completions=cands["completion"].to_list(), **columns)
        assert reward == [1.0, 0.0]
        assert prompts_seen == ["Name a fruit."] * 4  # the task's text in both
    finally:
        del sys.modules["tw_meta_plugin"]


def test_a_plugin_that_raises_is_said_in_grpo_and_in_the_eval(tmp_path):
    """A plugin that raised gave None rewards, which TRL leaves out: `train grpo` trained on
    the format reward alone and said nothing; the held-out eval counted its tasks as wrong,
    with the error only in eval.json's `unverified`. Both now name the plugin and its error."""
    import sys
    import types

    import polars as pl

    from thinkwheel.config import GRPOTrainConfig, parse_config
    from thinkwheel.engines.base import Completion
    from thinkwheel.flows import steps
    from thinkwheel.flows.progress import Silent, use_reporter
    from thinkwheel.train.rewards import grpo_rewards, unjudged_warning

    mod = types.ModuleType("tw_boom_plugin")

    def boom(completion, task):
        raise RuntimeError("plugin exploded")

    mod.boom = boom
    sys.modules["tw_boom_plugin"] = mod
    try:
        rewards, _ = grpo_rewards(GRPOTrainConfig())
        got = rewards[0](completions=["<think>x</think> 4"] * 3, reference=["4"] * 3,
                         verifier=["tw_boom_plugin:boom", "tw_boom_plugin:boom", "math"])
        assert got[:2] == [None, None] and got[2] == 1.0
        note = unjudged_warning(rewards)
        assert "could not judge 2 of 3 completions" in note
        assert "tw_boom_plugin:boom: RuntimeError: plugin exploded" in note
        assert unjudged_warning(grpo_rewards(GRPOTrainConfig())[0]) is None

        class Said(Silent):
            def __init__(self):
                self.lines = []

            def message(self, text):
                self.lines.append(text)

        class Engine:
            model_name = "e"

            def generate(self, requests, params, progress=None):
                return [[Completion("<think>1+1=2</think>\n2")] * params.n for _ in requests]

        held = pl.DataFrame({"task_id": ["a", "b"], "domain": ["math"] * 2, "family": ["f"] * 2,
                             "prompt": ["1+1?", "2+0?"], "reference": ["2", "2"],
                             "verifier": ["tw_boom_plugin:boom", "math"]})
        from thinkwheel import records

        with use_reporter(Said()) as said:
            result, _ = steps.score_model(parse_config({}), Engine(),
                                          records.conform(held, records.TASKS))
        assert result["accuracy"] == 0.5
        assert any("tw_boom_plugin:boom failed on 1" in line for line in said.lines), said.lines
    finally:
        del sys.modules["tw_boom_plugin"]
