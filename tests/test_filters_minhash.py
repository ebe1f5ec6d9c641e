"""MinHash near-dedup: estimates, pairs, clusters, survivors, and the task/candidate stages."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from thinkwheel import config, records
from thinkwheel.filters import minhash, stage
from thinkwheel.filters.shingles import normalise, shingle_hashes
from thinkwheel.generators import procedural

WORDS = [f"w{i}" for i in range(5000)]


def _doc(rng: np.random.Generator, n: int = 80) -> list[str]:
    return [WORDS[i] for i in rng.integers(0, len(WORDS), n)]


def _edit(words: list[str], k: int, rng: np.random.Generator) -> list[str]:
    out = list(words)
    for p in rng.choice(len(out), k, replace=False):
        out[p] = f"new{rng.integers(1_000_000)}"
    return out


def _true_jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.lower().split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_shingles_respect_document_boundaries() -> None:
    h, d = shingle_hashes(["a b c d e f", "", "x y"], ngram=5)
    assert d.tolist() == [0, 0, 2]  # 2 shingles, none for the empty text, 1 for the short one
    h2, _ = shingle_hashes(["a b c d e f"], ngram=5)
    assert h[:2].tolist() == h2.tolist()  # neighbours don't leak into a text's shingles


def test_estimate_tracks_true_jaccard() -> None:
    rng = np.random.default_rng(0)
    docs, truth = [], []
    for k in (2, 6, 12, 20):
        for _ in range(10):
            base = _doc(rng)
            a, b = " ".join(base), " ".join(_edit(base, k, rng))
            docs += [a, b]
            truth.append(_true_jaccard(a, b))
    sig = minhash.signatures(docs)
    pairs = np.arange(len(docs)).reshape(-1, 2)
    est = minhash.estimated_jaccard(sig, pairs)
    assert np.abs(est - np.array(truth)).mean() < 0.06
    exact = minhash.exact_jaccard(pl.Series(docs), pairs, minhash.MinHashParams())
    np.testing.assert_allclose(exact, truth)


def test_pairs_found_and_near_misses_kept() -> None:
    rng = np.random.default_rng(1)
    base = [_doc(rng) for _ in range(4)]
    close = " ".join(_edit(base[0], 1, rng))  # J ~ 0.89
    far = " ".join(_edit(base[1], 12, rng))  # J well under 0.7: a near miss, must not pair
    texts = [" ".join(b) for b in base] + [close, far]
    assert _true_jaccard(texts[1], far) < 0.6
    pairs = minhash.near_duplicate_pairs(texts, threshold=0.7)
    assert {(i, j) for i, j in pairs.select("i", "j").iter_rows()} == {(0, 4)}
    assert pairs["jaccard"][0] == pytest.approx(_true_jaccard(texts[0], close))


def test_groups_keep_pairs_apart() -> None:
    text = "the quick brown fox jumps over the lazy dog again and again"
    pairs = minhash.near_duplicate_pairs([text, text, text], groups=["a", "b", "a"])
    assert {(i, j) for i, j in pairs.select("i", "j").iter_rows()} == {(0, 2)}


def test_cluster_survivor_follows_rank() -> None:
    pairs = pl.DataFrame({"i": [0, 1, 3], "j": [1, 2, 4], "jaccard": [0.9, 0.9, 0.9]})
    surv = minhash.cluster_survivors(6, pairs, rank=[5, 1, 3, 2, 2, 0])
    assert surv.tolist() == [1, 1, 1, 3, 3, 5]  # tie between rows 3 and 4 -> earliest


def test_masking_makes_procedural_variants_collide() -> None:
    a = "Alice has 12 apples and buys 7 more apples at the store. How many apples does she have?"
    b = "Bob has 45 apples and buys 3 more apples at the store. How many apples does he have?"
    plain = minhash.near_duplicate_pairs([a, b], threshold=0.7)
    masked = minhash.near_duplicate_pairs(
        [a, b], threshold=0.7, params=minhash.MinHashParams(mask_numbers=True, mask_names=True)
    )
    assert plain.height == 0
    # "she"/"he" still differ, so the masked pair is similar but not identical
    assert masked.height == 1 and masked["jaccard"][0] < 1.0


def test_dedup_tasks_marks_near_duplicates() -> None:
    p = "Write a Python function `f(x)` that returns the sum of the digits of a positive integer x."
    tasks = records.frame(
        [
            {"task_id": "a", "prompt": p},
            {"task_id": "b", "prompt": "What is 345 + 78?"},
            {"task_id": "c", "prompt": p.replace("positive", "non-negative")},
            {"task_id": "d", "prompt": "What is 345 + 79?"},  # near miss: different task
        ],
        records.TASKS,
    )
    out = stage.dedup_tasks(tasks, config.DedupConfig(field="prompt", threshold=0.6))
    assert out["drop_reason"].to_list() == [None, None, "near_duplicate", None]
    assert out["drop_ref"].to_list() == [None, None, "a", None]
    off = stage.dedup_tasks(tasks, config.DedupConfig(enabled=False))
    assert off["drop_reason"].null_count() == 4


def test_operators_are_content_so_different_sums_are_not_duplicates() -> None:
    # Stripped as punctuation, "83 - 8" read as "83 + 8": task dedup dropped half the bench
    # recipe's multiplication tasks as near duplicates of additions.
    prompts = ["What is 83 + 8?", "What is 83 - 8?", "What is 83 * 8?", "What is 83+8?"]
    tasks = records.frame(
        [{"task_id": str(i), "prompt": p} for i, p in enumerate(prompts)], records.TASKS
    )
    out = stage.dedup_tasks(tasks, config.DedupConfig(field="prompt"))
    assert out["drop_reason"].to_list() == [None, None, None, "near_duplicate"]
    # a hyphen inside a word still joins, as before: "non-negative" is "non negative"
    assert normalise(["a non-negative x", "2x-5 = -1"]).to_list() == ["a non negative x", "2x - 5 = - 1"]


def test_procedural_tasks_survive_task_dedup() -> None:
    families = ["addition", "subtraction", "multiplication", "linear_equation", "list_filter_sum"]
    tasks = procedural.generate_tasks(families, per_family=300)
    out = stage.dedup_tasks(tasks, config.DedupConfig(field="prompt"))
    assert out["drop_reason"].null_count() == tasks.height
    # without their source they read as templated copies (`... = -3` vs `... = -11`)
    anon = stage.dedup_tasks(tasks.drop("source"), config.DedupConfig(field="prompt"))
    assert anon["drop_reason"].null_count() < tasks.height


def test_generated_task_copying_a_procedural_one_is_still_dropped() -> None:
    proc = procedural.generate_tasks(["linear_equation"], per_family=20)
    p = proc["prompt"][3]
    gen = records.frame(
        [
            {"task_id": "g1", "prompt": p.replace("Solve for x:", "Solve for x :"), "source": "self_instruct"},
            {"task_id": "g2", "prompt": "Explain recursion to a child.", "source": "self_instruct"},
            {"task_id": "g3", "prompt": "Explain recursion to a child!", "source": "evol:deepen"},
        ],
        records.TASKS,
    )
    out = stage.dedup_tasks(pl.concat([gen, proc], how="diagonal_relaxed"), config.DedupConfig(field="prompt"))
    by_id = dict(zip(out["task_id"], zip(out["drop_reason"], out["drop_ref"], strict=True), strict=True))
    # the procedural task survives although it comes later, and is what g1 is dropped for
    assert by_id["g1"] == ("near_duplicate", proc["task_id"][3])
    assert by_id["g2"] == (None, None)
    assert by_id["g3"] == ("near_duplicate", "g2")
    assert out.filter(pl.col("source").str.starts_with("procedural:"))["drop_reason"].null_count() == 20
