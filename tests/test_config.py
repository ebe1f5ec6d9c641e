"""Config loading: defaults, overrides, and one-line errors that name the key."""

import os
import re
from pathlib import Path

import pytest
import yaml

from thinkwheel.config import DEFAULT_RUN, ConfigError, RunConfig, hashed, load_config, parse_config
from thinkwheel.starter import starter_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.sampling.grpo_pass_band == (0.2, 0.8)


def test_yaml_overrides_and_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rounds: 3\nsampling:\n  n: 7\n")
    cfg = load_config(p, rounds=5)
    assert cfg.rounds == 5 and cfg.sampling.n == 7
    assert load_config(p, rounds=None).rounds == 3


@pytest.mark.parametrize(
    "text, needle",
    [
        ("sampling:\n  nn: 3\n", "unknown config key 'sampling.nn'"),
        ("bogus: 1\n", "unknown config key 'bogus'"),
        ("rounds: 0\n", "'rounds'"),
        ("engine:\n  kind: tpu\n", "'engine.kind'"),
        ("filters:\n  dedup:\n    threshold: 2\n", "'filters.dedup.threshold'"),
        ("rounds: [\n", "invalid YAML at line"),
        ("- 1\n- 2\n", "mapping"),
        ("engine:\n  kind: openai\n", "set train.sft.enabled: false"),
        ("eval:\n  per_family: 50\n", "eval.per_family is at most 40"),
        ("train: {grpo: {loss_type: dr-grpo}}\n", "'train.grpo.loss_type'"),
        ("eval:\n  seed: 1\n", "keep their defaults"),
        ("engine: {kind: openai}\ntrain: {sft: {enabled: false}, dpo: {enabled: true}}\n",
         "set train.dpo.enabled: false"),
        ("engine: {kind: openai}\ntrain: {sft: {enabled: false}, grpo: {enabled: true}}\n",
         "train.grpo.enabled: false"),
        ('sampling: {stop: ["\\nuser", ""]}\n', "'sampling.stop.1'"),  # would empty every text
        ("engine: {dtype: float17}\n", "'engine.dtype'"),  # failed once Prefect had started
        # the bad item, not pydantic's union member ("difficulty.constrained-int")
        ("generate: {procedural: {difficulty: [1, x]}}\n", "'generate.procedural.difficulty.1'"),
        ("sampling: {grpo_pass_band: [0.9, 0.1]}\n", "grpo_pass_band must be [low, high]"),
        ("sampling: {temperature: 2.5}\n", "'sampling.temperature'"),  # vLLM and servers refuse it
        ("train: {grpo: {temperature: 0}}\n", "'train.grpo.temperature'"),  # identical samples
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg
    assert e.value.__cause__ is None  # no chained traceback


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_section_hash_changes_only_with_its_section():
    a, b = RunConfig(), RunConfig()
    b.sampling.n = 9
    assert a.section_hash("verify") == b.section_hash("verify")
    assert a.section_hash("sampling") != b.section_hash("sampling")


def test_an_added_field_at_its_default_keeps_old_hashes():
    """engine.extra_body came after runs were made: at its default it must not redo their stages."""
    import hashlib
    import json

    cfg = RunConfig()
    before = cfg.engine.model_dump(mode="json")
    before.pop("extra_body")
    old = hashlib.sha256(json.dumps({"engine": before}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("engine") == old
    cfg.engine.extra_body = {"top_k": 20}
    assert cfg.section_hash("engine") != old


def test_an_added_field_inside_a_section_keeps_old_hashes() -> None:
    """filters.quality.check_steps sits a level down: at its default the filters hash is what it
    was before the field existed (the tasks and filter stages of runs made then are reused), and
    a GPU memory share of GRPO's vLLM (SERVING, a level down too) never enters the train hash."""
    import hashlib
    import json

    cfg = RunConfig()
    before = cfg.filters.model_dump(mode="json")
    before["quality"].pop("check_steps")
    old = hashlib.sha256(json.dumps({"filters": before}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("filters") == old
    cfg.filters.quality.check_steps = True
    assert cfg.section_hash("filters") != old
    train = cfg.section_hash("train")
    cfg.train.grpo.vllm_gpu_memory_utilization = 0.5
    assert cfg.section_hash("train") == train


def test_how_often_training_checkpoints_never_redoes_a_stage():
    """train.checkpoint_minutes changes how training runs, not what it makes: the train
    section's hash ignores it at any value (and was the same before the field existed)."""
    import hashlib
    import json

    cfg = RunConfig()
    before = cfg.train.model_dump(mode="json")
    before.pop("checkpoint_minutes")
    before["sft"].pop("max_steps_growth")  # added later, ADDITIVE: not hashed at its default
    old = hashlib.sha256(json.dumps({"train": before}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("train") == old
    cfg.train.checkpoint_minutes = 5
    assert cfg.section_hash("train") == old
    cfg.train.sft.learning_rate = 1e-5
    assert cfg.section_hash("train") != old


def test_where_the_servers_are_never_redoes_a_stage():
    """More servers, a higher concurrency, a longer timeout, more verify workers: how the calls
    are made, not what comes back. The hashes stay what they were before these were known to be
    operational, for runs made then."""
    import hashlib
    import json

    cfg = RunConfig()
    before = {s: getattr(cfg, s).model_dump(mode="json") for s in ("engine", "verify")}
    before["engine"].pop("extra_body")  # additive: left out at its default, as before
    old = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.section_hash("engine", "verify") == old
    cfg.engine.base_url = ["http://a:8000/v1", "http://b:8000/v1"]
    cfg.engine.concurrency, cfg.engine.timeout_s, cfg.verify.workers = 64, 600.0, 8
    assert cfg.section_hash("engine", "verify") == old
    cfg.engine.model = "Qwen/Qwen3-1.7B"
    assert cfg.section_hash("engine", "verify") != old
    with pytest.raises(ConfigError, match="engine.*base_url"):
        parse_config({"engine": {"base_url": []}})


def test_starter_yaml_round_trips():
    text = starter_yaml(RunConfig())
    assert text.count("\n# ") >= 5  # commented sections
    assert parse_config(yaml.safe_load(text)) == RunConfig()
    assert parse_config(yaml.safe_load(starter_yaml())) == load_config(DEFAULT_RUN)


def test_procedural_difficulty_is_a_level_or_a_list_of_levels():
    assert parse_config({"generate": {"procedural": {"difficulty": [1, 2]}}}).generate.procedural.difficulty == [1, 2]
    with pytest.raises(ConfigError, match="generate.procedural.difficulty"):
        parse_config({"generate": {"procedural": {"difficulty": "hard"}}})
    with pytest.raises(ConfigError, match="generate.procedural.difficulty"):
        parse_config({"generate": {"procedural": {"difficulty": [1, 9]}}})


def test_procedural_mix_replaces_the_single_budget():
    p = parse_config({"generate": {"procedural": {"mix": [
        {"families": ["math"], "per_family": 100, "difficulty": 1},
        {"families": ["code"], "per_family": 8, "difficulty": [1, 2]},
    ]}}}).generate.procedural
    assert p.plan() == [(["math"], 100, 1), (["code"], 8, 1), (["code"], 8, 2)]
    assert RunConfig().generate.procedural.plan() == [(["all"], 32, 1), (["all"], 32, 2)]
    with pytest.raises(ConfigError, match=r"generate.procedural.mix.0.per_famly"):
        parse_config({"generate": {"procedural": {"mix": [{"per_famly": 3}]}}})
    # `per_family: 0` (your tasks only) under a mix would be ignored: it is an error instead
    with pytest.raises(ConfigError, match=r"generate.procedural.*mix replaces per_family"):
        parse_config({"generate": {"procedural": {"per_family": 0, "mix": [{"per_family": 3}]}}})


def test_a_curriculum_slice_joins_at_its_round_and_leaves_earlier_rounds_hashes_alone():
    base = {"families": ["addition"], "per_family": 8, "difficulty": 1}
    later = {"families": ["addition"], "per_family": 4, "difficulty": 2, "from_round": 1}
    cfg = parse_config({"generate": {"procedural": {"mix": [base, later]}}})
    p = cfg.generate.procedural
    assert p.plan(0) == [(["addition"], 8, 1)]
    assert p.plan(1) == p.plan(5) == p.plan() == [(["addition"], 8, 1), (["addition"], 4, 2)]
    alone = parse_config({"generate": {"procedural": {"mix": [base]}}})
    both = parse_config({"generate": {"procedural": {"mix": [base, {**later, "from_round": 0}]}}})

    def at(c, k):
        return c.model_copy(update={"generate": c.generate.for_round(k)}).section_hash("generate")
    # round 0 hashes as the mix without the later slice (its tasks are reused), round 1 as
    # both slices written out from the start
    assert at(cfg, 0) == at(alone, 0) != at(cfg, 1) == at(both, 1)
    assert alone.generate.for_round(3) is alone.generate
    # nothing started yet: no task at all, not the single budget an empty mix stands for
    late = parse_config({"generate": {"procedural": {"mix": [later]}}}).generate.procedural
    assert all(per == 0 for _, per, _ in late.for_round(0).plan())
    assert late.for_round(1).plan() == [(["addition"], 4, 2)]
    single = parse_config({"generate": {"procedural": {"from_round": 2}}}).generate.procedural
    assert all(per == 0 for _, per, _ in single.for_round(1).plan())
    assert single.for_round(2).plan() == RunConfig().generate.procedural.plan()
    assert hashed(single.for_round(2)) == hashed(RunConfig().generate.procedural)
    with pytest.raises(ConfigError, match=r"mix replaces from_round"):
        parse_config({"generate": {"procedural": {"from_round": 1, "mix": [base]}}})
    with pytest.raises(ConfigError, match=r"from_round"):
        parse_config({"generate": {"procedural": {"mix": [{**later, "from_round": -1}]}}})


def test_accumulate_defaults_follow_the_strategy():
    assert not RunConfig().train.accumulates()
    assert parse_config({"train": {"strategy": "from_base"}}).train.accumulates()
    assert parse_config({"train": {"accumulate": True}}).train.accumulates()
    assert not parse_config({"train": {"strategy": "from_base", "accumulate": False}}).train.accumulates()


def test_the_step_cap_grows_by_round_and_hashes_as_written_out() -> None:
    """Round k trains with max_steps x growth^k; round 0's settings hash as they did without a
    growth, so turning growth on re-trains only the rounds it changes."""
    plain = parse_config({"train": {"sft": {"max_steps": 800}}})
    grown = parse_config({"train": {"sft": {"max_steps": 800, "max_steps_growth": 1.2}}})
    assert [grown.train.for_round(k).sft.max_steps for k in range(3)] == [800, 960, 1152]
    assert plain.train.for_round(2).sft.max_steps == 800

    def train_hash(cfg: RunConfig, k: int) -> str:
        return cfg.model_copy(update={"train": cfg.train.for_round(k)}).section_hash("train")

    assert train_hash(grown, 0) == train_hash(plain, 0) == plain.section_hash("train")
    written = parse_config({"train": {"sft": {"max_steps": 1152}}})
    assert train_hash(grown, 2) == written.section_hash("train") != train_hash(plain, 2)
    with pytest.raises(ConfigError, match="max_steps_growth"):
        parse_config({"train": {"sft": {"max_steps_growth": 0.5}}})


def test_repairing_to_the_worked_steps_needs_repair() -> None:
    with pytest.raises(ConfigError, match="repair_steps needs sampling.repair > 0"):
        parse_config({"sampling": {"repair_steps": True}})
    on = parse_config({"sampling": {"repair": 4, "repair_steps": True}})
    assert on.section_hash("sampling") != parse_config({"sampling": {"repair": 4}}).section_hash("sampling")


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(ROOT))
        for pattern in ("configs/*.yaml", "bench/*.yaml", "thinkwheel/configs/*.yaml")
        for p in ROOT.glob(pattern)
    ),
)
def test_every_shipped_config_loads(path):
    """The README tells users to run these unchanged; a bad value must not wait for their GPU."""
    cfg = load_config(ROOT / path)
    assert cfg.rounds >= 1


def test_a_served_model_runs_without_training():
    cfg = parse_config({"engine": {"kind": "openai"}, "train": {"sft": {"enabled": False}}})
    assert cfg.engine.kind == "openai" and not cfg.train.grpo.enabled


def test_a_model_of_your_own_can_have_a_bigger_held_out_split():
    cfg = parse_config({"engine": {"model": "/models/mine"}, "eval": {"per_family": 200, "seed": 7}})
    assert (cfg.eval.per_family, cfg.eval.seed) == (200, 7)


def test_what_only_spreads_the_work_is_hashed_as_its_default():
    """Lowered after running out of memory, these re-sampled and re-evaluated every finished
    round; hashed as their defaults (not dropped), a run made before keeps its stage hashes."""
    from thinkwheel.config import hashed

    base = RunConfig()
    spread = parse_config({"engine": {"batch_size": 8, "gpu_memory_utilization": 0.5,
                                      "tensor_parallel_size": 2, "data_parallel_size": 2,
                                      "enable_prefix_caching": False},
                           "sampling": {"shard_size": 7}})
    assert spread.section_hash("engine", "sampling") == base.section_hash("engine", "sampling")
    assert hashed(spread.sampling)["shard_size"] == 32 and hashed(spread.engine)["batch_size"] == 64
    assert parse_config({"engine": {"device": "cuda"}}).section_hash("engine") != \
        base.section_hash("engine")  # what the model runs on is still part of it


@pytest.mark.parametrize("samples", [1, 0, -3])
def test_consensus_needs_two_votes(samples):
    """One sample was taken as agreement 1.0; none dropped every task as unanswered."""
    with pytest.raises(ConfigError, match="generate.consensus.samples"):
        parse_config({"generate": {"consensus": {"samples": samples}}})


def test_step_repair_is_refused_for_a_served_model() -> None:
    served = {"engine": {"kind": "openai"}, "train": {"sft": {"enabled": False}}}
    with pytest.raises(ConfigError, match="sampling.repair needs engine.kind hf or vllm"):
        parse_config({**served, "sampling": {"repair": 2}})
    assert parse_config({"engine": {"kind": "vllm"}, "sampling": {"repair": 2}}).sampling.repair == 2


@pytest.mark.parametrize("text, needle", [
    # a block appended to a starter config replaced the recipe's whole `train` section
    ("train:\n  strategy: from_base\nrounds: 1\ntrain:\n  sft: {lora: true}\n",
     "duplicate key 'train' at line 4"),
    ("sampling:\n  n: 4\n  max_tokens: 512\n  n: 8\n", "duplicate key 'n' at line 4"),
    ("eval: {k: 2, k: 3}\n", "duplicate key 'k' at line 1"),
])
def test_a_repeated_key_is_an_error_not_a_silent_override(tmp_path, text, needle):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert e.value.__cause__ is None


def test_a_yaml_merge_key_may_still_override_what_it_merges(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text("sampling: &s {n: 4, max_tokens: 512}\neval:\n  <<: {k: 2, max_tokens: 64}\n"
                 "  max_tokens: 96\n")
    cfg = load_config(p)
    assert (cfg.eval.k, cfg.eval.max_tokens, cfg.sampling.n) == (2, 96, 4)


def test_a_config_in_utf16_a_folder_or_unreadable_is_one_line(tmp_path, monkeypatch):
    """A UTF-16 file (PowerShell's `>`) crashed with a UnicodeDecodeError traceback, an
    unreadable one with a PermissionError, and a folder was "not found"."""
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("rounds: 3\nname: ü\n".encode("utf-16"))  # with its BOM
    assert (load_config(utf16).rounds, load_config(utf16).name) == (3, "ü")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    locked = tmp_path / "locked.yaml"
    locked.write_text("rounds: 1\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: refuse it as the OS would
        read = Path.read_bytes

        def refuse(self):
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return read(self)
        monkeypatch.setattr(Path, "read_bytes", refuse)
    for path, needle in [(locked, "cannot read: Permission denied"), (latin1, "not UTF-8 or UTF-16"),
                         (tmp_path, "is a folder, not a config file")]:
        with pytest.raises(ConfigError) as e:
            load_config(path)
        msg = str(e.value)
        assert needle in msg and str(path) in msg and "\n" not in msg, msg
        assert e.value.__cause__ is None


@pytest.mark.parametrize("data, key", [
    ({"eval": {"difficulty": -1}}, "eval.difficulty"),  # randrange crashed in the held-out split
    ({"eval": {"difficulty": 6}}, "eval.difficulty"),
    ({"eval": {"max_tokens": 0}}, "eval.max_tokens"),  # a server's HTTP 400, 1 token on hf
    ({"generate": {"max_tokens": -3}}, "generate.max_tokens"),
    ({"engine": {"max_model_len": 0}}, "engine.max_model_len"),  # failed inside vLLM
    ({"generate": {"consensus": {"min_tests": 0}}}, "generate.consensus.min_tests"),
    # every code task without tests was dropped
    ({"generate": {"consensus": {"min_tests": 5, "max_tests": 3}}}, "min_tests (5)"),
])
def test_values_that_would_crash_later_are_refused_at_load(data, key):
    own = {"engine": {"model": "/models/mine"}}  # the bundled model fixes eval.difficulty
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config({**own, **data})
    assert parse_config({**own, "eval": {"difficulty": 5}}).eval.difficulty == 5


@pytest.mark.parametrize("kind", ["hf", "openai"])
def test_lora_path_is_refused_where_no_engine_applies_it(kind):
    """With kind hf the key was accepted and silently ignored."""
    with pytest.raises(ConfigError, match="'engine.lora_path': only engine.kind vllm applies"):
        parse_config({"engine": {"kind": kind, "lora_path": "/adapters/a"},
                      "train": {"sft": {"enabled": False}}})
    assert parse_config({"engine": {"kind": "vllm", "lora_path": "/a"}}).engine.lora_path == "/a"
