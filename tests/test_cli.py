"""The console script as a user drives it (typer's runner, real files, no model)."""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from thinkwheel import records
from thinkwheel.cli import app
from thinkwheel.config import RunConfig
from thinkwheel.curated.demo import demo_run
from thinkwheel.curated.export import sft_frame, write_dataset
from thinkwheel.store import RunStore

runner = CliRunner()


def run_config(text: str, where) -> tuple[int, str]:  # noqa: ANN001
    """`thinkwheel run -c <where>/c.yaml` with this config text: (exit code, output on one line)."""
    p = where / "c.yaml"
    p.write_text(text)
    r = runner.invoke(app, ["run", "-c", str(p)])
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rounds, manifest, evals, _ = demo_run(tasks_per_round=24, samples=3, rounds=2)
    store = RunStore.create(tmp_path_factory.mktemp("r") / "demo", RunConfig(name="demo"))
    for k, frames in rounds.items():
        for name, df in frames.items():
            store.write_table(k, name, df)
        store.write_json(f"round-{k}/eval.json", evals[k])
        kept = frames["filtered"].filter(pl.col("drop_reason").is_null())["candidate_id"]
        sft = sft_frame(frames["tasks"], frames["candidates"], kept.to_list(), "sys")
        write_dataset(sft, frames["tasks"].head(0), store.round_dir(k) / "curated", ("parquet",))
        store.mark_stage(k, "export", count=sft.height)
    return store.root


def test_inspect_prints_funnel_per_round(run_dir):
    r = runner.invoke(app, ["inspect", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert "round 0" in r.output and "round 1" in r.output and "funnel" in r.output


def test_inspect_a_round_the_run_does_not_have_says_so(run_dir):
    r = runner.invoke(app, ["inspect", str(run_dir), "--round", "7"])
    assert r.exit_code == 2 and "has no round 7; it has 0, 1" in " ".join(r.output.split())
    r = runner.invoke(app, ["inspect", str(run_dir), "--reason", "near_dupliate"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "no record was dropped for 'near_dupliate'" in out
    assert "dedup:minhash" in out  # the reasons it does have


def test_inspect_json_is_machine_readable(run_dir):
    r = runner.invoke(app, ["inspect", str(run_dir), "--json"])
    data = json.loads(r.output)
    assert set(data["rounds"]) == {"0", "1"}


def test_inspect_samples_filtered_by_reason_and_where(run_dir):
    r = runner.invoke(
        app, ["inspect", str(run_dir), "--samples", "50", "--reason", "kept", "--json"]
    )
    rows = json.loads(r.output)
    assert rows and all(row["drop_reason"] is None for row in rows)
    r = runner.invoke(
        app, ["inspect", str(run_dir), "--samples", "50", "--where", "domain = 'code'", "--json"]
    )
    assert {row["domain"] for row in json.loads(r.output)} == {"code"}
    # which verifier judged, its partial credit and its words (a plugin's error) are shown too
    r = runner.invoke(
        app, ["inspect", str(run_dir), "--samples", "50", "--where", "score < 1", "--json"]
    )
    rows = json.loads(r.output)
    assert rows and all(row["score"] < 1 and row["verifiers"] for row in rows)
    assert {"verdict_detail", "verdict_reason"} <= set(rows[0])


def test_bad_where_is_one_line_error(run_dir):
    r = runner.invoke(app, ["inspect", str(run_dir), "--where", "__import__('os')"])
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output


def test_export_and_inspect_the_export(run_dir, tmp_path):
    out = tmp_path / "exp"
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--all-rounds"])
    assert r.exit_code == 0, r.output
    n = sum(pl.read_parquet(run_dir / f"round-{k}" / "curated" / "sft.parquet").height for k in (0, 1))
    assert pl.read_parquet(out / "sft.parquet").height == n
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output


def test_an_exports_card_describes_what_it_wrote(run_dir, tmp_path):
    """The card of `thinkwheel export` was the last round's, copied: it named parquet files a
    jsonl export does not have (so `load_dataset(folder)` failed) and one round's counts."""
    from huggingface_hub import DatasetCard

    n = sum(pl.read_parquet(run_dir / f"round-{k}" / "curated" / "sft.parquet").height for k in (0, 1))
    for fmt in ("jsonl", "hf"):
        out = tmp_path / fmt
        r = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--all-rounds",
                                "--format", fmt])
        assert r.exit_code == 0, r.output
        data = DatasetCard((out / "README.md").read_text()).data.to_dict()
        assert data["thinkwheel"]["counts"]["sft"] == n and data["thinkwheel"]["round"] == "0-1"
        assert data["pretty_name"] == "demo-rounds-0-1"
        for c in data["configs"]:
            assert list(out.glob(c["data_files"][0]["path"])), (fmt, c)
    import datasets

    assert datasets.load_dataset(str(tmp_path / "jsonl"), "sft", split="train").num_rows == n
    one = tmp_path / "one"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(one), "--round", "0"]).exit_code == 0
    tw = DatasetCard((one / "README.md").read_text()).data.to_dict()["thinkwheel"]
    assert tw["round"] == 0 and tw["funnel"]  # one round: its funnel too


def test_export_unknown_round_fails_cleanly(run_dir, tmp_path):
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "x"), "--round", "7"])
    assert r.exit_code == 2 and "round 7" in r.output


def test_export_says_what_is_wrong_with_its_input(run_dir, tmp_path):
    """A missing path and an exported dataset both read "has no curated round yet", and
    --round beside --all-rounds was ignored."""
    def err(*args):
        r = runner.invoke(app, ["export", *args, "--out", str(tmp_path / "x")])
        assert r.exit_code == 2, r.output
        return " ".join(r.output.split())

    assert "no such run" in err(str(tmp_path / "nope"))
    assert "is not a run directory; it is a dataset" in err(str(run_dir / "round-0" / "curated"))
    assert "--round and --all-rounds" in err(str(run_dir), "--round", "0", "--all-rounds")


def test_an_output_folder_is_replaced_only_when_it_is_an_export_or_a_model(run_dir, tmp_path):
    """`export --out` and `train --out` replace their folder whole: `--out` naming the run
    itself, or any folder of yours, deleted it without a word."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "important.txt").write_text("keep")
    for args in (["export", str(run_dir), "--out", str(run_dir)],
                 ["export", str(run_dir), "--out", str(precious)],
                 ["train", "sft", str(run_dir / "round-0" / "curated"), "--out", str(run_dir)],
                 ["train", "grpo", str(run_dir / "round-0" / "curated"), "--out", str(precious)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "use another --out" in " ".join(r.output.split()), args
    assert (run_dir / "manifest.json").is_file() and (precious / "important.txt").read_text() == "keep"
    again = tmp_path / "again"
    for _ in range(2):  # an export is replaced by the next one
        assert runner.invoke(app, ["export", str(run_dir), "--out", str(again)]).exit_code == 0


def test_an_export_with_an_empty_set_reads_back_and_pushes_one_config_per_set(
        run_dir, tmp_path, monkeypatch):
    """This run has no GRPO prompts: `datasets` saved the empty split without a data file and
    then could not load the folder (IndexError, in `inspect` too), an empty grpo.jsonl was "no
    rows", and --push-to-hub refused the sets' different columns before any upload."""
    import datasets

    pushed = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo, config_name="default", split=None, **kw:
                        pushed.append((repo, config_name, split, self.num_rows)))
    for fmt in ("hf", "jsonl"):
        out = tmp_path / fmt
        r = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--format", fmt])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["inspect", str(out), "--json"])
        assert r.exit_code == 0 and "sft" in json.loads(r.output), r.output
    assert set(datasets.load_from_disk(str(tmp_path / "hf" / "hf"))) == {"sft"}
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "hub"),
                            "--push-to-hub", "me/set"])
    assert r.exit_code == 0, r.output
    sft = pl.read_parquet(run_dir / "round-1" / "curated" / "sft.parquet").height
    assert pushed == [("me/set", "sft", "train", sft)]
    empty = tmp_path / "empty"
    write_dataset(pl.read_parquet(run_dir / "round-1" / "curated" / "sft.parquet").head(0),
                  pl.DataFrame(), empty, ("parquet",))
    r = runner.invoke(app, ["train", "sft", str(empty), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "is empty" in r.output


def test_report_writes_html(run_dir):
    r = runner.invoke(app, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert (run_dir / "report.html").read_text().count("data:image/svg+xml;base64") >= 3


def test_init_writes_a_loadable_config_and_refuses_to_overwrite(tmp_path):
    p = tmp_path / "tw.yaml"
    assert runner.invoke(app, ["init", str(p)]).exit_code == 0
    from thinkwheel.config import DEFAULT_RUN, load_config

    # init, edit, run starts from what `thinkwheel run` runs, not from defaults no one ran
    assert load_config(p) == load_config(DEFAULT_RUN) != RunConfig()
    r = runner.invoke(app, ["init", str(p)])
    assert r.exit_code == 2 and "--force" in r.output
    assert runner.invoke(app, ["init", str(p), "--force", "--defaults"]).exit_code == 0
    assert load_config(p) == RunConfig()
    assert "the library defaults" in p.read_text().splitlines()[0]  # not the recipe's header
    deep = tmp_path / "configs" / "new" / "tw.yaml"  # a FileNotFoundError traceback before
    assert runner.invoke(app, ["init", str(deep)]).exit_code == 0 and deep.is_file()


def test_run_with_bad_config_is_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sampling:\n  temprature: 0.5\n")
    r = runner.invoke(app, ["run", "-c", str(p)])
    assert r.exit_code == 2
    assert "unknown config key 'sampling.temprature'" in r.output


def test_run_with_a_gpu_setting_and_no_gpu_extras_fails_before_starting(tmp_path, monkeypatch):
    import importlib.util

    import thinkwheel.flows.flywheel as fw

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # this machine has no vllm either way; make it certain
        importlib.util, "find_spec",
        lambda name, *a: None if name in ("vllm", "unsloth") else real_find_spec(name, *a),
    )
    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    p = tmp_path / "gpu.yaml"
    p.write_text("engine: {kind: vllm, model: some/model}\ntrain: {sft: {trainer: unsloth}}\n")
    r = runner.invoke(app, ["run", "-c", str(p)])
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "engine.kind: vllm needs vllm (pip install 'thinkwheel[gpu]'" in out
    assert "train.sft.trainer: unsloth needs unsloth" in out

def test_a_misspelt_name_fails_before_prefect_starts(tmp_path, monkeypatch):
    """A task family, evol operator or benchmark field the run would only meet mid-flow (the
    families after the base model's eval, a benchmark field as a KeyError traceback) is one
    line naming its key, before anything loads."""
    import thinkwheel.flows.flywheel as fw

    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    (tmp_path / "bench.jsonl").write_text('{"question": "What is 1 + 1?"}\n')

    def run_with(text: str) -> tuple[int, str]:
        return run_config(text, tmp_path)

    code, out = run_with("generate: {procedural: {families: [math, adition]}}\n")
    assert code == 2 and "generate.procedural.families: unknown task family 'adition'" in out
    code, out = run_with("generate: {procedural: {mix: [{families: [code]}, {families: [mat]}]}}\n")
    assert code == 2 and "generate.procedural.mix[1].families: unknown task family 'mat'" in out
    code, out = run_with("eval: {families: [count_chars]}\n")
    assert code == 2 and "eval.families: unknown task family 'count_chars'" in out
    code, out = run_with("generate: {evol_instruct: {enabled: true, operators: [deepen, widen]}}\n")
    assert code == 2 and "generate.evol_instruct.operators: unknown ['widen']" in out
    bench = tmp_path / "bench.jsonl"
    code, out = run_with(f"filters: {{decontam: {{benchmarks: [{{name: b, path: '{bench}'}}]}}}}\n")
    assert code == 2 and "has no field 'prompt' (has ['question'])" in out
    code, out = run_with("engine: {device: cuda}\n")  # a CPU build of torch: after Prefect started
    assert code == 2 and "engine.device 'cuda' is not usable here" in out


def test_run_with_a_model_it_cannot_load_fails_before_starting(tmp_path, monkeypatch):
    from huggingface_hub import constants

    import thinkwheel.flows.flywheel as fw

    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def run_with(model: str):
        p = tmp_path / "c.yaml"
        p.write_text(f"engine: {{model: {model}}}\n")
        return runner.invoke(app, ["run", "-c", str(p)])

    r = run_with("someorg/tiny-model")
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "someorg/tiny-model is neither a local folder nor in the Hugging Face cache" in out
    assert "hf download someorg/tiny-model" in out
    r = run_with("runs/old/round-1/model")
    assert r.exit_code == 2 and "no such folder: runs/old/round-1/model" in " ".join(r.output.split())

    # in the cache: the check passes and the flow is reached
    snap = tmp_path / "hub" / "models--someorg--tiny-model" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--someorg--tiny-model" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny-model" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(fw, "run", lambda cfg, out: {"base": None, "rounds": []})
    monkeypatch.chdir(tmp_path)
    r = run_with("someorg/tiny-model")
    assert r.exit_code == 0, r.output


def test_run_without_config_runs_the_packaged_cpu_recipe(tmp_path, monkeypatch):
    """`thinkwheel run` alone is the measured CPU recipe, not the library defaults (which a
    config file starts from): 2 samples over many math tasks, each round retrained from the base model."""
    import thinkwheel.flows.flywheel as fw

    seen = {}

    def fake_flow(cfg, out):
        seen.update(cfg=cfg, out=out)
        return {"base": None, "rounds": []}

    monkeypatch.setattr(fw, "run", fake_flow)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", "--rounds", "1"])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.name, cfg.rounds, cfg.engine.model) == ("default", 1, "bundled")
    assert (cfg.sampling.n, cfg.train.strategy, cfg.train.sft.max_steps) == (2, "from_base", 200)
    assert cfg.generate.procedural.plan()[0] == (["math"], 640, 1)
    assert cfg != RunConfig(name="default", rounds=1)
    assert str(seen["out"]) == "runs/default"


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch):
    """The installed `thinkwheel` script is the typer app itself: a Ctrl-C used to reach click,
    which printed "Aborted!" and exited 1, and the resume hint never showed."""
    import thinkwheel.flows.flywheel as fw

    def interrupted(cfg, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(fw, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", "--rounds", "1"])
    assert r.exit_code == 130 and "re-run the same command to resume" in r.output
    assert "Aborted" not in r.output


def test_a_run_directory_in_use_is_refused_and_inspect_says_so(run_dir, tmp_path):
    from thinkwheel.store import run_lock

    busy = tmp_path / "busy"
    with run_lock(busy):
        r = runner.invoke(app, ["run", "--out", str(busy), "--rounds", "1"])
        assert r.exit_code == 2 and "is being run by pid" in r.output
        assert not (busy / "manifest.json").exists()  # refused before anything was written
    with run_lock(run_dir):
        r = runner.invoke(app, ["inspect", str(run_dir)])
        assert r.exit_code == 0 and "shows the previous run's results" in r.output
    assert "being run" not in runner.invoke(app, ["inspect", str(run_dir)]).output


def test_verifiers_lists_builtins():
    r = runner.invoke(app, ["verifiers"])
    assert r.exit_code == 0
    for name in ("math", "code", "think_format"):
        assert name in r.output


def test_verify_a_file(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [
        {"completion": "<think>2+2</think>\n4", "reference": "4"},
        {"completion": "<think>2+2</think>\n5", "reference": "4"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    r = runner.invoke(app, ["verify", str(f), "--verifier", "math", "--workers", "1"])
    assert r.exit_code == 0, r.output
    v = pl.read_parquet(tmp_path / "c.verdicts.parquet")
    assert v["passed"].to_list() == [True, False]


def test_verify_reads_tests_stored_as_json_and_shows_plugins_the_rows_columns(tmp_path, monkeypatch):
    """Tests stored as a JSON string (many code sets) were one test, a list literal that
    asserted nothing: wrong code passed. A plugin saw no `meta` and none of the row's other
    columns, which it does in a run."""
    import sys

    code = "<think>x</think>\n```python\ndef f(x):\n    return 0\n```"
    (tmp_path / "c.jsonl").write_text(json.dumps({"completion": code, "tests": '["assert f(1) == 2"]'}) + "\n")
    r = runner.invoke(app, ["verify", str(tmp_path / "c.jsonl"), "--verifier", "code", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "c.verdicts.parquet")["passed"].to_list() == [False]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "twprobe.py").write_text(
        "import json\n\ndef show(completion, task):\n"
        "    meta = json.loads(task['meta'])\n"
        "    return meta == {'b': 2, 'expected': {'a': 1}}\n")
    (tmp_path / "m.jsonl").write_text(json.dumps(
        {"completion": "x", "reference": "5", "expected": {"a": 1}, "meta": {"b": 2}}) + "\n")
    r = runner.invoke(app, ["verify", "m.jsonl", "--verifier", "twprobe:show", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "m.verdicts.parquet")["passed"].to_list() == [True]


def test_a_plugin_beside_the_user_is_found_by_the_console_script(tmp_path):
    """`verifier: "mychecks:fn"` with mychecks.py in the working directory: the installed
    `thinkwheel` script puts its own folder on sys.path, not the working directory, so this
    failed with "No module named 'mychecks'" unless the user set PYTHONPATH."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("thinkwheel")
    (tmp_path / "mychecks.py").write_text(
        "def is_four(completion, task):\n    return completion.split('</think>')[-1].strip() == '4'\n")
    (tmp_path / "c.jsonl").write_text('{"completion": "<think>x</think> 4", "reference": "4"}\n'
                                      '{"completion": "<think>x</think> 5", "reference": "4"}\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "verify", "c.jsonl", "--verifier", "mychecks:is_four",
                           "--workers", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "c.verdicts.parquet")["passed"].to_list() == [True, False]
    done = subprocess.run([str(script), "verify", "c.jsonl", "--verifier", "nochecks:is_four"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "looked in the working directory" in done.stderr


def test_verify_and_verifiers_load_a_plugin_module_and_a_configs_settings(tmp_path, monkeypatch):
    """`@register("name")` in mychecks.py: `thinkwheel verify --verifier name` said unknown
    verifier, since nothing imported mychecks, and `thinkwheel verifiers` could not list it.
    `--plugin mychecks` (or a run config's verify.plugins via `--config`) loads it, and
    `--config` judges with that run's verify settings (here percent_policy)."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "twcli_checks.py").write_text(
        "from thinkwheel.verifiers import register\n\n"
        "@register('twcli_nonempty')\n"
        "def nonempty():\n"
        "    return lambda completion, task: bool(completion.split('</think>')[-1].strip())\n")
    (tmp_path / "c.jsonl").write_text('{"completion": "<think>x</think> 50%", "reference": "50"}\n'
                                      '{"completion": "<think>x</think>", "reference": "50"}\n')
    r = runner.invoke(app, ["verify", "c.jsonl", "--verifier", "twcli_nonempty", "--plugin",
                            "twcli_checks", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "c.verdicts.parquet")["passed"].to_list() == [True, False]
    (tmp_path / "run.yaml").write_text(
        "verify: {plugins: [twcli_checks], percent_policy: number, workers: 1}\n")
    r = runner.invoke(app, ["verifiers", "--config", "run.yaml"])
    assert r.exit_code == 0 and "register:twcli_checks" in r.output
    r = runner.invoke(app, ["verify", "c.jsonl", "-c", "run.yaml", "--out", "m.parquet"])
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "m.parquet")["passed"].to_list()[0] is True  # 50% is 50
    r = runner.invoke(app, ["verifiers", "--plugin", "twcli_missing"])
    assert r.exit_code == 2 and "plugin module 'twcli_missing': cannot import" in r.output


def test_train_dpo_on_a_curated_folder(run_dir, tmp_path):
    """`thinkwheel train dpo` end to end on the bundled model; a folder without pairs is a
    one-line error."""
    from thinkwheel.curated.export import dpo_frame

    store = RunStore(run_dir)
    t, c, v, f = (store.read_table(0, n) for n in ("tasks", "candidates", "verdicts", "filtered"))
    dpo = dpo_frame(t, c, v, f, "sys")
    assert dpo.height > 0
    folder = tmp_path / "curated"
    write_dataset(sft_frame(t, c, [], "sys"), t.head(0), folder, ("parquet",), dpo=dpo)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  dpo: {max_steps: 1, batch_size: 2}\n")
    r = runner.invoke(app, ["train", "dpo", str(folder), "--out", str(tmp_path / "m"), "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "model.safetensors").is_file() and "n_pairs" in r.output
    r = runner.invoke(app, ["train", "dpo", str(run_dir / "round-0" / "curated")])
    assert r.exit_code == 2 and "holds no dpo set" in r.output


def test_verify_with_an_unknown_verifier_fails_naming_the_known_ones(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"completion": "<think>x</think>\\n4", "reference": "4"}\n')
    r = runner.invoke(app, ["verify", str(f), "--verifier", "nope"])
    assert r.exit_code == 2 and "unknown verifier 'nope'; known: code, math" in " ".join(r.output.split())
    assert not (tmp_path / "c.verdicts.parquet").exists()
    g = tmp_path / "noref.jsonl"
    g.write_text('{"completion": "<think>x</think>\\n4"}\n')
    r = runner.invoke(app, ["verify", str(g)])
    assert r.exit_code == 2 and "the math verifier needs a 'reference' column" in " ".join(r.output.split())


def test_train_sft_on_a_sharegpt_file_of_any_name(run_dir, tmp_path):
    """A distilled set as most ship it (OpenThoughts: ShareGPT `conversations`, human/gpt), in
    a file not named sft.*: it is the set to train on. Before, "holds no sft set"."""
    msgs = pl.read_parquet(run_dir / "round-1" / "curated" / "sft.parquet")["messages"].to_list()
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = [{"conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in turns]}
            for turns in msgs[:8]]
    data = tmp_path / "distilled.jsonl"
    pl.DataFrame(rows).write_ndjson(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  sft: {max_steps: 1, batch_size: 4}\n")
    r = runner.invoke(app, ["train", "sft", str(data), "--out", str(tmp_path / "m"), "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "'n_examples': 8" in r.output and (tmp_path / "m" / "model.safetensors").is_file()

    from thinkwheel.curated.export import chat_messages

    assert chat_messages(pl.DataFrame(rows))["messages"].to_list() == msgs[:8]
    odd = pl.DataFrame({"conversations": [[{"from": "narrator", "value": "x"}]]})
    with pytest.raises(ValueError, match=r"speakers \['narrator'\]"):
        chat_messages(odd)
    (tmp_path / "bad.jsonl").write_text('{"text": "no turns here"}\n')
    r = runner.invoke(app, ["train", "sft", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "n")])
    assert r.exit_code == 2 and "needs `messages`" in r.output and "['text']" in r.output


def test_train_dpo_on_trls_other_preference_shapes(tmp_path):
    """Text pairs and implicit-prompt conversations (TRL's standard shapes, what most
    preference sets ship as) train like ours; before, a string prompt broke the renderer."""
    from thinkwheel.train.dpo import conversational_pairs

    text = pl.DataFrame({"prompt": ["What is 2 + 2?"], "chosen": ["<think>2+2=4</think>\n4"],
                         "rejected": ["<think>2+2=5</think>\n5"]})
    u = [{"role": "user", "content": "What is 2 + 2?"}]
    implicit = pl.DataFrame({
        "chosen": [[*u, {"role": "assistant", "content": "<think>2+2=4</think>\n4"}]],
        "rejected": [[*u, {"role": "assistant", "content": "<think>2+2=5</think>\n5"}]],
    })
    a, b = conversational_pairs(text).to_dicts(), conversational_pairs(implicit).to_dicts()
    assert a == b and a[0]["prompt"] == u and a[0]["chosen"][0]["role"] == "assistant"
    broken = pl.DataFrame({"chosen": implicit["chosen"],
                           "rejected": [[{"role": "user", "content": "other"}]]})
    with pytest.raises(ValueError, match="differ only in their last turn"):
        conversational_pairs(broken)

    pl.concat([text] * 4).write_ndjson(tmp_path / "prefs.jsonl")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  dpo: {max_steps: 1, batch_size: 2}\n")
    r = runner.invoke(app, ["train", "dpo", str(tmp_path / "prefs.jsonl"), "--out",
                            str(tmp_path / "m"), "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "'n_pairs': 4" in r.output and (tmp_path / "m" / "model.safetensors").is_file()


def test_train_fails_in_one_line_on_a_missing_dataset_or_model(run_dir, tmp_path):
    r = runner.invoke(app, ["train", "sft", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "no dataset at" in r.output and "Traceback" not in r.output
    curated = run_dir / "round-1" / "curated"
    r = runner.invoke(app, ["train", "sft", str(curated), "--model", str(tmp_path / "no-model"),
                            "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "--model: no such folder" in " ".join(r.output.split())
    assert not (tmp_path / "m").exists()
    # a folder that is not a model (a round's folder, not its model): a tokenizer traceback
    # about sentencepiece before; now what it is, and the model folder inside it
    (run_dir / "round-1" / "model").mkdir(exist_ok=True)
    (run_dir / "round-1" / "model" / "config.json").write_text("{}")
    try:
        r = runner.invoke(app, ["train", "sft", str(curated), "--model", str(run_dir / "round-1"),
                                "--out", str(tmp_path / "m")])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and "is a folder but not a model (no config.json)" in out
        assert f"did you mean {run_dir / 'round-1' / 'model'}?" in out
    finally:
        import shutil

        shutil.rmtree(run_dir / "round-1" / "model")


def test_train_takes_the_configs_model_and_never_writes_over_it(run_dir, tmp_path):
    """Without --model, `train` trained the bundled model whatever the config's engine.model
    said (`eval` scored that one); and --out naming the model being trained replaced it."""
    curated = run_dir / "round-1" / "curated"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"engine: {{model: {tmp_path / 'my-model'}}}\n")
    r = runner.invoke(app, ["train", "sft", str(curated), "-c", str(cfg), "--out", str(tmp_path / "m")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and f"engine.model: no such folder: {tmp_path / 'my-model'}" in out, out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "tokenizer.json").write_text("{}")
    r = runner.invoke(app, ["train", "sft", str(curated), "--model", str(mine), "--out", str(mine)])
    assert r.exit_code == 2 and "is the model being trained" in r.output, r.output
    assert (mine / "config.json").read_text() == "{}"


def test_eval_scores_a_model_as_the_flow_does(tmp_path):
    """The bundled model, for real, on a small split: the table, and an eval.json equal to the
    flow's scoring of the same model with the same settings."""
    from thinkwheel.config import load_config
    from thinkwheel.engines.factory import make_engine
    from thinkwheel.flows.steps import score_model

    c = tmp_path / "c.yaml"
    c.write_text("eval: {families: [addition, count_char], per_family: 3, max_tokens: 96}\n")
    r = runner.invoke(app, ["eval", "-c", str(c), "--out", str(tmp_path / "ev.json")])
    assert r.exit_code == 0, r.output
    assert "addition" in r.output and "count_char" in r.output and "all" in r.output
    got = json.loads((tmp_path / "ev.json").read_text())
    cfg = load_config(c)
    want, answers = score_model(cfg, make_engine(cfg.engine))
    assert got["n"] == 6 and set(got["per_family"]) == {"addition", "count_char"}
    assert got["accuracy"] == want["accuracy"] and got["per_family"] == want["per_family"]
    # and its answers beside it, as the flow stores a round's
    kept = pl.read_parquet(tmp_path / "ev-answers.parquet")
    assert kept.equals(answers)
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--model: no such folder" in " ".join(r.output.split())


def test_run_on_a_served_model_checks_the_server_before_starting(tmp_path, monkeypatch):
    """A server that is down or refuses the key fails in a second, not after Prefect starts and
    every retry backs off; a model the server does not list is a warning; a server that dies
    mid-run ends in one line that says the answers so far are kept."""
    import socket

    import thinkwheel.flows.flywheel as fw
    from thinkwheel.engines.local_server import LocalServer
    from thinkwheel.engines.openai import EngineError

    class Named:  # only /v1/models is asked for
        model_name = "served-model"

    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TW_KEY", raising=False)

    def run_with(base_url: str | list[str], model: str = "served-model"):
        p = tmp_path / "c.yaml"
        p.write_text(
            f"engine: {{kind: openai, model: {model}, base_url: {json.dumps(base_url)}, api_key_env: TW_KEY}}\n"
            "train: {sft: {enabled: false}}\n"
        )
        return runner.invoke(app, ["run", "-c", str(p)])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    r = run_with(f"http://127.0.0.1:{free}/v1")
    assert r.exit_code == 2 and "nothing answers at" in " ".join(r.output.split())

    with LocalServer(Named(), api_key="s3cret") as srv:
        r = run_with(srv.base_url)  # no key at all: say the variable is not set
        assert r.exit_code == 2 and "$TW_KEY is not set" in " ".join(r.output.split())
        monkeypatch.setenv("TW_KEY", "wrong")
        r = run_with(srv.base_url)
        assert r.exit_code == 2 and "refused the API key from $TW_KEY (HTTP 401)" in " ".join(r.output.split())
        monkeypatch.setenv("TW_KEY", "s3cret")
        monkeypatch.setattr(fw, "run", lambda cfg, out: {"base": None, "rounds": []})
        r = run_with(srv.base_url)
        assert r.exit_code == 0 and "not among the models" not in r.output
        r = run_with(srv.base_url, model="other-model")
        assert r.exit_code == 0 and "other-model is not among the models" in " ".join(r.output.split())
        # the endpoint pasted whole, and a root without /v1 (every call 404s after Prefect starts)
        r = run_with(srv.base_url + "/chat/completions")
        said = " ".join(r.output.split())
        assert r.exit_code == 2 and f"is an endpoint; give the API root ({srv.base_url})" in said
        r = run_with(srv.base_url.removesuffix("/v1"))
        said = " ".join(r.output.split())
        assert r.exit_code == 0 and "usually ends in /v1" in said, said
        # of several servers, one that is down is a warning: the others take its calls
        r = run_with([f"http://127.0.0.1:{free}/v1", srv.base_url])
        out = " ".join(r.output.split())
        assert r.exit_code == 0 and f"nothing answers at http://127.0.0.1:{free}/v1" in out
        assert "its calls go to the 1 other server(s)" in out

        def dies(cfg, out):
            raise EngineError("3 of 9 requests failed: gave up after 7 attempts (last: 500)")

        monkeypatch.setattr(fw, "run", dies)
        r = run_with(srv.base_url)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "3 of 9 requests failed" in out and "re-run the same command" in out


def test_an_empty_jsonl_is_one_line_not_a_traceback(tmp_path):
    """polars cannot infer the columns of an empty file: verify, inspect and the trainers
    reached users with its ComputeError traceback; `run` already said "no rows"."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for args in (["verify", str(empty)], ["inspect", str(empty)],
                 ["train", "sft", str(empty), "--out", str(tmp_path / "m")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "no rows" in r.output, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    r = runner.invoke(app, ["inspect", str(empty), "--samples", "-3"])  # was a polars traceback
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)


def test_record_flags_on_a_dataset_say_they_need_a_run(tmp_path):
    """--samples, --where, --reason and --round read a run's records; on an exported dataset
    they were ignored without a word and the summary printed as if they had applied."""
    pl.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}).write_parquet(tmp_path / "sft.parquet")
    assert runner.invoke(app, ["inspect", str(tmp_path)]).exit_code == 0
    r = runner.invoke(app, ["inspect", str(tmp_path), "--samples", "1", "--round", "0"])
    assert r.exit_code == 2 and "--samples and --round" in r.output


def test_train_dpo_checks_the_pairs_before_loading_the_model(tmp_path, monkeypatch):
    """An SFT file given to `train dpo` showed "DPO on 34 pairs" and loaded the model before
    the shape error; the pairs are checked first."""
    import thinkwheel.train.dpo as dpo_mod

    def never(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(dpo_mod, "train_dpo", never)
    f = tmp_path / "sft.parquet"
    pl.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}).write_parquet(f)
    r = runner.invoke(app, ["train", "dpo", str(f), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "needs `chosen` and `rejected`" in r.output, r.output


def _model_copy(tmp_path, name, *, template=None, files=("config.json",)):
    """A folder holding the bundled model's tokenizer (and a config.json stand-in)."""
    from transformers import AutoTokenizer

    from thinkwheel.assets import model_path

    folder = tmp_path / name
    tok = AutoTokenizer.from_pretrained(model_path())
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(folder)
    if template == "":
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    for f in files:
        (folder / f).write_text("{}")
    return folder


def test_a_model_folder_is_checked_before_the_run(tmp_path):
    """A folder without tokenizer files, a LoRA adapter given to train, a template that refuses
    a system turn: each failed after Prefect started (an IndexError, a 60-line traceback, a
    130-line TemplateError); a folder without a template ran silently as a base model."""
    from thinkwheel.cli import template_check, unreachable_model
    from thinkwheel.config import parse_config

    def cfg(folder, **extra):
        return parse_config({"engine": {"model": str(folder)}, **extra})

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert "has no tokenizer" in unreachable_model(cfg(bare))
    adapter = _model_copy(tmp_path, "adapter", files=("adapter_config.json",))
    assert "is a LoRA adapter, not a model" in unreachable_model(cfg(adapter))
    assert unreachable_model(cfg(adapter), training=False) is None  # it scores
    gemma = ("{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "{{ m['content'] }}{% endfor %}")
    strict = _model_copy(tmp_path, "strict", template=gemma)
    problem, _ = template_check(cfg(strict))
    assert "System role not supported" in problem and "export.system_prompt: ''" in problem
    assert template_check(cfg(strict, export={"system_prompt": ""})) == (None, None)
    none = _model_copy(tmp_path, "plain", template="")
    problem, warning = template_check(cfg(none))
    assert problem is None and "has no chat template" in warning
    assert template_check(cfg(_model_copy(tmp_path, "ok"))) == (None, None)
    r = runner.invoke(app, ["run", "-c", str(_config_file(tmp_path, strict)), "--out",
                            str(tmp_path / "run")])
    assert r.exit_code == 2 and "System role not supported" in r.output, r.output


def _config_file(tmp_path, folder):
    p = tmp_path / "c.yaml"
    p.write_text(f"engine: {{model: {folder}}}\n")
    return p


def test_eval_refuses_a_local_folder_the_server_does_not_serve(tmp_path):
    """With engine.kind openai, --model FOLDER was sent as the model name: a server that ignores
    names scored its own model, and eval.json said it was the folder's. A folder the server
    lists (`vllm serve PATH` names the model by its path) is scored."""
    from thinkwheel.engines.local_server import LocalServer

    folder = _model_copy(tmp_path, "mine")

    class Named:  # only /v1/models is asked for before the refusal
        model_name = "served-model"

    cfg = tmp_path / "c.yaml"
    with LocalServer(Named()) as srv:
        cfg.write_text(f"engine: {{kind: openai, model: served-model, base_url: '{srv.base_url}'}}\n"
                       "train: {sft: {enabled: false}}\n")
        r = runner.invoke(app, ["eval", "-c", str(cfg), "--model", str(folder)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and f"--model {folder} is not among the models" in out, out


def test_wrong_paths_are_one_line_errors_before_any_work(tmp_path, monkeypatch):
    """Each of these printed a traceback, some after the work was done (eval lost its scores)."""
    import thinkwheel.flows.flywheel as fw

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "tasks.jsonl").write_text('{"prompt": "1+1", "reference": "2"}\n')
    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    for args, said in [
        (["run", "--rounds", "1", "--out", str(folder)], "holds other files (tasks.jsonl"),
        (["run", "--rounds", "1", "--out", str(folder / "tasks.jsonl")], "is a file"),
        (["eval", "--out", str(folder)], "is a folder; give the eval.json file"),
        (["init", str(folder), "--force"], "is a folder; give the config file"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and said in " ".join(r.output.split()), (args, r.output)
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"completion": "</think>2", "reference": "2"}\n{"completion": "x"\n')
    r = runner.invoke(app, ["verify", str(broken), "--out", str(folder)])
    assert r.exit_code == 2 and "is a folder" in r.output
    r = runner.invoke(app, ["verify", str(broken)])
    assert r.exit_code == 2 and f"{broken}:2: not JSON" in " ".join(r.output.split()), r.output
    broken.write_bytes(b'{"completion": "</think>2", "reference": "2"}\n{"completion": "\xff"}\n')
    r = runner.invoke(app, ["verify", str(broken)])
    assert r.exit_code == 2 and f"{broken}:2: not JSON" in " ".join(r.output.split()), r.output
    rows = tmp_path / "rows.json"  # a JSON array of rows is read as one
    rows.write_text('[{"completion": "</think>2", "reference": "2"}]')
    r = runner.invoke(app, ["verify", str(rows)])
    assert r.exit_code == 0 and '"passed": 1' in r.output, r.output
    fresh = tmp_path / "fresh"  # a new folder with only a VCS file in it is still new
    fresh.mkdir()
    (fresh / ".gitignore").write_text("*\n")
    from thinkwheel.cli import not_a_run_dir

    assert not_a_run_dir(fresh) is None and not_a_run_dir(folder) is not None


def test_inspect_eval_reads_an_evals_own_answers(tmp_path):
    """`thinkwheel eval --out x.json` writes x-answers.parquet; inspect --eval reads it alone."""
    from thinkwheel.train import evaluate as ev

    tasks = records.frame([{"task_id": f"t{i}", "domain": "math", "family": "addition",
                            "prompt": f"What is {i} + 1?", "reference": str(i + 1),
                            "verifier": "math"} for i in range(3)], records.TASKS)
    cands = []

    def verify(t, c):
        cands.append(c)
        return records.frame([{"candidate_id": x, "task_id": y, "verifier": "math",
                               "passed": y != "t2", "reason": "ok" if y != "t2" else "wrong_answer"}
                              for x, y in zip(c["candidate_id"], c["task_id"], strict=True)],
                             records.VERDICTS)

    class Echo:
        def generate(self, requests, params, progress=None):
            from thinkwheel.engines.base import Completion
            return [[Completion(text="<think>w</think>1")] for _ in requests]

    ev.score_tasks(Echo(), tasks, verify, k=1, max_tokens=4, seed=0).write_parquet(
        tmp_path / "mine-answers.parquet")
    r = runner.invoke(app, ["inspect", str(tmp_path / "mine-answers.parquet"), "--eval",
                            "--reason", "failed"])
    assert r.exit_code == 0, r.output
    assert "passed 2 · failed 1" in r.output and "mine · held-out · addition · t2" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "mine-answers.parquet"), "--eval",
                            "--where", "task_id = 't0'"])
    assert "passed 1 · failed 0" in r.output  # the counts are of the answers --where keeps
    r = runner.invoke(app, ["inspect", str(tmp_path / "mine-answers.parquet"), "--eval",
                            "--reason", "broken"])
    assert r.exit_code == 2 and "mine is the first" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "mine-answers.parquet"), "--eval",
                            "--round", "3"])
    assert r.exit_code == 2 and "one model's answers" in " ".join(r.output.split())


def test_train_grpo_reads_a_math_only_jsonl_and_names_an_unknown_verifier_before_training(
        tmp_path, monkeypatch):
    """A JSONL GRPO set with no code row types its all-null `tests` column Null, and
    `verifiable_prompts` crashed on it with a polars traceback; a row naming a verifier that
    resolves to nothing failed at TRL's first reward call, after the model had loaded."""
    from thinkwheel.train.grpo import verifiable_prompts

    rows = [{"prompt": "What is 2 + 2?", "reference": "4", "tests": None},
            {"prompt": "What is 3 + 4?", "reference": "7", "tests": None}]
    jsonl = tmp_path / "grpo.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = verifiable_prompts(pl.read_ndjson(jsonl))
    assert g["verifier"].to_list() == ["math", "math"] and g.schema["tests"] == pl.List(pl.Utf8)

    jsonl.write_text("".join(json.dumps({**r, "verifier": "nosuch_mod_xyz:check"}) + "\n"
                             for r in rows))
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m")])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "cannot import 'nosuch_mod_xyz'" in said, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "m").exists()

    (tmp_path / "tw_grpo_checks.py").write_text(
        "from thinkwheel.verifiers import register\n"
        "@register('tw_upper_grpo')\n"
        "def upper(completion, task):\n    return completion.isupper()\n")
    jsonl.write_text("".join(json.dumps({**r, "verifier": "tw_upper_grpo"}) + "\n" for r in rows))
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "needs --plugin MODULE" in " ".join(r.output.split()), r.output
    (tmp_path / "tw_grpo_three.py").write_text("def three(completion, task, meta):\n    return True\n")
    three = tmp_path / "three.jsonl"
    three.write_text("".join(json.dumps({**r, "verifier": "tw_grpo_three:three"}) + "\n"
                             for r in rows))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "grpo", str(three), "--out", str(tmp_path / "m")])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "requires 3 arguments" in said and "--plugin" not in said, r.output

    import thinkwheel.train.grpo as grpo_mod

    seen = []
    monkeypatch.setattr(grpo_mod, "train_grpo", lambda path, g, out, cfg, rewards, weights, **kw:
                        seen.append(rewards[0](completions=["YES"] * g.height, prompts=g["prompt"],
                                               **{c: g[c].to_list() for c in ("reference", "tests",
                                                                              "verifier")})) or {})
    monkeypatch.chdir(tmp_path)  # a plugin module beside the user is found
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m"),
                            "--plugin", "tw_grpo_checks"])
    assert r.exit_code == 0, r.output
    assert seen == [[1.0, 1.0]]


def test_train_grpo_reads_tests_in_a_json_string_and_says_a_polars_error_in_one_line(
        tmp_path, monkeypatch):
    """`tests` as a JSON array in a string (many code sets) raised polars'
    InvalidOperationError, which is no ValueError: a raw traceback, not one line."""
    import thinkwheel.train.grpo as grpo_mod

    seen = []
    monkeypatch.setattr(grpo_mod, "train_grpo", lambda path, g, out, cfg, rewards, weights, **kw:
                        seen.append(g["tests"].to_list()) or {})
    jsonl = tmp_path / "grpo.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Write f(x) = x + 1.", "domain": "code",
                                 "tests": json.dumps(["assert f(1) == 2"])}) + "\n")
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, (r.exception, r.output)
    assert seen == [[["assert f(1) == 2"]]]

    jsonl.write_text(json.dumps({"prompt": "What is 2 + 2?", "reference": [4]}) + "\n")
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m")])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "error: " in said and "InvalidOperationError: cannot cast List type" in said, said
    assert "This error occurred" not in said  # polars' query plan is not the user's problem

    jsonl.write_text('{"prompt": "What is 2 + 2?"}\n{"prompt": \n')  # a line cut short
    r = runner.invoke(app, ["train", "grpo", str(jsonl), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    said = " ".join(r.output.split())
    assert "error: " in said and "grpo.jsonl" in said and len(seen) == 1, said


def test_eval_model_flag_passes_the_configs_rules(tmp_path, monkeypatch):
    """`eval --model bundled -c own.yaml` skipped the config's validators (model_copy) and
    scored the bundled model on a split it was pretrained on, with no warning."""
    import thinkwheel.flows.steps as steps

    monkeypatch.setattr(steps, "score_model", lambda *a, **k: pytest.fail("must not score"))
    own = tmp_path / "own.yaml"
    own.write_text(f"engine: {{model: {tmp_path / 'my-model'}}}\neval: {{per_family: 200, seed: 7}}\n")
    r = runner.invoke(app, ["eval", "-c", str(own), "--model", "bundled"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "--model bundled: with the bundled model, eval.per_family is at " \
        "most 40" in out, out


def test_eval_of_a_model_that_fails_to_load_is_one_line(tmp_path):
    """A model folder whose config.json transformers cannot read passed the preflight, then
    `eval` ended in a ValueError traceback (`run` said it in one line)."""
    folder = _model_copy(tmp_path, "mine")  # config.json "{}": no model_type
    r = runner.invoke(app, ["eval", "--model", str(folder)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "error: Unrecognized model in" in out, (r.exception, out)


def test_a_lora_adapter_for_vllm_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    """A wrong engine.lora_path failed inside vLLM once the model had loaded; with training on,
    the trainers trained engine.model without it; an adapter folder naming no base (or one
    not here) passed the preflight and failed in vLLM."""
    import huggingface_hub.constants

    import thinkwheel.cli as cli
    import thinkwheel.engines.factory as factory
    import thinkwheel.flows.flywheel as fw

    def reached(*args, **kwargs):
        raise ValueError("the engine was reached")

    monkeypatch.setattr(cli, "missing_extras", lambda cfg: [])  # no vLLM on this machine
    monkeypatch.setattr(factory, "make_engine", reached)
    monkeypatch.setattr(fw, "run", lambda cfg, out: pytest.fail("the flow must not start"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = _model_copy(tmp_path, "base")

    def adapter(name, **config):
        folder = _model_copy(tmp_path, name, files=())
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, **config}))
        return str(folder)

    lora, other = adapter("lora", base_model_name_or_path=str(model)), adapter("other")
    (tmp_path / "empty").mkdir()
    for command, engine, said in [
        ("eval", {"model": str(model), "lora_path": str(tmp_path / "empty")},
         f"engine.lora_path: {tmp_path / 'empty'} is not a LoRA adapter folder"),
        ("run", {"model": str(model), "lora_path": lora},
         "engine.lora_path: a run that trains would train engine.model without the adapter"),
        ("eval", {"model": other}, "names no base_model_name_or_path"),
        ("eval", {"model": adapter("far", base_model_name_or_path="org/Not-Here")},
         "which vLLM loads: org/Not-Here is neither a local folder nor in the Hugging Face"),
        ("eval", {"model": lora, "lora_path": lora}, "is a LoRA adapter too"),
        ("eval", {"model": str(model), "lora_path": lora}, "the engine was reached"),
        ("eval", {"model": lora}, "the engine was reached"),
    ]:
        c = tmp_path / "c.yaml"
        c.write_text(json.dumps({"engine": {"kind": "vllm", **engine}}))
        r = runner.invoke(app, [command, "-c", str(c), "--out", str(tmp_path / command)])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and said in out, (engine, r.exception, out)
