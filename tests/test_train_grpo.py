"""GRPO: short real runs on a tiny Llama, with and without a template that pre-fills <think>."""

from __future__ import annotations

import asyncio
import json
import os

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from thinkwheel import chat_template  # noqa: E402
from thinkwheel.config import GRPOTrainConfig  # noqa: E402
from thinkwheel.train import grpo as grpo_mod  # noqa: E402

try:  # the tiny-model builder lives with the SFT tests
    from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
except ImportError:  # tests/ imported as a package
    from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model

TEMPLATE_PREFILL = TEMPLATE_PLAIN.replace(
    "{{ '<|assistant|>\\n' }}{% endif %}", "{{ '<|assistant|>\\n<think>' }}{% endif %}"
)
assert TEMPLATE_PREFILL != TEMPLATE_PLAIN


def grpo_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "prompt": [
                [
                    {"role": "system", "content": "Think first."},
                    {"role": "user", "content": "What is 3 + 4?"},
                ],
                [{"role": "user", "content": "Write f(x) = x + 1."}],
            ],
            "reference": ["7", "def f(x): return x + 1"],
            "tests": [None, ["assert f(1) == 2"]],
            "verifier": ["math", "code"],
            "task_id": ["a", "b"],
        }
    )


class Recorder:
    """Two reward functions that record what TRL hands them."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def think_format(self, prompts, completions, completion_ids, **kw):
        self.seen.append({"completions": completions, "ids": completion_ids, **kw})
        return [1.0 if c[0]["content"].startswith("<think>") else 0.0 for c in completions]

    def math_only(self, prompts, completions, reference, verifier, **kw):
        # unverifiable (code here) -> None: TRL must skip it, not count it as 0
        return [
            None if v == "code" else float(ref in c[0]["content"])
            for c, ref, v in zip(completions, reference, verifier, strict=True)
        ]


def run(
    model_path: str, out: str, beta: float = 0.0, loss_type: str = "dapo"
) -> tuple[dict, Recorder, list[dict]]:
    rec = Recorder()
    fmt, task = rec.think_format, rec.math_only
    cfg = GRPOTrainConfig(
        max_steps=2,
        num_generations=4,
        max_completion_length=12,
        batch_size=4,
        learning_rate=1e-3,
        beta=beta,
        loss_type=loss_type,
    )
    res = grpo_mod.train_grpo(model_path, grpo_frame(), out, cfg, [fmt, task], [0.2, 1.0])
    log = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    return res, rec, log


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("grpo_plain"), TEMPLATE_PLAIN)


@pytest.fixture(scope="module")
def prefill_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("grpo_prefill"), TEMPLATE_PREFILL)


def test_prefill_template_still_earns_format_reward(prefill_model, tmp_path):
    res, rec, log = run(prefill_model, str(tmp_path / "m"))
    assert res["prefill"] == "<think>" and res["global_step"] == 2
    texts = [c[0]["content"] for call in rec.seen for c in call["completions"]]
    assert len(texts) == 2 * 4 and all(t.startswith("<think>") for t in texts)
    means = [row["rewards/think_format/mean"] for row in log if "rewards/think_format/mean" in row]
    assert means and all(m == 1.0 for m in means)  # a naive reward would see no <think>: 0.0
    assert (tmp_path / "m" / "config.json").exists()


def test_plain_template_passes_completions_through(plain_model, tmp_path):
    from transformers import AutoTokenizer

    res, rec, log = run(plain_model, str(tmp_path / "m"), beta=0.04, loss_type="grpo")
    assert res["prefill"] == ""
    tok = AutoTokenizer.from_pretrained(plain_model)
    for call in rec.seen:
        decoded = tok.batch_decode(call["ids"], skip_special_tokens=True)
        assert [c[0]["content"] for c in call["completions"]] == decoded
        # dataset columns reach the reward functions, one value per generation
        pairs = set(zip(call["reference"], call["verifier"], call["task_id"], strict=True))
        assert len(call["reference"]) == 4 and len(pairs) == 1
        assert pairs <= {("7", "math", "a"), ("def f(x): return x + 1", "code", "b")}
        assert call["tests"][0] in (None, ["assert f(1) == 2"])
    keys = set().union(*log)
    expected = {
        "reward",
        "reward_std",
        "kl",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
        "loss",
        "learning_rate",
    }
    assert expected <= keys
    assert not any(
        row.get("reward") != row.get("reward") for row in log if "reward" in row
    )  # no NaN


def test_generation_prefill_detection(plain_model, prefill_model):
    from transformers import AutoTokenizer

    assert chat_template.generation_prefill(AutoTokenizer.from_pretrained(prefill_model)) == "<think>"
    assert chat_template.generation_prefill(AutoTokenizer.from_pretrained(plain_model)) == ""


def test_prefill_wrapper_text_chat_and_async():
    def fmt(prompts, completions, **kw):
        return [
            float(str(c if isinstance(c, str) else c[0]["content"]).startswith("<think>"))
            for c in completions
        ]

    wrapped = grpo_mod.with_prefill(fmt, "<think>\n")
    assert wrapped.__name__ == "fmt"  # TRL logs rewards under the function's name
    chat = [
        [{"role": "assistant", "content": "a</think>\n1"}],
        [{"role": "assistant", "content": "<think>b</think>2"}],
    ]
    assert wrapped(prompts=[None, None], completions=chat) == [1.0, 1.0]
    assert chat[0][0]["content"] == "a</think>\n1"  # the caller's completions are not mutated
    assert wrapped(prompts=[None], completions=["x</think>1"]) == [1.0]
    assert grpo_mod.with_prefill(fmt, "") is fmt

    class Scorer:  # a callable object, as a reward factory may return
        def __call__(self, prompts, completions, **kw):
            return fmt(prompts, completions)

    wrapped_obj = grpo_mod.with_prefill(Scorer(), "<think>")
    assert wrapped_obj.__name__ == "Scorer" and wrapped_obj(prompts=[None], completions=["x"]) == [
        1.0
    ]

    async def afmt(prompts, completions, **kw):
        return fmt(prompts, completions)

    awrapped = grpo_mod.with_prefill(afmt, "<think>")
    assert asyncio.iscoroutinefunction(awrapped)
    assert asyncio.run(awrapped(prompts=[None], completions=["x"])) == [1.0]


def test_group_batch_size_and_validation(plain_model, tmp_path):
    assert grpo_mod.group_batch_size(8, 8) == 8
    assert grpo_mod.group_batch_size(6, 4) == 8
    assert grpo_mod.group_batch_size(1, 4) == 4
    with pytest.raises(ValueError, match="weights"):
        grpo_mod.train_grpo(
            plain_model, grpo_frame(), str(tmp_path / "x"), GRPOTrainConfig(), [len], []
        )
    with pytest.raises(ValueError, match="empty"):
        grpo_mod.train_grpo(
            plain_model, grpo_frame().head(0), str(tmp_path / "x"), GRPOTrainConfig(), [len], [1.0]
        )
    assert not (tmp_path / "x").exists()


def test_real_verifier_rewards(prefill_model, tmp_path):
    """Our verifiers through `as_reward` (callable objects, per-row verifier) in a real step."""
    rewards = pytest.importorskip("thinkwheel.train.rewards")
    funcs = [rewards.as_reward("think_format", tolerant=False), rewards.as_reward(None)]
    cfg = GRPOTrainConfig(max_steps=1, num_generations=2, max_completion_length=8, batch_size=4)
    out = tmp_path / "m"
    res = grpo_mod.train_grpo(prefill_model, grpo_frame(), str(out), cfg, funcs, [0.2, 1.0])
    assert res["global_step"] == 1 and res["prefill"] == "<think>"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    names = {k.split("/")[1] for row in log for k in row if k.startswith("rewards/")}
    assert names == {"think_format_reward", "task_reward"}


def test_a_base_model_without_a_chat_template_trains(tmp_path):
    """No template: TRL cannot render conversational prompts, so they go in as the text the
    transformers engine prompts such a model with, and our rewards score text completions."""
    from thinkwheel.train.rewards import grpo_rewards

    path = build_tiny_model(tmp_path / "base", None)
    cfg = GRPOTrainConfig(max_steps=2, num_generations=4, max_completion_length=12, batch_size=4)
    res = grpo_mod.train_grpo(path, grpo_frame(), str(tmp_path / "m"), cfg, *grpo_rewards(cfg))
    assert res["global_step"] == 2 and res["prefill"] == ""
    log = [json.loads(line) for line in open(tmp_path / "m" / "train_log.jsonl")]
    assert any(k.startswith("rewards/") for row in log for k in row)


def test_lora_grpo_merges_its_update_into_a_plain_model(plain_model, tmp_path):
    """`lora: true` trains adapters and saves a merged model the engines load as-is; the
    weights moved, so the adapters were what GRPO trained (a no-op would leave them equal)."""
    import torch
    from transformers import AutoModelForCausalLM

    def length(prompts, completions, **kw):  # varies within a group: a non-zero advantage
        return [float(len(c[0]["content"])) for c in completions]

    cfg = GRPOTrainConfig(max_steps=2, num_generations=4, max_completion_length=12, batch_size=4,
                          learning_rate=1e-2, lora=True, lora_r=4)
    out = tmp_path / "m"
    res = grpo_mod.train_grpo(plain_model, grpo_frame(), str(out), cfg, [length], [1.0])
    assert res["lora"] and res["global_step"] == 2
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(plain_model)
    assert not any("lora" in name for name, _ in model.named_parameters())
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(), strict=True)]
    assert any(moved) and not all(moved)  # the adapted linears moved; embeddings and norms did not


def test_sampling_stops_end_grpo_completions(plain_model, tmp_path):
    """GRPO stops where sampling does: TRL's transformers path cannot take stop strings, so a
    one-token stop becomes an end-of-sequence id (the completion, and its mask, end there), and
    the saved model keeps its own stop ids. It used to run on past every `sampling.stop`."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(plain_model)
    stop = [c for c in "0123456789abcdefghijklmnopqrstuvwxyz+ "
            if len(tok.encode(c, add_special_tokens=False)) == 1]
    stop_ids = {tok.encode(c, add_special_tokens=False)[0] for c in stop}
    assert len(stop_ids) > 20
    rec = Recorder()
    cfg = GRPOTrainConfig(max_steps=2, num_generations=4, max_completion_length=12, batch_size=4,
                          learning_rate=1e-3)
    out = tmp_path / "m"
    grpo_mod.train_grpo(plain_model, grpo_frame(), str(out), cfg, [rec.think_format, rec.math_only],
                        [0.2, 1.0], stop=stop)
    ids = [list(i) for call in rec.seen for i in call["ids"]]
    assert all(not stop_ids & set(i[:-1]) for i in ids)  # nothing after a stop
    assert sum(bool(i) and i[-1] in stop_ids for i in ids) > len(ids) // 2  # most stopped there
    saved = GenerationConfig.from_pretrained(out).eos_token_id
    assert not stop_ids & set([saved] if isinstance(saved, int) else saved)


def test_tests_stored_as_a_json_string_are_read_as_the_verifier_reads_them():
    """Many code sets store `tests` as a JSON array in a string: `verifiable_prompts` took the
    column for a list and raised polars' InvalidOperationError (not a ValueError)."""
    g = grpo_mod.verifiable_prompts(pl.DataFrame({
        "prompt": ["Write f.", "Write g.", "What is 2 + 2?"],
        "tests": ['["assert f(1) == 2", "assert f(2) == 3"]', "assert g() == 1", None],
        "reference": [None, None, "4"]}))
    assert g.schema["tests"] == pl.List(pl.Utf8)
    assert g["tests"].to_list() == [["assert f(1) == 2", "assert f(2) == 3"],
                                    ["assert g() == 1"], None]
    assert g["verifier"].to_list() == ["code", "code", "math"]
    verl = pl.DataFrame({"prompt": ["Write f."], "ability": ["code"],
                         "extra_info": [{"tests": '["assert f(1) == 2"]'}]})
    assert grpo_mod.verifiable_prompts(verl)["tests"].to_list() == [["assert f(1) == 2"]]
    with pytest.raises(ValueError, match="row 2's tests: the test 'f.1. == 3' is a comparison"):
        grpo_mod.verifiable_prompts(pl.DataFrame({
            "prompt": ["Write f.", "Write f."],
            "tests": [["assert f(1) == 2"], ["f(1) == 3"]]}))


def test_losses_get_the_settings_trl_leaves_to_the_user():
    """VESPO on vLLM raised in GRPOTrainer unless the importance-sampling correction works per
    token; LUSPO ran at token level, which TRL only warns is not the paper's objective."""
    from trl import GRPOConfig

    assert grpo_mod.loss_settings("vespo", True) == {"vllm_importance_sampling_mode": "token_truncate"}
    assert grpo_mod.loss_settings("luspo", False) == {"importance_sampling_level": "sequence"}
    assert grpo_mod.loss_settings("dapo", True) == {} == grpo_mod.loss_settings("vespo", False)
    for loss, vllm in (("vespo", True), ("luspo", False)):  # names TRL's config takes
        with grpo_mod.quiet_deprecations():  # as train_grpo builds it
            GRPOConfig(output_dir="unused", use_cpu=True, bf16=False, loss_type=loss,
                       **grpo_mod.loss_settings(loss, vllm))


def test_stop_settings_and_the_cut_in_the_rewards(plain_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plain_model)
    one = next(c for c in "+ x" if len(tok.encode(c, add_special_tokens=False)) == 1)
    longer = "\nuser said"
    assert len(tok.encode(longer, add_special_tokens=False)) > 1
    turn_end = tok.convert_tokens_to_ids("<|end|>")  # the template's end of turn always stops
    ids, in_rewards, kwargs = grpo_mod.stop_settings(tok, [one, longer], use_vllm=False)
    assert ids == [turn_end, *tok.encode(one, add_special_tokens=False)] and in_rewards == [longer]
    assert kwargs is None
    assert grpo_mod.stop_settings(tok, [], use_vllm=False) == ([turn_end], [], None)
    # vLLM cuts its text at the stop, but TRL decodes the token ids, which keep the stop's
    # tokens (and the rest of its last one): the rewards cut again. The turn end is TRL's eos
    # too: a completion not ending in one of its eos ids counts as clipped
    assert grpo_mod.stop_settings(tok, [one, longer], use_vllm=True) == (
        [turn_end], [one, longer], {"stop": [one, longer], "stop_token_ids": [turn_end]})
    assert grpo_mod.stop_settings(tok, [], use_vllm=True) == (
        [turn_end], [], {"stop_token_ids": [turn_end]})

    def score(completions, **kw):
        return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]

    cut = grpo_mod.with_stop(score, [longer, "STOP"])
    assert cut.__name__ == "score"
    texts = ["abc\nuser said more", "abSTOPc\nuser said", "plain"]
    assert cut(completions=texts) == [3.0, 2.0, 5.0]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    assert cut(completions=chat) == [3.0, 2.0, 5.0]

    async def ascore(completions, **kw):
        return score(completions)

    assert asyncio.run(grpo_mod.with_stop(ascore, ["STOP"])(completions=texts)) == [18.0, 2.0, 5.0]
    assert grpo_mod.with_stop(score, []) is score


def test_think_tags_marked_special_reach_the_rewards(plain_model, tmp_path):
    """A tokenizer that marks `<think>`/`</think>` special (a common way to add them): TRL
    decodes completions without special tokens, so the format reward saw no tags and scored 0
    on every step. The rewards get the completions re-decoded from TRL's `completion_ids`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plain_model)
    assert grpo_mod.special_think_ids(tok) == set()
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")]})
    keep = grpo_mod.special_think_ids(tok)
    assert len(keep) == 2
    ids = [tok.encode("<think>2+2=4</think> 4<|end|>", add_special_tokens=False)]
    trl_text = tok.batch_decode(ids, skip_special_tokens=True)[0]
    assert "<think>" not in trl_text  # what TRL hands the rewards

    def seen(completions, **kw):
        return [c if isinstance(c, str) else c[0]["content"] for c in completions]

    wrapped = grpo_mod.with_think_tags(seen, tok, keep)
    assert wrapped(completions=[trl_text], completion_ids=ids) == ["<think>2+2=4</think> 4"]
    chat = [[{"role": "assistant", "content": trl_text}]]
    assert wrapped(completions=chat, completion_ids=ids) == ["<think>2+2=4</think> 4"]
    assert grpo_mod.with_think_tags(seen, tok, set()) is seen
