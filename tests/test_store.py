"""Run directory: atomic writes, manifest semantics, shard resume."""

import json
import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from thinkwheel.config import RunConfig
from thinkwheel.store import RunStore, atomic_write_parquet, ids_hash


def test_create_writes_config_and_manifest(tmp_path):
    store = RunStore.create(tmp_path / "run", RunConfig(name="x"))
    assert (store.root / "config.yaml").exists()
    assert store.config().name == "x"
    assert store.manifest()["rounds"] == {}


def test_stage_done_needs_same_hashes_and_outputs(tmp_path):
    store = RunStore.create(tmp_path / "run", RunConfig())
    p = store.write_table(0, "tasks", pl.DataFrame({"a": [1]}))
    store.mark_stage(0, "tasks", input_hash="i", config_hash="c", count=1, outputs=[p])
    assert store.stage_done(0, "tasks", "i", "c")
    assert not store.stage_done(0, "tasks", "i", "other-config")
    assert not store.stage_done(0, "tasks", "other-input", "c")
    p.unlink()
    assert not store.stage_done(0, "tasks", "i", "c")  # outputs must exist too


def test_a_cut_short_output_is_no_finished_stage(tmp_path):
    """A parquet cut short outside our atomic writes read as a done stage, and the reuse then
    failed with a bare polars error ("must end with PAR1") that named no file."""
    store = RunStore.create(tmp_path / "run", RunConfig())
    path = store.write_table(0, "verdicts", pl.DataFrame({"a": list(range(1000))}))
    store.mark_stage(0, "verify", input_hash="i", config_hash="c", outputs=[path])
    assert store.stage_done(0, "verify", "i", "c")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert not store.stage_done(0, "verify", "i", "c")
    path.write_bytes(b"PA")
    assert not store.stage_done(0, "verify", "i", "c")


def test_stages_made_by_another_version_are_named(tmp_path, monkeypatch):
    """Stage hashes see inputs and config, not code: a resumed run after an upgrade reuses
    stages an older version made, so the manifest records who made each one and says so."""
    import thinkwheel.store as store_mod

    store = RunStore.create(tmp_path / "run", RunConfig())
    store.mark_stage(0, "tasks", input_hash="i", config_hash="c")
    store.mark_stage("base", "eval", input_hash="i", config_hash="c")
    assert store.stale_versions() == {}
    monkeypatch.setattr(store_mod, "__version__", "9.9.9")
    store.mark_stage(0, "sample", input_hash="i", config_hash="c")
    store.mark_stage(1, "tasks", status="running")  # unfinished: nothing reused
    import thinkwheel

    assert store.stale_versions() == {thinkwheel.__version__: ["round-0/tasks", "base/eval"]}


def test_manifest_paths_are_relative(tmp_path):
    store = RunStore.create(tmp_path / "run", RunConfig())
    p = store.write_table(1, "verdicts", pl.DataFrame({"a": [1]}))
    store.mark_stage(1, "verify", outputs=[p])
    assert store.stage_entry(1, "verify")["outputs"] == ["round-1/verdicts.parquet"]


def test_a_run_named_relative_to_the_working_directory_resumes(tmp_path, monkeypatch):
    """`thinkwheel run` defaults to `--out runs/<name>`, a relative path: outputs must be
    recorded inside the run directory, or no stage is ever found done and a re-run retrains."""
    monkeypatch.chdir(tmp_path)
    store = RunStore.create("runs/x", RunConfig())
    p = store.write_table(0, "tasks", pl.DataFrame({"a": [1]}))
    store.mark_stage(0, "tasks", input_hash="i", config_hash="c", outputs=[p, store.round_dir(0)])
    assert store.stage_entry(0, "tasks")["outputs"] == ["round-0/tasks.parquet", "round-0"]
    assert store.stage_done(0, "tasks", "i", "c")
    assert RunStore(tmp_path / "runs" / "x").stage_done(0, "tasks", "i", "c")  # named either way
    # a manifest from before the fix (paths relative to the working directory) still resumes
    store._update(lambda m: m["rounds"]["0"]["stages"]["tasks"].update(
        outputs=["runs/x/round-0/tasks.parquet"]))
    assert store.stage_done(0, "tasks", "i", "c")
    p.unlink()
    assert not store.stage_done(0, "tasks", "i", "c")


def test_shards_resume_by_key(tmp_path):
    store = RunStore(tmp_path / "run")
    for i in (0, 2):
        store.write_shard(0, "sample", "k1", i, pl.DataFrame({"i": [i]}))
    assert store.done_shards(0, "sample", "k1") == {0, 2}
    assert store.done_shards(0, "sample", "k2") == set()  # another config never reuses them
    assert sorted(store.read_shards(0, "sample", "k1")["i"]) == [0, 2]


def test_ids_hash_is_order_free():
    assert ids_hash(["a", "b"]) == ids_hash(["b", "a"]) != ids_hash(["a", "c"])


def test_failed_write_leaves_previous_file_intact(tmp_path):
    p = tmp_path / "t.parquet"
    atomic_write_parquet(p, pl.DataFrame({"a": [1, 2]}))

    class Boom(pl.DataFrame):
        def write_parquet(self, *a, **k):
            with open(a[0], "wb") as f:
                f.write(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_parquet(p, Boom({"a": [3]}))
    assert pl.read_parquet(p)["a"].to_list() == [1, 2]
    assert [f.name for f in tmp_path.iterdir()] == ["t.parquet"]  # no temp left behind


def test_sigkill_mid_write_never_leaves_a_torn_file(tmp_path):
    """A child writes big frames in a loop and is SIGKILLed; the file is always readable."""
    target = tmp_path / "big.parquet"
    script = textwrap.dedent(
        f"""
        import polars as pl, sys
        from thinkwheel.store import atomic_write_parquet
        df = pl.DataFrame({{"x": list(range(300_000)), "s": ["y" * 20] * 300_000}})
        atomic_write_parquet(__import__("pathlib").Path({str(target)!r}), df)
        print("first", flush=True)
        i = 0
        while True:
            i += 1
            atomic_write_parquet(__import__("pathlib").Path({str(target)!r}), df.with_columns(pl.lit(i).alias("i")))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    import time

    time.sleep(1.0)
    proc.kill()
    proc.wait()
    df = pl.read_parquet(target)
    assert df.height == 300_000
    leftovers = [f for f in os.listdir(tmp_path) if f != "big.parquet"]
    # a killed writer may leave its own temp file, never a torn target
    assert all(f.endswith(".tmp") for f in leftovers)


def test_manifest_is_valid_json_after_many_updates(tmp_path):
    store = RunStore.create(tmp_path / "run", RunConfig())
    for i in range(20):
        store.mark_stage(0, f"s{i}", count=i)
    m = json.loads(store.manifest_path.read_text())
    assert len(m["rounds"]["0"]["stages"]) == 20


def test_model_hash_sees_what_shapes_generation_not_training_records(tmp_path):
    """A model is its weights in any format, config, generation config, tokenizer and chat
    template: editing the template in place, or swapping `.bin` weights, is a new model (it
    used to read only *.safetensors and config.json, and stages reused the old model's work).
    The trainer's records beside it are not the model."""
    from thinkwheel.store import model_hash

    m = tmp_path / "m"
    m.mkdir()
    for name, text in (("config.json", "{}"), ("pytorch_model.bin", "w1"),
                       ("chat_template.jinja", "t1"), ("tokenizer.json", "{}")):
        (m / name).write_text(text)
    first = model_hash(m)
    (m / "train_metrics.json").write_text('{"train_runtime": 12.5}')
    (m / "train_log.jsonl").write_text("{}\n")
    assert model_hash(m) == first
    (m / "chat_template.jinja").write_text("t2")
    second = model_hash(m)
    assert second != first
    (m / "pytorch_model.bin").write_text("w2")
    assert model_hash(m) not in (first, second)
    assert model_hash("org/served-model") == model_hash("org/served-model") != first


def test_path_hash_follows_content_not_name(tmp_path):
    from thinkwheel.store import path_hash

    f = tmp_path / "bench.jsonl"
    f.write_text('{"prompt": "a"}\n')
    before = path_hash(f)
    f.write_text('{"prompt": "b"}\n')
    assert path_hash(f) != before
    d = tmp_path / "ds"
    d.mkdir()
    (d / "part.arrow").write_text("x")
    folder = path_hash(d)
    (d / "part.arrow").write_text("y")
    assert path_hash(d) != folder
    assert path_hash(tmp_path / "missing") == path_hash(tmp_path / "missing")



def test_rounds_beyond_the_configured_count_are_an_earlier_runs(tmp_path):
    """Re-running with fewer `rounds` leaves the later rounds' folders: inspect and the report
    must not show them as this run's."""
    store = RunStore.create(tmp_path / "run", RunConfig(rounds=3))
    for k in range(3):
        store.write_table(k, "tasks", pl.DataFrame({"a": [k]}))
    assert store.rounds() == [0, 1, 2]
    RunStore.create(tmp_path / "run", RunConfig(rounds=1))
    assert store.rounds() == [0]
    # a user's copy of a round is no round: int() of its name raised in inspect and the report
    for name in ("round-0-backup", "round-1.bak", "round-x"):
        (tmp_path / "run" / name).mkdir()
    assert store.rounds() == [0]


def test_written_files_are_as_readable_as_the_umask_allows(tmp_path):
    """Temp files are 0600: renamed into place, a run's report, manifest and tables were
    unreadable to teammates and web servers whatever the umask."""
    import stat

    from thinkwheel import store as store_mod
    from thinkwheel.curated.report import write_report
    from thinkwheel.store import atomic_dir, atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)
    assert store_mod._UMASK == umask
    store = RunStore.create(tmp_path / "run", RunConfig())
    paths = [store.write_table(0, "tasks", pl.DataFrame({"a": [1]})), store.manifest_path,
             store.root / "config.yaml", write_report("<html></html>", store.root / "r.html")]
    atomic_write_text(tmp_path / "t.json", "{}")
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    paths += [tmp_path / "t.json"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o666 & ~umask}
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask


def test_one_run_at_a_time_per_directory(tmp_path):
    """The same command in a second terminal wrote the same shards and manifest under the
    first run; now it is refused, naming the run that holds the directory. The lock is the
    kernel's, so a killed run leaves none behind."""
    from thinkwheel.store import RunInUse, run_lock, running

    root = tmp_path / "run"
    assert running(root) is None
    with run_lock(root):
        assert running(root).startswith(f"pid {os.getpid()} since ")
        with pytest.raises(RunInUse, match=f"is being run by pid {os.getpid()}"), run_lock(root):
            pass
    assert running(root) is None
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom thinkwheel.store import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)", str(root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert running(root) == f"pid {holder.pid} since " + running(root).split(" since ")[1]
        holder.kill()
        holder.wait()
        with run_lock(root):  # the killed holder's lock went with it
            pass
    finally:
        holder.kill()
