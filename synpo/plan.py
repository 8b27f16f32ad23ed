"""`synpo plan RECIPE --gpus 8xA100-80G`: every stage of a run, its work, and its peak GPU memory.

Nothing is loaded but config files: a model's `config.json` comes from its local directory,
from a preset shipped in `synpo/presets/` (the paper's models, so plans work offline), or
from the hub (config.json only, never weights). A hub id that cannot be reached is an error
that says how to get the file.

Notation: P parameters, w bytes per weight (bf16 2, fp32 4; `model.dtype`, "auto" = the
config's dtype), L layers, h hidden size, i MLP width, V vocabulary, n_kv x d_head the K/V
width, N processes a training stage shards over, GiB = 2^30 bytes.

Parameters (decoders: Llama, Mistral, Qwen, ...; checked exactly against transformers' own
count in the tests):
    P = V·h (embeddings) + V·h (LM head, unless tied) + L·(attention + MLP + 2 norms) + h
    attention = h·q + 2·h·kv + q·h   (q = heads·d_head, kv = n_kv·d_head; + biases if any)
    MLP = 3·h·i gated (SwiGLU), 2·h·i otherwise; × experts (+ router h·E) for MoE
  A sequence-classification model (reward model) has a head of h·labels instead of the LM head.

Generation (vLLM; tensor parallel tp divides weights and cache):
    weights    P·w / tp
    KV cache   2·L·n_kv·d_head·w bytes per token × concurrent sequences × (prompt + new tokens) / tp
               concurrent = min(256 (vLLM's max_num_seqs), generations); hf engine: batch_size × n
    other      2 GiB (CUDA context, activations, sampler)
  vLLM then takes `gpu_memory_utilization` of the GPU and fills what is left with KV cache, so a
  stage fits when the total is under that share; when it is not but one `max_model_len`
  sequence of KV fits, it still runs, with fewer sequences at once (the plan shows about how
  many, and the KV column shows the share it gets).

Training (per GPU; micro-batch B sequences of S = train.max_length tokens; preference
training runs chosen and rejected together, so B = 2·batch_size):
  full fine-tuning
    DeepSpeed     weights 2P, gradients 2P, optimizer 12P (fp32 master copy + Adam m, v);
                  ZeRO-1 shards the optimizer over N, ZeRO-2 also the gradients, ZeRO-3 all
                  three; offload_optimizer/param_device cpu takes that part off the GPU
    FSDP          weights w·P, gradients w·P, optimizer 2·w·P, all sharded over N
    DDP / single  weights w·P, gradients w·P, optimizer 2·w·P (AdamW's m, v in the weights' dtype)
  LoRA / PeriodicLoRA (base frozen; ZeRO-3 / FSDP shard the base over N)
    base          w·P; QLoRA: the blocks' linear weights at 0.516 bytes (4-bit NF4 with
                  double-quantised block scales) or 1 byte (8-bit), the rest at w
    adapter       A = Σ r·(in + out) over the targeted linear layers, kept in fp32 by PEFT:
                  16·A (weights 4, gradients 4, Adam 8)
  loading: without DeepSpeed's zero3_init_flag (and under FSDP) each process loads the whole
    model first (w·P, twice with a DPO reference) before it is sharded; the peak is the larger.
  reference model: DPO with full fine-tuning holds a frozen copy, w·P (sharded under ZeRO-3);
    DPO with LoRA uses the base with the adapter off (0); PeriodicLoRA + DPO precomputes the
    reference log-probs (0); SimPO and SFT have none.
  activations: with gradient checkpointing 2·B·S·h·L (each layer's input) + one layer's
    working set; without, every layer's: B·S·(16h + 8i) bytes per layer (bf16 Llama block
    with fused attention); plus logits B·S·V·6 (bf16 logits and fp32 log-probs)
  other (CUDA context, buffers) 2 GiB.

Scoring (one GPU, in the orchestrating process): weights 2P (bf16; PairRM fp16) + one
layer's working set batch·S·(16h + 8i) (no gradients: layers run one at a time) + 1 GiB;
an LLM judge is remote (0).

These are estimates of the dominant terms, meant to tell 'fits' from 'does not fit' by a
margin; allocator fragmentation and framework buffers add a few GiB in practice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from synpo.errors import UserError
from synpo.recipe import Recipe, TrainConfig, resolve_path

GiB = 2**30
PRESETS = Path(__file__).parent / "presets"
OVERHEAD = 2 * GiB
VLLM_MAX_SEQS = 256
QUANT_BYTES = {"4bit": 0.516, "8bit": 1.0}
ENCODERS = {"bert", "roberta", "deberta", "deberta-v2", "xlm-roberta", "electra"}
NON_GATED = ENCODERS | {"gpt2", "gpt_neox", "opt", "falcon", "gptj", "bloom", "phi"}
EVAL_SIZES = {"alpaca_eval": 805, "arena_hard": 500, "mt_bench": 160}  # mt_bench: 80 questions x 2 turns
LORA_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# ---- architecture from config.json -----------------------------------------------------


@dataclass
class Arch:
    """What the formulas need from a model's config.json."""

    name: str
    source: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = False
    experts: int = 1
    attention_bias: bool = False
    mlp_bias: bool = False
    max_positions: int = 4096
    weight_bytes: int = 2
    classifier: bool = False  # a sequence-classification head instead of the LM head
    labels: int = 1

    @property
    def encoder(self) -> bool:
        return self.model_type in ENCODERS

    @property
    def gated(self) -> bool:
        return self.model_type not in NON_GATED

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each block's linear layers, by their Llama-style names."""
        h, i = self.hidden, self.intermediate
        shapes = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                  "o_proj": (self.q_dim, h), "up_proj": (h, i), "down_proj": (i, h)}
        if self.gated:
            shapes["gate_proj"] = (h, i)
        return shapes

    def block_linear_params(self) -> int:
        """Linear weights of all blocks (what QLoRA quantizes), experts included."""
        shapes = self.linear_shapes()
        attention = sum(a * b for k, (a, b) in shapes.items() if k.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
        mlp = sum(a * b for k, (a, b) in shapes.items() if k in ("gate_proj", "up_proj", "down_proj"))
        return self.layers * (attention + mlp * self.experts)

    @property
    def params(self) -> int:
        h, i, L = self.hidden, self.intermediate, self.layers
        biases = 0
        if self.attention_bias or self.encoder:
            biases += self.q_dim + 2 * self.kv_dim + h
        if self.mlp_bias or self.encoder:
            biases += (2 * i + h if self.gated else i + h) * self.experts
        router = h * self.experts if self.experts > 1 else 0
        norms = (4 if self.encoder else 2) * h  # LayerNorm has a bias, RMSNorm does not
        per_layer_extra = biases + router + norms
        total = self.vocab * h + self.block_linear_params() + L * per_layer_extra
        if self.encoder:
            total += self.max_positions * h + 2 * h  # position embeddings, embedding LayerNorm
        else:
            total += h  # final norm
        if self.classifier:
            total += h * self.labels
        elif not self.tied and not self.encoder:
            total += self.vocab * h
        return total

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_dim * self.weight_bytes


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def arch_from_config(config: dict, name: str, source: str, dtype: str = "auto") -> Arch:
    """An Arch from a config.json dict; raises UserError for a config without the fields needed."""
    if "text_config" in config and "hidden_size" not in config:  # multimodal wrappers
        config = {**config, **config["text_config"]}
    try:
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        arch = Arch(
            name=name, source=source, model_type=config.get("model_type", "?"),
            vocab=config["vocab_size"], hidden=hidden, layers=config["num_hidden_layers"], heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config.get("intermediate_size") or 4 * hidden,
            tied=bool(config.get("tie_word_embeddings", False)),
            experts=config.get("num_local_experts") or config.get("num_experts") or 1,
            attention_bias=bool(config.get("attention_bias", False)), mlp_bias=bool(config.get("mlp_bias", False)),
            max_positions=config.get("max_position_embeddings") or 4096,
        )
    except KeyError as e:
        raise UserError(f"{name}: {source} has no {e.args[0]!r}; synpo plan reads decoder configs "
                        "(hidden_size, num_attention_heads, num_hidden_layers, vocab_size)") from None
    config_dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    arch.weight_bytes = DTYPE_BYTES.get(config_dtype if dtype == "auto" else dtype, 2)
    archs = " ".join(config.get("architectures") or [])
    arch.classifier = "SequenceClassification" in archs or "RewardModel" in archs
    arch.labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    return arch


def preset_path(model: str) -> Path:
    return PRESETS / (model.replace("/", "__") + ".json")


def read_config(model: str) -> tuple[dict, str]:
    """(config.json, where it came from) for a local directory, a shipped preset, or a hub id."""
    local = Path(resolve_path(model)).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{model}: no config.json in this directory")
        return json.loads((local / "config.json").read_text()), f"{local}/config.json"
    if preset_path(model).is_file():
        return json.loads(preset_path(model).read_text()), "preset (synpo/presets)"
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json")).read_text()), "hub"
    except Exception as e:  # offline, gated, no such repo
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{model}: cannot read its config.json from the hub ({reason}); download it "
                        f"(`hf download {model} config.json --local-dir DIR`) and point the recipe at DIR, "
                        "or run synpo plan where the hub is reachable") from None


def load_arch(model: str, dtype: str = "auto") -> Arch:
    config, source = read_config(model)
    return arch_from_config(config, model, source, dtype)


# ---- GPUs and training layout ----------------------------------------------------------


@dataclass
class GPUs:
    count: int
    name: str
    memory: int  # bytes per GPU

    @property
    def label(self) -> str:
        return f"{self.count} x {self.name}"


def parse_gpus(spec: str) -> GPUs:
    """`8xA100-80G`, `4xH100-80GB`, `A10-24G` (one GPU): count x name with its memory in GiB."""
    m = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9_.]+)-(\d+(?:\.\d+)?)\s*(?:G|GB|GiB)", spec.strip())
    if not m or int(m.group(1) or 1) < 1:
        raise UserError(f"--gpus {spec}: expected COUNTxNAME-MEMORY, e.g. 8xA100-80G or 1xL40S-48G")
    return GPUs(int(m.group(1) or 1), f"{m.group(2)}-{m.group(3)}G", int(float(m.group(3)) * GiB))


@dataclass
class Layout:
    """How a training stage runs: processes, and what DeepSpeed / FSDP shard."""

    processes: int = 1
    kind: str = "single"  # single | ddp | deepspeed | fsdp
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    init_sharded: bool = True  # ZeRO-3 zero3_init_flag: weights are sharded as they load
    source: str = "in-process"

    @property
    def label(self) -> str:
        if self.kind == "deepspeed":
            extra = " +offload" if self.offload_optimizer or self.offload_params else ""
            return f"ZeRO-{self.zero_stage}{extra} x{self.processes}"
        return {"single": "1 process", "ddp": f"DDP x{self.processes}", "fsdp": f"FSDP x{self.processes}"}[self.kind]


def training_layout(cfg: TrainConfig) -> Layout:
    """From the train section's accelerate config (a YAML file) and num_processes."""
    layout = Layout(processes=cfg.num_processes or 1, kind="ddp" if (cfg.num_processes or 1) > 1 else "single")
    if not cfg.accelerate_config:
        return layout
    import yaml

    path = Path(resolve_path(cfg.accelerate_config))
    if not path.is_file():
        raise UserError(f"accelerate_config: file does not exist: {cfg.accelerate_config}")
    acc = yaml.safe_load(path.read_text()) or {}
    layout.source = str(cfg.accelerate_config)
    layout.processes = cfg.num_processes or int(acc.get("num_processes") or 1)
    kind = str(acc.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        ds = acc.get("deepspeed_config") or {}
        layout.kind = "deepspeed"
        layout.zero_stage = int(ds.get("zero_stage", 0))
        layout.offload_optimizer = str(ds.get("offload_optimizer_device", "none")).lower() not in ("none", "")
        layout.offload_params = str(ds.get("offload_param_device", "none")).lower() not in ("none", "")
        layout.init_sharded = bool(ds.get("zero3_init_flag", False))
        if ds.get("deepspeed_config_file"):  # a DeepSpeed JSON next to the accelerate config
            ds_file = Path(ds["deepspeed_config_file"])
            ds_file = ds_file if ds_file.is_absolute() else path.parent / ds_file
            if ds_file.is_file():
                zero = json.loads(ds_file.read_text()).get("zero_optimization", {})
                layout.zero_stage = int(zero.get("stage", layout.zero_stage))
                layout.offload_optimizer = zero.get("offload_optimizer", {}).get("device", "none") != "none"
                layout.offload_params = zero.get("offload_param", {}).get("device", "none") != "none"
    elif kind == "FSDP":
        layout.kind = "fsdp"
    elif layout.processes > 1:
        layout.kind = "ddp"
    return layout


# ---- memory estimates ------------------------------------------------------------------


@dataclass
class Memory:
    parts: dict[str, float] = field(default_factory=dict)  # bytes per GPU, by component
    limit: float | None = None  # bytes usable on one GPU (vLLM: its utilization share)
    minimum: float | None = None  # the least the stage can start with (vLLM: one max-length sequence)
    gpus: int = 1  # GPUs the stage occupies
    note: str = ""
    kv_per_seq: float = 0.0  # vLLM: KV bytes of one sequence on one GPU
    concurrent: int = 0  # vLLM: sequences the full-batch estimate holds at once

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def breakdown(self, parts: dict[str, float] | None = None) -> str:
        return " + ".join(f"{k} {v / GiB:.1f}" for k, v in (parts or self.parts).items() if v > 0) or "-"

    def on(self, gpus: GPUs | None) -> tuple[str, dict[str, float], str]:
        """(fits verdict, the parts as they land on these GPUs, a note). vLLM takes its share of the
        GPU and fills it with KV cache: a larger need runs with fewer sequences at once."""
        if not self.parts:
            return "-", {}, self.note
        if gpus is None:
            return "?", self.parts, ""
        if self.gpus > gpus.count:
            return f"NO (needs {self.gpus} GPUs)", self.parts, ""
        limit = gpus.memory * (self.limit or 1.0)
        if self.total <= limit:
            return "yes", self.parts, ""
        if self.minimum is not None and self.minimum <= limit:
            parts = dict(self.parts)
            parts["KV"] = limit - (self.total - self.parts["KV"])
            seqs = max(1, int(parts["KV"] // self.kv_per_seq)) if self.kv_per_seq else 0
            return f"yes, ~{min(seqs, self.concurrent)} seqs at once", parts, ""
        return "NO", self.parts, ""


def generation_memory(arch: Arch, engine, generations: int, prompt_tokens: int, new_tokens: int, n: int = 1,
                      lora_rank: int | None = None) -> Memory:
    tp = engine.tensor_parallel_size if engine.kind == "vllm" else 1
    max_len = engine.max_model_len or arch.max_positions
    seq = min(prompt_tokens + new_tokens, max_len)
    if engine.kind == "vllm":
        concurrent = min(VLLM_MAX_SEQS, max(generations * n, 1))
    else:
        concurrent = min(engine.batch_size, max(generations, 1)) * n
    parts = {"weights": arch.params * arch.weight_bytes / tp,
             "KV": concurrent * seq * arch.kv_bytes_per_token() / tp}
    if lora_rank:
        parts["adapter"] = lora_params(arch, lora_rank, "all-linear") * arch.weight_bytes / tp
    parts["other"] = OVERHEAD
    mem = Memory(parts, gpus=tp, kv_per_seq=seq * arch.kv_bytes_per_token() / tp, concurrent=concurrent)
    if engine.kind == "vllm":
        mem.limit = engine.gpu_memory_utilization
        mem.minimum = (parts["weights"] + parts.get("adapter", 0) + max_len * arch.kv_bytes_per_token() / tp
                       + OVERHEAD)
    return mem


def lora_params(arch: Arch, r: int, targets) -> int:
    shapes = arch.linear_shapes()
    names = LORA_NAMES if targets == "all-linear" else set(targets)
    per_layer = sum(r * (a + b) for k, (a, b) in shapes.items() if k in names)
    mlp = {"gate_proj", "up_proj", "down_proj"}
    experts_extra = sum(r * (a + b) for k, (a, b) in shapes.items() if k in names & mlp) * (arch.experts - 1)
    return arch.layers * (per_layer + experts_extra)


def activation_bytes(arch: Arch, sequences: int, seq_len: int, checkpointing: bool) -> dict[str, float]:
    tokens = sequences * seq_len
    per_layer = tokens * (16 * arch.hidden + 8 * arch.intermediate)
    if checkpointing:
        stored = 2 * tokens * arch.hidden * arch.layers + per_layer
    else:
        stored = per_layer * arch.layers
    return {"acts": stored, "logits": 0 if arch.classifier else tokens * arch.vocab * 6}


def training_memory(arch: Arch, cfg: TrainConfig, layout: Layout, preference: bool, loss: str | None) -> Memory:
    P, w, N = arch.params, arch.weight_bytes, max(layout.processes, 1)
    parts: dict[str, float] = {}
    shard_all = layout.kind == "fsdp" or (layout.kind == "deepspeed" and layout.zero_stage == 3)
    if cfg.adapter == "full":
        if layout.kind == "deepspeed":
            z = layout.zero_stage
            parts["weights"] = 0 if layout.offload_params else 2 * P / (N if z >= 3 else 1)
            parts["grads"] = 2 * P / (N if z >= 2 else 1)
            parts["optim"] = 0 if layout.offload_optimizer else 12 * P / (N if z >= 1 else 1)
        else:
            shard = N if layout.kind == "fsdp" else 1
            parts["weights"] = w * P / shard
            parts["grads"] = w * P / shard
            parts["optim"] = 2 * w * P / shard
    else:
        if cfg.quantization:
            quantized = arch.block_linear_params()
            base = quantized * QUANT_BYTES[cfg.quantization] + (P - quantized) * w
        else:
            base = P * w
        parts["weights"] = base / (N if shard_all else 1)
        adapter = lora_params(arch, cfg.lora.r, cfg.lora.target_modules)
        parts["adapter+optim"] = 16 * adapter
    if preference and loss == "dpo" and cfg.adapter == "full":
        parts["reference"] = w * P / (N if shard_all else 1)
    sequences = cfg.batch_size * (2 if preference else 1)
    parts.update(activation_bytes(arch, sequences, cfg.max_length, cfg.gradient_checkpointing))
    parts["other"] = OVERHEAD
    if shard_all and not layout.init_sharded and cfg.adapter == "full":
        # Without zero3_init each process first loads the whole model (and a DPO reference),
        # then ZeRO-3 / FSDP shards it: that moment can be the peak.
        loading = w * P * (2 if "reference" in parts else 1)
        if loading + OVERHEAD > sum(parts.values()):
            return Memory({"weights (unsharded, loading)": loading, "other": OVERHEAD}, gpus=N)
    return Memory(parts, gpus=N)


def scoring_memory(arch: Arch | None, kind: str, batch: int, max_length: int) -> Memory:
    if kind in ("judge", "toy") or arch is None:
        return Memory({}, note="remote API" if kind == "judge" else "CPU checker")
    weight_bytes = 2  # bf16 on a GPU (PairRM: fp16)
    per_layer = batch * max_length * (16 * arch.hidden + 8 * arch.intermediate)
    return Memory({"weights": arch.params * weight_bytes, "acts": per_layer, "other": 1 * GiB})


# ---- the plan: stages of every round ---------------------------------------------------


@dataclass
class Step:
    round: str
    stage: str
    model: str
    runs_as: str
    work: str
    tokens: str
    memory: Memory


def scorer_architecture(recipe: Recipe) -> Arch | None:
    """The scorer's model; PairRM's own config.json is llm-blender's RankerConfig, naming its backbone."""
    if recipe.scorer.kind not in ("reward_model", "pairwise"):
        return None
    config, source = read_config(recipe.scorer.path)
    if "hidden_size" not in config and config.get("model_name"):
        return load_arch(config["model_name"], "bfloat16")
    return arch_from_config(config, recipe.scorer.path, source, "bfloat16")


def count_seed(recipe: Recipe) -> tuple[int | None, int]:
    """(seed rows or None when unknown without downloading, mean prompt tokens ~ chars/4). A local
    file is read and checked as the run reads it (a bad row is the run's one-line error)."""
    from synpo.data.loaders import read_seed

    cfg = recipe.data.seed
    rows, chars = cfg.limit, 0
    if cfg.format != "hf" and Path(resolve_path(cfg.path)).is_file():
        prompts = [r["prompt"] for r in read_seed(cfg).rows]
        rows, chars = len(prompts), sum(map(len, prompts))
    prompt_tokens = max(16, chars // max(rows or 1, 1) // 4) if chars else 256
    return rows, prompt_tokens


def _fmt(n: float | None, prefix: str = "") -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{prefix}{n / size:.1f}{unit}"
    return f"{prefix}{int(n)}"


def build_plan(recipe: Recipe) -> tuple[list[Step], dict]:
    """Every stage of the run in order, with its work and its memory estimate."""
    r = recipe
    theta0 = load_arch(r.model.path, r.model.dtype)
    scorer_arch = scorer_architecture(r)
    if scorer_arch is not None:
        scorer_arch.classifier = True
    seed_rows, seed_prompt_tokens = count_seed(r)
    steps: list[Step] = []
    synpo = r.pairs.strategy == "synpo"

    def engine_label(stage: str) -> str:
        e = r.engine_for(stage)
        return {"vllm": f"vLLM tp={e.tensor_parallel_size}", "hf": f"hf batch {e.batch_size}",
                "openai": "OpenAI-compatible API"}[e.kind]

    def gen(t, stage, model, engine_stage, count, prompt_tokens, sampling, n=1, lora=None):
        engine = r.engine_for(engine_stage)
        work = f"{_fmt(count)} generations" + (f" x{n}" if n > 1 else "") if count is not None else "? generations"
        tokens = _fmt(None if count is None else count * n * sampling.max_new_tokens, "≤")
        memory = (Memory({}, note="remote API") if engine.kind == "openai"
                  else generation_memory(theta0, engine, count or 1, prompt_tokens, sampling.max_new_tokens, n, lora))
        steps.append(Step(t, stage, model, engine_label(engine_stage), work, tokens + " new", memory))

    def train(t, stage, model, cfg: TrainConfig, rows, preference=False):
        layout = training_layout(cfg)
        memory = training_memory(theta0, cfg, layout, preference, r.train.loss if preference else None)
        adapter = {"full": "full", "lora": f"LoRA r={cfg.lora.r}", "periodic_lora": f"PeriodicLoRA r={cfg.lora.r}"}
        name = adapter[cfg.adapter] + (f" {cfg.quantization}" if cfg.quantization else "")
        what = {"simpo": "SimPO ", "dpo": "DPO "}[r.train.loss] if preference else "SFT "
        epochs = cfg.epochs if not cfg.max_steps else None
        rows_label = f"≤{_fmt(rows)} pairs" if preference else f"≤{_fmt(rows)} rows"
        tokens = (_fmt(rows * epochs * cfg.max_length * (2 if preference else 1), "≤")
                  if rows is not None and epochs else f"{cfg.max_steps} steps")
        steps.append(Step(t, stage, model, f"{what}{name}, {layout.label}", f"{rows_label} x{epochs or '-'} ep",
                          tokens, memory))

    def score(t, stage, count):
        kind = r.scorer.kind
        memory = scoring_memory(scorer_arch, kind, r.scorer.batch_size, r.scorer.max_length)
        label = {"toy": "toy checker (CPU)", "reward_model": f"reward model, batch {r.scorer.batch_size}",
                 "pairwise": "PairRM compare", "judge": "LLM judge (API)"}[kind]
        model = Path(r.scorer.path).name if r.scorer.path else (r.scorer.judge.model if r.scorer.judge else "toy")
        steps.append(Step(t, stage, model, label, f"{_fmt(count)} pairs" if count is not None else "? pairs",
                          _fmt(None if count is None else 2 * count * r.scorer.max_length, "≤"), memory))

    def evaluate(t, model):
        for suite in r.eval.suites:
            if suite == "toy":
                from synpo.toy import DATA

                size = len((DATA / "benchmark.jsonl").read_text().splitlines())
            else:
                size = EVAL_SIZES[suite]
            size = min(size, r.eval.limit) if r.eval.limit else size
            gen(t, f"eval {suite}", model, "eval", size, 256, r.eval.sampling)

    pg, imp, resp = r.prompt_generator, r.improver, r.responses
    question_tokens = 60  # the question-generation template with three keywords
    improver_tokens = seed_prompt_tokens + imp.seed_sampling.max_new_tokens + 40
    evaluate("0", "θ0")
    train("once", "prompt generator G", "θ0 → G", pg.train, seed_rows)
    for t in range(1, r.rounds + 1):
        prev = "θ0" if t == 1 else f"θ{t - 1}"
        T = str(t)
        gen(T, "prompts", "G", "prompt_generator", pg.num_prompts, question_tokens, pg.sampling)
        if synpo:
            gen(T, "π_{t-1} on seed", prev, "improver", seed_rows, seed_prompt_tokens, imp.seed_sampling)
            score(T, "improver data: score", seed_rows)
            train(T, "improver R_t", f"θ0 → R{t}", imp.train, seed_rows)
            count = pg.num_prompts * (1 if t == 1 else 2)
            gen(T, "responses (π_0" + (")" if t == 1 else ", π_{t-1})"), "θ0" if t == 1 else f"θ0, {prev}",
                "responses", count, pg.sampling.max_new_tokens, resp.sampling)
            lora = imp.train.lora.r if imp.train.adapter == "lora" else None
            gen(T, "refine", f"R{t}", "improver", pg.num_prompts, pg.sampling.max_new_tokens + improver_tokens,
                imp.sampling, lora=lora)
            score(T, "pairs: score", pg.num_prompts)
        else:
            gen(T, f"responses (π_{{t-1}} x{r.pairs.k})", prev, "responses", pg.num_prompts,
                pg.sampling.max_new_tokens, resp.sampling, n=r.pairs.k)
            score(T, "pairs: rank", pg.num_prompts * r.pairs.k)
        start = "θ0" if r.train.start == "initial" else prev
        train(T, "policy θ_t", f"{start} → θ{t}", r.train, t * r.pairs.per_round, preference=True)
        evaluate(T, f"θ{t}")
    info = {"theta0": theta0, "scorer": scorer_arch, "seed_rows": seed_rows}
    return steps, info


# ---- output ----------------------------------------------------------------------------


def render(recipe: Recipe, gpus: GPUs | None, console=None) -> list[Step]:
    from rich.console import Console
    from rich.table import Table

    steps, info = build_plan(recipe)
    console = console or Console()
    theta0, scorer = info["theta0"], info["scorer"]
    console.print(f"[bold]synpo plan[/bold] {recipe.name}: {recipe.rounds} rounds, strategy {recipe.pairs.strategy}"
                  + (f", on {gpus.label} ({gpus.memory / GiB:.0f} GiB each)" if gpus else ""))
    console.print(f"θ0 {recipe.model.path}: {theta0.params / 1e9:.2f}B parameters, {theta0.weight_bytes} bytes each "
                  f"(config: {theta0.source})")
    if scorer is not None:
        console.print(f"scorer {recipe.scorer.path}: {scorer.params / 1e9:.2f}B parameters (config: {scorer.source})")
    console.print(f"seed rows: {info['seed_rows'] if info['seed_rows'] is not None else '? (set data.seed.limit)'}; "
                  "generation counts are upper bounds (filters drop some prompts)")
    table = Table(title="stages, work and peak memory per GPU (GiB)", show_lines=False)
    for col, kw in [("round", {"justify": "right"}), ("stage", {}), ("model", {}), ("runs as", {}), ("work", {}),
                    ("tokens", {"justify": "right"}), ("GiB/GPU", {"justify": "right"}),
                    ("breakdown (GiB)", {"no_wrap": True}), ("fits", {})]:
        table.add_column(col, **kw)
    worst = []
    for s in steps:
        fits, parts, note = s.memory.on(gpus)
        if fits.startswith("NO"):
            worst.append(s)
        gib = f"{sum(parts.values()) / GiB:.1f}" if parts else note or "-"
        table.add_row(s.round, s.stage, s.model, s.runs_as, s.work, s.tokens, gib, s.memory.breakdown(parts) if parts
                      else "-", fits, style="red" if fits.startswith("NO") else None)
    console.print(table)
    if gpus is not None:
        console.print("[green]every stage fits[/green]" if not worst else
                      f"[red]{len(worst)} stage(s) do not fit[/red]: use LoRA/QLoRA, ZeRO-3 over more GPUs, "
                      "gradient checkpointing, a smaller batch, or tensor parallelism")
    console.print("[dim]formulas: synpo/plan.py docstring; estimates of the dominant terms[/dim]")
    return steps


def main(recipe_path: str, overrides: list[str], gpus_spec: str | None) -> int:
    """Validate the recipe (schema errors end the command; missing local files are warnings,
    since a plan is often made away from the machine that runs it) and print the plan."""
    import sys

    from rich.console import Console

    from synpo.recipe import _check_files, load_recipe
    from synpo.scoring.reward_model import check_remote_code

    gpus = parse_gpus(gpus_spec) if gpus_spec else None
    recipe = load_recipe(recipe_path, overrides, check_files=False)
    console = Console(width=None if sys.stdout.isatty() else 230)
    for problem in _check_files(recipe, recipe_path):
        console.print(f"[yellow]warning[/yellow] (checked again when the run starts): {problem}")
    if recipe.scorer.kind == "reward_model":
        config, _ = read_config(recipe.scorer.path)
        check_remote_code(recipe.scorer.path, recipe.scorer.trust_remote_code, config=config)
    render(recipe, gpus, console)
    return 0
