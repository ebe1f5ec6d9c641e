"""SFT: real short training runs on a tiny local Llama, plus the assistant-only label mask."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from thinkwheel import chat_template  # noqa: E402
from thinkwheel.config import SFTConfig  # noqa: E402
from thinkwheel.train import sft as sft_mod  # noqa: E402

# Assistant turns are wrapped in {% generation %} so TRL can mask everything else.
TEMPLATE_MARKED = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TEMPLATE_PLAIN = TEMPLATE_MARKED.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# DeepSeek-R1-Distill's habits: a finished assistant turn keeps only the text after </think>,
# and the generation prompt pre-fills "<think>\n".
TEMPLATE_R1 = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<|assistant|>\\n' + c + '<|end|>' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n<think>\\n' }}{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_model(path: Path, chat_template: str) -> str:
    """A ~100k-parameter random Llama and a BPE tokenizer trained on a few strings."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        f"What is {a} + {b}? <think>{a} plus {b}</think> {a + b}"
        for a in range(30)
        for b in (7, 13)
    ]
    corpus += ["def f(x):\n    return 3 * x + 2", "Solve for x: 3x + 2 = 17"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(["<think>", "</think>"])  # plain added tokens: decoding must keep them
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>"
    )
    fast.chat_template = chat_template
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def sft_frame(n: int = 24) -> pl.DataFrame:
    rows = []
    for i in range(n):
        a, b = i, 7 + i % 3
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Think first."},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": f"<think>{a} plus {b}</think>\n{a + b}"},
                ],
                "task_id": f"t{i}",
            }
        )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def marked_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("marked"), TEMPLATE_MARKED)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("plain"), TEMPLATE_PLAIN)


@pytest.fixture(scope="module")
def r1_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("r1"), TEMPLATE_R1)


def labelled_tokens(
    model_path: str, cfg: SFTConfig, tmp_path: Path, trainer: str = "trl"
) -> tuple[str, str]:
    """Decode (trained tokens, masked tokens) of the first collated training example."""
    model, tok = sft_mod.load_hf(model_path)
    ds = sft_mod.as_dataset(sft_frame(4))
    trainer = sft_mod.build_sft_trainer(model, tok, ds, cfg, str(tmp_path / "run"), trainer=trainer)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    masked = [t for t, lab in zip(ids, labels, strict=True) if lab == -100]
    assert all(lab in (-100, t) for t, lab in zip(ids, labels, strict=True))
    return tok.decode(trained), tok.decode(masked)


@pytest.mark.parametrize("which", ["marked", "plain"])
def test_label_mask_covers_assistant_tokens_only(which, marked_model, plain_model, tmp_path):
    path = marked_model if which == "marked" else plain_model
    cfg = SFTConfig(max_steps=1, batch_size=2)
    mode = sft_mod.loss_mode(sft_mod.load_hf(path)[1], cfg)
    assert mode == ("assistant_only" if which == "marked" else "completion_only")
    trained, masked = labelled_tokens(path, cfg, tmp_path)
    assert trained.strip() == "<think>0 plus 7</think>\n7<|end|>"
    assert "What is 0 + 7?" in masked and "Think first." in masked and "<|assistant|>" in masked
    assert "plus" not in masked


def test_full_loss_when_assistant_only_disabled(marked_model, tmp_path):
    trained, _ = labelled_tokens(
        marked_model, SFTConfig(max_steps=1, batch_size=2, assistant_only_loss=False), tmp_path
    )
    assert "What is 0 + 7?" in trained and "plus" in trained


def test_reasoning_is_trained_through_a_template_that_strips_it(r1_model, tmp_path):
    """TRL renders a finished turn through the template, which here keeps only "7": the model
    would learn to answer without thinking. We train what the model writes after the prompt
    the engine renders, which already opens the thought."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(r1_model)
    assert sft_mod.loss_mode(tok, SFTConfig()) == "completion_only"
    trained, masked = labelled_tokens(r1_model, SFTConfig(max_steps=1, batch_size=2), tmp_path)
    assert trained == "0 plus 7</think>\n7<|end|>"
    msgs = sft_frame(1)["messages"][0].to_list()
    assert masked == chat_template.render_prompt(tok, msgs[:2])  # the sampling-time prompt
    assert masked.endswith("<|assistant|>\n<think>\n")

    full, _ = labelled_tokens(r1_model, SFTConfig(max_steps=1, assistant_only_loss=False), tmp_path)
    assert full.endswith("<|assistant|>\n<think>\n0 plus 7</think>\n7<|end|>")


def test_marked_template_that_strips_reasoning_falls_back(tmp_path):
    from transformers import AutoTokenizer

    stripping_marked = TEMPLATE_R1.replace(
        "{{ '<|assistant|>\\n' + c + '<|end|>' }}",
        "{{ '<|assistant|>\\n' }}{% generation %}{{ c + '<|end|>' }}{% endgeneration %}",
    )
    assert "generation" in stripping_marked
    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", stripping_marked))
    assert chat_template.has_generation_markers(tok) and not chat_template.renders_reply_as_written(tok)
    assert sft_mod.loss_mode(tok, SFTConfig()) == "completion_only"


def test_unsloth_gets_a_tokenized_set_with_labels(marked_model, tmp_path):
    """Unsloth's SFTTrainer (unsloth_zoo's _prepare_dataset) raises on a conversational set
    without a formatting function, and collates a tokenized set without `labels` as plain
    language modelling: every token trained. So it always gets input_ids + labels from us."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(marked_model)
    assert sft_mod.loss_mode(tok, SFTConfig(), "trl") == "assistant_only"
    assert sft_mod.loss_mode(tok, SFTConfig(), "unsloth") == "completion_only"
    model, _ = sft_mod.load_hf(marked_model)
    ds = sft_mod.as_dataset(sft_frame(4))
    built = sft_mod.build_sft_trainer(model, tok, ds, SFTConfig(max_steps=1), str(tmp_path / "u"),
                                      trainer="unsloth")
    assert {"input_ids", "labels"} <= set(built.train_dataset.column_names)
    assert "messages" not in built.train_dataset.column_names
    trained, masked = labelled_tokens(marked_model, SFTConfig(max_steps=1), tmp_path, "unsloth")
    assert trained.strip() == "<think>0 plus 7</think>\n7<|end|>" and "What is 0 + 7?" in masked
    full = SFTConfig(max_steps=1, assistant_only_loss=False)
    trained, _ = labelled_tokens(marked_model, full, tmp_path, "unsloth")
    assert "What is 0 + 7?" in trained and "0 plus 7</think>" in trained
    cut = sft_mod.tokenize_for_inference(ds, tok, max_length=9)
    assert {len(ids) for ids in cut["input_ids"]} == {9} and len(cut["labels"][0]) == 9


def test_a_base_model_without_a_chat_template_trains_on_the_engines_prompt(tmp_path):
    """Cold-start SFT often starts from a base model. The transformers engine prompts it with
    the turns' text one per line; SFT trains on exactly that prompt, then the reply and eos."""
    from thinkwheel.engines.hf import HFEngine

    path = build_tiny_model(tmp_path / "base", None)
    tok = sft_mod.load_hf(path)[1]
    assert not tok.chat_template and sft_mod.loss_mode(tok, SFTConfig()) == "completion_only"
    trained, masked = labelled_tokens(path, SFTConfig(max_steps=1), tmp_path)
    msgs = sft_frame(1)["messages"][0].to_list()
    assert masked == HFEngine(path).render(msgs[:2]) == "Think first.\nWhat is 0 + 7?\n"
    assert trained == "<think>0 plus 7</think>\n7<|end|>"
    full, _ = labelled_tokens(path, SFTConfig(max_steps=1, assistant_only_loss=False), tmp_path)
    assert full == "Think first.\nWhat is 0 + 7?\n<think>0 plus 7</think>\n7<|end|>"
    res = sft_mod.train_sft(path, sft_frame(4), str(tmp_path / "m"), SFTConfig(max_steps=1))
    assert res["global_step"] == 1

    from thinkwheel.config import DPOTrainConfig
    from thinkwheel.train import dpo as dpo_mod

    wrong = [{"role": "assistant", "content": "<think>0 plus 7 is 8</think>\n8"}]
    pairs = pl.DataFrame({"prompt": [msgs[:2]], "chosen": [[msgs[2]]], "rejected": [wrong]})
    model, _ = sft_mod.load_hf(path)
    built = dpo_mod.build_dpo_trainer(model, tok, dpo_mod.dpo_dataset(pairs),
                                      DPOTrainConfig(max_steps=1, batch_size=1), str(tmp_path / "d"))
    row = built.train_dataset[0]
    assert tok.decode(row["prompt_ids"]) == "Think first.\nWhat is 0 + 7?\n"
    assert tok.decode(row["chosen_ids"]) == "<think>0 plus 7</think>\n7<|end|>"


def test_a_trained_model_stops_where_its_turns_end(tmp_path):
    """Turns that end in a token the generation config does not stop at (a base model's
    "<|endoftext|>" vs ChatML's "<|im_end|>"): after SFT the saved model stops at both."""
    from transformers import AutoTokenizer, GenerationConfig

    template = TEMPLATE_PLAIN.replace("m['content'] + '<|end|>' }}{{ '\\n' }}",
                                      "m['content'] + '<|system|>' }}{{ '\\n' }}")
    assert template != TEMPLATE_PLAIN
    path = build_tiny_model(tmp_path / "m", template)
    tok = AutoTokenizer.from_pretrained(path)
    turn_end = tok.convert_tokens_to_ids("<|system|>")
    assert chat_template.stop_token_id(tok) == turn_end != tok.eos_token_id
    assert GenerationConfig.from_pretrained(path).eos_token_id == tok.eos_token_id
    from thinkwheel.engines.hf import HFEngine

    assert HFEngine(path).eos_ids == {tok.eos_token_id, turn_end}  # the base model stops too
    trained, _ = labelled_tokens(path, SFTConfig(max_steps=1), tmp_path)
    assert trained.endswith("7<|system|>\n")
    sft_mod.train_sft(path, sft_frame(4), str(tmp_path / "out"), SFTConfig(max_steps=1))
    stops = GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id
    assert stops == [tok.eos_token_id, turn_end]
    # a template whose turns already end in eos leaves the generation config as it was
    plain = build_tiny_model(tmp_path / "p", TEMPLATE_PLAIN)
    sft_mod.train_sft(plain, sft_frame(4), str(tmp_path / "out2"), SFTConfig(max_steps=1))
    assert GenerationConfig.from_pretrained(tmp_path / "out2").eos_token_id == tok.eos_token_id


def test_template_probes(plain_model, r1_model):
    from transformers import AutoTokenizer

    plain, r1 = AutoTokenizer.from_pretrained(plain_model), AutoTokenizer.from_pretrained(r1_model)
    assert chat_template.renders_reply_as_written(plain) and not chat_template.renders_reply_as_written(r1)
    assert chat_template.end_of_turn(plain) == "<|end|>\n" and chat_template.end_of_turn(r1) == "<|end|>"
    assert chat_template.generation_prefill(r1) == "<think>\n"
    assert chat_template.completion_text("<think>\nr</think>a", "<think>\n") == "r</think>a"
    assert chat_template.completion_text("<think>r</think>a", "<think>\n") == "r</think>a"
    assert chat_template.completion_text("<think>r</think>a", "") == "<think>r</think>a"
    with pytest.raises(ValueError, match="assistant turn"):
        chat_template.inference_tokens(plain, [{"role": "user", "content": "x"}], prefill="", eot="")


def test_dpo_pairs_keep_reasoning_through_a_template_that_strips_it(r1_model, tmp_path):
    from thinkwheel.config import DPOTrainConfig
    from thinkwheel.train import dpo as dpo_mod

    msgs = sft_frame(1)["messages"][0].to_list()
    pairs = pl.DataFrame(
        {
            "prompt": [msgs[:2]],
            "chosen": [[msgs[2]]],
            "rejected": [[{"role": "assistant", "content": "<think>0 plus 7 is 8</think>\n8"}]],
        }
    )
    model, tok = sft_mod.load_hf(r1_model)
    cfg = DPOTrainConfig(max_steps=1, batch_size=1)
    trainer = dpo_mod.build_dpo_trainer(model, tok, dpo_mod.dpo_dataset(pairs), cfg, str(tmp_path))
    row = trainer.train_dataset[0]
    assert tok.decode(row["prompt_ids"]) == chat_template.render_prompt(tok, msgs[:2])
    assert tok.decode(row["chosen_ids"]) == "0 plus 7</think>\n7<|end|>"
    assert tok.decode(row["rejected_ids"]) == "0 plus 7 is 8</think>\n8<|end|>"

    _, longest = sft_mod.over_length([msgs[:2] + pairs["rejected"][0].to_list()], tok, 0)
    short = cfg.model_copy(update={"max_length": longest - 1})
    res = dpo_mod.train_dpo(r1_model, pairs, str(tmp_path / "m"), short)
    assert res["over_max_length"] == 1 and res["longest_tokens"] == longest
    with pytest.raises(ValueError, match="every DPO prompt fills train.dpo.max_length"):
        dpo_mod.train_dpo(r1_model, pairs, str(tmp_path / "m2"), cfg.model_copy(update={"max_length": 8}))
    assert not list(tmp_path.glob("m2*"))  # refused before anything was written
    assert "1 of 1 preference pairs" in sft_mod.length_warning(res, "train.dpo.max_length", "preference pairs")


# Qwen3's habit: a finished assistant turn keeps its reasoning but re-spaces it
TEMPLATE_RESPACED = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and '</think>' in m['content'] %}"
    "{% set r = m['content'].split('</think>')[0].split('<think>')[-1].strip() %}"
    "{% set a = m['content'].split('</think>')[-1].strip() %}"
    "{{ '<|assistant|>\\n<think>\\n' + r + '\\n</think>\\n\\n' + a + '<|end|>\\n' }}"
    "{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def test_dpo_pairs_are_the_replies_as_sampled_through_a_template_that_respaces_them(tmp_path):
    """A Qwen3-style template keeps the reasoning but re-spaces it: DPO, rendering the pairs
    through it, compared `...</think>\\n\\n7` where the model wrote (and SFT trained) `...</think>\\n7`."""
    from thinkwheel.config import DPOTrainConfig
    from thinkwheel.train import dpo as dpo_mod

    path = build_tiny_model(tmp_path / "respaced", TEMPLATE_RESPACED)
    msgs = sft_frame(1)["messages"][0].to_list()
    pairs = pl.DataFrame({"prompt": [msgs[:2]], "chosen": [[msgs[2]]],
                          "rejected": [[{"role": "assistant", "content": "<think>0 plus 7 is 8</think>\n8"}]]})
    model, tok = sft_mod.load_hf(path)
    assert not chat_template.renders_reply_as_written(tok)
    trainer = dpo_mod.build_dpo_trainer(model, tok, dpo_mod.dpo_dataset(pairs),
                                        DPOTrainConfig(max_steps=1, batch_size=1), str(tmp_path / "o"))
    row = trainer.train_dataset[0]
    assert tok.decode(row["chosen_ids"]) == msgs[2]["content"] + "<|end|>"
    assert tok.decode(row["rejected_ids"]) == "<think>0 plus 7 is 8</think>\n8<|end|>"


def test_self_added_bos_is_found(plain_model):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plain_model)
    assert chat_template.self_added_bos(tok) == ""
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    assert chat_template.self_added_bos(tok) == "<s>"


def test_train_sft_writes_model_and_curves(marked_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous model (only a model folder is replaced)
    (out / "stale.txt").write_text("old model")  # the previous model is replaced whole
    cfg = SFTConfig(trainer="trl", max_steps=10, epochs=100, batch_size=4, learning_rate=3e-3)
    res = sft_mod.train_sft(marked_model, sft_frame(), str(out), cfg)

    assert res["global_step"] == 10 and res["loss_mode"] == "assistant_only"
    assert res["trainer"] == "trl" and res["n_examples"] == 24
    assert not (out / "stale.txt").exists() and not Path(str(out) + ".tmp").exists()
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 10 and {"learning_rate", "grad_norm"} <= rows[0].keys()
    assert losses[-1] < losses[0]  # 10 steps at lr 3e-3 on 24 near-identical rows must learn

    tok = AutoTokenizer.from_pretrained(out)
    assert "generation" in tok.chat_template  # the chat template travels with the model
    # readable as the umask allows: transformers wrote the weights 0600 (through a temp file)
    umask = os.umask(0o022)
    os.umask(umask)
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o666 & ~umask}
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(marked_model)
    assert any(
        not (p.detach() == q.detach()).all()
        for p, q in zip(model.parameters(), base.parameters(), strict=True)
    )


def test_train_sft_lora_merges_into_plain_model(plain_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = SFTConfig(
        trainer="trl", max_steps=3, batch_size=4, lora=True, lora_r=4, learning_rate=1e-2
    )
    res = sft_mod.train_sft(plain_model, sft_frame(8), str(out), cfg)
    assert res["lora"] and res["loss_mode"] == "completion_only"
    assert not (out / "adapter_config.json").exists()  # merged: the engine loads it as-is
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_examples_longer_than_max_length_are_counted_and_named(plain_model, tmp_path):
    frame = sft_frame(6)
    _, tok = sft_mod.load_hf(plain_model)
    ds = sft_mod.as_dataset(frame)
    _, longest = sft_mod.over_length(ds["messages"], tok, 10_000)
    first = len(tok(tok.apply_chat_template(frame["messages"][0].to_list(), tokenize=False))["input_ids"])
    assert longest >= first > 10  # the rendered example, give or take the boundary tokens
    cfg = SFTConfig(trainer="trl", max_steps=1, batch_size=2, max_length=longest - 1)
    res = sft_mod.train_sft(plain_model, frame, str(tmp_path / "m"), cfg)
    assert 1 <= res["over_max_length"] <= 6 and res["longest_tokens"] == longest
    warning = sft_mod.length_warning(res)
    assert f"longer than train.sft.max_length ({longest - 1} tokens" in warning
    assert f"at least {longest}" in warning
    assert sft_mod.length_warning({**res, "over_max_length": 0}) is None


def test_steps_follow_epochs_capped_by_max_steps():
    assert sft_mod.train_steps(100, SFTConfig(max_steps=500, epochs=1.0, batch_size=16)) == 7
    assert sft_mod.train_steps(100, SFTConfig(max_steps=3, epochs=1.0, batch_size=16)) == 3
    assert sft_mod.train_steps(1, SFTConfig(max_steps=50, epochs=0.01, batch_size=16)) == 1
    # an epoch's last batch is partial: 69 samples at 8 x 2 are 5 steps an epoch (9 batches),
    # so 8 epochs are 40 steps; counting samples gave 35, 7 epochs
    assert sft_mod.train_steps(69, SFTConfig(max_steps=200, epochs=8, batch_size=8, grad_accum=2)) == 40
    assert sft_mod.train_steps(250, SFTConfig(max_steps=200, epochs=8, batch_size=16)) == 128


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="messages"):
        sft_mod.as_dataset(pl.DataFrame({"text": ["x"]}))
    with pytest.raises(ValueError, match="empty"):
        sft_mod.train_sft("unused", sft_frame(2).head(0), str(tmp_path / "m"), SFTConfig())
    assert not (tmp_path / "m").exists()


class FakeFastLanguageModel:
    """Stands in for unsloth.FastLanguageModel at the library boundary; records its calls."""

    calls: list[tuple[str, dict]] = []

    @classmethod
    def from_pretrained(cls, **kw):
        cls.calls.append(("from_pretrained", kw))
        return sft_mod.load_hf(kw["model_name"])

    @classmethod
    def get_peft_model(cls, model, **kw):
        from peft import LoraConfig, get_peft_model

        cls.calls.append(("get_peft_model", kw))
        conf = LoraConfig(
            r=kw["r"], lora_alpha=kw["lora_alpha"], target_modules=kw["target_modules"]
        )
        return get_peft_model(model, conf)


@pytest.fixture
def fake_unsloth(monkeypatch):
    FakeFastLanguageModel.calls = []
    mod = types.ModuleType("unsloth")
    mod.FastLanguageModel = FakeFastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", mod)
    return FakeFastLanguageModel


def test_trainer_choice(fake_unsloth, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sft_mod.pick_trainer("auto") == "trl"  # unsloth importable but no GPU
    assert sft_mod.pick_trainer("unsloth") == "unsloth"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sft_mod.pick_trainer("auto") == "unsloth"
    assert sft_mod.pick_trainer("trl") == "trl"
    monkeypatch.setitem(sys.modules, "unsloth", None)  # import now fails
    assert sft_mod.pick_trainer("auto") == "trl"
    with pytest.raises(RuntimeError, match="unsloth"):
        sft_mod.pick_trainer("unsloth")


@pytest.mark.filterwarnings("error::FutureWarning")  # PEFT's read of a renamed attribute
def test_unsloth_path_loads_through_fast_language_model(fake_unsloth, plain_model, tmp_path):
    out = tmp_path / "unsloth"
    cfg = SFTConfig(trainer="unsloth", max_steps=2, batch_size=4, lora=True, lora_r=4, seed=7)
    res = sft_mod.train_sft(plain_model, sft_frame(8), str(out), cfg)
    assert res["trainer"] == "unsloth" and res["global_step"] == 2
    (name1, load), (name2, peft) = fake_unsloth.calls
    assert name1 == "from_pretrained" and name2 == "get_peft_model"
    assert load["model_name"] == plain_model and load["load_in_4bit"] is True
    assert load["full_finetuning"] is False and load["max_seq_length"] == cfg.max_length
    assert load["use_exact_model_name"] is True  # not Unsloth's own mirror of a known hub id
    assert peft["r"] == 4 and peft["random_state"] == 7 and "q_proj" in peft["target_modules"]
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()


def bundled_model() -> str | None:
    try:
        from thinkwheel.assets import model_path
    except Exception:  # the bundled model is not in place yet
        return None
    path = Path(model_path())
    return str(path) if (path / "config.json").exists() else None


@pytest.mark.skipif(bundled_model() is None, reason="bundled model not built yet")
def test_short_sft_on_the_bundled_model(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "bundled"
    cfg = SFTConfig(trainer="trl", max_steps=4, epochs=10, batch_size=4, max_length=128)
    res = sft_mod.train_sft(bundled_model(), sft_frame(8), str(out), cfg)
    assert res["global_step"] == 4 and res["loss_mode"] in ("assistant_only", "completion_only")
    rows = (out / "train_log.jsonl").read_text().splitlines()
    assert sum("loss" in json.loads(r) for r in rows) == 4
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(bundled_model()).chat_template


def test_deprecation_noise_is_muted_only_inside_training(recwarn):
    """Importing thinkwheel must not change the process's warning filters; training mutes the
    transformers/TRL gradient-checkpointing FutureWarning, and nothing else."""
    import subprocess

    probe = (
        "import warnings; before = list(warnings.filters); import thinkwheel.train.sft, "
        "thinkwheel.train.grpo; assert warnings.filters == before, 'filters changed at import'"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
    import warnings

    with sft_mod.quiet_deprecations():
        warnings.warn("`gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something else", FutureWarning, stacklevel=1)
    warnings.warn("`gradient_checkpointing` is deprecated, outside", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == [
        "something else",
        "`gradient_checkpointing` is deprecated, outside",
    ]
