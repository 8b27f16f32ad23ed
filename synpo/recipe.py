"""The recipe schema: the one place every option of a synpo run is defined.

A recipe is YAML. `load_recipe(path, overrides)` applies `--set a.b=value` overrides,
validates everything (unknown keys, types, ranges, files that must exist) and raises one
UserError listing every problem as `file: yaml.path: message`. Nothing runs before that.

Paths: relative paths are relative to the current directory; `toy:NAME` names a file or
directory shipped in synpo/toy/assets (the embedded tiny model and toy data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synpo.errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def resolve_path(path: str) -> str:
    """`toy:NAME` -> the shipped asset; anything else unchanged."""
    if path.startswith("toy:"):
        from synpo.toy import ASSETS

        name = path[4:]
        candidates = [ASSETS / name, ASSETS / "data" / name]
        return str(next((c for c in candidates if c.exists()), candidates[0]))
    return path


# ---- model and data -------------------------------------------------------------------


class ModelConfig(Section):
    path: str = "toy:tiny-llama"
    """Local directory or hub id of the SFT checkpoint θ0."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str | None = None
    """A Jinja chat template (inline, or a file path) replacing the tokenizer's own."""
    trust_remote_code: bool = False


class SeedData(Section):
    path: str = "toy:seed.jsonl"
    format: Literal["jsonl", "alpaca", "sharegpt", "hf"] = "jsonl"
    prompt_field: str = "prompt"
    response_field: str = "response"
    split: str = "train"
    limit: PositiveInt | None = None


class CorpusData(Section):
    path: str = "toy:corpus.jsonl"
    format: Literal["text", "jsonl", "parquet", "hf"] = "jsonl"
    text_field: str = "text"
    split: str = "train"
    limit: PositiveInt | None = None
    """Read at most this many paragraphs (a corpus is streamed, never loaded whole)."""


class DataConfig(Section):
    seed: SeedData = SeedData()
    corpus: CorpusData = CorpusData()


# ---- engines and scorers --------------------------------------------------------------


class EngineConfig(Section):
    kind: Literal["hf", "vllm", "openai"] = "hf"
    batch_size: PositiveInt = 64
    """hf: sequences per generate call."""
    shard_size: PositiveInt = 256
    """Requests per shard file: a killed stage loses at most one shard."""
    # vllm
    python: str | None = None
    """vllm: a Python executable of a separate vLLM environment (run as a child process)."""
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_model_len: PositiveInt | None = None
    # openai
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    concurrency: PositiveInt = 8
    max_retries: int = Field(default=6, ge=0)
    timeout: PositiveFloat = 120.0

    @model_validator(mode="after")
    def _openai_needs_url(self):
        if self.kind == "openai" and not self.base_url:
            raise ValueError("base_url: required when kind is openai")
        return self


class SamplingConfig(Section):
    temperature: float = Field(default=0.7, ge=0)
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_new_tokens: PositiveInt = 64


class ScorerConfig(Section):
    kind: Literal["toy", "reward_model", "pairwise", "judge"] = "toy"
    path: str | None = None
    """reward_model / pairwise: model directory or hub id."""
    batch_size: PositiveInt = 16
    max_length: PositiveInt = 2048
    trust_remote_code: bool = False
    judge: EngineConfig | None = None
    """judge: the OpenAI-compatible endpoint of the judging LLM."""
    template: str = "judge_score.jinja"

    @model_validator(mode="after")
    def _needs(self):
        if self.kind in ("reward_model", "pairwise") and not self.path:
            raise ValueError(f"path: required when kind is {self.kind}")
        if self.kind == "judge" and self.judge is None:
            raise ValueError("judge: required when kind is judge")
        return self


# ---- training -------------------------------------------------------------------------


class LoraConfig(Section):
    r: PositiveInt = 8
    alpha: PositiveFloat = 16
    dropout: Fraction = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class PeriodicConfig(Section):
    stage_steps: PositiveInt | None = None
    """Fold the adapter into the base weights every this many optimizer steps ..."""
    stages: PositiveInt | None = None
    """... or split training into this many equal stages (give one of the two)."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Fraction of the adapter's update kept in the adapter at a fold (0 = plain fold)."""
    restart_warmup: bool = False

    @model_validator(mode="after")
    def _one_of(self):
        if (self.stage_steps is None) == (self.stages is None):
            raise ValueError("give exactly one of stage_steps and stages")
        return self


class TrainConfig(Section):
    """Options shared by every training stage (prompt generator, improver, policy)."""

    adapter: Literal["full", "lora", "periodic_lora"] = "lora"
    lora: LoraConfig = LoraConfig()
    periodic: PeriodicConfig | None = None
    quantization: Literal["4bit", "8bit"] | None = None
    learning_rate: PositiveFloat = 1e-4
    epochs: PositiveFloat = 1.0
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 16
    gradient_accumulation_steps: PositiveInt = 1
    warmup_ratio: Fraction = 0.1
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: PositiveInt = 512
    gradient_checkpointing: bool = False
    checkpoint_steps: PositiveInt | None = None
    """Save a resumable Trainer checkpoint every this many steps (a killed stage resumes from it)."""
    accelerate_config: str | None = None
    """Launch this stage with `accelerate launch --config_file FILE` as a child process."""
    num_processes: PositiveInt | None = None

    @model_validator(mode="after")
    def _periodic(self):
        if self.adapter == "periodic_lora" and self.periodic is None:
            self.periodic = PeriodicConfig(stages=4)
        if self.quantization and self.adapter != "lora":
            raise ValueError("quantization: QLoRA needs adapter lora (a quantized base cannot take "
                             "full updates or PeriodicLoRA folds)")
        return self


class PolicyTrainConfig(TrainConfig):
    """Preference optimisation of the policy (step 6)."""

    loss: Literal["simpo", "dpo"] = "simpo"
    beta: PositiveFloat = 2.0
    gamma: float = Field(default=1.6, ge=0)
    """SimPO's target reward margin γ (TRL's simpo_gamma)."""
    nll_weight: float = Field(default=0.0, ge=0)
    """Weight of an NLL term on the chosen answer (CPO's cpo_alpha; DPO adds TRL's `sft` loss)."""
    start: Literal["initial", "previous"] = "initial"
    """Train θ_t from θ0 on all of D (the paper) or continue from θ_{t-1} on D."""


# ---- the stages -----------------------------------------------------------------------


class PromptGeneratorConfig(Section):
    keywords: PositiveInt = 2
    """Content keywords taken from each seed prompt (the paper: 2)."""
    noise_keywords: int = Field(default=1, ge=0)
    """Keywords taken from another seed prompt (the paper: 1)."""
    train: TrainConfig = TrainConfig(epochs=3, learning_rate=1e-6, batch_size=32)
    num_prompts: PositiveInt = 1000
    """Prompts to sample per round (before filtering)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=128)
    max_prompt_chars: PositiveInt = 2000
    validate_prompts: bool = True
    """Drop prompts the scorer cannot use (the toy checker knows valid tasks)."""
    decontaminate_ngram: PositiveInt = 13
    decontaminate_threshold: Fraction = 0.5
    """Drop a prompt when this fraction of its n-grams occurs in an evaluation set."""
    engine: EngineConfig | None = None


class ImproverConfig(Section):
    gap: float = 0.2
    """τ: keep a seed row when score(gold) - score(π_{t-1} answer) exceeds this (scorer units)."""
    keep_below_gap: Fraction = 0.0
    """Also keep this fraction of the rows at or below the gap (the paper: 0). With an exact
    scorer a right answer ties with gold; without such rows the improver only ever sees
    drafts that must change, and learns to change right ones too."""
    train: TrainConfig = TrainConfig(epochs=3, learning_rate=1e-6, batch_size=32)
    seed_sampling: SamplingConfig = SamplingConfig()
    sampling: SamplingConfig = SamplingConfig()
    """Sampling of the refinement ỹ ~ R_t(x, y_{t-1})."""
    engine: EngineConfig | None = None


class ResponsesConfig(Section):
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig | None = None


class PairsConfig(Section):
    strategy: Literal["synpo", "sampling_ranking"] = "synpo"
    k: Annotated[int, Field(ge=2)] = 4
    """sampling_ranking: samples of π_{t-1} per prompt; best is chosen, worst rejected."""
    gap: float = 0.2
    """τ: keep a pair when score(chosen) - score(rejected) exceeds this (scorer units)."""
    max_repetition: Fraction = 0.5
    """Drop a side whose fraction of repeated n-grams exceeds this."""
    repetition_ngram: PositiveInt = 3
    per_round: PositiveInt = 10000
    """New pairs added to D each round."""


class EvalConfig(Section):
    suites: list[Literal["toy", "alpaca_eval", "arena_hard", "mt_bench"]] = ["toy"]
    limit: PositiveInt | None = None
    """Evaluate a fixed-seed subsample of this many items per suite (quick checks)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=64)
    judge: EngineConfig | None = None
    """The judging LLM for alpaca_eval / arena_hard / mt_bench (OpenAI-compatible)."""
    alpaca_eval_backend: Literal["builtin", "official"] = "builtin"
    data_dir: str | None = None
    """Directory holding the evaluation sets (alpaca_eval/, arena_hard/, mt_bench/)."""
    engine: EngineConfig | None = None


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: PositiveInt | None = None
    """torch threads per process (None: torch's default)."""
    isolate: Literal["auto", "always", "never"] = "auto"
    """Run heavy stages as child processes: always on GPUs (memory is returned between
    stages), never on a CPU (saves ~10 s of imports per stage). auto picks by device."""


class Recipe(Section):
    name: str = "synpo"
    seed: int = 0
    rounds: PositiveInt = 3
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    engine: EngineConfig = EngineConfig()
    scorer: ScorerConfig = ScorerConfig()
    prompt_generator: PromptGeneratorConfig = PromptGeneratorConfig()
    improver: ImproverConfig = ImproverConfig()
    responses: ResponsesConfig = ResponsesConfig()
    pairs: PairsConfig = PairsConfig()
    train: PolicyTrainConfig = PolicyTrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain directory name")
        return v

    def engine_for(self, stage: str) -> EngineConfig:
        own = getattr(self, stage).engine
        return own if own is not None else self.engine


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


def _format_errors(source: str, error: ValidationError) -> list[str]:
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see synpo/recipe.py for the schema)"
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


def _check_files(recipe: Recipe, source: str) -> list[str]:
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
    if recipe.model.chat_template and recipe.model.chat_template.endswith((".jinja", ".j2", ".txt")):
        local("model.chat_template", recipe.model.chat_template, "file")
    local("data.seed.path", recipe.data.seed.path, recipe.data.seed.format)
    local("data.corpus.path", recipe.data.corpus.path, recipe.data.corpus.format)
    if recipe.scorer.kind in ("reward_model", "pairwise"):
        model("scorer.path", recipe.scorer.path)
    for stage in ("prompt_generator", "improver", "responses", "eval"):
        python = recipe.engine_for(stage).python
        if python and not Path(python).exists():
            problems.append(f"{source}: {stage}.engine.python: file does not exist: {python}")
    for field in ("prompt_generator.train", "improver.train", "train"):
        section = recipe.train if field == "train" else getattr(recipe, field.split(".")[0]).train
        if section.accelerate_config and not Path(resolve_path(section.accelerate_config)).exists():
            problems.append(f"{source}: {field}.accelerate_config: file does not exist: {section.accelerate_config}")
    return problems


def load_recipe(path: str | Path | None, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Read, override, validate. Raises UserError with one line per problem."""
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: recipe file does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a recipe is a YAML mapping of sections")
        raw.setdefault("name", p.stem)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError("\n".join(_format_errors(source, e))) from None
    if check_files:
        problems = _check_files(recipe, source)
        if problems:
            raise UserError("\n".join(problems))
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML. The schema holds no secrets (keys live in env vars only)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
