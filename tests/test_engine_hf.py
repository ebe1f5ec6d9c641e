"""The transformers engine on a tiny random Llama built here (no hub, ~200 KB, a few seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from thinkwheel.engines.base import Completion, SamplingParams  # noqa: E402

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>{% endif %}"
)
REQUESTS = [
    "What is 345 + 78?",
    "Write a Python function `f(x)` that returns 3*x + 2.",
    [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "Solve 3x + 2 = 17"},
    ],
]


def build_tiny_model(path: Path) -> Path:
    """A random 2-layer Llama + byte-level BPE tokenizer with a chat template, saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
    )  # alphabet = the corpus's characters only, so every token decodes to printable text
    corpus = [
        "What is 345 + 78? <think>add</think> 423, Solve for x: 3x + 2 = 17.",
        "Write a Python function `f(x)` that returns 3*x + 2.\ndef f(x):\n    return 3 * x + 2",
        "<|system|>Think first.<|user|><|assistant|> (yes) [ok] {1} 'a' \"b\" 6890 ; ! - / _ =",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
    ]
    tok.train_from_iterator(corpus * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine(tiny_path: Path):
    from thinkwheel.engines.hf import HFEngine

    return HFEngine(tiny_path, batch_size=4)


def test_shape_order_and_length_finish(engine) -> None:
    out = engine.generate(REQUESTS, SamplingParams(n=3, temperature=1.0, max_tokens=10, seed=1))
    assert len(out) == len(REQUESTS)
    assert all(len(row) == 3 and all(isinstance(c, Completion) for c in row) for row in out)
    for row in out:
        for c in row:  # "length" exactly at max_tokens; "stop" only on an earlier EOS
            assert (c.finish_reason, c.n_tokens == 10) in {("length", True), ("stop", False)}
    assert any(c.finish_reason == "length" for row in out for c in row)
    # samples differ across the n draws and across requests
    assert len({c.text for row in out for c in row}) > 6


def test_seeded_sampling_ignores_batch_composition(tiny_path: Path, engine) -> None:
    from thinkwheel.engines.hf import HFEngine

    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=12, seed=7)
    a = engine.generate(REQUESTS, params)
    single = HFEngine(tiny_path, batch_size=1)
    b = single.generate(list(reversed(REQUESTS)), params)
    assert a == list(reversed(b))
    c = single.generate(REQUESTS[1:2], params)  # alone in the call
    assert c[0] == a[1]
    d = engine.generate(REQUESTS, SamplingParams(**{**params.as_dict(), "stop": (), "seed": 8}))
    assert d != a


def test_greedy_matches_bare_generate(engine) -> None:
    import torch

    out = engine.generate(REQUESTS, SamplingParams(n=2, temperature=0.0, max_tokens=8))
    assert all(row[0] == row[1] for row in out)
    prompt = engine.render(REQUESTS[2])
    assert prompt.startswith("<s><|system|>Think first.\n<|user|>Solve")
    assert prompt.endswith("<|assistant|><think>")
    enc = engine.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ids = engine.model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=0)
    bare = engine.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out[2][0].text == "<think>" + bare  # the template's pre-fill, then what it wrote


def test_tiny_top_p_is_greedy(engine) -> None:
    greedy = engine.generate(REQUESTS, SamplingParams(n=1, temperature=0.0, max_tokens=8))
    nucleus = engine.generate(
        REQUESTS, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=8)
    )
    assert [[c.text for c in row] for row in nucleus] == [[g[0].text] * 2 for g in greedy]


def test_stop_string_truncates(engine) -> None:
    params = SamplingParams(n=1, temperature=0.0, max_tokens=16)
    full = engine.generate(REQUESTS[:1], params)[0][0].text
    assert full.startswith(engine.prefill)
    wrote = full[len(engine.prefill):]
    stop = wrote[4:7]
    assert len(stop) == 3 and stop.isprintable()
    with_stop = SamplingParams(**{**params.as_dict(), "stop": (stop,)})
    cut = engine.generate(REQUESTS[:1], with_stop)[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == engine.prefill + wrote[: wrote.find(stop)]
    assert cut.n_tokens < 16


def test_a_stop_string_counts_only_in_the_generated_text(engine) -> None:
    """A stop that begins in the prompt's last characters ("\\n\\n" after a prompt ending in
    "\\n") ended the generation at its first tokens: transformers' stop-string criterion reads
    the prompt too, while vLLM and servers match only what the model wrote."""
    params = SamplingParams(n=1, temperature=0.0, max_tokens=16)
    full = engine.generate(REQUESTS[:1], params)[0][0]
    wrote = full.text[len(engine.prefill):]
    straddling = "nk>" + wrote[:2]  # the prompt ends "...<think>"
    assert engine.render(REQUESTS[0]).endswith("nk>") and straddling not in wrote
    got = engine.generate(REQUESTS[:1], SamplingParams(**{**params.as_dict(), "stop": (straddling,)}))
    assert (got[0][0].text, got[0][0].n_tokens) == (full.text, full.n_tokens)


def test_a_prompt_over_the_context_gets_no_text_and_a_long_one_a_smaller_budget(engine) -> None:
    """Past max_position_embeddings the model wrote noise ('00000000', counted as an ordinary
    wrong answer); a prompt longer than the context now gets an empty `context_length`
    completion, and one near it only the positions left."""
    ctx = engine.context
    assert ctx == 512
    long = "What is 345 + 78? " * 200
    near = "What is 345 + 78? " * 70
    sizes = [len(engine.tokenizer(engine.render(r), add_special_tokens=False)["input_ids"])
             for r in (long, near)]
    assert sizes[0] >= ctx and ctx - 40 < sizes[1] < ctx
    out = engine.generate([long, REQUESTS[0], near], SamplingParams(n=2, temperature=1.0, max_tokens=64))
    assert [c.finish_reason for c in out[0]] == ["context_length"] * 2 and out[0][0].text == ""
    assert all(c.n_tokens <= ctx - sizes[1] for c in out[2])
    assert out[2][0].finish_reason == "length" and out[1][0].text  # the others as before


def test_a_pre_filled_think_is_part_of_the_completion(engine) -> None:
    """The template writes `<think>` after the assistant header (Qwen3, R1-Distill): the engine
    returned only what the model generated, so a thought cut off by the budget read as an
    answer, and a draft answer in it passed the verify stage and the held-out eval."""
    from thinkwheel.verifiers import get_verifier

    assert engine.prefill == "<think>"
    out = engine.generate(REQUESTS, SamplingParams(n=1, temperature=0.0, max_tokens=6))
    assert all(row[0].text.startswith("<think>") and row[0].finish_reason == "length"
               for row in out)
    math = get_verifier("math", workers=1)
    cut_off = "3+5=8, 2+4=6. So the answer is 68.\nWait, let me check 3+5 ag"
    assert math.verify(cut_off, {"reference": "68"}).passed is True  # what it was judged as
    judged = math.verify(engine.prefill + cut_off, {"reference": "68"})
    assert judged.passed is False and judged.reason == "no_answer"


def test_a_final_assistant_turn_is_continued(engine) -> None:
    """A request ending in an assistant turn goes on from that text (a trace continued from a
    corrected step): the prompt is the template's, then the turn less the pre-fill the template
    wrote; the reply is only the new text, and a fresh request in the same call keeps its
    pre-fill."""
    import torch

    head = "<think>3+5=8, 2+4="
    turn = [*REQUESTS[2], {"role": "assistant", "content": head}]
    prompt = engine.render(turn)
    assert prompt == engine.render(REQUESTS[2]) + "3+5=8, 2+4="
    out = engine.generate([turn, REQUESTS[2]], SamplingParams(n=1, temperature=0.0, max_tokens=8))
    enc = engine.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ids = engine.model.generate(**enc, do_sample=False, max_new_tokens=8, pad_token_id=0)
    bare = engine.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out[0][0].text == bare and not bare.startswith("<think>")
    assert out[1][0].text.startswith("<think>")


def test_eos_from_generation_config(tiny_path: Path, tmp_path: Path, engine) -> None:
    """A model whose EOS is the token greedy decoding emits first stops after one token."""
    import shutil

    from thinkwheel.engines.hf import HFEngine

    enc = engine.tokenizer(
        [engine.render(REQUESTS[0])], return_tensors="pt", add_special_tokens=False
    )
    first = int(engine.model(**enc).logits[0, -1].argmax())
    copy = tmp_path / "eos"
    shutil.copytree(tiny_path, copy)
    gen_cfg = json.loads((copy / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [2, first]
    (copy / "generation_config.json").write_text(json.dumps(gen_cfg))
    c = HFEngine(copy).generate(REQUESTS[:1], SamplingParams(temperature=0.0, max_tokens=8))[0][0]
    assert (c.finish_reason, c.n_tokens) == ("stop", 1)


def test_progress_counts_sequences(engine) -> None:
    seen: list[int] = []
    engine.generate(REQUESTS, SamplingParams(n=3, max_tokens=2), progress=seen.append)
    assert sum(seen) == 9 and len(seen) == 3  # 9 sequences in batches of 4


def test_sampler_follows_the_distribution() -> None:
    """The counter-based draws reproduce the softmax probabilities across many seeds."""
    import torch

    from thinkwheel.engines.hf import _SeededSampler, sequence_seed

    rows = 4000
    seeds = torch.tensor([sequence_seed(3, [], i) for i in range(rows)], dtype=torch.int64)
    scores = torch.log(torch.tensor([[0.2, 0.5, 0.3, 1e-9]])).repeat(rows, 1)
    sampler = _SeededSampler(seeds, prompt_len=5, temperature=1.0, top_p=1.0)
    picks = sampler(torch.zeros(rows, 6, dtype=torch.long), scores).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / rows
    assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3, 0.0]), atol=0.03)
    nucleus = _SeededSampler(seeds, prompt_len=5, temperature=1.0, top_p=0.6)
    picks = nucleus(torch.zeros(rows, 6, dtype=torch.long), scores).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / rows  # top-p 0.6 keeps {0.5, 0.3}
    assert freq[0] == 0 and abs(freq[1] - 0.5 / 0.8) < 0.03
    later = _SeededSampler(seeds, prompt_len=4, temperature=1.0, top_p=1.0)
    again = later(torch.zeros(rows, 6, dtype=torch.long), scores).argmax(-1)
    assert (again != sampler(torch.zeros(rows, 6, dtype=torch.long), scores).argmax(-1)).any()


def test_factory_builds_hf_and_resolves_bundled(tiny_path: Path, monkeypatch) -> None:
    import thinkwheel.assets
    from thinkwheel.config import EngineConfig
    from thinkwheel.engines.factory import make_engine

    monkeypatch.setattr(thinkwheel.assets, "model_path", lambda: str(tiny_path))
    engine = make_engine(EngineConfig(kind="hf", batch_size=3))  # model: "bundled"
    assert (engine.model_path, engine.batch_size) == (str(tiny_path), 3)
    explicit = make_engine(EngineConfig(kind="hf", model="/nowhere"), model_path=tiny_path)
    assert explicit.model_path == str(tiny_path)  # a round's trained model wins over the config
    out = explicit.generate(REQUESTS[:1], SamplingParams(n=2, max_tokens=3))
    assert len(out) == 1 and len(out[0]) == 2


def _bundled() -> str | None:
    try:
        from thinkwheel.assets import model_path

        return model_path()
    except Exception:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_bundled() is None, reason="bundled model not built")
def test_bundled_model_thinks_through_the_chat_template() -> None:
    """The bundled model was pre-trained on <think> traces: greedy output should close one."""
    from thinkwheel.engines.hf import HFEngine

    engine = HFEngine(_bundled())
    prompts = ["What is 345 + 78?", "What is 12 + 30?", "Solve for x: 3x + 2 = 17"]
    out = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=160))
    assert sum("</think>" in row[0].text for row in out) >= 2


def test_think_tags_marked_special_are_kept(tiny_path: Path, tmp_path: Path) -> None:
    """A tokenizer that marks `<think>`/`</think>` special: decoding without special tokens
    dropped the tags from every sample, and the format filter then dropped every sample."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkwheel.engines.hf import HFEngine

    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")]})
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    engine = HFEngine(tmp_path / "m", batch_size=2)
    ids = tok.encode("<think>add</think> 423", add_special_tokens=False) + [tok.eos_token_id]
    got = engine._completion(ids, SamplingParams(max_tokens=len(ids) + 5), len(ids) + 5, "")
    assert got.text == "<think>add</think> 423" and got.finish_reason == "stop"


def test_think_tags_marked_special_in_tokenizer_json_are_kept(tmp_path: Path) -> None:
    """`"special": true` on the tags in tokenizer.json (what `add_tokens(..., special_tokens=True)`
    writes) is not listed in `all_special_ids`, yet decoding without special tokens drops them;
    and the template's own specials (`<|im_start|>`, also unlisted) must still go."""
    import shutil

    from transformers import AutoTokenizer

    from thinkwheel.assets import model_path
    from thinkwheel.chat_template import decode_text, special_think_ids

    folder = tmp_path / "tok"
    shutil.copytree(model_path(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    spec = json.loads((folder / "tokenizer.json").read_text())
    for token in spec["added_tokens"]:
        token["special"] = token["special"] or "think" in token["content"]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.encode("<|im_start|>assistant\n<think>r</think>5<|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\nr5"  # what a decoder gives
    keep = special_think_ids(tok)
    assert len(keep) == 2
    assert decode_text(tok, ids, keep) == "assistant\n<think>r</think>5"
