"""The run configuration: pydantic models loaded from YAML. Every default lives here.

Unknown keys are errors (a typo must never silently fall back to a default), and every
load error is a one-line `ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A field added with a default that keeps the old behaviour: left at that default, it stays out
# of its section's hash, so upgrading does not redo finished stages of a run. Only for a field
# when it is added; marking an existing field changes the hashes of runs already made.
ADDITIVE: dict[str, Any] = {"additive": True}
# A field that changes how a stage runs, never what it makes (how often training saves a
# checkpoint): never hashed, so changing it does not redo finished stages.
OPERATIONAL: dict[str, Any] = {"operational": True}
# An operational field that stage hashes covered before it was found to be one (where the
# servers are, how many calls are in flight): hashed as its default whatever its value, so runs
# made before keep their hashes and adding a server to a run in progress redoes nothing.
SERVING: dict[str, Any] = {"operational": "as_default"}
CHECKPOINT_MINUTES = 30.0  # how often training saves a checkpoint to resume from


def hashed(section: BaseModel) -> dict[str, Any]:
    """What of `section` a stage's config hash covers (additive and operational fields aside),
    in the sections inside it too (`filters.quality`, `train.grpo`)."""
    data = section.model_dump(mode="json")
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = field.get_default(call_default_factory=True)
        value = getattr(section, name)
        if extra.get("operational") == "as_default":
            data[name] = default
        elif extra.get("operational") or (extra.get("additive") and value == default):
            data.pop(name, None)
        elif isinstance(value, BaseModel):
            data[name] = hashed(value)
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            data[name] = [hashed(v) if isinstance(v, BaseModel) else d for v, d in zip(value, data[name], strict=True)]
    return data


class EngineConfig(_Section):
    kind: Literal["hf", "vllm", "openai"] = "hf"
    model: str = "bundled"  # "bundled" = thinkwheel/assets/model; else a local path or model id
    # how a model is spread over the hardware, not what it says: lowered after an out-of-memory
    # crash, they must not throw away every finished shard and round (SERVING: not hashed)
    # hf
    batch_size: int = Field(64, ge=1, json_schema_extra=SERVING)
    device: str = "cpu"
    # torch's names (transformers) and vLLM's ("half", "float"); a typo failed after Prefect started
    dtype: Literal["auto", "float32", "float16", "bfloat16", "half", "float"] = "auto"
    # vllm
    tensor_parallel_size: int = Field(1, ge=1, json_schema_extra=SERVING)
    data_parallel_size: int = Field(1, ge=1, json_schema_extra=SERVING)
    enable_prefix_caching: bool = Field(True, json_schema_extra=SERVING)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, json_schema_extra=SERVING)
    max_model_len: int | None = Field(None, ge=1)  # None: the model's own; 0 failed inside vLLM
    # an adapter folder vLLM applies to engine.model (not to a round's retrained model); hf
    # and a server never read it, so another kind refuses it rather than ignore it
    lora_path: str | None = None
    # openai: one server, or several serving the same model (calls spread over them; one that
    # fails is retried on the others). The key is read from api_key_env, never from the file.
    base_url: str | list[str] = Field("http://127.0.0.1:8000/v1", json_schema_extra=SERVING)
    api_key_env: str = Field("OPENAI_API_KEY", json_schema_extra=SERVING)
    concurrency: int = Field(16, ge=1, json_schema_extra=SERVING)  # calls in flight per server
    # 10 retries back off for about two minutes in all: a per-minute rate limit outlasted six
    max_retries: int = Field(10, ge=0, json_schema_extra=SERVING)
    # per call: a long reasoning trace on a busy server takes minutes (openai's client waits 600 s)
    timeout_s: float = Field(600.0, gt=0, json_schema_extra=SERVING)
    server_supports_n: bool = True

    @model_validator(mode="after")
    def _some_server(self) -> EngineConfig:
        if not self.base_urls():
            raise ValueError("base_url: give one server URL or a list of them")
        return self

    @field_validator("lora_path")
    @classmethod
    def _lora_on_vllm(cls, lora_path: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if lora_path and kind != "vllm":
            raise ValueError(
                f"only engine.kind vllm applies an adapter, not {kind}: merge it into its base "
                "(peft's merge_and_unload) and give that as engine.model"
                + (", or serve it (vllm serve --lora-modules NAME=PATH) and give NAME"
                   if kind == "openai" else ""))
        return lora_path

    def base_urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
    # merged into every request body: server options the sampling section has no key for, e.g.
    # {chat_template_kwargs: {enable_thinking: true}, top_k: 20, repetition_penalty: 1.05}
    extra_body: dict[str, Any] = Field(default_factory=dict, json_schema_extra=ADDITIVE)


Level = Annotated[int, Field(ge=1, le=5)]


class ProceduralMix(_Section):
    """One slice of the procedural task budget: these families, this many tasks per level."""

    families: list[str] = Field(default_factory=lambda: ["all"])
    per_family: int = Field(32, ge=0)
    difficulty: Level | list[Level] = 1
    # the first round that draws this slice (a curriculum: harder levels join once the easy
    # ones are learned, so a later round trains on tasks no earlier round had); 0 = every round
    from_round: int = Field(0, ge=0, json_schema_extra=ADDITIVE)


class ProceduralConfig(ProceduralMix):
    per_family: int = Field(32, ge=0)  # per difficulty level
    # one level, or several (per_family tasks at each): tasks one level up keep a family in the
    # training data when its easy level is used up by the held-out split
    difficulty: Level | list[Level] = Field(default_factory=lambda: [1, 2])
    # when set, replaces families/per_family/difficulty: a budget per family group, e.g. many
    # easy math tasks (where the model's pass rate is low) and a few code tasks at two levels
    mix: list[ProceduralMix] = Field(default_factory=list)
    seed: int = 1234

    @model_validator(mode="after")
    def _mix_or_single_budget(self) -> ProceduralConfig:
        """A key that mix overrides must not be silently ignored (`per_family: 0` for your
        tasks only, under a mix, would still generate the mix)."""
        default = ProceduralConfig.model_construct()
        moved = [k for k in ("families", "per_family", "difficulty", "from_round")
                 if getattr(self, k) != getattr(default, k)]
        if self.mix and moved:
            raise ValueError(
                f"mix replaces {' / '.join(moved)}: set the budget in mix (mix: [] for none), "
                "or drop mix")
        return self

    def plan(self, k: int | None = None) -> list[tuple[list[str], int, int]]:
        """(families, per_family, level) triples, in generation order: round k's, or every
        round's (k None)."""
        return [
            (m.families, m.per_family, level)
            for m in self._started(k)
            for level in (m.difficulty if isinstance(m.difficulty, list) else [m.difficulty])
        ]

    def _started(self, k: int | None) -> list[ProceduralMix]:
        """The slices round k draws (every slice when k is None)."""
        return [m for m in self.mix or [self] if k is None or m.from_round <= k]

    def for_round(self, k: int) -> ProceduralConfig:
        """The budget as round k draws it, hashed as those slices written out would be: a
        slice joining at round 2 does not redo rounds 0 and 1's tasks."""
        if self.from_round == 0 and all(m.from_round == 0 for m in self.mix):
            return self
        on = {"from_round": 0}
        mix = [m.model_copy(update=on) for m in self._started(k)]
        if not mix:  # nothing has started: an empty mix would fall back to the single budget
            return self.model_copy(update={"mix": [], "per_family": 0, **on})
        return self.model_copy(update={"mix": mix} if self.mix else on)


class SelfInstructConfig(_Section):
    enabled: bool = False
    num_tasks: int = Field(16, ge=0)
    seed_in_context: int = 6
    generated_in_context: int = 2
    min_words: int = 3
    max_words: int = 150
    rouge_threshold: float = 0.7
    template: str | None = None  # path to a user prompt template file
    attempts_per_task: int = Field(4, ge=1)  # generation budget = num_tasks * this
    banned_words: list[str] = Field(  # Self-Instruct's list: things a text model cannot do
        default_factory=lambda: [
            "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
            "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
            "diagram",
        ]
    )


class EvolInstructConfig(_Section):
    enabled: bool = False
    num_tasks: int = Field(16, ge=0)
    operators: list[str] = Field(
        default_factory=lambda: [
            "add_constraints",
            "deepen",
            "concretize",
            "increase_reasoning",
            "complicate_input",
            "breadth",
        ]
    )
    max_depth: int = 2
    template_dir: str | None = None
    attempts_per_task: int = Field(4, ge=1)  # generation budget = num_tasks * this
    min_words: int = 3
    max_words: int = 150


class ConsensusConfig(_Section):
    # a majority needs two votes: one sample was taken as agreement (1.0), and 0 or fewer
    # dropped every task as having no answer
    samples: int = Field(8, ge=2)
    min_agreement: float = Field(0.5, ge=0, le=1)
    # Code tasks without tests (generators/codet.py): completions asking the engine for tests
    # (0 drops such tasks), distinct tests kept per task, and the fewest the agreed solutions
    # must pass; the prompt template file to use instead of the bundled one.
    test_samples: int = Field(4, ge=0)
    max_tests: int = Field(10, ge=1)
    min_tests: int = Field(2, ge=1)
    tests_template: str | None = None

    @model_validator(mode="after")
    def _min_tests_can_be_kept(self) -> ConsensusConfig:
        if self.min_tests > self.max_tests:  # no task could keep enough: all were dropped
            raise ValueError(f"min_tests ({self.min_tests}) is more than max_tests "
                             f"({self.max_tests}), the tests a task keeps")
        return self


TASK_FIELDS = ("prompt", "reference", "tests", "domain", "family", "difficulty", "verifier", "meta")


class TaskFilesConfig(_Section):
    """Tasks you bring: JSONL / JSON / parquet files or `datasets.save_to_disk` folders, one
    task per row. A row needs a `prompt`; `reference` (math) or `tests` (code) make it
    verifiable, and `verifier` may name a plugin ("module:callable"). Relative paths are read
    from the working directory."""

    paths: list[str] = Field(default_factory=list)
    # our field -> your column, e.g. {prompt: question, reference: answer}
    columns: dict[str, str] = Field(default_factory=dict)
    # for rows that do not say: e.g. domain: math for word problems, verifier: "mypkg:check"
    domain: str | None = None
    verifier: str | None = None

    @model_validator(mode="after")
    def _known_fields(self) -> TaskFilesConfig:
        if bad := sorted(set(self.columns) - set(TASK_FIELDS)):
            raise ValueError(f"columns: unknown field {bad[0]!r}; fields: {', '.join(TASK_FIELDS)}")
        return self


class GenerateTasksConfig(TaskFilesConfig):
    # every row each round (ReST-EM re-samples the same prompts), or a fresh seeded draw of
    # this many per round
    per_round: int | None = Field(None, ge=1)
    seed: int = 0


class GenerateConfig(_Section):
    # your own tasks, sampled each round next to the procedural ones (rows without a reference
    # get one by consensus, like Self-Instruct's); set procedural.per_family: 0 for yours only
    tasks: GenerateTasksConfig = Field(default_factory=GenerateTasksConfig)
    procedural: ProceduralConfig = Field(default_factory=ProceduralConfig)
    self_instruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    evol_instruct: EvolInstructConfig = Field(default_factory=EvolInstructConfig)
    consensus: ConsensusConfig = Field(default_factory=ConsensusConfig)
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(96, ge=1)

    def for_round(self, k: int) -> GenerateConfig:
        """These settings as round k applies them (`procedural.mix[].from_round`)."""
        p = self.procedural.for_round(k)
        return self if p is self.procedural else self.model_copy(update={"procedural": p})


class SamplingConfig(_Section):
    n: int = Field(16, ge=1)  # candidates per task
    temperature: float = Field(0.8, ge=0, le=2)  # [0, 2]: the OpenAI API's and vLLM's range
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(160, ge=1)
    seed: int = 0
    # tasks per resumable shard: how much a crash loses, not what is sampled (the shard keys
    # hold it; SERVING keeps it out of the stage hashes, as its default for runs made before)
    shard_size: int = Field(32, ge=1, json_schema_extra=SERVING)
    keep_per_task: int = Field(4, ge=1)  # at most K verified candidates per task (ReST-EM)
    # > 0: a task whose every sample states false arithmetic gets one more candidate, a sample
    # continued from its first false step with the value corrected, at most this many times
    # (generators/repair.py); 0 (the default, not hashed) samples as before
    repair: int = Field(0, ge=0, json_schema_extra=ADDITIVE)
    # with repair: a procedural task with worked steps (the column families, linear_equation)
    # is also repaired at its first step that is not the worked one (a true step off the
    # algorithm: `8-0=8` where a borrow makes it `7-0=7`), the steps the step check
    # (filters.quality.check_steps) asks for, and a column task's at a conclusion that is not
    # the worked one (`So 177 * 6 = 1062` for 17 * 6, after right steps)
    repair_steps: bool = Field(False, json_schema_extra=ADDITIVE)
    grpo_pass_band: tuple[float, float] = (0.2, 0.8)  # open-r1's band for GRPO prompts

    @model_validator(mode="after")
    def _band_in_order(self) -> SamplingConfig:
        lo, hi = self.grpo_pass_band
        if not 0 <= lo <= hi <= 1:  # [0.9, 0.1] took no task, so GRPO had no prompts
            raise ValueError(f"grpo_pass_band must be [low, high] within [0, 1], got {[lo, hi]}")
        if self.repair_steps and not self.repair:  # it would silently repair nothing
            raise ValueError("sampling.repair_steps needs sampling.repair > 0, the repairs a "
                             "trace may have (e.g. 4)")
        return self
    # strings that end a generation in sampling, consensus labelling and eval (the text stops
    # before them), e.g. "\nuser" for a base model that would write the next turn itself; an
    # empty string would stop every text before its first character
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, json_schema_extra=ADDITIVE)


class VerifyConfig(_Section):
    math_timeout_s: float = Field(5.0, gt=0)
    code_timeout_s: float = Field(10.0, gt=0)
    workers: int = Field(2, ge=1, json_schema_extra=SERVING)
    percent_policy: Literal["fraction", "number", "either"] = "fraction"
    # "module:callable", or a "module" whose @register("name") verifiers tasks name
    plugins: list[str] = Field(default_factory=list)
    # > 0: a candidate passes only in the <think> format too (verify, GRPO pass rates, eval), and
    # its score is (1 - w) * the verifier's + w * the format's; filters.quality.require_think
    # drops the badly formatted from the SFT set either way
    format_weight: float = Field(0.0, ge=0, le=1)

    def options(self) -> dict[str, Any]:
        """What every verifier call of a run gets (verify stage, consensus, eval, GRPO rewards,
        verl's reward): the plugins too, so a fresh process (a resumed run, `train grpo`, a verl
        worker) knows the verifiers a plugin module registers. No plugins adds no key, which
        keeps the stage keys of runs without them."""
        return {"workers": self.workers, "math_timeout_s": self.math_timeout_s,
                "code_timeout_s": self.code_timeout_s, "percent_policy": self.percent_policy,
                **({"plugins": list(self.plugins)} if self.plugins else {})}


class DedupConfig(_Section):
    enabled: bool = True
    field: Literal["prompt", "reasoning", "both"] = "reasoning"
    threshold: float = Field(0.7, gt=0, le=1)
    num_perm: int = 128
    shingle: Literal["word", "char"] = "word"
    ngram: int = 5
    mask_numbers: bool = False
    mask_names: bool = False  # procedural data: same template with new names must collide
    bands: int | None = None  # LSH bands; None = chosen for >= 0.99 recall at the threshold
    confirm: Literal["exact", "estimate"] = "exact"  # exact shingle Jaccard decides the pair


class BenchmarkSource(_Section):
    name: str
    path: str  # JSONL, parquet or a `datasets` folder; "builtin:humaneval" for the bundled one
    field: str = "prompt"


class DecontamConfig(_Section):
    enabled: bool = True
    benchmarks: list[BenchmarkSource] = Field(
        default_factory=lambda: [BenchmarkSource(name="humaneval", path="builtin:humaneval")]
    )
    ngram: int = 13
    min_overlap: float = Field(0.5, gt=0, le=1)
    fuzzy_threshold: float | None = Field(0.5, gt=0, le=1)  # MinHash pass; None = off
    fuzzy_ngram: int = 3
    min_item_words: int = 5


class QualityConfig(_Section):
    enabled: bool = True
    min_answer_chars: int = 1
    max_completion_chars: int = 8000
    max_repeat_ngram_ratio: float = 0.5
    require_think: bool = True
    min_reasoning_chars: int = 0
    repeat_ngram: int = 3
    max_garbage_ratio: float = Field(0.2, ge=0, le=1)
    answer_leak_min_chars: int = 3
    # drop traces that state a false `expr = value` (a right answer reached by wrong steps)
    check_arithmetic: bool = True
    # drop a procedural task's trace that does not state its worked steps (filters/steps.py):
    # true steps that do not lead to the answer; for the column-arithmetic families and
    # linear_equation (procedural.worked_steps). The bundled model fuses a multiplication's
    # carry into one step (`4*4+1=17`, the worked steps: `4*4=16, 16+1=17`): without
    # sampling.repair_steps to rewrite them, its multiplication traces with a carry are dropped
    check_steps: bool = Field(False, json_schema_extra=ADDITIVE)


class FilterConfig(_Section):
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)


class ExportConfig(_Section):
    system_prompt: str = "You are a careful assistant. Think inside <think></think>, then answer."
    # parquet is written whatever this says (the trainers and `inspect` read it); the rest are copies
    formats: list[Literal["parquet", "hf", "jsonl", "verl"]] = Field(default_factory=lambda: ["parquet", "hf"])
    verified_only: bool = True
    # DPO pairs per task (a kept sample vs a failed one of the same task); 0 = no dpo split
    dpo_pairs_per_task: int = Field(1, ge=0)
    # the dataset card's license; unset: apache-2.0 for data made from our generators, "other"
    # once generate.tasks brings yours (its terms are yours to state)
    license: str | None = None

    def card_license(self, own_tasks: bool) -> str:
        return self.license or ("other" if own_tasks else "apache-2.0")


class _LoRA(_Section):
    lora: bool = False  # PEFT LoRA adapters, merged into the saved model
    lora_r: int = 16
    lora_alpha: int = 32


class SFTConfig(_LoRA):
    enabled: bool = True
    trainer: Literal["auto", "trl", "unsloth"] = "auto"
    max_steps: int = Field(300, ge=1)
    # round k's cap is max_steps x max_steps_growth^k: an accumulating round trains on more
    # data than the last, and a fixed cap sees each sample fewer times (STaR grows its steps
    # 20% a round, Zelikman et al. 2022)
    max_steps_growth: float = Field(1.0, ge=1.0, json_schema_extra=ADDITIVE)
    epochs: float = 2.0
    learning_rate: float = 3e-4
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = 384
    assistant_only_loss: bool = True
    seed: int = 0
    load_in_4bit: bool = True  # unsloth + lora only: QLoRA-style 4-bit base weights

    def for_round(self, k: int) -> SFTConfig:
        """The settings round k trains with: its grown step cap, and no growth left to apply,
        so it hashes as the same settings written out would."""
        if self.max_steps_growth == 1.0:
            return self
        steps = round(self.max_steps * self.max_steps_growth**k)
        return self.model_copy(update={"max_steps": steps, "max_steps_growth": 1.0})


class GRPOTrainConfig(_LoRA):
    """GRPO after SFT. With `lora`, the policy trains adapters (merged into the saved model);
    RL's few bits per episode fit in a low rank, at about 10x full fine-tuning's learning rate
    (Schulman et al. 2025, "LoRA Without Regret")."""

    enabled: bool = False
    max_steps: int = Field(20, ge=1)
    learning_rate: float = 1e-5
    num_generations: int = Field(8, ge=2)
    max_completion_length: int = 160
    # TRL 1.16's loss formulations (an older TRL knows fewer): a typo is a config error at load,
    # not TRL's "Unknown loss type" at the first GRPO step, a round of sampling and SFT later
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    beta: float = 0.0
    batch_size: int = 8
    temperature: float = Field(1.0, gt=0, le=2)
    format_weight: float = 0.2
    # the correctness reward is 0 when the reasoning states false arithmetic (lucky guesses)
    check_arithmetic: bool = True
    use_vllm: bool = False
    # vLLM colocated with training (use_vllm): its share of the GPU (TRL's default 0.3) and its
    # context (None: the model's), for a smaller GPU or a long-context model
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, json_schema_extra=SERVING)
    vllm_max_model_length: int | None = Field(None, ge=1, json_schema_extra=SERVING)
    seed: int = 0


class DPOTrainConfig(_LoRA):
    """DPO on the exported dpo split (kept vs failed samples of one task), after SFT."""

    enabled: bool = False
    max_steps: int = Field(100, ge=1)
    learning_rate: float = 1e-6  # TRL's default
    beta: float = 0.1
    # > 0 adds an NLL term on the chosen answer (Iterative RPO, Pang et al. 2024)
    nll_weight: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = 384
    seed: int = 0


class TrainConfig(_Section):
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOTrainConfig = Field(default_factory=DPOTrainConfig)
    grpo: GRPOTrainConfig = Field(default_factory=GRPOTrainConfig)
    # where round k's training starts: the previous round's model, or the base model (STaR)
    strategy: Literal["continue", "from_base"] = "continue"
    # train on every round's curated data so far (replay), or on this round's only;
    # None = accumulate for from_base, not for continue (the measured defaults); STaR and ReST-EM
    # train the base model on the latest round's samples only, which is from_base with False
    accumulate: bool | None = None
    # SFT, DPO and GRPO save a checkpoint this often (only the latest is kept), and a re-run
    # of a crashed run resumes from it; None: never
    checkpoint_minutes: float | None = Field(CHECKPOINT_MINUTES, ge=0, json_schema_extra=OPERATIONAL)

    def trainers(self) -> list[tuple[str, _Section]]:
        """The trainers a round runs, in order, each on the last one's model."""
        return [(n, c) for n, c in (("sft", self.sft), ("dpo", self.dpo), ("grpo", self.grpo))
                if c.enabled]

    def accumulates(self) -> bool:
        return self.strategy == "from_base" if self.accumulate is None else self.accumulate

    def for_round(self, k: int) -> TrainConfig:
        """These settings as round k applies them (`sft.max_steps_growth`)."""
        sft = self.sft.for_round(k)
        return self if sft is self.sft else self.model_copy(update={"sft": sft})


# The bundled model's pretraining left out the prompts of these many held-out tasks per family,
# drawn with EvalConfig's default seed and difficulty; a larger or different split would test it
# on tasks it was trained on. Prompts, not tasks: every held-out code task is solved in its
# corpus under other function names, so on it the code families measure what training makes
# it forget, the math families what it learns (README, "What the held-out split measures").
BUNDLED_HELD_OUT = 40


class EvalConfig(_Section):
    # the procedural held-out split's families; [] for none (then `tasks` is the eval set)
    families: list[str] = Field(default_factory=lambda: ["all"])
    per_family: int = Field(40, ge=1)  # at most BUNDLED_HELD_OUT with the bundled model
    difficulty: Level = 1
    seed: int = 999_999  # the held-out split's seed; training seeds never use it
    k: int = Field(1, ge=1)
    max_tokens: int = Field(160, ge=1)
    temperature: float = Field(0.8, ge=0, le=2)  # sampling for pass@k / maj@k when k > 1
    # your own held-out tasks, scored next to the procedural split (per family: a row's
    # `family`, else the file's name); each needs a reference (math) or tests (code), and no
    # round trains on them
    tasks: TaskFilesConfig = Field(default_factory=TaskFilesConfig)

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvalConfig:
        if not self.families and not self.tasks.paths:
            raise ValueError("families is empty and tasks.paths too: nothing to evaluate")
        return self


class RunConfig(_Section):
    name: str = "default"
    rounds: int = Field(2, ge=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _bundled_model_is_evaluated_on_tasks_it_never_saw(self) -> RunConfig:
        e, d = self.eval, EvalConfig()
        if self.engine.model == "bundled" and (
            e.per_family > BUNDLED_HELD_OUT or (e.seed, e.difficulty) != (d.seed, d.difficulty)
        ):
            raise ValueError(
                f"with the bundled model, eval.per_family is at most {BUNDLED_HELD_OUT} and "
                f"eval.seed / eval.difficulty keep their defaults ({d.seed}, {d.difficulty}): its "
                "pretraining left out only that held-out split; a model of your own has no limit"
            )
        return self

    @model_validator(mode="after")
    def _served_model_is_not_retrained(self) -> RunConfig:
        """Round k+1 samples from round k's trained model, which a remote server cannot load:
        say so at load time, not after the first round's training."""
        if self.engine.kind == "openai" and (on := [n for n, _ in self.train.trainers()]):
            raise ValueError(
                "engine.kind 'openai' samples from a served model, which the flow cannot swap for "
                f"a round's trained model: set {', '.join(f'train.{n}.enabled' for n in on)}: "
                "false (then `thinkwheel train sft <run>/round-0/curated`), or use engine.kind "
                "vllm or hf"
            )
        return self

    @model_validator(mode="after")
    def _repair_runs_on_a_local_engine(self) -> RunConfig:
        """Step repair continues a reply mid-thought: the local engines send the prompt as the
        transformers engine renders it, a server renders the turn through its template (Qwen3's
        puts an empty thought before it, R1-Distill's refuses one past `</think>`, OpenAI's API
        refuses vLLM's `continue_final_message`)."""
        if self.sampling.repair and self.engine.kind == "openai":
            raise ValueError("sampling.repair needs engine.kind hf or vllm: a served model renders "
                             "a continued reply through its chat template, which can change or "
                             "refuse it; set sampling.repair: 0 (and repair_steps: false) "
                             "for a served model")
        return self

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections: a stage re-runs only when its own config changed."""
        data = {s: hashed(getattr(self, s)) for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# pydantic names the member of a union a value failed in its location: not a key of ours
_UNION_TAG = re.compile(r"^(constrained-\S+|[a-z-]+\[.*\]|int|str|float|bool|none)$")


def _keys(loc: tuple[Any, ...]) -> list[str]:
    return [str(p) for p in loc if not _UNION_TAG.match(str(p))]


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(_keys(loc)) or "<root>"


def _one_line(err: ValidationError) -> str:
    errors = err.errors()
    key = _keys(errors[0]["loc"])
    # a union gives one error per member for the same key: the one that got furthest names
    # the bad item (`difficulty.1`, not the int member's complaint about the whole list)
    first = max((e for e in errors if _keys(e["loc"])[: len(key)] == key),
                key=lambda e: len(_keys(e["loc"])))
    where = _where(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    msg = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a rule across sections: the message says which keys
        return msg
    if first["type"] == "value_error":  # a section's own rule: its message names the field
        return f"'{where}': {msg}"
    return f"bad value for '{where}': {first['msg']} (got {first.get('input')!r})"


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of keys, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


# The recipe `thinkwheel run` uses when no --config is given (a CPU demo sized in minutes).
DEFAULT_RUN = Path(__file__).parent / "configs" / "default.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a repeated key: a `train:` block appended to a starter config
    replaced the recipe's whole section with the defaults. A repeated key is an error here."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:  # before merging: a key may override what `<<` brings
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if first is not key_node:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                  f"(first at line {first.start_mark.line + 1}): merge the two")
        return super().construct_mapping(node, deep=deep)


def _read_yaml(p: Path) -> Any:
    if p.is_dir():
        raise ConfigError(f"{p} is a folder, not a config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:  # bytes: PyYAML reads UTF-8, and UTF-16 by its BOM (PowerShell's `>` writes that)
        return yaml.load(p.read_bytes(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror or err}") from None
    except ConfigError as err:  # a duplicate key
        raise ConfigError(f"{p}: {err}") from None
    except yaml.reader.ReaderError as err:  # its own str is two lines
        raise ConfigError(f"{p}: not UTF-8 or UTF-16 text ({err.reason} at position "
                          f"{err.position}): save it as UTF-8") from None


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Load YAML (or the defaults when path is None) and apply top-level overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = _read_yaml(p) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: invalid YAML{at}: {getattr(err, 'problem', err)}") from None
    data = dict(data) if isinstance(data, dict) else data
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(data)
