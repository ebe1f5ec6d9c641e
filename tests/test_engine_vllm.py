"""Our side of the vLLM engine, with vLLM replaced at its boundary.

vLLM cannot run on this CPU-only machine, so these tests install a fake `vllm` package (on
sys.path and PYTHONPATH, so spawned data-parallel replicas see it too) that provides only
what the engine touches: `vllm.LLM` (constructor, `chat`, `get_tokenizer`), `vllm.SamplingParams` and
`vllm.lora.request.LoRARequest`. Everything else (argument mapping, per-request seeds,
ordering, greedy handling, stop truncation, LoRA, data-parallel replicas, the factory) is
the real code. What is NOT tested here: that real vLLM accepts these arguments on a GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from thinkwheel.config import EngineConfig
from thinkwheel.engines.base import SamplingParams

FAKE_VLLM = """
import json, os, types, weakref
LOG = os.environ["FAKE_VLLM_LOG"]
ALIVE = weakref.WeakSet()  # the LLMs not yet freed

def _log(kind, **data):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"kind": kind, "pid": os.getpid(), **data}) + "\\n")

class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, stop=None,
                 stop_token_ids=None, skip_special_tokens=True):
        self.n, self.temperature, self.top_p = n, temperature, top_p
        self.max_tokens, self.seed, self.stop = max_tokens, seed, stop
        self.stop_token_ids, self.skip_special_tokens = stop_token_ids, skip_special_tokens

class _Sample:
    def __init__(self, index, text, token_ids, finish_reason):
        self.index, self.text, self.token_ids = index, text, token_ids
        self.finish_reason = finish_reason

class _Output:
    def __init__(self, outputs):
        self.outputs = outputs

def _core():
    pass

class LLM:
    def __init__(self, model, **kwargs):
        if os.environ.get("FAKE_VLLM_FAIL"):
            raise RuntimeError("no CUDA GPUs are available")
        die_on = os.environ.get("FAKE_VLLM_DIE_ON")
        if die_on is not None and die_on == os.environ.get("CUDA_VISIBLE_DEVICES"):
            os._exit(3)  # killed without a word: the OOM killer, a segfault in CUDA
        # as vLLM's LLM starts its engine core (VLLM_ENABLE_V1_MULTIPROCESSING, the default)
        import multiprocessing as mp
        core = mp.get_context("spawn").Process(target=_core)
        core.start()
        core.join()
        _log("init", model=model, kwargs=kwargs, gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
        ALIVE.add(self)
        self.model_config = types.SimpleNamespace(max_model_len=kwargs.get("max_model_len", 2048))

    def get_tokenizer(self):  # the real model's tokenizer when a test names one
        path = os.environ.get("FAKE_VLLM_TOKENIZER")
        if path is None:
            raise RuntimeError("no tokenizer in this fake")
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(path)

    def chat(self, messages, sampling_params=None, use_tqdm=True, lora_request=None,
             add_generation_prompt=True, continue_final_message=False, plain=False, **kw):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(messages)
        if add_generation_prompt and continue_final_message:  # transformers refuses both
            raise ValueError("continue_final_message and add_generation_prompt are not compatible")
        if not plain:
            _log("chat", n_requests=len(messages), lora=getattr(lora_request, "lora_path", None),
                 add_generation_prompt=add_generation_prompt,
                 continue_final_message=continue_final_message,
                 last_roles=[conv[-1]["role"] for conv in messages],
                 stop_token_ids=sampling_params[0].stop_token_ids if sampling_params else None)
        if os.environ.get("FAKE_VLLM_TOKENIZER") and not plain:  # vLLM's check, for the call
            tok = self.get_tokenizer()
            if tok.chat_template is None:  # vLLM's safe_apply_chat_template
                raise ValueError("As of transformers v4.44, default chat template is no longer "
                                 "allowed, so you must provide a chat template")
            for conv in messages:
                text = tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt,
                                               continue_final_message=continue_final_message,
                                               tokenize=False)
                n = len(tok(text, add_special_tokens=False)["input_ids"])
                if n >= self.model_config.max_model_len:
                    raise ValueError(f"The decoder prompt (length {n}) plus the number of "
                                     "requested output tokens (at least 1) is longer than the "
                                     "maximum model length")
        outs = []
        for conv, sp in zip(messages, sampling_params):
            q = conv[-1]["content"]
            if "FAIL" in q:
                raise ValueError(f"cannot serve {q!r}")
            if sp.skip_special_tokens and os.environ.get("FAKE_VLLM_TOKENIZER"):
                for t in self.get_tokenizer().all_special_tokens:  # as vLLM decodes by default
                    q = q.replace(t, "")
            samples = []
            for k in reversed(range(sp.n)):  # out of order on purpose: the engine sorts by index
                text = f"{q}|seed={sp.seed}|k={k}|t={sp.temperature}|STOP|tail"
                ids = list(range(min(sp.max_tokens, 7)))
                reason = "length" if sp.max_tokens <= 7 else "stop"
                samples.append(_Sample(k, text, ids, reason))
            outs.append(_Output(samples))
        return outs

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None, **kw):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        _log("generate", prompt_token_ids=[p["prompt_token_ids"] for p in prompts])
        tok = self.get_tokenizer()
        return self.chat([[{"role": "user", "content": tok.decode(p["prompt_token_ids"])}]
                          for p in prompts], sampling_params=sampling_params, plain=True)
"""
LORA = """
class LoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path=""):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path
"""
DISTRIBUTED = """
import json, os

def cleanup_dist_env_and_memory(shutdown_ray=False):
    import vllm
    with open(os.environ["FAKE_VLLM_LOG"], "a") as fh:
        fh.write(json.dumps({"kind": "cleanup", "llms_alive": len(vllm.ALIVE)}) + "\\n")
"""
REQUESTS = ["What is 1 + 1?", "What is 2 + 2?", [{"role": "user", "content": "What is 3 + 3?"}]]


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the fake package; returns the log file of its constructor and chat calls."""
    root = tmp_path / "fakesite"
    (root / "vllm" / "lora").mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    (root / "vllm" / "lora" / "__init__.py").write_text("")
    (root / "vllm" / "lora" / "request.py").write_text(LORA)
    (root / "vllm" / "distributed").mkdir()
    (root / "vllm" / "distributed" / "__init__.py").write_text(DISTRIBUTED)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root) + ":" + ":".join(sys.path))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    yield log


@pytest.fixture(autouse=True, scope="module")
def _forget_fake_vllm():
    """The fake must not outlive this module (TRL probes `vllm` by import spec and version).
    Module scope: runs after every test's monkeypatch undo, which can restore the fake."""
    yield
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def calls(log: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == kind]


def test_config_maps_to_llm_arguments(fake_vllm: Path, tmp_path: Path) -> None:
    from thinkwheel.engines.factory import make_engine

    cfg = EngineConfig(kind="vllm", model="org/Base-7B", tensor_parallel_size=2, max_model_len=4096)
    engine = make_engine(cfg)
    (init,) = calls(fake_vllm, "init")
    assert init["model"] == "org/Base-7B"
    assert init["kwargs"] == {
        "tensor_parallel_size": 2,
        "enable_prefix_caching": True,
        "gpu_memory_utilization": 0.85,
        "dtype": "auto",
        "max_model_len": 4096,
    }
    assert engine.model_name == "Base-7B"

    adapter = tmp_path / "round-1-adapter"  # a round's model that is a LoRA adapter
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    lora_engine = make_engine(cfg, model_path=adapter)
    init = calls(fake_vllm, "init")[-1]
    assert init["model"] == "org/Base-7B" and init["kwargs"]["enable_lora"] is True
    assert init["kwargs"]["max_lora_rank"] == 64  # no rank given: vLLM's usual
    lora_engine.generate(REQUESTS[:1], SamplingParams(max_tokens=4))
    assert calls(fake_vllm, "chat")[-1]["lora"] == str(adapter)
    # an adapter of rank 100 needs max_lora_rank 128: a fixed 64 refused it when it loaded
    (adapter / "adapter_config.json").write_text('{"r": 100, "lora_alpha": 32}')
    make_engine(cfg, model_path=adapter)
    assert calls(fake_vllm, "init")[-1]["kwargs"]["max_lora_rank"] == 128


def _adapter(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, **config}))
    return folder


def test_an_adapter_folder_as_engine_model_runs_on_the_base_it_names(fake_vllm: Path,
                                                                      tmp_path: Path) -> None:
    """README: `eval`, and a run with every trainer off, sample from an adapter folder. vLLM
    was asked to load the adapter folder itself as the model (it has no config.json)."""
    from thinkwheel.engines.factory import make_engine, resolve_model

    adapter = _adapter(tmp_path / "my-adapter", base_model_name_or_path="org/Base-7B")
    cfg = EngineConfig(kind="vllm", model=str(adapter))
    for model_path in (None, resolve_model(cfg)):  # `eval`; the flow's round 0
        make_engine(cfg, model_path).generate(REQUESTS[:1], SamplingParams(max_tokens=4))
        init = calls(fake_vllm, "init")[-1]
        assert init["model"] == "org/Base-7B" and init["kwargs"]["enable_lora"] is True
        assert calls(fake_vllm, "chat")[-1]["lora"] == str(adapter)
    nameless = EngineConfig(kind="vllm", model=str(_adapter(tmp_path / "nameless")))
    with pytest.raises(ValueError, match="names no base_model_name_or_path"):
        make_engine(nameless)


def test_lora_path_applies_to_the_configured_model_not_a_retrained_one(fake_vllm: Path,
                                                                       tmp_path: Path) -> None:
    """engine.lora_path was applied on top of every round's retrained model too."""
    from thinkwheel.engines.factory import make_engine, resolve_model

    lora = _adapter(tmp_path / "lora")
    cfg = EngineConfig(kind="vllm", model="org/Base-7B", lora_path=str(lora))
    for model_path in (None, resolve_model(cfg)):  # `eval`; the flow's round 0
        make_engine(cfg, model_path).generate(REQUESTS[:1], SamplingParams(max_tokens=4))
        assert calls(fake_vllm, "chat")[-1]["lora"] == str(lora)
    make_engine(cfg, tmp_path / "round-0" / "model").generate(REQUESTS[:1],
                                                             SamplingParams(max_tokens=4))
    init = calls(fake_vllm, "init")[-1]
    assert init["model"] == str(tmp_path / "round-0" / "model") and "enable_lora" not in init["kwargs"]
    assert calls(fake_vllm, "chat")[-1]["lora"] is None


def test_generate_orders_seeds_and_truncates(fake_vllm: Path) -> None:
    from thinkwheel.engines.vllm import VLLMEngine

    engine = VLLMEngine("m")
    params = SamplingParams(n=3, temperature=0.8, max_tokens=5, seed=11, stop=("|STOP",))
    out = engine.generate(REQUESTS, params)
    assert [len(row) for row in out] == [3, 3, 3]
    for q, row in zip(["1 + 1", "2 + 2", "3 + 3"], out, strict=True):
        assert [c.text.split("|k=")[1].split("|")[0] for c in row] == ["0", "1", "2"]
        assert all(q in c.text and "STOP" not in c.text for c in row)
        assert all(c.finish_reason == "stop" and c.n_tokens == 5 for c in row)  # stop string hit
    seeds = {c.text.split("seed=")[1].split("|")[0] for row in out for c in row}
    assert len(seeds) == 3  # one seed per request
    alone = engine.generate(REQUESTS[1:2], params)  # same request, other batch: same seed
    assert alone[0] == out[1]
    no_stop = engine.generate(REQUESTS[:1], SamplingParams(n=1, max_tokens=5, seed=11))
    assert no_stop[0][0].finish_reason == "length" and no_stop[0][0].text.endswith("|tail")


def test_greedy_decodes_once(fake_vllm: Path) -> None:
    from thinkwheel.engines.vllm import VLLMEngine

    out = VLLMEngine("m").generate(REQUESTS, SamplingParams(n=4, temperature=0.0, max_tokens=9))
    assert all(len(row) == 4 and all(c == row[0] for c in row) for row in out)
    assert all(row[0].text.split("|")[2] == "k=0" for row in out)
    assert calls(fake_vllm, "chat")[-1]["add_generation_prompt"] is True
    # below 1e-5 vLLM samples greedily and refuses n > 1: one draw, copied
    tiny = VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(n=3, temperature=1e-6, max_tokens=9))
    assert len(tiny[0]) == 3 and all(c == tiny[0][0] for c in tiny[0])


def test_data_parallel_replicas_split_and_reassemble(fake_vllm: Path, monkeypatch) -> None:
    from thinkwheel.engines.vllm import VLLMEngine

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    requests = [f"What is {i} + {i}?" for i in range(7)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3)
    single = VLLMEngine("m").generate(requests, params)
    dp = VLLMEngine("m", data_parallel_size=2, tensor_parallel_size=2)
    try:
        out = dp.generate(requests, params)
    finally:
        dp.close()
    assert out == single  # per-request seeds: the split does not change any sample
    inits = calls(fake_vllm, "init")
    assert sorted(i["gpus"] for i in inits[1:]) == ["0,1", "2,3"]
    chats = calls(fake_vllm, "chat")
    assert sorted(c["n_requests"] for c in chats[1:]) == [3, 4]
    assert len({c["pid"] for c in chats[1:]}) == 2


def test_a_failed_replica_leaves_the_others_in_step(fake_vllm: Path, monkeypatch) -> None:
    """One replica's error was raised before the others' replies were read: they stayed in
    the pipes and came back as the answers to the next call's requests."""
    from thinkwheel.engines.vllm import VLLMEngine

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    params = SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=3)
    later = [f"What is {i} * {i}?" for i in range(4)]
    single = VLLMEngine("m").generate(later, params)
    dp = VLLMEngine("m", data_parallel_size=2)
    try:
        with pytest.raises(RuntimeError, match="a vLLM replica failed: ValueError: cannot serve"):
            dp.generate(["FAIL 0", "fine 1", "fine 2", "fine 3"], params)
        assert dp.generate(later, params) == single
    finally:
        dp.close()


def test_vllm_completions_hold_the_templates_pre_fill(fake_vllm: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    """vLLM returns only the generated text; with a template that pre-fills `<think>` the
    completion must read as the model's whole turn, as the transformers engine's does."""
    from thinkwheel.engines.vllm import VLLMEngine

    try:
        from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    prefill = TEMPLATE_PLAIN.replace("{{ '<|assistant|>\\n' }}{% endif %}",
                                     "{{ '<|assistant|>\\n<think>' }}{% endif %}")
    assert prefill != TEMPLATE_PLAIN
    plain = VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(max_tokens=4))[0][0].text
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", str(build_tiny_model(tmp_path / "tok", prefill)))
    got = VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(max_tokens=4))[0][0].text
    assert got == "<think>" + plain


CONTINUED = [{"role": "user", "content": "What is 2 + 2?"},
             {"role": "assistant", "content": "2 + 2 is"}]  # a corrected reasoning prefix


def _tiny_tokenizer(tmp_path: Path, prefill: bool) -> str:
    try:
        from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    template = TEMPLATE_PLAIN
    if prefill:
        template = TEMPLATE_PLAIN.replace("{{ '<|assistant|>\\n' }}{% endif %}",
                                          "{{ '<|assistant|>\\n<think>' }}{% endif %}")
        assert template != TEMPLATE_PLAIN
    return str(build_tiny_model(tmp_path / "tok", template))


def test_a_trailing_assistant_message_is_continued_not_answered(
    fake_vllm: Path, tmp_path: Path, monkeypatch
) -> None:
    """A request ending in an assistant message continues that message. It goes as the token
    ids of the transformers engine's prompt (the template's, then the turn as written): vLLM's
    chat(continue_final_message=True) renders the turn through the template, which Qwen3's
    garbles and R1-Distill's refuses. Fresh requests still go through chat(); the outputs come
    back in request order."""
    from transformers import AutoTokenizer

    from thinkwheel.chat_template import render_prompt
    from thinkwheel.engines.vllm import VLLMEngine

    path = _tiny_tokenizer(tmp_path, prefill=False)
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", path)
    tok = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine("m")
    params = SamplingParams(n=2, temperature=1.0, max_tokens=5, seed=11, stop=("|STOP",))
    out = engine.generate([REQUESTS[0], CONTINUED, REQUESTS[1]], params)
    (chat,), (gen,) = calls(fake_vllm, "chat"), calls(fake_vllm, "generate")
    assert chat["last_roles"] == ["user", "user"] and chat["add_generation_prompt"] is True
    prompt = render_prompt(tok, CONTINUED)
    assert prompt.endswith("<|assistant|>\n2 + 2 is")
    assert gen["prompt_token_ids"] == [tok(prompt, add_special_tokens=False)["input_ids"]]
    assert [out[i][0].text.split("|")[0] for i in (0, 2)] == ["What is 1 + 1?", "What is 2 + 2?"]
    assert "2 + 2 is|seed=" in out[1][0].text  # the fake answers with the prompt it was given
    assert all(len(row) == 2 for row in out)
    assert engine.generate([CONTINUED], params)[0] == out[1]  # same seed alone as in the mix


def test_a_continuation_gets_no_pre_fill(fake_vllm: Path, tmp_path: Path, monkeypatch) -> None:
    """The template's `<think>` pre-fill opened the assistant prefix the caller holds: put
    before a continuation's text, the caller's prefix + text would carry it twice."""
    from thinkwheel.engines.vllm import VLLMEngine

    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", _tiny_tokenizer(tmp_path, prefill=True))
    params = SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=3)
    fresh, cont = VLLMEngine("m").generate([REQUESTS[0], CONTINUED], params)
    assert all(c.text.startswith("<think>What is 1 + 1?|") for c in fresh)
    assert all(not c.text.startswith("<think>") and "2 + 2 is|" in c.text for c in cont)


def test_a_broken_vllm_install_is_a_clear_error(fake_vllm: Path, monkeypatch) -> None:
    from thinkwheel.engines.vllm import VLLMEngine

    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(RuntimeError, match="no CUDA GPUs"):
        VLLMEngine("m")
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import that fails outright
    with pytest.raises(RuntimeError, match="needs a working vLLM install"):
        VLLMEngine("m")


def test_the_template_turn_end_is_a_stop_id(fake_vllm: Path, tmp_path: Path, monkeypatch) -> None:
    """A template that closes turns with a token the generation config does not stop at:
    vLLM gets it as an extra stop id; a tokenizer that cannot be probed adds none."""
    from thinkwheel.engines.vllm import VLLMEngine

    try:
        from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    from transformers import AutoTokenizer

    template = TEMPLATE_PLAIN.replace("m['content'] + '<|end|>' }}{{ '\\n' }}",
                                      "m['content'] + '<|system|>' }}{{ '\\n' }}")
    path = build_tiny_model(tmp_path / "tok", template)
    turn_end = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<|system|>")
    VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(max_tokens=4))
    assert calls(fake_vllm, "chat")[-1]["stop_token_ids"] is None
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", path)
    VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(max_tokens=4))
    assert calls(fake_vllm, "chat")[-1]["stop_token_ids"] == [turn_end]


def test_close_frees_the_in_process_llm(fake_vllm: Path) -> None:
    """The flow closes the engine before training: the in-process `LLM` must be gone when
    vLLM's cleanup runs, or its GPU memory stays reserved through SFT and GRPO."""
    from thinkwheel.engines.vllm import VLLMEngine

    engine = VLLMEngine("m")
    engine.generate(REQUESTS[:1], SamplingParams(max_tokens=4))
    engine.close()
    assert calls(fake_vllm, "cleanup") == [{"kind": "cleanup", "llms_alive": 0}]
    engine.close()  # twice is harmless: nothing left to free
    assert len(calls(fake_vllm, "cleanup")) == 1


def test_a_prompt_over_the_context_comes_back_empty(fake_vllm: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    """vLLM refuses a whole call for one prompt at or over `max_model_len`: that prompt's
    samples come back empty with finish_reason "context_length" (as from the other engines)
    and the rest are served."""
    from thinkwheel.engines.vllm import VLLMEngine

    try:
        from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", str(build_tiny_model(tmp_path / "tok", TEMPLATE_PLAIN)))
    long = "What is " + " + ".join(["1"] * 200) + "?"
    engine = VLLMEngine("m", max_model_len=64)
    got = engine.generate([REQUESTS[0], long, REQUESTS[1]], SamplingParams(n=2, max_tokens=4))
    assert [c.finish_reason for c in got[1]] == ["context_length"] * 2
    assert [c.text for c in got[1]] == ["", ""]
    assert got[0][0].text.startswith("What is 1 + 1?") and got[2][0].text.startswith("What is 2 + 2?")
    assert calls(fake_vllm, "chat")[-1]["n_requests"] == 2
    greedy = engine.generate([long], SamplingParams(n=3, temperature=0.0, max_tokens=4))
    assert [c.finish_reason for c in greedy[0]] == ["context_length"] * 3


def test_think_tags_marked_special_are_kept(fake_vllm: Path, tmp_path: Path, monkeypatch) -> None:
    """vLLM decodes without special tokens by default: with `<think>`/`</think>` marked special
    every sample lost its tags. Then the engine decodes with special tokens and drops the
    others' text itself; with plain-text tags it leaves vLLM's decoding alone."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from thinkwheel.engines.vllm import VLLMEngine

    try:
        from test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import TEMPLATE_PLAIN, build_tiny_model
    path = build_tiny_model(tmp_path / "tok", TEMPLATE_PLAIN)
    said = "<think>2+2</think> 4<|end|>"
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", str(path))
    plain = VLLMEngine("m").generate([said], SamplingParams(max_tokens=4))[0][0].text
    assert plain.startswith("<think>2+2</think> 4|")  # plain-text tags: vLLM's decoding as is
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")]})
    tok.save_pretrained(tmp_path / "special")
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", str(tmp_path / "special"))
    got = VLLMEngine("m").generate([said], SamplingParams(max_tokens=4))[0][0].text
    assert got.startswith("<think>2+2</think> 4|") and "<|end|>" not in got


def test_a_model_without_a_chat_template_is_prompted_as_the_hf_engine_prompts_it(
        fake_vllm: Path, tmp_path: Path, monkeypatch) -> None:
    """vLLM's chat() refuses a model with no chat template, so a base model's round crashed on
    vLLM where the transformers engine joins the turns one per line: the engine now sends
    that text's token ids itself."""
    from transformers import AutoTokenizer

    from thinkwheel.chat_template import render_prompt
    from thinkwheel.engines.vllm import VLLMEngine

    try:
        from test_train_sft import build_tiny_model
    except ImportError:  # tests/ imported as a package
        from tests.test_train_sft import build_tiny_model
    path = build_tiny_model(tmp_path / "base", None)
    monkeypatch.setenv("FAKE_VLLM_TOKENIZER", str(path))
    got = VLLMEngine("m").generate(REQUESTS[:1], SamplingParams(n=2, max_tokens=4))
    assert len(got[0]) == 2 and got[0][0].text.startswith("What is 1 + 1?")
    tok = AutoTokenizer.from_pretrained(path)
    want = tok(render_prompt(tok, [{"role": "user", "content": REQUESTS[0]}]),
               add_special_tokens=False)["input_ids"]
    assert calls(fake_vllm, "generate")[-1]["prompt_token_ids"] == [want]


def test_data_parallel_replicas_exit_with_the_program(fake_vllm: Path, tmp_path: Path) -> None:
    """Replicas cannot be daemons (vLLM starts a child in each); one left open must still not
    keep the program from exiting: multiprocessing joins such children at exit."""
    import subprocess

    code = ("import os; os.environ['CUDA_VISIBLE_DEVICES'] = '0,1'\n"
            "from thinkwheel.engines.vllm import VLLMEngine\n"
            "from thinkwheel.engines.base import SamplingParams\n"
            "e = VLLMEngine('m', data_parallel_size=2)\n"
            "print(len(e.generate(['What is 1 + 1?'], SamplingParams(max_tokens=8))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-2000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dies", ["0", "1"])
def test_a_replica_that_dies_while_starting_is_an_error_not_a_hang(fake_vllm: Path, monkeypatch,
                                                                    dies) -> None:
    """The parent kept the last replica's end of its pipe open, so that replica's death went
    unseen and the run waited forever; the first one's raised a bare EOFError."""
    from thinkwheel.engines.vllm import VLLMEngine

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("FAKE_VLLM_DIE_ON", dies)
    with pytest.raises(RuntimeError, match="a vLLM replica failed to start: the process died"):
        VLLMEngine("m", data_parallel_size=2)


def test_only_a_tokenizer_without_a_template_is_prompted_by_token_ids(fake_vllm: Path) -> None:
    """vLLM's Mistral tokenizer has no chat_template attribute at all, yet chat() renders for
    it: it must not be taken for a base model."""
    import types

    from thinkwheel.engines.vllm import plain_tokenizer

    def llm(tok):
        return types.SimpleNamespace(get_tokenizer=lambda: tok)

    base = types.SimpleNamespace(chat_template=None)
    assert plain_tokenizer(llm(base)) is base
    assert plain_tokenizer(llm(types.SimpleNamespace(chat_template="{{ x }}"))) is None
    assert plain_tokenizer(llm(types.SimpleNamespace(IS_MISTRAL_TOKENIZER=True))) is None
    assert plain_tokenizer(llm(types.SimpleNamespace())) is None
