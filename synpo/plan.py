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
    FSDP          weights 4P, gradients 4P, optimizer 8P, all sharded over N (accelerate upcasts
                  the trainable weights to fp32 masters when mixed precision is on)
    DDP / single  weights 4P, gradients 4P, optimizer 8P: fp32 master weights under bf16 autocast
                  (synpo.training.trainers loads them so; a bf16 step at lr 1e-6 would round away)
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
  host RAM (the node, all N processes; the "host GiB" column): loading without zero3_init_flag
    N·w·P (×2 with a DPO reference); ZeRO offload 12P (optimizer) and w·P (parameters); PeriodicLoRA
    on a bf16 base N·2 bytes per folded weight (the folds' rounding carry, int16 per process).

Scoring (one GPU, in the orchestrating process): weights 2P (bf16; PairRM fp16) + one
layer's working set batch·S·(16h + 8i) (no gradients: layers run one at a time) + 1 GiB;
an LLM judge is remote (0).

These are estimates of the dominant terms, meant to tell 'fits' from 'does not fit' by a
margin; allocator fragmentation and framework buffers add a few GiB in practice.

Hours (with --gpus of a known kind; specs in GPU_SPECS: peak dense bf16 FLOP/s F and memory
bandwidth B of one GPU). A roofline at stated efficiencies: decode reaches BW_UTIL of B, prefill
and scoring PREFILL_MFU of F, training TRAIN_MFU of F. Lengths are the recipe's limits (every
answer runs to max_new_tokens, every training row to max_length): the hours are upper bounds,
and an answer that stops early costs proportionally less.
  generation, per engine of tp GPUs (engines = engine.data_parallel_size, default GPUs // tp;
  the generations G·n are split evenly over them):
    batch b    = min(256, G·n per engine, KV room / (KV bytes of one prompt + new-token sequence)),
                 KV room = tp·(gpu_memory_utilization·memory - 2 GiB) - weights; hf engine: batch_size
    decode     = (G·n / b) · new steps, each max(bytes / (tp·B·BW_UTIL), 2·P·b / (tp·F·PREFILL_MFU)),
                 bytes = P·w (weights, + adapter) + b · (prompt + new/2) · KV bytes per token
    prefill    = 2·P·prompt·G / (tp·F·PREFILL_MFU)   (n samples of a prompt share its prefix)
  scoring (copies = scorer.data_parallel_size, default one per GPU):
    2·P·sequences·length / (copies·F·PREFILL_MFU), length = min(max_length, prompt + answer)
  training (N processes of the train section's layout):
    k·P·tokens / (N·F·TRAIN_MFU), tokens = rows·epochs·max_length (×2 for a preference pair);
    k = 6 (forward 2, backward 4) for full fine-tuning, 4 with an adapter (no weight gradients of
    the base), +2 with gradient checkpointing (a second forward), +2 for DPO's reference forward
    when the reference is a separate model (full fine-tuning)
  Attention's own FLOPs and communication (ZeRO-3 gathers, tensor-parallel all-reduces) are left
  out; an LLM judge or API engine is remote and has no hours here.
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
EVAL_SIZES = {"alpaca_eval": 805, "arena_hard": 500, "mt_bench": 160,  # mt_bench: 80 questions x 2 turns
              "ifeval": 541}
LORA_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# Peak dense bf16 tensor FLOP/s and memory bandwidth (bytes/s) of one GPU, from NVIDIA's data
# sheets (SXM parts; sparsity excluded).
GPU_SPECS = {
    "A100-40G": (312e12, 1.555e12),
    "A100-80G": (312e12, 2.039e12),
    "H100-80G": (989e12, 3.35e12),
    "H200-141G": (989e12, 4.8e12),
    "L40S-48G": (362e12, 0.864e12),
}
GPU_MEMORY = {"H100": 80, "H200": 141, "L40S": 48}  # `--gpus 8xH100` means these
BW_UTIL = 0.8  # share of peak memory bandwidth a decode step achieves
PREFILL_MFU = 0.5  # share of peak FLOP/s of prefill and scoring forward passes
TRAIN_MFU = 0.4  # share of peak FLOP/s of training steps


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
    from synpo.gguf import checkpoint, is_gguf

    if is_gguf(local):  # θ0 as a GGUF file: its converted checkpoint's config (converted once, cached)
        local = Path(checkpoint(local))
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

    @property
    def speed(self) -> tuple[float, float] | None:
        """(peak bf16 FLOP/s, memory bytes/s) of one GPU, when synpo knows this kind."""
        return GPU_SPECS.get(self.name.upper())


def parse_gpus(spec: str) -> GPUs:
    """`8xA100-80G`, `4xH100-80GB`, `A10-24G` (one GPU): count x name with its memory in GiB."""
    spec = spec.strip()
    bare = re.fullmatch(r"((?:\d+\s*[xX*]\s*)?)([A-Za-z0-9_.]+)", spec)
    if bare and bare.group(2).upper() in GPU_MEMORY:  # a GPU sold in one memory size
        spec = f"{bare.group(1)}{bare.group(2).upper()}-{GPU_MEMORY[bare.group(2).upper()]}G"
    m = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9_.]+)-(\d+(?:\.\d+)?)\s*(?:G|GB|GiB)", spec)
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


def training_layout(cfg: TrainConfig, gpus: int | None = None) -> Layout:
    """From the train section's accelerate config (a YAML file) and num_processes; `gpus` as the run
    would see them (runtime.gpus, else the planned --gpus count)."""
    from synpo.training.distributed import read_accelerate_config

    acc = read_accelerate_config(cfg, gpus)
    layout = Layout(processes=acc.processes, kind="ddp" if acc.processes > 1 else "single")
    if acc.path is None:
        return layout
    path, settings = acc.path, acc.settings
    layout.source = str(cfg.accelerate_config)
    kind = str(settings.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        ds = settings.get("deepspeed_config") or {}
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
    host: dict[str, float] = field(default_factory=dict)  # host RAM of the node (all its processes), by part

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
        else:  # fp32 master weights (see the module docstring)
            shard = N if layout.kind == "fsdp" else 1
            parts["weights"] = 4 * P / shard
            parts["grads"] = 4 * P / shard
            parts["optim"] = 8 * P / shard
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
        # TRL copies the model as loaded: fp32 outside DeepSpeed/FSDP, where the weights are fp32 masters
        reference_bytes = w if layout.kind in ("deepspeed", "fsdp") else 4
        parts["reference"] = reference_bytes * P / (N if shard_all else 1)
    sequences = cfg.batch_size * (2 if preference else 1)
    parts.update(activation_bytes(arch, sequences, cfg.max_length, cfg.gradient_checkpointing))
    parts["other"] = OVERHEAD
    host = training_host_memory(arch, cfg, layout, "reference" in parts)
    if shard_all and not layout.init_sharded and cfg.adapter == "full":
        # Without zero3_init each process first loads the whole model (and a DPO reference),
        # then ZeRO-3 / FSDP shards it: that moment can be the peak.
        loading = w * P * (2 if "reference" in parts else 1)
        if loading + OVERHEAD > sum(parts.values()):
            return Memory({"weights (unsharded, loading)": loading, "other": OVERHEAD}, gpus=N, host=host)
    return Memory(parts, gpus=N, host=host)


def training_host_memory(arch: Arch, cfg: TrainConfig, layout: Layout, reference: bool) -> dict[str, float]:
    """Host RAM of one node during a training stage (every process together), by part."""
    P, w, N = arch.params, arch.weight_bytes, max(layout.processes, 1)
    host: dict[str, float] = {}
    if layout.kind in ("deepspeed", "fsdp") and not layout.init_sharded:
        # each process loads the whole model on the CPU before DeepSpeed / FSDP shard it
        host["loading"] = N * w * P * (2 if reference else 1)
    if layout.kind == "deepspeed" and layout.offload_optimizer:
        host["optim (offload)"] = 12 * P if cfg.adapter == "full" else 12 * lora_params(arch, cfg.lora.r,
                                                                                          cfg.lora.target_modules)
    if layout.kind == "deepspeed" and layout.offload_params:
        host["weights (offload)"] = w * P
    if cfg.adapter == "periodic_lora" and w < 4:
        # the folds' rounding carry: 2 bytes per folded base weight, kept by every process
        host["fold carry"] = N * 2 * arch.block_linear_params()
    return host


def scoring_memory(arch: Arch | None, kind: str, batch: int, max_length: int) -> Memory:
    if kind in ("judge", "toy") or arch is None:
        return Memory({}, note="remote API" if kind == "judge" else "CPU checker")
    weight_bytes = 2  # bf16 on a GPU (PairRM: fp16)
    per_layer = batch * max_length * (16 * arch.hidden + 8 * arch.intermediate)
    return Memory({"weights": arch.params * weight_bytes, "acts": per_layer, "other": 1 * GiB})


# ---- time estimates ----------------------------------------------------------------------


@dataclass
class Load:
    """The work of a stage in the units the time model takes (see the module docstring)."""

    kind: str  # generate | score | train
    arch: Arch
    sequences: int  # generations x n; pairs x sides scored; training rows x epochs (x2 for pairs)
    prompt_tokens: int = 0
    new_tokens: int = 0  # generate: per sequence; score / train: the sequence length
    prompts: int = 0  # generate: distinct prompts (prefilled once)
    engine: object = None  # generate: the stage's EngineConfig
    adapter_bytes: float = 0.0
    flops_per_token: float = 0.0  # train: k·P
    processes: int = 1  # train: N
    copies: int | None = None  # score: scorer.data_parallel_size


def engines_of(engine, gpus: GPUs) -> int:
    """How many engines a generation stage runs: engine.data_parallel_size, or every GPU // tp."""
    tp = engine.tensor_parallel_size if engine.kind == "vllm" else 1
    return engine.data_parallel_size or max(1, gpus.count // tp)


def busiest_engine(sequences: int, engines: int, shard: int, kind: str) -> int:
    """Sequences the busiest of `engines` generates, in waves: vLLM engines take jobs cut to fill every
    engine in each wave (engines/parallel.py balanced_jobs); hf engines take whole shards of `shard`."""
    if engines <= 1:
        return sequences
    if kind == "vllm":
        waves = -(-sequences // (engines * shard))
        return waves * -(-sequences // (engines * waves))
    shards = -(-sequences // shard)
    return min(sequences, -(-shards // engines) * shard)


def generation_seconds(load: Load, gpus: GPUs) -> float | None:
    """Decode (memory- or compute-bound, whichever is slower) plus prefill, on the stage's engines."""
    flops, bandwidth = gpus.speed
    engine, arch = load.engine, load.arch
    tp = engine.tensor_parallel_size if engine.kind == "vllm" else 1
    engines = engines_of(engine, gpus)
    weights = arch.params * arch.weight_bytes + load.adapter_bytes
    kv = arch.kv_bytes_per_token()
    per_engine = busiest_engine(load.sequences, engines, engine.shard_size * max(load.sequences // max(load.prompts, 1),
                                                                               1), engine.kind)
    full = min(load.prompt_tokens + load.new_tokens, engine.max_model_len or arch.max_positions)
    if engine.kind == "vllm":
        room = tp * (engine.gpu_memory_utilization * gpus.memory - OVERHEAD) - weights
        batch = min(VLLM_MAX_SEQS, per_engine, int(room // (full * kv)))
    else:
        batch = min(engine.batch_size, per_engine)
    if batch < 1:
        return None  # not one sequence fits
    step_bytes = weights + batch * (load.prompt_tokens + load.new_tokens / 2) * kv
    step = max(step_bytes / (tp * bandwidth * BW_UTIL), 2 * arch.params * batch / (tp * flops * PREFILL_MFU))
    decode = per_engine / batch * load.new_tokens * step
    prefill = (2 * arch.params * load.prompt_tokens * per_engine * load.prompts / max(load.sequences, 1)
               / (tp * flops * PREFILL_MFU))
    return decode + prefill


def stage_seconds(load: Load | None, gpus: GPUs | None) -> float | None:
    """Estimated seconds of a stage on these GPUs; None when unknown (no spec, remote, unknown size)."""
    if load is None or gpus is None or gpus.speed is None or not load.sequences:
        return None
    flops, _ = gpus.speed
    if load.kind == "generate":
        return generation_seconds(load, gpus)
    if load.kind == "score":
        copies = load.copies or gpus.count
        return 2 * load.arch.params * load.sequences * load.new_tokens / (copies * flops * PREFILL_MFU)
    return load.flops_per_token * load.sequences * load.new_tokens / (load.processes * flops * TRAIN_MFU)


def training_flops_per_token(arch: Arch, cfg: TrainConfig, dpo_reference: bool) -> float:
    k = 6 if cfg.adapter == "full" else 4
    k += 2 if cfg.gradient_checkpointing else 0
    k += 2 if dpo_reference else 0
    return k * arch.params


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
    load: Load | None = None


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
        prompts = [r["prompt"] for r in read_seed(cfg, recipe.seed).rows]
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


def build_plan(recipe: Recipe, gpus: GPUs | None = None) -> tuple[list[Step], dict]:
    """Every stage of the run in order, with its work and its memory estimate."""
    r = recipe
    theta0 = load_arch(r.model.path, r.model.dtype)
    scorer_arch = scorer_architecture(r)
    if scorer_arch is not None:
        scorer_arch.classifier = True
    seed_rows, seed_prompt_tokens = count_seed(r)
    steps: list[Step] = []

    def engine_label(stage: str) -> str:
        e = r.engine_for(stage)
        workers = f" x{e.data_parallel_size}" if (e.data_parallel_size or 1) > 1 else \
            (" x GPUs/tp" if e.data_parallel_size is None and e.kind != "openai" else "")
        return {"vllm": f"vLLM tp={e.tensor_parallel_size}{workers}", "hf": f"hf batch {e.batch_size}{workers}",
                "openai": "OpenAI-compatible API"}[e.kind]

    def gen(t, stage, model, engine_stage, count, prompt_tokens, sampling, n=1, lora=None):
        engine = r.engine_for(engine_stage)
        work = f"{_fmt(count)} generations" + (f" x{n}" if n > 1 else "") if count is not None else "? generations"
        tokens = _fmt(None if count is None else count * n * sampling.max_new_tokens, "≤")
        memory = (Memory({}, note="remote API") if engine.kind == "openai"
                  else generation_memory(theta0, engine, count or 1, prompt_tokens, sampling.max_new_tokens, n, lora))
        load = None if engine.kind == "openai" or count is None else Load(
            "generate", theta0, count * n, prompt_tokens, sampling.max_new_tokens, prompts=count, engine=engine,
            adapter_bytes=lora_params(theta0, lora, "all-linear") * theta0.weight_bytes if lora else 0.0)
        steps.append(Step(t, stage, model, engine_label(engine_stage), work, tokens + " new", memory, load))

    def train(t, stage, model, cfg: TrainConfig, rows, preference=False):
        layout = training_layout(cfg, r.runtime.gpus or (gpus.count if gpus else None))
        memory = training_memory(theta0, cfg, layout, preference, r.train.loss if preference else None)
        adapter = {"full": "full", "lora": f"LoRA r={cfg.lora.r}", "periodic_lora": f"PeriodicLoRA r={cfg.lora.r}"}
        name = adapter[cfg.adapter] + (f" {cfg.quantization}" if cfg.quantization else "")
        what = {"simpo": "SimPO ", "dpo": "DPO ", "sft": "SFT (chosen) "}[r.train.loss] if preference else "SFT "
        epochs = cfg.epochs if not cfg.max_steps else None
        rows_label = f"≤{_fmt(rows)} pairs" if preference else f"≤{_fmt(rows)} rows"
        tokens = (_fmt(rows * epochs * cfg.max_length * (2 if preference else 1), "≤")
                  if rows is not None and epochs else f"{cfg.max_steps} steps")
        sides = 2 if preference else 1
        sequences = (rows * epochs * sides if rows is not None and epochs else
                     cfg.max_steps * cfg.batch_size * cfg.gradient_accumulation_steps * layout.processes * sides
                     if cfg.max_steps else 0)
        dpo_reference = preference and r.train.loss == "dpo" and cfg.adapter == "full"
        load = Load("train", theta0, int(sequences), new_tokens=cfg.max_length, processes=layout.processes,
                    flops_per_token=training_flops_per_token(theta0, cfg, dpo_reference))
        steps.append(Step(t, stage, model, f"{what}{name}, {layout.label}", f"{rows_label} x{epochs or '-'} ep",
                          tokens, memory, load))

    def score(t, stage, count, length=None, sides=2):
        kind = r.scorer.kind
        memory = scoring_memory(scorer_arch, kind, r.scorer.batch_size, r.scorer.max_length)
        copies = r.scorer.data_parallel_size
        workers = f" x{copies}" if (copies or 1) > 1 else " x GPUs" if copies is None else ""
        label = {"toy": "toy checker (CPU)", "reward_model": f"reward model, batch {r.scorer.batch_size}{workers}",
                 "pairwise": f"PairRM compare{workers}", "judge": "LLM judge (API)",
                 "yes_no": f"local LM P(Yes), batch {r.scorer.batch_size} (not sized)"}[kind]
        model = Path(r.scorer.path).name if r.scorer.path else (r.scorer.judge.model if r.scorer.judge else "toy")
        length = min(r.scorer.max_length, length or r.scorer.max_length)
        load = None if scorer_arch is None or count is None else Load("score", scorer_arch, sides * count,
                                                                        new_tokens=length, copies=copies)
        steps.append(Step(t, stage, model, label, f"{_fmt(count)} pairs" if count is not None else "? pairs",
                          _fmt(None if count is None else 2 * count * r.scorer.max_length, "≤"), memory, load))

    from synpo.iterate import run_stages
    from synpo.run import THETA0, round_of
    from synpo.stages.evaluate import Evaluation
    from synpo.stages.improver import ImproverData, ImproverTraining, Refinement
    from synpo.stages.pairs import PairBuilding
    from synpo.stages.policy import PolicyTraining
    from synpo.stages.prompt_generator import GeneratorTraining, PromptWriting, SeedPrompts
    from synpo.stages.responses import Answering

    def name(key: str) -> str:
        """A model's name in the table: θ0, G, R_t or θ_t."""
        t = round_of(key)
        return {THETA0: "θ0", "prompt_generator": "G"}.get(key) or (f"R{t}" if key.endswith("improver") else f"θ{t}")

    pg, imp = r.prompt_generator, r.improver
    question_tokens = 60  # the question-generation template with three keywords
    improver_tokens = seed_prompt_tokens + imp.seed_sampling.max_new_tokens + 40
    for stage in run_stages(r):
        i, reads, t = stage.inputs, stage.reads, stage.round
        T = str(t) if t is not None else "once"
        match i:
            case Evaluation():
                if i.suite == "toy":
                    from synpo.toy import DATA

                    size = len((DATA / "benchmark.jsonl").read_text().splitlines())
                else:
                    size = EVAL_SIZES[i.suite]
                size = min(size, i.limit) if i.limit else size
                gen(T, f"eval {i.suite}", name(reads["model"]), "eval", size, 256, i.sampling)
            case GeneratorTraining():
                train(T, "prompt generator G", "θ0 → G", i.train, seed_rows)
            case PromptWriting():
                gen(T, "prompts", "G", "prompt_generator", i.num_prompts, question_tokens, i.sampling)
            case SeedPrompts():
                pass  # a draw of the seed prompts: no model runs
            case ImproverData():
                gen(T, "π_{t-1} on seed", name(reads["policy"]), "improver", seed_rows, seed_prompt_tokens,
                    i.seed_sampling)
                score(T, "improver data: score", seed_rows, seed_prompt_tokens + i.seed_sampling.max_new_tokens)
            case ImproverTraining():
                train(T, "improver R_t", f"θ0 → R{t}", i.train, seed_rows)
            case Answering() if i.strategy == "sampling_ranking":
                gen(T, f"responses (π_{{t-1}} x{i.k})", name(reads["policy"]), "responses", pg.num_prompts,
                    pg.sampling.max_new_tokens, i.sampling, n=i.k)
            case Answering():
                sets = 1 if i.policy_is_initial else 2  # π_0's answers serve as π_{t-1}'s in round 1
                models = "θ0" if i.policy_is_initial else f"θ0, {name(reads['policy'])}"
                gen(T, "responses (π_0" + (")" if sets == 1 else ", π_{t-1})"), models, "responses",
                    pg.num_prompts * sets, pg.sampling.max_new_tokens, i.sampling)
            case Refinement():
                lora = imp.train.lora.r if i.trained and imp.train.adapter == "lora" else None
                gen(T, "refine", name(reads["improver"]), "improver", pg.num_prompts,
                    pg.sampling.max_new_tokens + improver_tokens, i.sampling, lora=lora)
            case PairBuilding() if i.pairs.strategy == "sampling_ranking":
                score(T, "pairs: rank", pg.num_prompts * i.pairs.k,
                      pg.sampling.max_new_tokens + r.responses.sampling.max_new_tokens, sides=1)  # each sample once
            case PairBuilding():
                score(T, "pairs: score", pg.num_prompts, pg.sampling.max_new_tokens + imp.sampling.max_new_tokens)
            case PolicyTraining():
                train(T, "policy θ_t", f"{name(reads['start'])} → θ{t}", i.train, t * r.pairs.per_round,
                      preference=True)
    info = {"theta0": theta0, "scorer": scorer_arch, "seed_rows": seed_rows}
    return steps, info


# ---- output ----------------------------------------------------------------------------


def hours_summary(steps: list[Step], gpus: GPUs) -> dict:
    """Hours per round (setup: round 0 and the prompt generator, counted as rounds "0" and "once"),
    the total, and the stage (summed over rounds) that takes the most."""
    rounds: dict[str, list[tuple[str, float]]] = {}
    by_stage: dict[str, float] = {}
    for s in steps:
        seconds = stage_seconds(s.load, gpus) or 0.0
        rounds.setdefault(s.round, []).append((s.stage, seconds))
        by_stage[s.stage] = by_stage.get(s.stage, 0.0) + seconds
    rows = []
    for name, stages in rounds.items():
        top, top_seconds = max(stages, key=lambda x: x[1])
        rows.append({"round": name, "hours": sum(x for _, x in stages) / 3600, "top": top,
                     "top_hours": top_seconds / 3600})
    top = max(by_stage, key=by_stage.get)
    return {"rounds": rows, "total": sum(by_stage.values()) / 3600, "top": top, "top_hours": by_stage[top] / 3600}


def host_cell(memory: Memory) -> str:
    """The node's host RAM for a stage: total and its parts ("-" when nothing large)."""
    if not memory.host:
        return "-"
    total = sum(memory.host.values())
    return f"{total / GiB:.0f} {'+'.join(HOST_SHORT[k] for k in memory.host)}"


HOST_SHORT = {"loading": "L", "optim (offload)": "O", "weights (offload)": "W", "fold carry": "C"}


def render(recipe: Recipe, gpus: GPUs | None, console=None) -> list[Step]:
    from rich.console import Console
    from rich.table import Table

    steps, info = build_plan(recipe, gpus)
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
    for col, kw in [("round", {"justify": "right"}), ("stage", {}), ("model", {}), ("runs as", {"no_wrap": True}),
                    ("work", {}),
                    ("tokens", {"justify": "right"}), ("hours", {"justify": "right"}),
                    ("GiB/GPU", {"justify": "right"}), ("breakdown (GiB)", {"no_wrap": True}), ("fits", {}),
                    ("host", {"no_wrap": True})]:
        table.add_column(col, **kw)
    worst = []
    for s in steps:
        fits, parts, note = s.memory.on(gpus)
        if fits.startswith("NO"):
            worst.append(s)
        gib = f"{sum(parts.values()) / GiB:.1f}" if parts else note or "-"
        seconds = stage_seconds(s.load, gpus)
        runs_as = s.runs_as
        if gpus is not None and s.load is not None:  # the default worker counts, on these GPUs
            engines = engines_of(s.load.engine, gpus) if s.load.kind == "generate" else gpus.count
            runs_as = runs_as.replace(" x GPUs/tp", f" x{engines}").replace(" x GPUs", f" x{engines}")
        table.add_row(s.round, s.stage, s.model, runs_as, s.work, s.tokens, "-" if seconds is None else
                      f"{seconds / 3600:.2f}", gib, s.memory.breakdown(parts) if parts else "-", fits,
                      host_cell(s.memory), style="red" if fits.startswith("NO") else None)
    console.print(table)
    if any(s.memory.host for s in steps):
        console.print("host: the node's RAM in GiB over all its processes; L every process loads the whole model "
                      "before ZeRO-3 / FSDP shard it, O / W ZeRO offload of optimizer / weights, C PeriodicLoRA's "
                      "fold carry")
    if gpus is not None:
        console.print("[green]every stage fits[/green]" if not worst else
                      f"[red]{len(worst)} stage(s) do not fit[/red]: use LoRA/QLoRA, ZeRO-3 over more GPUs, "
                      "gradient checkpointing, a smaller batch, or tensor parallelism")
    if gpus is not None and gpus.speed is None:
        console.print(f"[yellow]no hours[/yellow]: synpo knows the speed of {', '.join(GPU_SPECS)} (synpo/plan.py "
                      f"GPU_SPECS), not {gpus.name}")
    elif gpus is not None:
        summary = hours_summary(steps, gpus)
        hours = Table(title=f"estimated hours on {gpus.label} (upper bounds: every answer at max_new_tokens)")
        for col in ("round", "hours", "dominated by"):
            hours.add_column(col, justify="left" if col == "dominated by" else "right")
        for row in summary["rounds"]:
            hours.add_row(row["round"], f"{row['hours']:.1f}", f"{row['top']} ({row['top_hours']:.1f} h)")
        hours.add_row("total", f"{summary['total']:.1f}", f"{summary['top']} ({summary['top_hours']:.1f} h over "
                      "all rounds)", end_section=True)
        console.print(hours)
        console.print(f"[dim]assumes decode at {BW_UTIL:.0%} of memory bandwidth, prefill and scoring at "
                      f"{PREFILL_MFU:.0%} and training at {TRAIN_MFU:.0%} of peak bf16 FLOP/s; API stages "
                      "(judges, openai engines) not counted[/dim]")
    console.print("[dim]formulas: synpo/plan.py docstring; estimates of the dominant terms[/dim]")
    return steps


def main(recipe_path: str, overrides: list[str], gpus_spec: str | None) -> int:
    """Validate the recipe (schema errors end the command; missing local files are warnings,
    since a plan is often made away from the machine that runs it) and print the plan."""
    import sys

    from rich.console import Console

    from synpo.recipe import load_recipe, missing_files
    from synpo.scoring.reward_model import check_remote_code

    gpus = parse_gpus(gpus_spec) if gpus_spec else None
    recipe = load_recipe(recipe_path, overrides, check_files=False)
    console = Console(width=None if sys.stdout.isatty() else 250)
    for problem in missing_files(recipe, recipe_path):
        console.print(f"[yellow]warning[/yellow] (checked again when the run starts): {problem}")
    if recipe.scorer.kind == "reward_model":
        config, _ = read_config(recipe.scorer.path)
        # a plan is made offline, often away from the run's machine: the code is imported at preflight
        check_remote_code(recipe.scorer.path, recipe.scorer.trust_remote_code, config=config, import_code=False)
    render(recipe, gpus, console)
    return 0


if __name__ == "__main__":  # python -m synpo.plan RECIPE ...: the same as `synpo plan RECIPE ...`
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m synpo.plan", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("--gpus", default="8xA100-80G", help="the GPUs to check against, e.g. 4xH100-80G")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    args = parser.parse_args()
    try:
        sys.exit(main(args.recipe, args.set, args.gpus))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
