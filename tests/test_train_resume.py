"""A training run cut short resumes from its last checkpoint: real TRL runs on a tiny Llama,
crashed by a callback after a checkpoint was saved, then run again with the same call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from thinkwheel.config import GRPOTrainConfig, SFTConfig  # noqa: E402
from thinkwheel.train import checkpoints  # noqa: E402
from thinkwheel.train import grpo as grpo_mod  # noqa: E402
from thinkwheel.train import sft as sft_mod  # noqa: E402

try:
    from test_train_grpo import grpo_frame
    from test_train_sft import TEMPLATE_PLAIN, build_tiny_model, sft_frame
except ImportError:  # tests/ imported as a package
    from tests.test_train_grpo import grpo_frame
    from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model, sft_frame


class Crash(Exception):
    pass


def crash_at(step: int) -> object:
    """A callback that kills training once step `step` is logged, before its checkpoint."""
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_log(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == step:
                raise Crash(f"killed at step {step}")

    return CrashAt()


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def steps_logged(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("resume"), TEMPLATE_PLAIN)


def test_sft_cut_short_resumes_to_the_same_model(tiny, tmp_path):
    """Crashed after step 4 with a checkpoint at every step, the re-run starts at step 4's
    checkpoint and ends with exactly the weights of a run that was never interrupted (optimizer,
    schedule, RNG and data order restored), with each step's curve logged once."""
    cfg = SFTConfig(trainer="trl", max_steps=6, epochs=100, batch_size=4, learning_rate=3e-3)
    data = sft_frame(12)
    whole = sft_mod.train_sft(tiny, data, str(tmp_path / "whole"), cfg, checkpoint_minutes=None)
    assert "resumed_from_step" not in whole

    out = tmp_path / "cut"
    with pytest.raises(Crash):
        sft_mod.train_sft(tiny, data, str(out), cfg, callbacks=[crash_at(5)], checkpoint_minutes=0)
    staged = Path(f"{out}.tmp")
    assert checkpoints.latest_checkpoint(staged).name == "checkpoint-4" and not out.exists()
    assert steps_logged(staged) == [1, 2, 3, 4, 5]  # step 5 ran, but its checkpoint never came

    res = sft_mod.train_sft(tiny, data, str(out), cfg, checkpoint_minutes=0)
    assert res["resumed_from_step"] == 4 and res["global_step"] == 6
    a, b = weights(tmp_path / "whole"), weights(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert [s for s in steps_logged(out) if s] == [1, 2, 3, 4, 5, 6, 6]  # the last: the summary
    assert [r.get("loss") for r in res["log_history"]] == [r.get("loss") for r in whole["log_history"]]
    # the run's loss is every step's, not the resumed two's (logged to 4 decimals)
    assert res["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-4)
    # the published folder is a model, not a training run
    leftovers = {"README.md", checkpoints.FINGERPRINT} | {p.name for p in out.glob("checkpoint-*")}
    assert not leftovers & {p.name for p in out.iterdir()} and not staged.exists()


def test_a_crash_while_saving_the_model_resumes_from_the_checkpoint(tiny, tmp_path, monkeypatch):
    """Saving a large merged model takes minutes: a crash then resumes from the last
    checkpoint. The checkpoints used to be deleted before the save, so it started over."""
    cfg = SFTConfig(trainer="trl", max_steps=3, epochs=100, batch_size=4, learning_rate=3e-3)
    out = tmp_path / "m"
    save = sft_mod.save_model

    def killed(*args, **kw):
        raise Crash("killed while saving")

    monkeypatch.setattr(sft_mod, "save_model", killed)
    with pytest.raises(Crash):
        sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, checkpoint_minutes=0)
    last = checkpoints.latest_checkpoint(Path(f"{out}.tmp"))
    assert last is not None and checkpoints.checkpoint_step(last) == 2  # every step but the last
    monkeypatch.setattr(sft_mod, "save_model", save)
    res = sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, checkpoint_minutes=0)
    assert res["resumed_from_step"] == 2 and res["global_step"] == 3
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize("when", ["before the swap", "after the swap"])
def test_a_crash_while_publishing_keeps_the_finished_training(tiny, tmp_path, monkeypatch, when):
    """Killed once the model was saved and the checkpoints cleared, but before (or in) the swap
    into place: the staging folder held no checkpoint, so the re-run emptied it and trained
    from scratch. The finished model is published instead, with its metrics, and not retrained."""
    cfg = SFTConfig(trainer="trl", max_steps=3, epochs=100, batch_size=4, learning_rate=3e-3)
    out = tmp_path / "m"
    publish = checkpoints.publish

    def killed(tmp, out_dir):
        if when == "after the swap":
            os.replace(tmp, out_dir)  # moved into place, the fingerprint not yet removed
        raise Crash("killed while publishing")

    monkeypatch.setattr(checkpoints, "publish", killed)
    with pytest.raises(Crash):
        sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, checkpoint_minutes=0)
    saved = weights(out if when == "after the swap" else Path(f"{out}.tmp"))
    monkeypatch.setattr(checkpoints, "publish", publish)
    monkeypatch.setattr(sft_mod, "train_and_publish", lambda *a, **k: pytest.fail("retrained"))
    res = sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, checkpoint_minutes=0)
    assert res["global_step"] == 3 and [r["step"] for r in res["log_history"]][:3] == [1, 2, 3]
    now = weights(out)
    assert now.keys() == saved.keys() and all((now[k] == saved[k]).all() for k in now)
    assert not Path(f"{out}.tmp").exists() and not (out / checkpoints.FINGERPRINT).exists()
    changed = cfg.model_copy(update={"learning_rate": 1e-3})  # another training: not this model
    monkeypatch.undo()
    assert "resumed_from_step" not in sft_mod.train_sft(tiny, sft_frame(12), str(out), changed,
                                                        checkpoint_minutes=0)


def test_a_different_training_does_not_resume_anothers_checkpoint(tiny, tmp_path):
    """Same output folder, changed learning rate (or data): the stale checkpoint is thrown
    away and training starts from the model, not from a run it was not part of."""
    cfg = SFTConfig(trainer="trl", max_steps=4, epochs=100, batch_size=4, learning_rate=3e-3)
    out = tmp_path / "m"
    with pytest.raises(Crash):
        sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, callbacks=[crash_at(3)],
                          checkpoint_minutes=0)
    assert checkpoints.latest_checkpoint(Path(f"{out}.tmp")) is not None
    changed = cfg.model_copy(update={"learning_rate": 1e-3})
    res = sft_mod.train_sft(tiny, sft_frame(12), str(out), changed, checkpoint_minutes=0)
    assert "resumed_from_step" not in res and steps_logged(out)[:4] == [1, 2, 3, 4]
    with pytest.raises(Crash):
        sft_mod.train_sft(tiny, sft_frame(12), str(out), cfg, callbacks=[crash_at(3)],
                          checkpoint_minutes=0)
    res = sft_mod.train_sft(tiny, sft_frame(8), str(out), cfg, checkpoint_minutes=0)
    assert "resumed_from_step" not in res  # other data


def test_a_half_written_checkpoint_is_passed_over(tmp_path):
    """A kill while a checkpoint is being written leaves it without trainer_state.json
    (transformers writes that last): the one before it is the one to resume from."""
    fp = {"kind": "sft"}
    tmp, resume = checkpoints.staging(str(tmp_path / "m"), fp)
    assert resume is None and Path(tmp, checkpoints.FINGERPRINT).is_file()
    for step, complete in ((2, True), (4, False)):
        c = Path(tmp, f"checkpoint-{step}")
        c.mkdir()
        if complete:
            (c / "trainer_state.json").write_text("{}")
    # the kill tore the last line of the curve: it made every resume raise JSONDecodeError
    Path(tmp, "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    again, resume = checkpoints.staging(str(tmp_path / "m"), fp)
    assert again == tmp and Path(resume).name == "checkpoint-2"
    assert not Path(tmp, "checkpoint-4").exists() and steps_logged(Path(tmp)) == [1, 2]
    _, resume = checkpoints.staging(str(tmp_path / "m"), {"kind": "grpo"})
    assert resume is None and not Path(tmp, "checkpoint-2").exists()


def test_grpo_cut_short_resumes(tiny, tmp_path):
    cfg = GRPOTrainConfig(max_steps=3, num_generations=2, max_completion_length=8, batch_size=2,
                          learning_rate=1e-3)

    def reward(completions, **kw):  # noqa: ANN001, ANN003
        return [float(len(c[0]["content"]) % 2) for c in completions]

    out = tmp_path / "g"
    with pytest.raises(Crash):
        grpo_mod.train_grpo(tiny, grpo_frame(), str(out), cfg, [reward], [1.0],
                            callbacks=[crash_at(2)], checkpoint_minutes=0)
    res = grpo_mod.train_grpo(tiny, grpo_frame(), str(out), cfg, [reward], [1.0],
                              checkpoint_minutes=0)
    assert res["resumed_from_step"] == 1 and res["global_step"] == 3
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]  # step 2 once, not twice

    def length_reward(completions, **kw):  # noqa: ANN001, ANN003
        return [len(c[0]["content"]) / 8 for c in completions]

    # the rewards are the objective: a run with other rewards is another training
    with pytest.raises(Crash):
        grpo_mod.train_grpo(tiny, grpo_frame(), str(out), cfg, [reward], [1.0],
                            callbacks=[crash_at(2)], checkpoint_minutes=0)
    res = grpo_mod.train_grpo(tiny, grpo_frame(), str(out), cfg, [length_reward], [1.0],
                              checkpoint_minutes=0)
    assert "resumed_from_step" not in res and res["global_step"] == 3


class Staged(Exception):
    """Raised in `staging`: the fingerprint was compared, no model was loaded."""


@pytest.fixture
def resumed(monkeypatch) -> list[bool]:
    """Whether each `train_grpo` call found a checkpoint to resume. Its `staging` puts a complete
    checkpoint in the folder (as if the run was cut at step 1), then stops it with Staged."""
    real_staging, found = checkpoints.staging, []

    def staging(out_dir: str, fp: dict) -> tuple:
        tmp, resume = real_staging(out_dir, fp)
        found.append(resume is not None)
        Path(tmp, "checkpoint-1").mkdir(exist_ok=True)
        Path(tmp, "checkpoint-1", "trainer_state.json").write_text("{}")
        raise Staged

    monkeypatch.setattr(checkpoints, "staging", staging)
    return found


def test_grpo_resumes_only_under_the_same_reward_settings(tmp_path, monkeypatch, resumed):
    """The fingerprint held the reward names alone: a re-run with other verify settings, format
    strictness or an edited plugin resumed the old checkpoint, one model trained under two
    reward definitions. Checked through `train_grpo`'s own fingerprint, stopped in `staging`
    (no model is loaded) with a complete checkpoint put in its folder."""
    import polars as pl

    from thinkwheel.config import VerifyConfig
    from thinkwheel.train.rewards import grpo_rewards

    (tmp_path / "tw_fp_plugin.py").write_text(
        "from thinkwheel.verifiers import register\n"
        "@register('tw_fp_check')\n"
        "def check(completion, task):\n    return 'yes' in completion\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    frame = grpo_frame().with_columns(pl.Series("verifier", ["math", "tw_fp_check"]))
    cfg = GRPOTrainConfig(max_steps=1)

    def resumes(verify: VerifyConfig, strict: bool = True) -> bool:
        with pytest.raises(Staged):
            grpo_mod.train_grpo("no-such/model", frame, str(tmp_path / "g"), cfg,
                                *grpo_rewards(cfg, verify, strict_format=strict))
        return resumed[-1]

    base = VerifyConfig(plugins=["tw_fp_plugin"])
    assert not resumes(base) and resumes(base)  # the same run resumes
    assert resumes(base.model_copy(update={"workers": base.workers + 3}))  # only how many judge
    assert not resumes(base.model_copy(update={"percent_policy": "number"}))
    assert not resumes(base.model_copy(update={"math_timeout_s": 1.0}))
    assert resumes(base.model_copy(update={"math_timeout_s": 1.0}))
    assert not resumes(base, strict=False)
    assert not resumes(base)
    (tmp_path / "tw_fp_plugin.py").write_text(
        "from thinkwheel.verifiers import register\n"
        "@register('tw_fp_check')\n"
        "def check(completion, task):\n    return 'no' in completion\n")
    assert not resumes(base)  # the plugin the rows name was fixed: another reward


def test_grpo_resumes_only_under_the_same_reward_code(tmp_path, monkeypatch, resumed):
    """Your own reward function, and a verifier given to `as_reward` as "module:callable",
    were fingerprinted by name: edited, they resumed the checkpoint trained on the old code."""
    import functools
    import importlib

    from thinkwheel.train.rewards import as_reward

    mod = tmp_path / "tw_fp_rewards.py"
    mod.write_text("def mine(completions, **kw):\n    return [1.0] * len(completions)\n\n"
                   "def check(completion, task):\n    return 'yes' in completion\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = importlib.import_module("tw_fp_rewards").mine
    cfg = GRPOTrainConfig(max_steps=1)

    def resumes(funcs: list) -> bool:
        with pytest.raises(Staged):
            grpo_mod.train_grpo("no-such/model", grpo_frame(), str(tmp_path / "g"), cfg,
                                funcs, [1.0] * len(funcs))
        return resumed[-1]

    for funcs in ([mine], [as_reward("tw_fp_rewards:check")], [functools.partial(mine, k=1)]):
        assert not resumes(funcs) and resumes(funcs)
        mod.write_text(mod.read_text() + "# edited\n")
        assert not resumes(funcs)


def test_checkpoints_are_asked_for_only_when_due():
    from transformers import TrainerControl, TrainerState

    assert checkpoints.every(None) == []
    (due,) = checkpoints.every(0)
    (later,) = checkpoints.every(60)
    state = TrainerState(global_step=3, max_steps=10)
    for cb, expect in ((due, True), (later, False)):
        control = TrainerControl()
        cb.on_step_end(None, state, control)
        assert control.should_save is expect
    control, state.global_step = TrainerControl(), 10  # the last step: the model is saved anyway
    due.on_step_end(None, state, control)
    assert not control.should_save


def test_sigterm_mid_training_checkpoints_and_the_same_command_resumes(tiny, tmp_path):
    """A preempted machine's SIGTERM: `thinkwheel train` finishes the step, saves a checkpoint,
    exits 143; the same command then resumes from that step, not from step 0."""
    import signal
    import subprocess
    import sys
    import time

    sft_frame(12).write_parquet(tmp_path / "sft.parquet")
    (tmp_path / "c.yaml").write_text(
        "train:\n  sft: {trainer: trl, max_steps: 600, epochs: 1000, batch_size: 4}\n")
    out = tmp_path / "m"
    cmd = [str(Path(sys.executable).with_name("thinkwheel")), "train", "sft",
           str(tmp_path / "sft.parquet"), "--model", tiny, "--out", str(out), "-c",
           str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = Path(f"{out}.tmp") / "train_log.jsonl", time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: saving a training checkpoint" in err
    step = checkpoints.checkpoint_step(checkpoints.latest_checkpoint(Path(f"{out}.tmp")))
    assert 5 <= step < 600 and not out.exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming from the checkpoint at step {step} of 600" in again.stdout + again.stderr
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] == step and metrics["global_step"] == 600
