"""End to end: the Prefect flow on the bundled model, and SIGKILL-then-resume via the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from thinkwheel.config import parse_config
from thinkwheel.store import RunStore, model_hash

pytestmark = pytest.mark.slow

SMALL = {
    "name": "e2e",
    "rounds": 2,
    "generate": {"procedural": {"per_family": 2}},
    "sampling": {"n": 3, "shard_size": 4, "max_tokens": 120},
    "train": {"sft": {"max_steps": 3, "batch_size": 8}},
    "eval": {"per_family": 1, "max_tokens": 120},
}


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from thinkwheel.flows.flywheel import run

    out = tmp_path_factory.mktemp("runs") / "e2e"
    with prefect_test_harness(server_startup_timeout=180):
        summary = run(parse_config(SMALL), out)
    return out, summary


def test_flow_runs_every_stage_of_both_rounds(flow_run):
    out, summary = flow_run
    store = RunStore(out)
    m = store.manifest()
    for k in ("0", "1"):
        stages = m["rounds"][k]["stages"]
        assert {"tasks", "sample", "verify", "filter", "export", "eval"} <= set(stages)
        assert all(s["status"] == "done" for s in stages.values())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["base"]["n"] == 9  # one held-out task per family
    for k in (0, 1):
        ev = json.loads((out / f"round-{k}" / "eval.json").read_text())
        assert 0.0 <= ev["accuracy"] <= 1.0 and set(ev["per_family"]) >= {"addition", "count_char"}
    assert (out / "report.html").stat().st_size > 10_000
    assert "<td>base</td>" in (out / "report.html").read_text()  # the base model's accuracy row


def test_round_tables_are_consistent(flow_run):
    out, _ = flow_run
    store = RunStore(out)
    for k in (0, 1):
        tasks = store.read_table(k, "tasks").filter(pl.col("drop_reason").is_null())
        cands = store.read_table(k, "candidates")
        verdicts = store.read_table(k, "verdicts")
        filtered = store.read_table(k, "filtered")
        assert cands.height == tasks.height * SMALL["sampling"]["n"]
        assert cands["candidate_id"].n_unique() == cands.height
        assert set(verdicts["candidate_id"]) == set(cands["candidate_id"])
        assert set(filtered["candidate_id"]) == set(cands["candidate_id"])
        # a kept candidate passed verification; nothing is dropped without a reason
        kept = filtered.filter(pl.col("drop_reason").is_null())["candidate_id"]
        passed = verdicts.filter(pl.col("passed"))["candidate_id"]
        assert set(kept) <= set(passed)


def test_next_round_samples_from_the_previous_rounds_model(flow_run):
    out, _ = flow_run
    store = RunStore(out)
    trained = out / "round-0" / "model"
    if store.stage_entry(0, "train") is None:
        pytest.skip("round 0 kept no sample, so no model was trained")
    models = set(store.read_table(1, "candidates")["model"])
    assert models == {f"model@{model_hash(trained)}"}
    assert set(store.read_table(0, "candidates")["model"]) != models


def test_continue_strategy_trains_on_this_rounds_curated_set(flow_run):
    out, _ = flow_run
    store = RunStore(out)
    if store.stage_entry(1, "train") is None:
        pytest.skip("round 1 kept no sample, so no model was trained")
    sizes = [pl.read_parquet(out / f"round-{k}" / "curated" / "sft.parquet").height for k in (0, 1)]
    # strategy "continue" with accumulate unset: round 1's data only, not round 0's again
    assert store.stage_entry(1, "train")["count"] == sizes[1]


def test_verify_resumes_from_its_finished_shards(flow_run, tmp_path, monkeypatch):
    """A crash mid-verify loses at most the shard in flight: the re-run checks only the
    shards that had not been written, and the verdicts are those of one uninterrupted pass."""
    import shutil

    import thinkwheel.verifiers as verifiers
    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store, cfg = RunStore(run), parse_config(SMALL)
    whole = store.read_table(0, "verdicts")
    cands = store.read_table(0, "candidates")
    # as if verified for the first time
    store.mark_stage(0, "verify", input_hash="x", config_hash="x", count=0, seconds=0, outputs=[])
    monkeypatch.setattr(steps, "VERIFY_SHARD", 10)
    real, checked = verifiers.verify_frame, []

    def crash_on_third(tasks, shard, **kw):
        if len(checked) == 2:
            raise KeyboardInterrupt("killed")
        checked.append(shard.height)
        return real(tasks, shard, **kw)

    monkeypatch.setattr(verifiers, "verify_frame", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        steps.verify(store, cfg, 0)
    checked.clear()
    monkeypatch.setattr(verifiers, "verify_frame",
                        lambda tasks, shard, **kw: checked.append(shard.height) or real(tasks, shard, **kw))
    again = steps.verify(store, cfg, 0)
    shards = (cands.height + 9) // 10
    assert len(checked) == shards - 2 and sum(checked) == cands.height - 20
    assert store.stage_entry(0, "verify")["shards_reused"] == 2
    assert again.drop("seconds").equals(whole.drop("seconds"))
    assert not (run / "round-0" / "shards" / "verify").exists()  # verdicts stored: a copy


def test_new_verdicts_redo_filter_and_export(flow_run, tmp_path):
    """Re-verifying under new settings (verify.format_weight, a plugin) keeps every candidate id
    and changes who passed: filter and export must see it. They were keyed by ids alone, so a
    re-run kept training on the old verdicts."""
    import shutil

    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store, cfg = RunStore(run), parse_config(SMALL)
    assert store.read_table(0, "filtered")["drop_reason"].is_null().any()
    verdicts = store.read_table(0, "verdicts").with_columns(passed=pl.lit(False))
    store.write_table(0, "verdicts", verdicts)
    filtered = steps.filter_and_select(store, cfg, 0)
    assert filtered["drop_reason"].is_not_null().all()
    assert steps.export(store, cfg, 0, "m")["sft"] == 0
    assert pl.read_parquet(run / "round-0" / "curated" / "sft.parquet").height == 0


def test_export_settings_re_export_without_re_filtering(flow_run, tmp_path):
    """The filter stage reads the filters, the per-task cap and verified_only: the export's
    formats, license or DPO pairs re-ran it (its key held the whole export section)."""
    import shutil

    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    before = store.stage_entry(0, "filter")["finished_at"]
    cfg = parse_config({**SMALL, "export": {"formats": ["jsonl"], "dpo_pairs_per_task": 0,
                                            "license": "mit"}})
    steps.filter_and_select(store, cfg, 0)
    assert store.stage_entry(0, "filter")["finished_at"] == before
    cfg.sampling.keep_per_task = 1
    steps.filter_and_select(store, cfg, 0)
    assert store.stage_entry(0, "filter")["finished_at"] > before


def test_an_export_without_parquet_still_feeds_training(flow_run, tmp_path):
    """`export.formats: [verl]` (or [jsonl], [hf]) is extra copies: the parquet the trainers read
    is written anyway. It was not, and SFT found no data, carried the model forward and said
    only "no curated samples" while the funnel showed hundreds kept."""
    import shutil

    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store = RunStore(run)
    curated = run / "round-0" / "curated"
    kept = pl.read_parquet(curated / "sft.parquet").height
    if kept == 0:
        pytest.skip("round 0 kept no sample, so nothing to train on")
    shutil.rmtree(curated)
    cfg = parse_config({**SMALL, "export": {"formats": ["verl"]}})
    assert steps.export(store, cfg, 0, "m")["sft"] == kept
    assert (curated / "verl").is_dir() and not (curated / "hf").exists()
    assert steps._curated(store, [0], "sft").height == kept
    (curated / "sft.parquet").unlink()  # a run an older version exported this way: redone
    assert steps.export(store, cfg, 0, "m")["sft"] == kept and (curated / "sft.parquet").is_file()


def test_grpo_runs_without_sft_from_the_rounds_start_model(flow_run, tmp_path):
    """`train.sft.enabled: false` with GRPO on (RL straight on an instruct model): GRPO trains
    from the round's start model. The flow used to skip the train stage whenever SFT was off,
    so GRPO never ran, and nothing said so."""
    import shutil

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.curated.export import grpo_frame, task_pass_rates
    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store = RunStore(run)
    shutil.rmtree(run / "round-0" / "model", ignore_errors=True)
    curated = run / "round-0" / "curated"
    tasks, verdicts = store.read_table(0, "tasks"), store.read_table(0, "verdicts")
    grpo = {"enabled": True, "max_steps": 2, "num_generations": 2, "batch_size": 2,
            "max_completion_length": 16}
    cfg = parse_config({**SMALL, "train": {"sft": {"enabled": False}, "grpo": grpo}})
    assert [n for n, _ in cfg.train.trainers()] == ["grpo"]

    grpo_frame(tasks.head(0), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    assert steps.train(store, cfg, 0, str(MODEL_DIR)) == str(MODEL_DIR)  # no prompts: no model
    assert not (run / "round-0" / "model").exists()

    grpo_frame(tasks.head(4), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    model = steps.train(store, cfg, 0, str(MODEL_DIR))
    stages = store.manifest()["rounds"]["0"]["stages"]
    assert model == str(run / "round-0" / "model") and Path(model, "config.json").is_file()
    assert stages["train.grpo"]["metrics"]["global_step"] == 2 and stages["train"]["steps"] == 2
    assert stages["train.grpo"]["published"] and (run / "round-0" / "logs" / "grpo.jsonl").is_file()


def test_a_round_without_sft_samples_still_runs_grpo_and_never_falls_back_to_the_base(
        flow_run, tmp_path):
    """A round can keep no SFT sample (every passing one stated a false step) and still have
    GRPO prompts in the pass-rate band: the train stage returned before any trainer, so GRPO
    never ran, and under from_base it handed the base model to the next round, whose sampling
    then threw away every earlier round's training."""
    import shutil

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.curated.export import grpo_frame, task_pass_rates
    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store = RunStore(run)
    curated = run / "round-0" / "curated"
    tasks, verdicts = store.read_table(0, "tasks"), store.read_table(0, "verdicts")
    sft = curated / "sft.parquet"
    pl.read_parquet(sft).head(0).write_parquet(sft)
    grpo = {"enabled": True, "max_steps": 2, "num_generations": 2, "batch_size": 2,
            "max_completion_length": 16}
    cfg = parse_config({**SMALL, "train": {"strategy": "from_base", "grpo": grpo}})
    assert [n for n, _ in cfg.train.trainers()] == ["sft", "grpo"]

    # no SFT sample and no GRPO prompt: the round keeps the model it sampled with
    grpo_frame(tasks.head(0), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    assert steps.train(store, cfg, 0, str(MODEL_DIR), carry_model="the-round-0-sampler") == (
        "the-round-0-sampler")
    assert not (run / "round-0" / "model").exists()

    grpo_frame(tasks.head(4), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    model = steps.train(store, cfg, 0, str(MODEL_DIR), carry_model="the-round-0-sampler")
    stages = store.manifest()["rounds"]["0"]["stages"]
    assert model == str(run / "round-0" / "model") and Path(model, "config.json").is_file()
    assert stages["train.sft"]["metrics"] == {"skipped": "no curated samples"}
    assert stages["train.grpo"]["metrics"]["global_step"] == 2 and stages["train.grpo"]["published"]
    logs = sorted(p.name for p in (run / "round-0" / "logs").glob("*.jsonl"))
    assert logs == ["grpo.jsonl"]  # no SFT curve from the flow's own run: it is not this model's


def test_a_trainer_that_no_longer_runs_leaves_no_curve_or_record(flow_run, tmp_path):
    """Re-run with GRPO off (or skipped for want of prompts), a round kept the GRPO curves and
    `train.grpo` record of its earlier run, and the report drew them for a model trained
    without GRPO."""
    import shutil

    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    logs = out / "round-0" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in ("grpo", "dpo"):
        (logs / f"{name}.jsonl").write_text('{"loss": 1.0}\n')
        store.mark_stage(0, f"train.{name}", input_hash="a", config_hash="b", outputs=[])
    steps._forget_trainers(store, 0, {"sft", "dpo"})  # a config without GRPO
    assert not (logs / "grpo.jsonl").exists() and store.stage_entry(0, "train.grpo") is None
    assert (logs / "dpo.jsonl").exists() and store.stage_entry(0, "train.dpo") is not None

    plan = parse_config({**SMALL, "train": {"dpo": {"enabled": True}}}).train.trainers()
    once = steps._Trainers(store, 0, "start", out / "round-0" / "model", plan,
                           {name: "data" for name, _ in plan})
    assert once("dpo", lambda: {"skipped": "no pairs"}) == {"skipped": "no pairs"}
    assert not (logs / "dpo.jsonl").exists()  # skipped: the old curve is not this model's
    assert store.stage_entry(0, "train.dpo")["published"] is False


def test_train_stage_runs_sft_dpo_grpo_and_keeps_every_curve(flow_run, tmp_path, monkeypatch):
    """DPO and GRPO on in the flow's train stage: SFT, then TRL's DPOTrainer on the round's dpo
    split, then GRPOTrainer on its GRPO prompts with the verifier rewards. Each stage
    republishes the model folder; every trainer's curves must survive and reach the report."""
    import shutil

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.curated.export import dpo_frame, grpo_frame, task_pass_rates
    from thinkwheel.curated.report import read_round_logs, read_train_log
    from thinkwheel.flows import steps

    out, _ = flow_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    store = RunStore(run)
    curated = run / "round-0" / "curated"
    if pl.read_parquet(curated / "sft.parquet").height == 0:
        pytest.skip("round 0 kept no sample, so nothing to train on")
    # A tiny run may have no prompt in the pass-rate band and no task with both a kept and a
    # failed sample: the same exports, without the band, with every verdict of one task flipped.
    tasks, verdicts = store.read_table(0, "tasks"), store.read_table(0, "verdicts")
    grpo_frame(tasks.head(4), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    kept = pl.read_parquet(curated / "sft.parquet")["candidate_id"][0]
    cands = store.read_table(0, "candidates")
    task = cands.filter(pl.col("candidate_id") == kept)["task_id"].item()
    failed = pl.concat([cands.filter(pl.col("task_id") == task).with_columns(
        candidate_id=pl.col("candidate_id") + "-f", sample_idx=pl.col("sample_idx") + 100)])
    dpo = dpo_frame(
        tasks, pl.concat([cands, failed]),
        pl.concat([verdicts, failed.select("candidate_id").with_columns(passed=pl.lit(False))],
                  how="diagonal_relaxed"),
        store.read_table(0, "filtered"), "sys",
    )
    assert dpo.height >= 1
    dpo.write_parquet(curated / "dpo.parquet")
    grpo = {"enabled": True, "max_steps": 3, "num_generations": 2, "batch_size": 2,
            "max_completion_length": 32}
    cfg = parse_config({**SMALL, "train": {
        "sft": {"max_steps": 2, "batch_size": 8}, "grpo": grpo, "checkpoint_minutes": 0,
        "dpo": {"enabled": True, "max_steps": 2, "batch_size": 1, "nll_weight": 1.0},
    }})  # fmt: skip

    # A crash in GRPO's second step: the re-run does not redo SFT and DPO, which had
    # published the model, and GRPO resumes from its step-1 checkpoint.
    from transformers import TrainerCallback

    class CrashInGrpo(TrainerCallback):
        def on_log(self, args, state, control, **kw):  # noqa: ANN001
            if type(args).__name__ == "GRPOConfig" and state.global_step == 2:
                raise KeyboardInterrupt("killed")

    before = store.manifest()["rounds"]["0"]["stages"]
    with monkeypatch.context() as m:
        m.setattr(steps, "step_callbacks", lambda: [CrashInGrpo()])
        with pytest.raises(KeyboardInterrupt):
            steps.train(store, cfg, 0, str(MODEL_DIR))
    done = store.manifest()["rounds"]["0"]["stages"]
    assert done["train"] == before["train"]  # the flow's own run of the stage, not this one
    assert {"train.sft", "train.dpo"} <= done.keys() and "train.grpo" not in done

    model = steps.train(store, cfg, 0, str(MODEL_DIR))

    after = store.manifest()["rounds"]["0"]["stages"]
    for trainer in ("train.sft", "train.dpo"):
        assert after[trainer]["finished_at"] == done[trainer]["finished_at"]  # not redone
    assert after["train.grpo"]["metrics"]["resumed_from_step"] == 1
    assert after["train"]["steps"] == after["train.sft"]["metrics"]["global_step"] == 2

    # GRPO's settings change after it finished. When its model replaced DPO's (made certain
    # here: a few GRPO steps on a tiny set may leave the weights as they were), DPO's model is
    # gone, so the chain is redone from SFT rather than GRPO stacked on the old GRPO's model.
    from safetensors.torch import load_file, save_file

    weights = load_file(Path(model) / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01
    save_file(weights, Path(model) / "model.safetensors", metadata={"format": "pt"})
    regrpo = cfg.model_copy(deep=True)
    regrpo.train.grpo.learning_rate = 2e-5
    steps.train(store, regrpo, 0, str(MODEL_DIR))
    again = store.manifest()["rounds"]["0"]["stages"]
    assert all(again[t]["finished_at"] > after[t]["finished_at"] for t in ("train.sft", "train.grpo"))
    assert "resumed_from_step" not in again["train.grpo"]["metrics"]

    # Only the GRPO prompts change (a new export.grpo band, say): same SFT data, same settings,
    # and still GRPO trains on the new prompts; the stage used to be keyed by the SFT ids alone.
    grpo_frame(tasks.head(3), task_pass_rates(verdicts)).write_parquet(curated / "grpo.parquet")
    steps.train(store, regrpo, 0, str(MODEL_DIR))
    third = store.manifest()["rounds"]["0"]["stages"]
    assert third["train"]["finished_at"] > again["train"]["finished_at"]
    assert third["train.grpo"]["finished_at"] > again["train.grpo"]["finished_at"]
    assert third["train.grpo"]["metrics"]["global_step"] == 3
    assert model == str(run / "round-0" / "model") and (Path(model) / "config.json").is_file()
    logs = {s: read_train_log(run / "round-0" / "logs" / f"{s}.jsonl") for s in ("sft", "dpo", "grpo")}
    assert any("loss" in r for r in logs["sft"]) and not any("reward" in r for r in logs["sft"])
    assert any("rewards/margins" in r for r in logs["dpo"])
    assert any("reward" in r for r in logs["grpo"])
    keys = {key for r in read_round_logs(run / "round-0") for key in r}
    assert {"loss", "dpo rewards/margins", "grpo reward", "grpo loss"} <= keys


def test_exported_sft_set_is_think_formatted_chat(flow_run):
    out, _ = flow_run
    sft = pl.read_parquet(out / "round-0" / "curated" / "sft.parquet")
    cands = RunStore(out).read_table(0, "candidates")
    by_id = {r["candidate_id"]: r for r in cands.iter_rows(named=True)}
    for row in sft.iter_rows(named=True):
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        c = by_id[row["candidate_id"]]
        assert row["messages"][2]["content"] == f"<think>{c['reasoning']}</think>\n{c['answer']}"
    from datasets import load_from_disk

    ds = load_from_disk(str(out / "round-0" / "curated" / "hf"))
    assert ds["sft"].num_rows == sft.height


def test_exported_dpo_pairs_kept_against_failed_samples_of_one_task(flow_run):
    out, _ = flow_run
    store = RunStore(out)
    for k in (0, 1):
        dpo = pl.read_parquet(out / f"round-{k}" / "curated" / "dpo.parquet")
        sft = pl.read_parquet(out / f"round-{k}" / "curated" / "sft.parquet")
        passed = dict(store.read_table(k, "verdicts").select("candidate_id", "passed").iter_rows())
        drop = dict(store.read_table(k, "filtered").select("candidate_id", "drop_reason").iter_rows())
        assert set(dpo["chosen_id"]) <= set(sft["candidate_id"])
        for r in dpo.iter_rows(named=True):
            assert passed[r["rejected_id"]] is False or drop[r["rejected_id"]] == "false_arithmetic"
        assert store.stage_entry(k, "export")["dpo"] == dpo.height
        assert "**dpo**" in (out / f"round-{k}" / "curated" / "README.md").read_text()

def test_rerun_skips_finished_stages(flow_run):
    from prefect.testing.utilities import prefect_test_harness

    from thinkwheel.flows.flywheel import run
    from thinkwheel.flows.progress import Silent, use_reporter

    class Said(Silent):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    out, _ = flow_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    with prefect_test_harness(server_startup_timeout=180), use_reporter(Said()) as said:
        run(parse_config(SMALL), out)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert before == after  # nothing was rewritten
    # and the run says what it reused: before, a resumed run listed nothing it skipped
    reused = [line for line in said.lines if "done before, reused" in line]
    stages = ("tasks", "sample", "verify", "filter", "export", "train", "eval")
    assert len(reused) == 1 + 2 * len(stages) and "base model: eval" in reused[0]
    ncands = RunStore(out).read_table(1, "candidates").height
    assert f"round 1: sample ({ncands}) done before, reused" in " ".join(reused)


def test_the_sample_stage_records_only_its_own_calls(flow_run, tmp_path):
    """The flow keeps one engine per model, so a served model's call counts already held the
    base eval's calls when sampling began; the stage recorded (and warned about) those too."""
    import shutil
    from collections import Counter

    from thinkwheel.engines.base import Completion
    from thinkwheel.flows import steps

    class Served:
        def __init__(self):
            self.stats = Counter({"calls": 40, "retry:timeout": 3})  # the base eval's

        def generate(self, requests, params, progress=None):
            self.stats["calls"] += len(requests)
            return [[Completion("<think>1+1=2</think> 2", "stop", 5)] * params.n for _ in requests]

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config({**SMALL, "sampling": {**SMALL["sampling"], "seed": 9}})
    tasks = store.read_table(0, "tasks").filter(pl.col("drop_reason").is_null())
    steps.sample(store, cfg, 0, "model-x", lambda model_dir: Served())
    assert store.stage_entry(0, "sample")["calls"] == {"calls": tasks.height}


def test_a_served_models_over_context_samples_are_asked_again_and_a_whole_stage_stops(
        flow_run, tmp_path):
    """The run's warning says to serve a longer context, but a finished sample stage kept the
    empty answers for good: a re-run sent nothing. They are asked for again (only they), under
    the same candidate ids (or kept, when the server is down now). A stage the server refused
    whole is the budget, not the tasks: the run stops and says so, rather than finishing with
    nothing kept; one long task in a shard of its own is no such thing."""
    import shutil

    from thinkwheel.engines.base import OVER_CONTEXT, Completion
    from thinkwheel.engines.openai import EngineError
    from thinkwheel.flows import steps

    class Served:
        def __init__(self, refuse):
            self.refuse, self.asked = refuse, []

        def generate(self, requests, params, progress=None):
            prompts = [r[-1]["content"] for r in requests]
            self.asked += prompts
            return [[OVER_CONTEXT if self.refuse(p) else Completion(f"<think>{p}</think> 2", "stop", 5)]
                    * params.n for p in prompts]

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    cfg = parse_config({**SMALL, "engine": {"kind": "openai", "model": "m"},
                        "train": {"sft": {"enabled": False}},
                        "sampling": {**SMALL["sampling"], "seed": 9}})
    prompts = store.read_table(0, "tasks").filter(pl.col("drop_reason").is_null())["prompt"]
    cfg.sampling.shard_size = len(prompts) - 1  # the last task is a shard of its own
    long = {prompts[0], prompts[-1]}
    steps.sample(store, cfg, 0, "model-x", lambda m: Served(lambda p: p in long))
    first = store.read_table(0, "candidates")
    assert (first["finish_reason"] == "context_length").sum() == 2 * cfg.sampling.n

    class Down(Served):
        def generate(self, requests, params, progress=None):
            raise EngineError("gave up after 11 attempts (last: transport:ConnectError)")

    assert steps.sample(store, cfg, 0, "model-x", lambda m: Down(None)).equals(first)

    longer = Served(lambda p: False)  # the server, restarted with a longer context
    cands = steps.sample(store, cfg, 0, "model-x", lambda m: longer)
    assert sorted(longer.asked) == sorted(long)
    assert cands["candidate_id"].to_list() == first["candidate_id"].to_list()
    assert (cands["finish_reason"] == "context_length").sum() == 0
    assert store.read_table(0, "candidates").equals(cands)
    assert store.stage_done(0, "sample", store.stage_entry(0, "sample")["input_hash"],
                            store.stage_entry(0, "sample")["config_hash"])
    again = Served(lambda p: False)
    steps.sample(store, cfg, 0, "model-x", lambda m: again)
    assert again.asked == []  # nothing over the context is left to ask for

    cfg.sampling.seed = 10  # a new stage; the server refuses every request
    with pytest.raises(EngineError, match=r"refused all \d+ requests as longer.*sampling.max_tokens"):
        steps.sample(store, cfg, 0, "model-x", lambda m: Served(lambda p: True))
    longer = Served(lambda p: False)
    steps.sample(store, cfg, 0, "model-x", lambda m: longer)  # its empty shards were not kept
    assert len(longer.asked) == len(prompts)


def test_sampling_is_kept_when_only_export_settings_change(flow_run, tmp_path):
    """Switching formats, verified_only or keep_per_task re-filters and re-exports, never
    re-samples; a new system prompt changes what the model sees, so it does re-sample, and
    verify then judges the new text."""
    import shutil

    from thinkwheel.engines.factory import make_engine, resolve_model
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    first = store.read_table(0, "candidates").sort("candidate_id")
    cfg = parse_config(SMALL)
    model = resolve_model(cfg.engine)
    calls = []

    def engines(model_dir):
        calls.append(model_dir)
        return make_engine(cfg.engine, model_dir)

    before = store.stage_entry(0, "sample")["finished_at"]
    cfg.export.verified_only, cfg.export.formats = False, ["jsonl"]
    # and the curation settings under `sampling`, which only the filter and export read
    cfg.sampling.keep_per_task, cfg.sampling.grpo_pass_band = 1, (0.1, 0.9)
    # and what only spreads the work (lowered after running out of memory): not what is said
    cfg.engine.batch_size, cfg.engine.gpu_memory_utilization, cfg.sampling.shard_size = 8, 0.5, 7
    steps.sample(store, cfg, 0, model, engines)
    assert calls == [] and store.stage_entry(0, "sample")["finished_at"] == before
    cfg.export.system_prompt = "Answer briefly."
    from thinkwheel.flows.progress import Silent, use_reporter

    class Recording(Silent):
        def __init__(self):
            self.steps = []

        def advance(self, n=1):
            self.steps.append(n)

    cfg.engine.batch_size = 4  # a shard (4 tasks x 3 samples) takes three engine batches
    with use_reporter(Recording()) as rec:
        cands = steps.sample(store, cfg, 0, model, engines)
    assert calls == [model] and store.stage_entry(0, "sample")["finished_at"] > before
    # the bar moves as the engine finishes batches, not once per shard, and ends at the total
    shards = -(-cands.height // (cfg.sampling.shard_size * cfg.sampling.n))
    assert sum(rec.steps) == cands.height and len([n for n in rec.steps if n]) > shards

    # the new text keeps its candidate ids (task, model, sampling settings): verify is keyed
    # by the text it judges, so it re-judges; it used to be keyed by the ids and kept the old
    # verdicts, and filter and export then curated the new text as the old text had passed
    old = store.read_table(0, "verdicts")
    judged = store.stage_entry(0, "verify")["finished_at"]
    new = cands.sort("candidate_id")
    assert new["candidate_id"].equals(first["candidate_id"])
    assert not new["completion"].equals(first["completion"])
    steps.verify(store, cfg, 0)
    assert store.stage_entry(0, "verify")["finished_at"] > judged
    assert set(store.read_table(0, "verdicts")["candidate_id"]) == set(old["candidate_id"])


@pytest.mark.parametrize("change", ["reorder", "shard_size"])
def test_reordered_tasks_do_not_reuse_sample_shards(flow_run, tmp_path, change):
    """Shard i is the i-th slice of the tasks in their order: after a crash, the same tasks in
    another order (a reordered mix or task file) must not take the old shards for other rows.
    The shard key was order-free, so some tasks got no samples and others two sets. Nor may
    slices of another size (the shard size is no longer in the stage's config hash)."""
    import shutil

    from thinkwheel.engines.factory import make_engine, resolve_model
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config(SMALL)
    model = resolve_model(cfg.engine)
    store.mark_stage(0, "sample", input_hash="x", config_hash="x", outputs=[])  # as if new
    shards = []

    class CrashAfterOneShard:
        def __init__(self, engine):
            self.engine = engine

        def generate(self, reqs, params, progress=None):
            if shards:
                raise KeyboardInterrupt("killed")
            shards.append(len(reqs))
            return self.engine.generate(reqs, params, progress=progress)

    def crashing(model_dir):
        return CrashAfterOneShard(make_engine(cfg.engine, model_dir))

    with pytest.raises(KeyboardInterrupt):
        steps.sample(store, cfg, 0, model, crashing)
    tasks = store.read_table(0, "tasks")
    if change == "reorder":
        store.write_table(0, "tasks", tasks.reverse())  # the same tasks, reordered
    else:
        cfg.sampling.shard_size = 3
    cands = steps.sample(store, cfg, 0, model, lambda m: make_engine(cfg.engine, m))
    assert store.stage_entry(0, "sample")["shards_reused"] == 0
    per_task = cands.group_by("task_id").len()["len"]
    live = tasks.filter(pl.col("drop_reason").is_null()).height
    assert per_task.len() == live and (per_task == cfg.sampling.n).all()


def test_a_round_left_with_nothing_to_train_keeps_no_stale_model(flow_run, tmp_path):
    """A config change that left a round no curated sample carried the model forward, but the
    earlier run's round-k/model, its curves and its train records stayed: a model trained on
    data the run no longer has, under the name of the round's model."""
    import shutil

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config(SMALL)
    if store.stage_entry(0, "train") is None:
        pytest.skip("round 0 kept no sample, so it trained nothing")
    assert (out / "round-0" / "model").is_dir() and list((out / "round-0" / "logs").glob("*.jsonl"))
    again = tmp_path / "again"
    shutil.copytree(out, again)
    sft = out / "round-0" / "curated" / "sft.parquet"
    pl.read_parquet(sft).head(0).write_parquet(sft)
    assert steps.train(store, cfg, 0, str(MODEL_DIR)) == str(MODEL_DIR)
    assert not (out / "round-0" / "model").exists()
    assert not list((out / "round-0" / "logs").glob("*.jsonl"))
    assert [s for s in store.manifest()["rounds"]["0"]["stages"] if s.startswith("train")] == []

    # SFT off (as a served engine needs) and DPO with no pair: every trainer skipped
    store = RunStore(again)
    cfg = parse_config({**SMALL, "train": {"sft": {"enabled": False}, "dpo": {"enabled": True}}})
    dpo = again / "round-0" / "curated" / "dpo.parquet"
    pl.read_parquet(dpo).head(0).write_parquet(dpo)
    assert steps.train(store, cfg, 0, str(MODEL_DIR)) == str(MODEL_DIR)
    assert not (again / "round-0" / "model").exists()
    assert [s for s in store.manifest()["rounds"]["0"]["stages"] if s.startswith("train")] == []


def test_export_is_redone_when_only_a_drop_reason_changed(flow_run, tmp_path):
    """The export's key held the kept ids alone, but its DPO pairs (a false step is a rejected
    answer) and its card's funnel read why each sample was dropped: a filter change that only
    re-labelled dropped samples left the old export in place."""
    import shutil

    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config(SMALL)
    before = store.stage_entry(0, "export")["finished_at"]
    steps.export(store, cfg, 0, "m")
    assert store.stage_entry(0, "export")["finished_at"] == before  # nothing changed: reused
    filtered = store.read_table(0, "filtered")
    dropped = filtered.filter(pl.col("drop_reason").is_not_null())["candidate_id"][0]
    store.write_table(0, "filtered", filtered.with_columns(
        pl.when(pl.col("candidate_id") == dropped).then(pl.lit("too_long"))
        .otherwise(pl.col("drop_reason")).alias("drop_reason")))
    steps.export(store, cfg, 0, "m")
    assert store.stage_entry(0, "export")["finished_at"] > before


def test_a_train_stage_whose_model_was_replaced_is_redone(flow_run, tmp_path):
    """A finished train stage counts only while the model folder holds its model: a trainer
    of another config (cut short, then the config reverted) may have republished the folder.
    The stage was "done" whenever the folder existed, and the round went on with that model."""
    import shutil

    from safetensors.torch import load_file, save_file

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config(SMALL)
    before = store.stage_entry(0, "train")
    if before is None:
        pytest.skip("round 0 kept no sample, so it trained nothing")
    model = out / "round-0" / "model"
    assert before["model"] == model_hash(model)
    assert steps.train(store, cfg, 0, str(MODEL_DIR)) == str(model)
    assert store.stage_entry(0, "train")["finished_at"] == before["finished_at"]  # done
    weights = load_file(model / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01  # another trainer's model in the folder
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    steps.train(store, cfg, 0, str(MODEL_DIR))
    after = store.stage_entry(0, "train")
    assert after["finished_at"] > before["finished_at"] and after["model"] == model_hash(model)


def test_a_grown_step_cap_retrains_only_the_rounds_it_changes(flow_run, tmp_path):
    """sft.max_steps_growth: round k trains max_steps x growth^k steps. Round 0's settings are
    the same as before, so its model is reused; round 1 re-trains, twice as long."""
    import shutil

    from thinkwheel.assets import MODEL_DIR
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    if store.stage_entry(0, "train") is None or store.stage_entry(1, "train") is None:
        pytest.skip("a round kept no sample, so it trained nothing")

    def config(**sft: Any) -> Any:
        return parse_config({**SMALL, "train": {"sft": {**SMALL["train"]["sft"], **sft}}})

    before = {k: store.stage_entry(k, "train") for k in (0, 1)}
    model_0 = steps.train(store, config(max_steps_growth=2.0), 0, str(MODEL_DIR))
    assert store.stage_entry(0, "train")["finished_at"] == before[0]["finished_at"]  # reused
    # epochs high enough that the cap, not the set's size, sets the steps
    steps.train(store, config(max_steps_growth=2.0, epochs=1000), 1, model_0)
    after = store.stage_entry(1, "train")
    assert after["finished_at"] > before[1]["finished_at"]
    assert after["steps"] == 2 * SMALL["train"]["sft"]["max_steps"]


def test_a_benchmark_edited_in_place_redoes_decontamination(flow_run, tmp_path):
    """Benchmarks are keyed by their content, not their path: a test set edited in place (or
    a relative path read from another folder) must be decontaminated against again."""
    import json as _json
    import shutil

    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    kept = store.read_table(0, "filtered").filter(pl.col("drop_reason").is_null())
    if kept.height == 0:
        pytest.skip("round 0 kept no sample")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(_json.dumps({"prompt": "an unrelated benchmark question about prime numbers"}) + "\n")
    cfg = parse_config({**SMALL, "filters": {"decontam": {
        "benchmarks": [{"name": "mine", "path": str(bench)}], "min_item_words": 1}}})
    first = steps.filter_and_select(store, cfg, 0)
    assert (first["drop_reason"] == "contaminated").sum() == 0
    tasks = store.read_table(0, "tasks")
    prompt = tasks.filter(pl.col("task_id") == kept["task_id"][0])["prompt"].item()
    bench.write_text(_json.dumps({"prompt": prompt}) + "\n")
    again = steps.filter_and_select(store, cfg, 0)
    was_kept = kept.filter(pl.col("task_id") == kept["task_id"][0])["candidate_id"]
    hit = again.filter(pl.col("candidate_id").is_in(was_kept.implode()))["drop_reason"]
    assert hit.len() and hit.to_list() == ["contaminated"] * hit.len()


def test_new_engine_settings_redo_the_eval(flow_run, tmp_path):
    """The engine answers the held-out tasks: its settings (dtype, extra_body such as
    enable_thinking) are part of the eval's key, as they are of sampling's."""
    import shutil

    from thinkwheel.engines.factory import make_engine
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store, cfg = RunStore(out), parse_config(SMALL)
    model = str(out / "round-0" / "model")
    if not Path(model).is_dir():
        pytest.skip("round 0 trained nothing")
    before = store.stage_entry(0, "eval")["finished_at"]
    steps.evaluate(store, cfg, 0, model, lambda m: make_engine(cfg.engine, m))
    assert store.stage_entry(0, "eval")["finished_at"] == before
    cfg.engine.dtype = "float32" if cfg.engine.dtype != "float32" else "bfloat16"
    steps.evaluate(store, cfg, 0, model, lambda m: make_engine(cfg.engine, m))
    assert store.stage_entry(0, "eval")["finished_at"] > before


def _cli(cfg_path: Path, out: Path, cwd: Path | None = None, **popen: Any) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "thinkwheel", "run", "-c", str(cfg_path), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        start_new_session=True,  # its own process group: SIGKILL takes Prefect's server too
        **popen,
    )


def test_sigkill_during_sampling_then_resume(tmp_path):
    cfg = {
        **SMALL,
        "name": "kill",
        "rounds": 1,
        "sampling": {"n": 2, "shard_size": 1, "max_tokens": 160},
        "train": {"sft": {"enabled": False}},
    }
    cfg_path = tmp_path / "kill.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs" / "kill"
    proc = _cli(cfg_path, Path("runs/kill"), cwd=tmp_path)  # relative, like the CLI's default
    shards = out / "round-0" / "shards" / "sample"
    deadline = time.time() + 400
    seen: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        seen = sorted(shards.glob("*/shard-*.parquet"))
        if len(seen) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = RunStore(out)
    assert store.stage_entry(0, "sample") is None  # killed mid-stage
    survivors = [pl.read_parquet(p) for p in sorted(shards.glob("*/shard-*.parquet"))]
    total = store.read_table(0, "tasks").filter(pl.col("drop_reason").is_null()).height
    assert 3 <= len(survivors) < total

    proc = _cli(cfg_path, Path("runs/kill"), cwd=tmp_path)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    entry = store.stage_entry(0, "sample")
    assert entry["shards_reused"] == len(survivors) and entry["shards"] == total
    cands = store.read_table(0, "candidates")
    for shard in survivors:  # the killed run's samples are the run's, word for word
        cols = ["candidate_id", "completion"]
        assert cands.join(shard.select(cols), on="candidate_id").select(
            (pl.col("completion") == pl.col("completion_right")).all()).item()
    assert not shards.exists()  # stored and recorded: the shards, a second copy, are gone
    assert cands.height == total * 2
    assert cands["candidate_id"].n_unique() == cands.height
    assert cands.group_by("task_id").len()["len"].to_list() == [2] * total
    verdicts = store.read_table(0, "verdicts")
    assert sorted(verdicts["candidate_id"]) == sorted(cands["candidate_id"])

    # a finished run re-run as is does nothing again: every stage is found done
    before = {s: e["finished_at"] for s, e in store.manifest()["rounds"]["0"]["stages"].items()}
    proc = _cli(cfg_path, Path("runs/kill"), cwd=tmp_path)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    after = {s: e["finished_at"] for s, e in store.manifest()["rounds"]["0"]["stages"].items()}
    assert after == before


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # after "pid (comm)": state, ppid, ...
            kids.add(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited between the listing and the read
        return b""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_ctrl_c_in_a_terminal_stops_the_run_in_seconds(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, Prefect's server and the verifier
    workers too. The run used to hang for over a minute in Prefect's retries to reach its dead
    server, then exit 1 with ConnectError and KeyboardInterrupt tracebacks; it says how to
    resume and exits 130."""
    cfg_path = tmp_path / "int.yaml"
    cfg_path.write_text(yaml.safe_dump({**SMALL, "name": "int", "rounds": 1}))
    proc = _cli(cfg_path, tmp_path / "run",
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    shards = tmp_path / "run" / "round-0" / "shards" / "sample"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(shards.glob("*/shard-*")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it
    t0 = time.time()
    code = proc.wait(timeout=90)
    out = proc.stdout.read()
    assert code == 130 and time.time() - t0 < 45, out
    assert "re-run the same command to resume" in out and "Traceback" not in out, out


def test_sigterm_stops_prefects_server_too(tmp_path):
    """A plain `kill PID` used to leave Prefect's temporary uvicorn server running, orphaned.
    Sent mid-SFT, it also leaves a checkpoint of the training so far (Prefect swaps in its own
    SIGTERM handler for the flow; the trainer's must win while it trains)."""
    cfg_path = tmp_path / "term.yaml"
    sft = {"max_steps": 400, "epochs": 1000, "batch_size": 4}
    cfg_path.write_text(yaml.safe_dump({**SMALL, "name": "term", "rounds": 1, "train": {"sft": sft}}))
    proc = _cli(cfg_path, tmp_path / "run")
    log = tmp_path / "run" / "round-0" / "model.tmp" / "train_log.jsonl"
    deadline = time.time() + 400
    server: set[int] = set()
    while time.time() < deadline and proc.poll() is None and not (
        server and log.is_file() and len(log.read_text().splitlines()) >= 3
    ):
        server = server or {k for k in _children(proc.pid) if b"uvicorn" in _cmdline(k)}
        time.sleep(0.1)
    assert server and proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)  # the main process only, not its group
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "SIGTERM: saving a training checkpoint" in proc.stdout.read()
    assert list(log.parent.glob("checkpoint-*/trainer_state.json"))
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{k}").exists() for k in server):
        time.sleep(0.1)
    alive = [k for k in server if Path(f"/proc/{k}").exists()]
    for k in alive:
        os.kill(k, signal.SIGKILL)
    assert alive == []


def test_no_round_trains_on_the_held_out_split(flow_run):
    """Zero overlap between every round's curated prompts and the eval split, checked exactly
    and with the decontamination filter (which must flag the split against itself)."""
    from thinkwheel.filters.stage import decontaminate_tasks
    from thinkwheel.flows.steps import heldout_decontam
    from thinkwheel.train.evaluate import heldout_tasks

    out, _ = flow_run
    from thinkwheel.generators.procedural import canonical

    held = heldout_tasks(parse_config(SMALL).eval)
    held = held.with_columns(pl.col("prompt").map_elements(canonical, return_dtype=pl.Utf8))
    bench = {"heldout": held["prompt"].to_list()}
    cfg = heldout_decontam(parse_config(SMALL))
    assert decontaminate_tasks(held, bench, cfg)["drop_reason"].is_not_null().all()
    for k in (0, 1):
        tasks = RunStore(out).read_table(k, "tasks").drop("drop_reason", "drop_ref")
        tasks = tasks.with_columns(pl.col("prompt").map_elements(canonical, return_dtype=pl.Utf8))
        sft = pl.read_parquet(out / f"round-{k}" / "curated" / "sft.parquet")
        trained = tasks.filter(pl.col("task_id").is_in(sft["task_id"].to_list()))
        assert not set(trained["prompt"]) & set(held["prompt"])
        flagged = decontaminate_tasks(trained, bench, cfg)
        assert flagged["drop_reason"].is_null().all()
        # and the stage did drop the near-copies it found, with the held-out item as drop_ref
        refs = RunStore(out).read_table(k, "tasks")["drop_ref"].drop_nulls()
        assert all(r.startswith(("heldout:", "humaneval:")) or len(r) == 16 for r in refs)


def test_a_card_for_generated_data_is_apache(flow_run):
    import yaml

    out, _ = flow_run
    card = (out / "round-0" / "curated" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0"
    # the model as the candidates name it, as `thinkwheel export` writes it; not a local path
    sampled = pl.read_parquet(out / "round-0" / "candidates.parquet")["model"].unique().to_list()
    assert [front["thinkwheel"]["generator_model"]] == sampled and "/" not in sampled[0]


def test_served_run_resends_only_what_a_crash_lost(tmp_path):
    """engine.kind openai: the server dies for good mid-shard (no retries left). The answers
    that did come back are in the run's request cache, so the re-run asks only for the rest,
    and the cache is emptied once the stage's samples are stored."""
    from prefect.testing.utilities import prefect_test_harness

    from thinkwheel.engines.factory import resolve_model
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.engines.local_server import FaultPlan, LocalServer
    from thinkwheel.flows.flywheel import run

    model = HFEngine(resolve_model(parse_config({}).engine), batch_size=64)
    conf = {
        **SMALL,
        "name": "served",
        "rounds": 1,
        "sampling": {"n": 2, "shard_size": 1000, "max_tokens": 120},  # one shard
        "train": {"sft": {"enabled": False}},
    }
    out, answered = tmp_path / "served", 12
    with prefect_test_harness(server_startup_timeout=180):
        dying = FaultPlan(("ok",) * answered + ("500",) * 10_000)
        with LocalServer(model, faults=dying) as srv:
            engine = {"kind": "openai", "base_url": srv.base_url, "max_retries": 0, "concurrency": 1}
            with pytest.raises(Exception, match="failed"):
                run(parse_config({**conf, "engine": engine}), out)
        cache = out / "cache" / "requests" / "completions.jsonl"
        assert len(cache.read_text().splitlines()) == answered * 2  # n=2 answers per request

        with LocalServer(model) as srv:
            engine = {"kind": "openai", "base_url": srv.base_url, "concurrency": 4}
            run(parse_config({**conf, "engine": engine}), out)
            asked = srv.stats.by_prompt
    prompts = pl.read_parquet(out / "round-0" / "tasks.parquet").filter(
        pl.col("drop_reason").is_null()
    )["prompt"].to_list()
    resent = sum(asked[p] for p in prompts)
    assert resent == len(prompts) - answered
    assert pl.read_parquet(out / "round-0" / "candidates.parquet").height == 2 * len(prompts)
    assert cache.stat().st_size == 0  # emptied once the samples were stored


def _repaired_round_0(flow_run, tmp_path, **sampling: Any) -> tuple:
    """Round 0 of a copy of the run sampled again with these sampling settings: (store, config,
    model, the model's own samples, the repaired ones). The own samples are the run's, as
    they were: repair adds candidates, it changes none."""
    import shutil

    from thinkwheel.engines.factory import make_engine, resolve_model
    from thinkwheel.flows import steps

    out = tmp_path / "copy"
    shutil.copytree(flow_run[0], out)
    store = RunStore(out)
    first = store.read_table(0, "candidates")
    cfg = parse_config({**SMALL, "sampling": {**SMALL["sampling"], **sampling}})
    model = resolve_model(cfg.engine)
    cands = steps.sample(store, cfg, 0, model, lambda m: make_engine(cfg.engine, m))
    n = cfg.sampling.n
    own, extra = cands.filter(pl.col("sample_idx") < n), cands.filter(pl.col("sample_idx") >= n)
    assert own.sort("candidate_id").select("candidate_id", "completion").equals(
        first.sort("candidate_id").select("candidate_id", "completion"))
    return store, cfg, model, own, extra


def test_step_repair_adds_a_candidate_per_broken_task(flow_run, tmp_path):
    """`sampling.repair` re-samples (it changes what is generated), keeps every sample as it
    was, and adds one candidate per task whose samples all state false arithmetic: the bundled
    model's own trace continued from its corrected step, stating no false step, marked in its
    gen_params and counted in the manifest; the GRPO band reads the model's own samples only."""
    from thinkwheel.filters.arithmetic import false_claims
    from thinkwheel.flows import steps

    store, cfg, model, own, extra = _repaired_round_0(flow_run, tmp_path, repair=4)
    n = cfg.sampling.n
    assert extra.height >= 1 and (extra["sample_idx"] == n).all()
    assert store.stage_entry(0, "sample")["repaired"] == extra.height
    broken = own.group_by("task_id").agg(
        pl.col("completion").map_elements(lambda t: bool(false_claims(t)),
                                          return_dtype=pl.Boolean).all().alias("broken"))
    assert set(extra["task_id"]) <= set(broken.filter("broken")["task_id"])
    for row in extra.iter_rows(named=True):
        assert not false_claims(row["completion"])
        assert json.loads(row["gen_params"])["repairs"] >= 1
    steps.verify(store, cfg, 0)
    steps.filter_and_select(store, cfg, 0)
    steps.export(store, cfg, 0, model)
    # pass rates over the model's own n samples: a passing repaired trace made 1 of 4 a rate
    verdicts = store.read_table(0, "verdicts")
    assert verdicts.filter(pl.col("candidate_id").is_in(extra["candidate_id"].implode()))["passed"].any()
    grpo = pl.read_parquet(store.round_dir(0) / "curated" / "grpo.parquet")
    assert grpo.height and ((grpo["pass_rate"] * n).round(6) % 1 == 0).all()


def test_repair_to_the_worked_steps_keeps_every_repaired_column_trace_on_them(flow_run, tmp_path):
    """`sampling.repair_steps` re-samples (its hash is the sample stage's) and keeps the model's
    own samples; every repaired trace of a column task states the task's worked steps, so the
    step check keeps it, and none states a false step."""
    from thinkwheel.filters.arithmetic import false_claims
    from thinkwheel.filters.steps import task_steps, unstated_step

    store, _, _, _, extra = _repaired_round_0(flow_run, tmp_path, repair=4, repair_steps=True)
    tasks = store.read_table(0, "tasks").select("task_id", "source", "family", "prompt")
    extra = extra.join(tasks, on="task_id")
    column = extra.filter(pl.struct("source", "family", "prompt").map_elements(
        lambda r: task_steps(r["source"], r["family"], r["prompt"]) is not None,
        return_dtype=pl.Boolean))
    assert column.height >= 1
    for row in extra.iter_rows(named=True):
        assert not false_claims(row["completion"])
        assert unstated_step(row["source"], row["family"], row["prompt"], row["completion"]) is None
