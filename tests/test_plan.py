"""`synpo plan`: parameter counts and memory formulas against hand-computed values, and the table."""

import json
import os
import subprocess
import sys

import pytest

from synpo.cli import main as cli
from synpo.errors import UserError
from synpo.plan import (
    GiB,
    Layout,
    arch_from_config,
    build_plan,
    generation_memory,
    load_arch,
    parse_gpus,
    preset_path,
    training_memory,
)
from synpo.recipe import EngineConfig, LoraConfig, TrainConfig, load_recipe
from tests.conftest import ROOT

LLAMA3 = "princeton-nlp/Llama-3-Base-8B-SFT"
MISTRAL = "alignment-handbook/zephyr-7b-sft-full"

# Llama-3-8B by hand: V=128256, h=4096, L=32, 32 heads x 128, 8 KV heads, i=14336, untied head.
EMBED = 128256 * 4096  # 525,336,576
PER_LAYER = (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096) + 3 * 4096 * 14336 + 2 * 4096  # 218,112,000
LLAMA3_PARAMS = 2 * EMBED + 32 * PER_LAYER + 4096


def test_llama3_parameters_and_bf16_weights_by_hand():
    arch = load_arch(LLAMA3)
    assert LLAMA3_PARAMS == 8_030_261_248
    assert arch.params == LLAMA3_PARAMS
    weights = arch.params * arch.weight_bytes
    assert weights == 16_060_522_496  # 8B parameters in bf16: ~16 GB (14.96 GiB)
    assert arch.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2  # K and V, all layers, bf16: 128 KiB


@pytest.mark.parametrize("model", [LLAMA3, MISTRAL])
def test_formula_matches_transformers_own_count(model):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(preset_path(model).read_text())
    config.pop("_synpo_preset")
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(hf_config)
    assert load_arch(model).params == sum(p.numel() for p in reference.parameters())


def test_formula_matches_the_tiny_model_with_tied_embeddings():
    from transformers import AutoModelForCausalLM

    from synpo.toy import TINY_MODEL

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    arch = load_arch(str(TINY_MODEL))
    assert arch.tied and arch.weight_bytes == 4
    assert arch.params == model.num_parameters()


def test_training_memory_by_hand():
    arch = load_arch(LLAMA3)
    P = LLAMA3_PARAMS
    zero3 = Layout(processes=8, kind="deepspeed", zero_stage=3, init_sharded=True)
    full = TrainConfig(adapter="full", batch_size=1, max_length=2048, gradient_checkpointing=False)
    m = training_memory(arch, full, zero3, preference=False, loss=None).parts
    assert (m["weights"], m["grads"], m["optim"]) == (2 * P / 8, 2 * P / 8, 12 * P / 8)
    assert m["acts"] == 32 * 2048 * (16 * 4096 + 8 * 14336)  # 11.0 GiB without checkpointing
    assert m["logits"] == 2048 * 128256 * 6
    # DPO with full fine-tuning adds a frozen reference (sharded too); SimPO has none
    dpo = training_memory(arch, full, zero3, preference=True, loss="dpo").parts
    simpo = training_memory(arch, full, zero3, preference=True, loss="simpo").parts
    assert dpo["reference"] == 2 * P / 8 and "reference" not in simpo
    assert simpo["acts"] == 2 * m["acts"]  # chosen and rejected go through together

    # LoRA r=16 on all linear layers: r·(in+out) per projection, 16 bytes per trainable parameter
    lora = TrainConfig(adapter="lora", lora=LoraConfig(r=16), batch_size=1, max_length=2048)
    per_layer = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 3 * (4096 + 14336))
    assert 32 * per_layer == 41_943_040
    m = training_memory(arch, lora, Layout(processes=8, kind="ddp"), preference=True, loss="dpo").parts
    assert m["weights"] == 2 * P and m["adapter+optim"] == 16 * 41_943_040 and "reference" not in m

    # QLoRA: the blocks' linear weights at 4 bits (+ block scales), the rest in bf16
    qlora = TrainConfig(adapter="lora", quantization="4bit", lora=LoraConfig(r=16), batch_size=1, max_length=2048)
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    m = training_memory(arch, qlora, Layout(), preference=False, loss=None).parts
    assert m["weights"] == pytest.approx(linear * 0.516 + (P - linear) * 2)
    assert m["weights"] < 6 * GiB


def test_generation_memory_and_vllm_share():
    arch = load_arch(LLAMA3)
    engine = EngineConfig(kind="vllm", max_model_len=4096, gpu_memory_utilization=0.9)
    mem = generation_memory(arch, engine, generations=10_000, prompt_tokens=500, new_tokens=1548)
    assert mem.parts["KV"] == 256 * 2048 * 131072  # 256 sequences of 2048 tokens: 64 GiB
    fits, parts, _ = mem.on(parse_gpus("1xA100-80G"))
    assert fits.startswith("yes, ~")  # over 90 % of 80 GiB: runs with fewer sequences at once
    assert sum(parts.values()) == pytest.approx(0.9 * 80 * GiB)
    fits, _, _ = mem.on(parse_gpus("1xRTX4090-16G"))
    assert fits == "NO"  # 15 GiB of weights + one 4096-token sequence do not fit 90 % of 16 GiB
    tp2 = generation_memory(arch, EngineConfig(kind="vllm", tensor_parallel_size=2), 10, 100, 100)
    assert tp2.parts["weights"] == LLAMA3_PARAMS * 2 / 2
    assert tp2.on(parse_gpus("1xA100-80G"))[0].startswith("NO (needs 2 GPUs)")


def test_parse_gpus():
    g = parse_gpus("8xA100-80G")
    assert (g.count, g.name, g.memory) == (8, "A100-80G", 80 * GiB)
    assert parse_gpus("H100-80GB").count == 1 and parse_gpus("4 x L40S-48G").memory == 48 * GiB
    with pytest.raises(UserError, match="COUNTxNAME-MEMORY"):
        parse_gpus("eight big GPUs")


def test_config_without_decoder_fields_is_a_clear_error():
    with pytest.raises(UserError, match="hidden_size"):
        arch_from_config({"model_type": "ranker", "ranker_type": "pairranker"}, "x/ranker", "hub")


def test_plan_prints_every_stage_of_every_round(capsys):
    recipe = ROOT / "recipes" / "llama3-8b-synpo.yaml"
    assert cli(["plan", str(recipe), "--gpus", "8xA100-80G"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "8.03B parameters" in out and "ArmoRM" in out
    for stage in ["prompt generator G", "prompts", "π_{t-1} on seed", "improver data: score", "improver R_t",
                  "responses", "refine", "pairs: score", "policy θ_t", "eval alpaca_eval", "eval arena_hard"]:
        assert stage in out, stage
    for t in range(1, 5):
        assert f"θ0 → θ{t}" in out and f"θ0 → R{t}" in out
    assert "SimPO full, ZeRO-3 x8" in out and "≤40.0k pairs" in out  # D grows 10k a round
    assert "every stage fits" in out


def test_plan_verdicts_change_with_the_gpus():
    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", check_files=False)

    def policy_on(spec, r=recipe):
        gpus = parse_gpus(spec)
        return next(s for s in build_plan(r, gpus)[0] if s.stage == "policy θ_t").memory.on(gpus)[0]

    assert policy_on("8xA100-80G") == "yes"
    assert policy_on("8xA10-24G") == "NO"
    assert policy_on("4xA100-80G") == "yes"  # ZeRO-3 over the 4 GPUs there are
    pinned = load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", ["runtime.gpus=8"], check_files=False)
    assert policy_on("4xA100-80G", pinned) == "NO (needs 8 GPUs)"
    one = load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", ["train.accelerate_config=null",
                                                                  "train.num_processes=null"], check_files=False)
    single = next(s for s in build_plan(one)[0] if s.stage == "policy θ_t")
    # one process: fp32 master weights + fp32 gradients + Adam's m and v = 16 bytes per parameter
    # (a bf16 model's weights are stepped in fp32: in bf16 an lr 1e-6 step rounds away)
    assert single.memory.parts["weights"] + single.memory.parts["grads"] + single.memory.parts["optim"] \
        == 16 * LLAMA3_PARAMS
    assert single.memory.on(parse_gpus("1xA100-40G"))[0] == "NO"


def test_plan_refuses_custom_code_scorer_without_trust():
    code = cli(["plan", str(ROOT / "recipes" / "llama3-8b-synpo.yaml"), "--set", "scorer.trust_remote_code=false"])
    assert code == 2


def test_plan_offline_hub_id_is_a_clear_error():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNPO_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "synpo.cli", "plan", str(ROOT / "recipes" / "llama3-8b-synpo.yaml"),
                           "--set", "model.path=some-org/not-a-preset-7b"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert "some-org/not-a-preset-7b: cannot read its config.json" in proc.stderr


# ---- hours: the throughput model against hand-computed cases ------------------------------


def test_generation_hours_by_hand_compute_bound_and_memory_bound():
    from synpo.plan import Load, stage_seconds

    arch = load_arch(LLAMA3)  # 8,030,261,248 parameters, bf16; KV 131,072 bytes per token
    gpus = parse_gpus("1xA100-80G")  # 312e12 FLOP/s, 2.039e12 B/s, 80 GiB
    vllm = EngineConfig(kind="vllm", data_parallel_size=1)
    load = Load("generate", arch, sequences=1000, prompt_tokens=100, new_tokens=1000, prompts=1000, engine=vllm)
    # KV room 0.9·80 GiB - 2 GiB - 16,060,522,496 B = 59,101,405,184 B; one 1,100-token sequence
    # holds 144,179,200 B: 409 fit, vLLM runs at most 256 -> batch 256.
    # A step reads 16,060,522,496 + 256·600·131,072 = 36,193,181,696 B: 36.19e9 / (0.8·2.039e12) = 22.19 ms;
    # it computes 2·P·256 = 4.1115e12 FLOP: / (0.5·312e12) = 26.36 ms -> compute-bound, 26.356 ms.
    decode = 1000 / 256 * 1000 * (2 * 8_030_261_248 * 256 / 156e12)
    prefill = 2 * 8_030_261_248 * 100 * 1000 / 156e12  # 10.29 s
    assert decode + prefill == pytest.approx(113.25, abs=0.01)
    assert stage_seconds(load, gpus) == pytest.approx(decode + prefill, rel=1e-9)

    # the hf engine at batch 16: a step reads 16,060,522,496 + 16·600·131,072 = 17,318,813,696 B
    # (10.62 ms) and computes 1.65 ms of FLOPs -> memory-bound
    hf = Load("generate", arch, 1000, 100, 1000, prompts=1000, engine=EngineConfig(kind="hf", batch_size=16))
    by_hand = 1000 / 16 * 1000 * 17_318_813_696 / (0.8 * 2.039e12) + prefill
    assert by_hand == pytest.approx(673.9, abs=0.1)
    assert stage_seconds(hf, gpus) == pytest.approx(by_hand, rel=1e-9)

    # 8 engines on 8 GPUs: 125 sequences each, a batch of 125 (memory-bound), 125 prompts prefilled each
    eight = Load("generate", arch, 1000, 100, 1000, prompts=1000, engine=EngineConfig(kind="vllm"))
    step = (16_060_522_496 + 125 * 600 * 131_072) / (0.8 * 2.039e12)
    assert stage_seconds(eight, parse_gpus("8xA100-80G")) == pytest.approx(
        1000 * step + prefill / 8, rel=1e-9)


def test_training_and_scoring_hours_by_hand():
    from synpo.plan import Load, stage_seconds, training_flops_per_token

    arch = load_arch(LLAMA3)
    cfg = TrainConfig(adapter="full", gradient_checkpointing=True, max_length=2048)
    assert training_flops_per_token(arch, cfg, dpo_reference=False) == 8 * LLAMA3_PARAMS  # 6 + 2 (checkpointing)
    assert training_flops_per_token(arch, cfg.model_copy(update={"adapter": "lora"}), True) == 8 * LLAMA3_PARAMS
    # 10k pairs x 1 epoch, chosen + rejected, 2,048 tokens, 8 processes at 40 % of 312e12
    train = Load("train", arch, 20_000, new_tokens=2048, processes=8, flops_per_token=8 * LLAMA3_PARAMS)
    assert stage_seconds(train, parse_gpus("8xA100-80G")) == pytest.approx(
        8 * 8_030_261_248 * 20_000 * 2048 / (8 * 312e12 * 0.4), rel=1e-9)  # 2,635 s
    score = Load("score", arch, 2 * 50_000, new_tokens=2560, copies=None)  # one copy per GPU
    assert stage_seconds(score, parse_gpus("8xH100")) == pytest.approx(
        2 * 8_030_261_248 * 100_000 * 2560 / (8 * 989e12 * 0.5), rel=1e-9)
    assert stage_seconds(score, parse_gpus("8xA10-24G")) is None  # no spec: no hours


def test_gpu_names_without_memory_and_their_specs():
    assert parse_gpus("8xH100").name == "H100-80G" and parse_gpus("8xH100").speed == (989e12, 3.35e12)
    assert parse_gpus("h200").count == 1 and parse_gpus("h200").name == "H200-141G"
    assert parse_gpus("4xL40S").memory == 48 * GiB
    assert parse_gpus("8xA100-40G").speed == (312e12, 1.555e12)
    with pytest.raises(UserError):
        parse_gpus("8xA100")  # sold as 40 and 80 GB: say which


def test_plan_hours_before_and_after_data_parallelism(capsys):
    from synpo.plan import hours_summary

    gpus = parse_gpus("8xA100-80G")
    single = ["engine.data_parallel_size=1", "scorer.data_parallel_size=1"]
    before = hours_summary(build_plan(load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml", single,
                                                  check_files=False), gpus)[0], gpus)
    after = hours_summary(build_plan(load_recipe(ROOT / "recipes" / "llama3-8b-synpo.yaml",
                                                 check_files=False), gpus)[0], gpus)
    assert before["top"] == "refine"  # one engine: generation dominates
    assert after["total"] < before["total"] / 3
    assert [r["round"] for r in after["rounds"]] == ["0", "once", "1", "2", "3", "4"]
    assert sum(r["hours"] for r in after["rounds"]) == pytest.approx(after["total"])
    assert cli(["plan", str(ROOT / "recipes" / "llama3-8b-synpo.yaml"), "--gpus", "8xA100-80G"]) == 0
    out = capsys.readouterr().out
    assert "estimated hours on 8 x A100-80G" in out and "total" in out
    assert "vLLM tp=1 x8" in out and "reward model, batch 16 x8" in out  # the default: one per GPU


def test_plan_walks_the_loops_stage_list_for_every_variant():
    """synpo plan and the loop walk one stage list: the ablations' and the SFT control's stages appear
    in the plan exactly as the loop runs them."""
    from synpo.iterate import run_stages

    base = ROOT / "recipes" / "tiny-cpu.yaml"
    for overrides in ([], ["train.loss=sft"], ["improver.trained=false"], ["prompt_generator.enabled=false"],
                      ["pairs.strategy=sampling_ranking"], ["train.start=previous"]):
        recipe = load_recipe(base, overrides)
        steps, _ = build_plan(recipe)
        stages = run_stages(recipe)
        names = [s.stage for s in steps]
        assert names.count("improver R_t") == sum(s.key.endswith("/improver") for s in stages), overrides
        assert names.count("prompt generator G") == sum(s.key == "prompt_generator" for s in stages), overrides
        assert names.count("prompts") == sum(type(s.inputs).__name__ == "PromptWriting" for s in stages)
        assert names.count("policy θ_t") == recipe.rounds
        policy = [s for s in steps if s.stage == "policy θ_t"]
        if overrides == ["train.loss=sft"]:
            assert policy[0].runs_as.startswith("SFT (chosen)")
        if overrides == ["train.start=previous"]:
            assert [s.model for s in policy] == ["θ0 → θ1", "θ1 → θ2", "θ2 → θ3"]
        if overrides == ["pairs.strategy=sampling_ranking"]:
            assert "responses (π_{t-1} x4)" in names and "refine" not in names


def test_host_memory_of_training_stages():
    """Host RAM of the node: ZeRO-3 without zero3_init loads the whole model in every process first;
    PeriodicLoRA on a bf16 base keeps a 2-byte rounding carry per folded weight in every process."""
    from synpo.plan import training_host_memory

    arch = load_arch(LLAMA3)
    P = LLAMA3_PARAMS
    loading = Layout(processes=8, kind="deepspeed", zero_stage=3, init_sharded=False)
    full = TrainConfig(adapter="full")
    assert training_host_memory(arch, full, loading, reference=False) == {"loading": 8 * 2 * P}
    assert training_host_memory(arch, full, loading, reference=True) == {"loading": 8 * 2 * 2 * P}
    assert training_memory(arch, full, loading, preference=True, loss="simpo").host == {"loading": 8 * 2 * P}
    ddp = Layout(processes=8, kind="ddp")
    periodic = TrainConfig(adapter="periodic_lora", lora=LoraConfig(r=64))
    carry = training_host_memory(arch, periodic, ddp, reference=False)["fold carry"]
    assert carry == 8 * 2 * arch.block_linear_params() and 90 * GiB < carry < 110 * GiB  # not fp32's ~210 GiB
    assert training_host_memory(arch, TrainConfig(adapter="lora"), ddp, reference=False) == {}


def test_plan_shows_host_memory(capsys):
    assert cli(["plan", str(ROOT / "recipes" / "llama3-8b-synpo.yaml"), "--gpus", "8xA100-80G"]) == 0
    out = capsys.readouterr().out
    assert "host: the node's RAM" in out
    policy = next(line for line in out.splitlines() if "policy θ_t" in line)
    assert f"{8 * 2 * LLAMA3_PARAMS / GiB:.0f} L" in policy


def test_generation_hours_follow_the_waves_of_jobs():
    """vLLM workers take jobs cut to fill every engine in each wave; hf workers take whole shards."""
    from synpo.plan import busiest_engine

    assert busiest_engine(805, 8, 2048, "vllm") == 101  # not 805 on one GPU
    assert busiest_engine(18000, 8, 2048, "vllm") == 2250  # two waves of 1125
    assert busiest_engine(18000, 8, 2048, "hf") == 2 * 2048  # nine shards: a second wave of one
    assert busiest_engine(805, 8, 2048, "hf") == 805 and busiest_engine(805, 1, 2048, "vllm") == 805


@pytest.mark.parametrize("recipe", ["llama3-8b-synpo", "mistral-7b-synpo-lora"])
def test_one_gpu_count_decides_every_training_stage(recipe, capsys):
    """The paper recipes name no process count: the planned GPUs (or runtime.gpus, or the visible
    GPUs when a run starts) decide G's, R_t's and θ_t's alike; a section's num_processes still wins."""
    from synpo.training.distributed import read_accelerate_config

    path = ROOT / "recipes" / f"{recipe}.yaml"
    kind = "ZeRO-3" if "lora" not in recipe else "DDP"
    assert cli(["plan", str(path), "--gpus", "2xH200"]) == 0
    out = capsys.readouterr().out
    assert "needs 8 GPUs" not in out and " x8 " not in out.replace("│", " ")
    assert out.count(f"{kind} x2") == 1 + 2 * 4  # G once, R_t and θ_t in each of 4 rounds
    loaded = load_recipe(path, ["runtime.gpus=4"], check_files=False)
    sections = [loaded.prompt_generator.train, loaded.improver.train, loaded.train]
    assert [read_accelerate_config(c, loaded.runtime.gpus).processes for c in sections] == [4, 4, 4]
    steps, _ = build_plan(loaded, parse_gpus("8xH200"))  # runtime.gpus pins the count: 4 of the 8
    assert {s.runs_as.split(", ")[-1] for s in steps if s.load and s.load.kind == "train"} == {f"{kind} x4"}
    own = load_recipe(path, ["runtime.gpus=4", "train.num_processes=2"], check_files=False)
    assert read_accelerate_config(own.train, own.runtime.gpus).processes == 2
    assert read_accelerate_config(own.improver.train, own.runtime.gpus).processes == 4
