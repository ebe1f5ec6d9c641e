"""Export: the assistant turn is exactly <think>…</think>\\n answer; sets round-trip to disk."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest

from thinkwheel import records
from thinkwheel.curated import export

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SYSTEM = "You are careful. Think inside <think></think>, then answer."


def _tasks() -> pl.DataFrame:
    rows = [
        {
            "domain": "math",
            "family": "addition",
            "difficulty": 1,
            "source": "procedural:addition",
            "prompt": "What is 345 + 78?",
            "reference": "423",
            "tests": None,
            "verifier": "math",
        },
        {
            "domain": "math",
            "family": "linear_equation",
            "difficulty": 2,
            "source": "evol:deepen",
            "prompt": "Solve for x: 3x + 2 = 17",
            "reference": "5",
            "tests": None,
            "verifier": "math",
        },
        {
            "domain": "code",
            "family": "linear_function",
            "difficulty": 1,
            "source": "procedural:linear_function",
            "prompt": "Write a Python function `f(x)` that returns 3*x + 2.",
            "reference": "def f(x):\n    return 3 * x + 2",
            "tests": ["assert f(0) == 2", "assert f(4) == 14"],
            "verifier": "code",
        },
    ]
    for r in rows:
        r["task_id"] = records.task_id(r["domain"], r["prompt"], r["reference"])
        r.update(round=0, parent_id=None, meta="{}")
    return records.frame(rows, records.TASKS)


COMPLETIONS = [
    # (task index, completion): odd spacing on purpose; the export must normalise it.
    (0, "<think>\n5+8=13, carry 1 ... 345 + 78 = 423.\n</think>\n\n423\n"),
    (0, "<think>345+78 is 423</think>\\boxed{423}"),
    (1, "3x = 15 so x = 5</think>\nx = 5"),  # template pre-filled <think>
    (2, "<think>multiply then add</think>\n```python\ndef f(x):\n    return 3 * x + 2\n```"),
    (2, "def f(x): return 3*x+2"),  # no think block at all
]


def _candidates(tasks: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for i, (ti, text) in enumerate(COMPLETIONS):
        tid = tasks["task_id"][ti]
        reasoning, answer = records.split_think(text)
        params = {"temperature": 0.8}
        rows.append(
            {
                "candidate_id": records.candidate_id(tid, "tiny", i, params),
                "task_id": tid,
                "round": 1,
                "sample_idx": i,
                "model": "tiny",
                "completion": text,
                "reasoning": reasoning,
                "answer": answer,
                "finish_reason": "stop",
                "n_tokens": len(text.split()),
                "gen_params": records.dumps(params),
            }
        )
    # Shuffle input order: output order must not depend on it.
    return records.frame(rows[::-1], records.CANDIDATES)


@pytest.fixture()
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    t = _tasks()
    return t, _candidates(t)


def test_assistant_turn_is_exact(frames):
    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    assert sft.height == len(COMPLETIONS)
    by_id = {r["candidate_id"]: r for r in sft.iter_rows(named=True)}
    for c in cands.iter_rows(named=True):
        msgs = by_id[c["candidate_id"]]["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[0]["content"] == SYSTEM
        content = msgs[2]["content"]
        reasoning, answer = records.split_think(c["completion"])
        want = "<think>" + (reasoning or "") + "</think>" + "\n" + answer
        assert content == want == export.assistant_content(reasoning, answer)
        # The format is a fixed point of split_think: a model trained on it round-trips.
        assert records.split_think(content) == ((reasoning or ""), answer)
        assert content.startswith("<think>") and "\n</think>" not in content
        assert not content.endswith("\n") and content.count("</think>\n") == 1
    first = by_id[cands.filter(pl.col("sample_idx") == 0)["candidate_id"][0]]["messages"][2]
    assert first["content"] == "<think>5+8=13, carry 1 ... 345 + 78 = 423.</think>\n423"
    bare = by_id[cands.filter(pl.col("sample_idx") == 4)["candidate_id"][0]]["messages"][2]
    assert bare["content"] == "<think></think>\ndef f(x): return 3*x+2"


def test_sft_lineage_order_and_selection(frames):
    tasks, cands = frames
    chosen = cands.filter(pl.col("sample_idx").is_in([0, 3]))["candidate_id"]
    sft = export.sft_frame(tasks, cands, list(chosen) + [chosen[0]], SYSTEM)  # dup id ignored
    assert sft.columns == ["messages", *export.SFT_LINEAGE]
    assert sorted(sft["candidate_id"].to_list()) == sorted(chosen.to_list())
    assert sft["task_id"].to_list() == sorted(sft["task_id"].to_list())
    code = sft.filter(pl.col("domain") == "code").row(0, named=True)
    assert code["family"] == "linear_function" and code["verifier"] == "code"
    assert code["source"] == "procedural:linear_function" and code["round"] == 1
    assert code["model"] == "tiny"
    assert code["messages"][1]["content"].startswith("Write a Python function")
    reshuffled = export.sft_frame(tasks, cands.reverse(), chosen, SYSTEM)
    assert reshuffled.equals(sft)


def test_sft_refuses_unknown_ids_and_orphans(frames):
    tasks, cands = frames
    with pytest.raises(ValueError, match="not in candidates"):
        export.sft_frame(tasks, cands, ["nope"], SYSTEM)
    with pytest.raises(ValueError, match="task is missing"):
        export.sft_frame(tasks.head(1), cands, cands["candidate_id"], SYSTEM)
    empty = export.sft_frame(tasks, cands, [], SYSTEM)
    assert empty.height == 0 and "messages" in empty.columns


def test_sft_rows_are_conversational_for_trl(frames):
    from trl.data_utils import is_conversational

    tasks, cands = frames
    row = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM).row(0, named=True)
    assert is_conversational({"messages": row["messages"]})


def _verdicts(cands: pl.DataFrame, passed: dict[int, list[bool | None]]) -> pl.DataFrame:
    rows = []
    for c in cands.iter_rows(named=True):
        for j, p in enumerate(passed[c["sample_idx"]]):
            rows.append(
                {
                    "candidate_id": c["candidate_id"],
                    "task_id": c["task_id"],
                    "verifier": ["math", "think_format"][j],
                    "passed": p,
                    "score": float(bool(p)),
                    "reason": "ok" if p else f"r{j}:{p}",
                }
            )
    return records.frame(rows, records.VERDICTS)


def test_pass_rates_count_unverified_as_wrong(frames):
    tasks, cands = frames
    v = _verdicts(cands, {0: [True, True], 1: [True, False], 2: [None], 3: [True], 4: [False]})
    out = export.candidate_outcomes(v)
    got = dict(zip(out["candidate_id"].to_list(), out["passed"].to_list(), strict=True))
    by_idx = dict(zip(cands["sample_idx"].to_list(), cands["candidate_id"].to_list(), strict=True))
    assert [got[by_idx[i]] for i in range(5)] == [True, False, None, True, False]
    assert out.filter(pl.col("candidate_id") == by_idx[1])["reason"][0] == "r1:False"
    rates = export.task_pass_rates(v)
    r = {row["task_id"]: row for row in rates.iter_rows(named=True)}
    t0, t1, t2 = tasks["task_id"].to_list()
    assert (r[t0]["n"], r[t0]["n_passed"], r[t0]["pass_rate"]) == (2, 1, 0.5)
    assert (r[t1]["n_unverified"], r[t1]["pass_rate"]) == (1, None)  # nothing judged: no rate
    assert r[t2]["pass_rate"] == 0.5


def test_grpo_frame_prompt_band_and_rates(frames):
    tasks, cands = frames
    t0, t1, t2 = tasks["task_id"].to_list()
    g = export.grpo_frame(tasks, {t0: 1.0, t1: 0.25}, system_prompt=SYSTEM)
    assert g.columns == export.GRPO_COLUMNS and g.height == 3
    row = {r["task_id"]: r for r in g.iter_rows(named=True)}
    assert row[t1]["prompt"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Solve for x: 3x + 2 = 17"},
    ]
    assert row[t2]["pass_rate"] is None and row[t2]["tests"] == [
        "assert f(0) == 2",
        "assert f(4) == 14",
    ]
    assert row[t1]["reference"] == "5" and row[t1]["verifier"] == "math"
    banded = export.grpo_frame(tasks, {t0: 1.0, t1: 0.25, t2: 0.8}, band=(0.2, 0.8))
    assert sorted(banded["task_id"].to_list()) == sorted([t1, t2])
    v = _verdicts(cands, {0: [True], 1: [False], 2: [True], 3: [False], 4: [False]})
    from_frame = export.grpo_frame(tasks, export.task_pass_rates(v))
    assert dict(zip(from_frame["task_id"], from_frame["pass_rate"], strict=True)) == {
        t0: 0.5,
        t1: 1.0,
        t2: 0.0,
    }
    assert from_frame["prompt"][0][0]["content"]  # default system prompt from config


def test_write_dataset_all_formats_round_trip(frames, tmp_path, capfd):
    import datasets

    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    out = tmp_path / "curated"
    # the user's setting: on, unless an import of the flow (which quiets the libraries through
    # the environment, read when `datasets` is imported) came first in this process
    before = datasets.are_progress_bars_disabled()
    info = export.write_dataset(sft, grpo, out, card="---\nlicense: apache-2.0\n---\n# card\n")
    # the hf write printed a "Saving the dataset" bar per split; the user's own setting stays
    assert "Saving the dataset" not in capfd.readouterr().err
    assert datasets.are_progress_bars_disabled() is before
    assert info["counts"] == {"sft": 5, "grpo": 3}
    assert {
        "sft.parquet",
        "grpo.parquet",
        "sft.jsonl",
        "grpo.jsonl",
        "README.md",
        "hf/dataset_dict.json",
    } <= set(info["files"])
    assert pl.read_parquet(out / "sft.parquet").equals(sft)
    first = json.loads((out / "sft.jsonl").read_text().splitlines()[0])
    assert first["messages"][2]["content"] == sft["messages"][0][2]["content"]
    dd = datasets.load_from_disk(str(out / "hf"))
    assert set(dd) == {"sft", "grpo"} and dd["sft"].num_rows == 5
    assert dd["sft"][0]["messages"] == sft["messages"][0].to_list()
    assert dd["grpo"][0]["prompt"][1]["role"] == "user"
    for path in (out, out / "hf", out / "sft.parquet"):
        loaded = export.read_dataset(path)
        assert loaded[next(iter(loaded))].height in (5, 3)
    assert (
        export.read_dataset(out / "hf")["sft"]["candidate_id"].to_list()
        == sft["candidate_id"].to_list()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["curated"]  # no temp dirs left behind


def test_an_export_with_no_rows_says_so(frames, tmp_path):
    """A round that kept nothing, exported as JSONL, is 0-byte files: reading it back said
    "no sft/grpo/dpo parquet, jsonl ... in" the folder that holds them."""
    from typer.testing import CliRunner

    from thinkwheel.cli import app

    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, [], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM, band=(0.2, 0.8))
    out = tmp_path / "empty"
    export.write_dataset(sft, grpo, out, formats=("jsonl",))
    assert (out / "sft.jsonl").stat().st_size == 0
    with pytest.raises(ValueError, match="the export has no rows .*sft.jsonl"):
        export.read_dataset(out)
    r = CliRunner().invoke(app, ["inspect", str(out)])
    assert r.exit_code != 0 and "has no rows" in r.output and "Traceback" not in r.output


def test_write_dataset_is_atomic(frames, tmp_path, monkeypatch):
    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    out = tmp_path / "curated"
    export.write_dataset(sft.head(2), grpo, out, formats=("parquet",))
    assert not (out / "sft.jsonl").exists()

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_save_hf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export.write_dataset(sft, grpo, out, formats=("parquet", "hf"))
    # The old export is intact and complete; the half-written one left nothing behind.
    assert pl.read_parquet(out / "sft.parquet").height == 2
    assert [p.name for p in tmp_path.iterdir()] == ["curated"]
    export.write_dataset(sft, grpo, out, formats=("parquet", "jsonl"))
    assert pl.read_parquet(out / "sft.parquet").height == 5 and (out / "sft.jsonl").exists()
    with pytest.raises(ValueError, match="unknown export format"):
        export.write_dataset(sft, grpo, out, formats=("csv",))


def test_dataset_card_front_matter_is_hub_format(frames, tmp_path):
    from huggingface_hub import DatasetCard

    from thinkwheel.config import RunConfig
    from thinkwheel.curated import card

    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    filtered = records.frame(
        [
            {"candidate_id": "a", "task_id": "t", "drop_reason": "decontam:humaneval",
             "drop_ref": "HumanEval/3"},
            {"candidate_id": "b", "task_id": "t", "drop_reason": "dedup:minhash"},
            {"candidate_id": "c", "task_id": "t", "drop_reason": None},
        ],
        records.FILTERED,
    )  # fmt: skip
    cfg = RunConfig.model_validate({"filters": {"dedup": {"threshold": 0.55}}})
    # most contamination is caught in the tasks stage, before sampling: the card counted none
    dropped = tasks.head(1).with_columns(pl.lit("contaminated").alias("drop_reason"),
                                         pl.lit("heldout:17").alias("drop_ref"))
    text = card.dataset_card(
        sft, grpo, name="demo", config=cfg, config_hash="abc123", round=2, filtered=filtered,
        tasks=pl.concat([tasks, dropped], how="diagonal_relaxed"),
    )
    parsed = DatasetCard(text)
    data = parsed.data.to_dict()
    assert data["license"] == "apache-2.0" and data["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in data["configs"]] == ["sft", "grpo"]
    assert data["configs"][0]["data_files"][0]["path"] == "sft.parquet"
    tw = data["thinkwheel"]
    assert tw["counts"] == {"sft": 5, "grpo": 3} and tw["config_hash"] == "abc123"
    assert tw["generator_model"] == "tiny" and tw["verifiers"] == ["code", "math"]
    assert tw["sources"]["procedural:addition"] == 2 and tw["round"] == 2
    assert tw["filters"]["dedup"]["threshold"] == 0.55
    assert tw["decontamination"] == {
        "checked": 3, "dropped": 1,
        "by_reason": {"decontam:humaneval": {"count": 1, "examples": ["HumanEval/3"]}},
        "tasks_dropped": 1, "task_examples": ["heldout:17"],
    }  # fmt: skip
    assert "threshold 0.55" in parsed.text and "1 of 3 candidates" in parsed.text
    assert "1 task(s) dropped as contaminated before sampling (e.g. `heldout:17`)" in parsed.text
    assert card.size_category(999) == "n<1K" and card.size_category(12_000) == "10K<n<100K"
    other = card.dataset_card(sft, grpo, data_format="jsonl")
    assert DatasetCard(other).data.to_dict()["configs"][1]["data_files"][0]["path"] == "grpo.jsonl"
    assert "thinkwheel" in DatasetCard(other).data.to_dict()  # default config hash filled in


def test_the_card_says_which_rows_check_against_the_models_own_references(frames):
    """Tasks labelled by the model's own majority vote (or tests it wrote) went out under "each
    candidate was checked by a verifier"; in one audited run all 3 such GRPO references were
    wrong. The card counts them per set, and says which set its domain counts come from."""
    from huggingface_hub import DatasetCard

    from thinkwheel.curated import card

    tasks, cands = frames
    first = tasks["task_id"][0]
    tasks = tasks.with_columns(
        pl.when(pl.col("task_id") == first).then(pl.lit('{"reference_source": "consensus"}'))
        .otherwise(pl.lit("{}")).alias("meta"))
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    want = {"sft": int((sft["task_id"] == first).sum()), "grpo": int((grpo["task_id"] == first).sum())}
    assert want["sft"] > 0
    text = card.dataset_card(sft, grpo, tasks=tasks)
    tw = DatasetCard(text).data.to_dict()["thinkwheel"]
    assert tw["model_labelled"] == want and tw["counted_in"] == "sft"
    assert f"{want['sft']} sft and {want['grpo']} grpo rows are checked against references the model" in text
    plain = card.dataset_card(sft, grpo, tasks=tasks.with_columns(pl.lit("{}").alias("meta")))
    assert "references the model made itself" not in plain
    assert DatasetCard(card.dataset_card(sft.head(0), grpo)).data.to_dict()["thinkwheel"]["counted_in"] == "grpo"


def _outcomes(cands: pl.DataFrame, by_idx: dict[int, tuple[bool | None, str | None]]):
    """verdicts and filtered tables: sample_idx -> (passed, drop_reason)."""
    rows = [
        (r["candidate_id"], *by_idx[r["sample_idx"]]) for r in cands.iter_rows(named=True)
    ]
    verdicts = pl.DataFrame(
        {"candidate_id": [r[0] for r in rows], "passed": [r[1] for r in rows]},
        schema={"candidate_id": pl.Utf8, "passed": pl.Boolean},
    )
    filtered = pl.DataFrame(
        {"candidate_id": [r[0] for r in rows], "drop_reason": [r[2] for r in rows]},
        schema={"candidate_id": pl.Utf8, "drop_reason": pl.Utf8},
    )
    return verdicts, filtered


def test_dpo_pairs_a_kept_sample_with_a_failed_one_of_the_same_task(frames):
    tasks, cands = frames
    verdicts, filtered = _outcomes(
        cands,
        {
            0: (True, None),  # addition: kept
            1: (False, "not_verified"),  # addition: wrong answer -> rejected
            2: (True, "false_arithmetic"),  # equation: right answer, false step -> rejected
            3: (True, None),  # code: kept
            4: (None, "not_verified"),  # code: unverifiable -> never rejected
        },
    )
    dpo = export.dpo_frame(tasks, cands, verdicts, filtered, SYSTEM)
    # The equation has no kept sample and the code task no failed one: only addition pairs.
    assert dpo.height == 1
    row = dpo.row(0, named=True)
    assert row["task_id"] == tasks["task_id"][0] and row["rejected_reason"] == "wrong_answer"
    assert row["prompt"] == [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": "What is 345 + 78?"}]
    # Both sides in the SFT shape, so a pair differs in content only.
    assert row["chosen"] == [{"role": "assistant",
                              "content": "<think>5+8=13, carry 1 ... 345 + 78 = 423.</think>\n423"}]
    assert row["rejected"] == [{"role": "assistant",
                                "content": "<think>345+78 is 423</think>\n\\boxed{423}"}]
    sft = export.sft_frame(tasks, cands, [row["chosen_id"]], SYSTEM)
    assert sft["messages"][0][2]["content"] == row["chosen"][0]["content"]

    # A kept equation sample now pairs with the false-step one; two pairs per task at most.
    verdicts2, filtered2 = _outcomes(
        cands, {0: (True, None), 1: (False, "not_verified"), 2: (True, "false_arithmetic"),
                3: (False, "not_verified"), 4: (False, "not_verified")},
    )
    assert export.dpo_frame(tasks, cands, verdicts2, filtered2, SYSTEM).height == 1  # no code kept
    none = export.dpo_frame(tasks, cands, verdicts2, filtered2.with_columns(
        drop_reason=pl.lit("not_verified")), SYSTEM)
    assert none.height == 0 and "chosen" in none.columns  # an empty set keeps its schema


@pytest.mark.parametrize("system", [SYSTEM, "", None])
def test_every_split_prompts_exactly_as_the_sampler_does(frames, system):
    """An empty system prompt adds no turn, in the three splits as in sampling and eval: a
    model must not train on a context it is never asked in, and Gemma-style templates reject
    a system role outright."""
    from thinkwheel.engines.base import request_for

    tasks, cands = frames
    prompts = dict(zip(tasks["task_id"], tasks["prompt"], strict=True))
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], system)
    for r in sft.iter_rows(named=True):
        assert r["messages"][:-1] == request_for(prompts[r["task_id"]], system)
        assert r["messages"][-1]["role"] == "assistant"
    grpo = export.grpo_frame(tasks, {}, system_prompt=system)
    want_grpo = [request_for(prompts[t], system if system is not None else
                             export.ExportConfig().system_prompt) for t in grpo["task_id"]]
    assert grpo["prompt"].to_list() == want_grpo
    verdicts, filtered = _outcomes(cands, {0: (True, None), 1: (False, "not_verified"),
                                           2: (None, None), 3: (True, None), 4: (None, None)})
    dpo = export.dpo_frame(tasks, cands, verdicts, filtered, system)
    assert dpo.height == 1
    assert dpo["prompt"][0].to_list() == request_for("What is 345 + 78?", system)
    roles = [m["role"] for m in sft["messages"][0]]
    assert roles == (["system", "user", "assistant"] if system else ["user", "assistant"])


def test_dpo_pairs_per_task_cycles_the_chosen(frames):
    tasks, cands = frames
    wrong = cands.filter(pl.col("sample_idx") == 1)  # two more failed addition samples
    more = pl.concat([
        cands,
        wrong.with_columns(pl.lit("x7").alias("candidate_id"), pl.lit(7, pl.Int32).alias("sample_idx")),
        wrong.with_columns(pl.lit("x8").alias("candidate_id"), pl.lit(8, pl.Int32).alias("sample_idx")),
    ])  # fmt: skip
    outcome = {0: (True, None), 1: (False, None), 2: (None, None), 3: (True, None),
               4: (True, None), 7: (False, None), 8: (False, None)}
    verdicts, filtered = _outcomes(more, outcome)
    first_wrong = cands.filter(pl.col("sample_idx") == 1)["candidate_id"].item()
    kept = cands.filter(pl.col("sample_idx") == 0)["candidate_id"].item()
    two = export.dpo_frame(tasks, more, verdicts, filtered, SYSTEM, pairs_per_task=2)
    assert two["rejected_id"].to_list() == [first_wrong, "x7"]  # in sample order
    assert two["chosen_id"].to_list() == [kept, kept]  # the one kept sample, cycled
    assert export.dpo_frame(tasks, more, verdicts, filtered, SYSTEM, pairs_per_task=5).height == 3


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' checkpointing renames
def test_dpo_split_round_trips_and_trains_with_trl(frames, tmp_path):
    """The exported dpo split as TRL's DPOTrainer reads it, for two real steps."""
    from datasets import load_from_disk

    from thinkwheel.assets import MODEL_DIR

    tasks, cands = frames
    verdicts, filtered = _outcomes(
        cands, {0: (True, None), 1: (False, None), 2: (True, "false_arithmetic"),
                3: (True, None), 4: (False, None)},
    )
    dpo = export.dpo_frame(tasks, cands, verdicts, filtered, SYSTEM)
    assert dpo.height == 2
    sft = export.sft_frame(tasks, cands, [c for c in dpo["chosen_id"]], SYSTEM)
    info = export.write_dataset(sft, export.grpo_frame(tasks, {}, SYSTEM), tmp_path / "c", dpo=dpo)
    assert info["counts"] == {"sft": 2, "grpo": 3, "dpo": 2}
    assert export.read_dataset(tmp_path / "c")["dpo"].equals(dpo)
    data = load_from_disk(str(tmp_path / "c" / "hf"))["dpo"]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, max_steps=2,
                     per_device_train_batch_size=2, report_to=[], save_strategy="no",
                     logging_steps=1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert any("rewards/accuracies" in h for h in trainer.state.log_history)


def test_a_task_dropped_whole_by_the_filters_is_no_grpo_prompt(tmp_path):
    """A task whose answer is in its prompt had its passing samples dropped (answer_leak), yet
    it went into the GRPO set at pass rate 0.5, where copying the prompt wins the reward."""
    from thinkwheel import records
    from thinkwheel.config import parse_config
    from thinkwheel.filters.quality import ANSWER_LEAK
    from thinkwheel.flows import steps
    from thinkwheel.store import RunStore

    store = RunStore.create(tmp_path / "run", parse_config({}))
    prompts = {"leak": ("The answer is 1234. What is 1000 + 234?", "1234"), "ok": ("What is 2 + 3?", "5")}
    tasks = records.frame([{"task_id": t, "domain": "math", "family": "addition", "prompt": p,
                            "reference": r, "verifier": "math", "round": 0}
                           for t, (p, r) in prompts.items()], records.TASKS)
    cands = records.frame([{"candidate_id": f"{t}-{i}", "task_id": t, "sample_idx": i,
                            "completion": f"<think>x</think> {r}", "reasoning": "x", "answer": r}
                           for t, (_, r) in prompts.items() for i in (0, 1)], records.CANDIDATES)
    verdicts = records.frame([{"candidate_id": f"{t}-{i}", "task_id": t, "verifier": "math",
                               "passed": i == 0, "reason": "ok" if i == 0 else "wrong_answer"}
                              for t in prompts for i in (0, 1)], records.VERDICTS)
    filtered = records.frame([{"candidate_id": "leak-0", "task_id": "leak", "drop_reason": ANSWER_LEAK},
                              {"candidate_id": "leak-1", "task_id": "leak", "drop_reason": "not_verified"},
                              {"candidate_id": "ok-0", "task_id": "ok", "drop_reason": None},
                              {"candidate_id": "ok-1", "task_id": "ok", "drop_reason": "not_verified"}],
                             records.FILTERED)
    for name, df in (("tasks", tasks), ("candidates", cands), ("verdicts", verdicts),
                     ("filtered", filtered)):
        store.write_table(0, name, df)
    steps.export(store, parse_config({}), 0, "m")
    grpo = pl.read_parquet(store.round_dir(0) / "curated" / "grpo.parquet")
    assert grpo["task_id"].to_list() == ["ok"] and grpo["pass_rate"].to_list() == [0.5]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_the_cards_loading_snippet_runs_in_the_export(frames, tmp_path, monkeypatch, fmt):
    """The jsonl card said `load_dataset("jsonl", ...)`, which `datasets` has no builder for;
    an export without SFT rows still showed loading `sft`. Run the snippet as a user would."""
    import re

    from thinkwheel.curated import card

    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    for name, (s, g) in {"full": (sft, grpo), "no-sft": (sft.head(0), grpo)}.items():
        out = tmp_path / name
        export.write_dataset(s, g, out, formats=(fmt,),
                             card=card.dataset_card(s, g, data_format=fmt))
        code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
        monkeypatch.chdir(out)
        scope: dict = {}
        exec(code, scope)  # noqa: S102 (the card's own example)
        split = "sft" if s.height else "grpo"
        assert scope[split].num_rows == (s if s.height else g).height, (name, code)


def test_the_dpo_split_comes_out_in_the_same_order_every_time():
    """Its rows came out of two joins in whatever order polars gave: a re-export changed
    DPO's input hash, and an export-only change retrained the model."""
    from thinkwheel.store import frame_hash

    rows, cands, verdicts = [], [], []
    for i in range(400):
        prompt = f"What is {i} + 1?"
        tid = records.task_id("math", prompt, str(i + 1))
        rows.append({"task_id": tid, "domain": "math", "family": "addition", "difficulty": 1,
                     "source": "procedural:addition", "prompt": prompt, "reference": str(i + 1),
                     "tests": None, "verifier": "math", "round": 0, "parent_id": None, "meta": "{}"})
        for j, answer in enumerate((i + 1, i + 2)):
            cid = f"{tid}-{j}"
            text = f"<think>{i}+1={answer}</think>\n{answer}"
            cands.append({"candidate_id": cid, "task_id": tid, "round": 0, "sample_idx": j,
                          "model": "m", "completion": text, "reasoning": f"{i}+1={answer}",
                          "answer": str(answer), "finish_reason": "stop"})
            verdicts.append({"candidate_id": cid, "passed": j == 0})
    tasks, cands = records.frame(rows, records.TASKS), records.frame(cands, records.CANDIDATES)
    verdicts = pl.DataFrame(verdicts)
    filtered = verdicts.select("candidate_id", pl.lit(None, pl.Utf8).alias("drop_reason"))
    hashes = {frame_hash(export.dpo_frame(tasks, cands, verdicts, filtered, SYSTEM)) for _ in range(8)}
    dpo = export.dpo_frame(tasks, cands, verdicts, filtered, SYSTEM)
    assert len(hashes) == 1 and dpo.height == 400
    assert dpo["task_id"].to_list() == sorted(dpo["task_id"].to_list())


def test_what_a_killed_export_left_behind_is_swept(frames, tmp_path):
    """A SIGKILL mid-export left `.curated.tmp-*` (and, between its two renames, the old export
    moved aside) for good. Each is named with its writer's process id: a dead writer's go, a
    live one's stay."""
    import subprocess

    tasks, cands = frames
    sft = export.sft_frame(tasks, cands, cands["candidate_id"], SYSTEM)
    grpo = export.grpo_frame(tasks, {}, system_prompt=SYSTEM)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    dead = [tmp_path / f".curated.tmp-{gone.pid}-abcd1234", tmp_path / f".curated.old-{gone.pid}-ef56"]
    live = tmp_path / f".curated.tmp-{os.getpid()}-0000ffff"
    for d in (*dead, live):
        d.mkdir()
        (d / "sft.parquet").write_text("half")
    export.write_dataset(sft, grpo, tmp_path / "curated", formats=("parquet",))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["curated", live.name])
