"""The GRPO set in verl's format, scored by our reward function loaded the way verl loads a
custom reward (by file path), with the keywords verl's naive and batch reward managers pass."""

from __future__ import annotations

import importlib.util
import json
import sys

import pandas as pd
import polars as pl
import pytest
from typer.testing import CliRunner

from thinkwheel.config import GRPOTrainConfig
from thinkwheel.curated.export import grpo_frame, write_dataset
from thinkwheel.records import TASKS, conform
from thinkwheel.train import verl_reward


def tasks() -> pl.DataFrame:
    return conform(pl.DataFrame({
        "task_id": ["m1", "c1", "u1"],
        "domain": ["math", "code", "math"],
        "family": ["addition", "add_one", None],
        "prompt": ["What is 7 + 6?", "Write f(x) returning x + 1.", "What is 2 + 2?"],
        "reference": ["13", "def f(x):\n    return x + 1", "not an answer ]["],
        "tests": [None, ["assert f(1) == 2", "assert f(-1) == 0"], None],
        "verifier": ["math", "code", "math"],
        "meta": [None, None, json.dumps({"source": "mine"})],
    }), TASKS)


def load_like_verl():
    """verl's get_custom_reward_fn: spec_from_file_location on custom_reward_function.path."""
    spec = importlib.util.spec_from_file_location("custom_module", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_module"] = module
    spec.loader.exec_module(module)
    return module.compute_score


def test_verl_rows_follow_verls_data_format(tmp_path):
    grpo = grpo_frame(tasks(), {"m1": 0.5, "c1": 0.25})
    info = write_dataset(grpo.head(0), grpo, tmp_path / "out", formats=("verl",))
    assert info["files"] == ["verl/train.parquet"]
    rows = pd.read_parquet(tmp_path / "out" / "verl" / "train.parquet")  # as verl reads it
    assert list(rows.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    from thinkwheel.curated.export import read_dataset  # inspect and train grpo read it too

    for where in (tmp_path / "out", tmp_path / "out" / "verl"):
        assert read_dataset(where)["grpo"].height == len(rows)
    by_task = {r["extra_info"]["task_id"]: r for r in rows.to_dict("records")}
    m = by_task["m1"]
    assert m["data_source"] == "thinkwheel/addition" and m["ability"] == "math"
    assert m["reward_model"] == {"style": "rule", "ground_truth": "13"}
    assert [t["role"] for t in m["prompt"]] == ["system", "user"]
    assert m["prompt"][1]["content"] == "What is 7 + 6?"
    assert list(by_task["c1"]["extra_info"]["tests"]) == ["assert f(1) == 2", "assert f(-1) == 0"]
    assert by_task["u1"]["data_source"] == "thinkwheel/tasks"  # no family


def test_verls_reward_managers_get_our_verifiers(tmp_path):
    grpo = grpo_frame(tasks(), {})
    write_dataset(grpo.head(0), grpo, tmp_path, formats=("verl",))
    rows = {r["extra_info"]["task_id"]: r
            for r in pd.read_parquet(tmp_path / "verl" / "train.parquet").to_dict("records")}
    compute_score = load_like_verl()

    def one(task_id: str, response: str) -> dict:  # verl's NaiveRewardManager, per rollout
        r = rows[task_id]
        return compute_score(data_source=r["data_source"], solution_str=response,
                             ground_truth=r["reward_model"]["ground_truth"],
                             extra_info=dict(r["extra_info"], num_turns=None))

    assert one("m1", "<think>7 + 6 = 13</think>\n13") == {"score": 1.2, "correct": 1.0, "format": 1.0}
    # right answer through a false step: GRPO's rule, no correctness credit
    assert one("m1", "<think>7 + 6 = 12, so 13</think>\n13")["correct"] == 0.0
    # a template that pre-filled <think>: verl decodes the response without it
    assert one("m1", "7 + 6 = 13</think>\n13")["format"] == 1.0
    assert one("m1", "13") == {"score": 1.0, "correct": 1.0, "format": 0.0}  # no thought
    assert one("m1", "<think>7 + 6 is</think>\n14")["score"] == 0.2
    solution = "<think>add one</think>\n```python\ndef f(x):\n    return x + 1\n```"
    assert one("c1", solution)["correct"] == 1.0
    assert one("c1", solution.replace("x + 1", "x + 2"))["correct"] < 1.0
    assert one("u1", "<think>2 + 2 = 4</think>\n4")["correct"] == -1.0  # could not verify

    ids = ["m1", "c1", "m1"]  # verl's BatchRewardManager: one call, plural keywords
    batch = compute_score(
        data_sources=[rows[i]["data_source"] for i in ids],
        solution_strs=["<think>7 + 6 = 13</think>\n13", solution, "<think>x</think>\n14"],
        ground_truths=[rows[i]["reward_model"]["ground_truth"] for i in ids],
        extra_infos=[rows[i]["extra_info"] for i in ids],
    )
    assert [s["correct"] for s in batch] == [1.0, 1.0, 0.0]

    # a run's own reward settings, through verl's reward_kwargs: its config file
    cfg = tmp_path / "config.yaml"
    cfg.write_text("train: {grpo: {format_weight: 0.5, check_arithmetic: false}}\n")
    lucky = dict(data_source=rows["m1"]["data_source"], solution_str="<think>7 + 6 = 12, so 13</think>\n13",
                 ground_truth=rows["m1"]["reward_model"]["ground_truth"], extra_info=rows["m1"]["extra_info"])
    assert compute_score(**lucky)["score"] == 0.2  # the defaults: no credit for a false step
    assert compute_score(**lucky, config=str(cfg))["score"] == 1.5


def test_export_command_writes_verl_and_says_how_to_train(tmp_path):
    from thinkwheel.cli import app
    from thinkwheel.config import RunConfig
    from thinkwheel.store import RunStore

    store = RunStore.create(tmp_path / "run", RunConfig(name="v"))
    grpo = grpo_frame(tasks(), {})
    write_dataset(grpo.head(0), grpo, store.round_dir(0) / "curated", formats=("parquet",))
    store.mark_stage(0, "export", count=0)
    r = CliRunner().invoke(app, ["export", str(store.root), "--format", "verl",
                                 "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "wrote 3 GRPO prompts" in said and "custom_reward_function.name=compute_score" in said
    assert f"custom_reward_function.path={verl_reward.__file__}" in r.output  # soft-wrapped
    config = (store.root / "config.yaml").resolve()
    assert f"+custom_reward_function.reward_kwargs.config={config}" in r.output
    assert pd.read_parquet(tmp_path / "v" / "verl" / "train.parquet").shape[0] == 3


def test_grpo_reads_a_verl_set_and_refuses_one_it_cannot_reward(tmp_path):
    """`thinkwheel train grpo` on a verl-format file used to train on the format reward alone:
    the answer sat in reward_model.ground_truth, every correctness reward was None, and
    nothing said so. Now the answer is read there, and a set with none is refused."""
    from thinkwheel.train.grpo import verifiable_prompts
    from thinkwheel.train.rewards import grpo_rewards

    theirs = pl.DataFrame({
        "data_source": ["x", "x"],
        "prompt": [[{"role": "user", "content": "What is 10 + 3?"}],
                   [{"role": "user", "content": "What is 2 + 2?"}]],
        "reward_model": [{"style": "rule", "ground_truth": "13"}, {"style": "rule", "ground_truth": "4"}],
    })
    g = verifiable_prompts(theirs)
    assert g["reference"].to_list() == ["13", "4"] and g["verifier"].to_list() == ["math", "math"]
    (correct, _), _ = grpo_rewards(GRPOTrainConfig())
    scores = correct(completions=["<think>10 + 3 = 13</think>\n13", "<think>2 + 2 = 5</think>\n5"],
                     **{c: g[c].to_list() for c in ("reference", "tests", "verifier")})
    assert scores == [1.0, 0.0]

    # our own verl export round-trips: tests and verifier come back out of extra_info
    ours = grpo_frame(tasks(), {})
    write_dataset(ours.head(0), ours, tmp_path, formats=("verl",))
    back = verifiable_prompts(pl.read_parquet(tmp_path / "verl" / "train.parquet"))
    by_verifier = dict(zip(back["verifier"], back["tests"].to_list(), strict=True))
    assert by_verifier["code"] == ["assert f(1) == 2", "assert f(-1) == 0"]

    bare = theirs.drop("reward_model")
    with pytest.raises(ValueError, match="no prompt in this GRPO set has a reference or tests"):
        verifiable_prompts(bare)
    bare.write_parquet(tmp_path / "bare.parquet")
    from thinkwheel.cli import app

    r = CliRunner().invoke(app, ["train", "grpo", str(tmp_path / "bare.parquet"), "--out",
                                 str(tmp_path / "m")])
    assert r.exit_code == 2 and "correctness reward would score nothing" in " ".join(r.output.split())
    assert not (tmp_path / "m").exists()
