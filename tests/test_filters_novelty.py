"""ROUGE-L novelty (Self-Instruct): exact LCS, pruning that loses nothing, sequential pool."""

from __future__ import annotations

import random

import pytest

from thinkwheel.filters import novelty


def _lcs_dp(a: list[str], b: list[str]) -> int:
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def test_bit_parallel_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 30))]
        assert novelty.lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_values() -> None:
    assert novelty.rouge_l("Write a poem about the sea", "write a POEM about the sea!") == 1.0
    assert novelty.rouge_l("a b c d", "a x c y") == pytest.approx(0.5)
    assert novelty.rouge_l("", "anything") == 0.0


def test_max_rouge_l_equals_brute_force_above_threshold() -> None:
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(30)]
    pool = [" ".join(rng.choices(vocab, k=rng.randint(5, 15))) for _ in range(150)]
    cands = [
        " ".join(p.split()[:-1]) if i % 3 == 0 else " ".join(rng.choices(vocab, k=10))
        for i, p in enumerate(pool[:60])
    ]
    fast = novelty.max_rouge_l(cands, pool, threshold=0.5)
    for c, f in zip(cands, fast, strict=True):
        brute = max(novelty.rouge_l(c, p) for p in pool)
        assert f == pytest.approx(brute) if brute >= 0.5 else f < 0.5


def test_novel_mask_pool_and_earlier_candidates() -> None:
    pool = ["Write a short poem about the ocean at night.", "Sort a list of numbers."]
    cands = [
        "Write a short poem about the ocean at dawn.",  # 7/8 tokens: too close to the pool
        "Explain how a bicycle gear system works to a child.",
        "Explain how a bicycle gear system works to a teenager.",  # too close to the one before
        "Write a short story about a dragon who is afraid of heights.",  # shares words: novel
    ]
    assert novelty.novel_mask(cands, pool, threshold=0.7) == [False, True, False, True]
    assert novelty.novel_mask(cands, pool, threshold=1.0) == [True, True, True, True]
    assert novelty.novel_mask([], pool) == []
