"""Training modes end to end: LoRA, PeriodicLoRA, full, QLoRA, and multi-process training.

The multi-process tests start real `accelerate launch` jobs (2 CPU processes over gloo, or
DeepSpeed ZeRO-3 where the `deepspeed` extra is installed) with the command the orchestrator
builds (`synpo.training.distributed.accelerate_command`) and compare them with one process trained
on the same global batch.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, child_env, run_iterate
from safetensors.torch import load_file
from training_utils import preference_rows, sft_rows, tiny_policy, training_job

from synpo.recipe import PolicyTrainConfig
from synpo.training.distributed import accelerate_command, read_accelerate_config, threads_per_rank
from synpo.training.job import TrainingJob

torch.set_num_threads(1)
DRIVER = Path(__file__).parent / "rank_dump.py"


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _periodic(adapter: str) -> dict:
    return {"periodic": {"stage_steps": 2}} if adapter == "periodic_lora" else {}


def _run_job(job: TrainingJob, processes: int = 1, accelerate_config: str | None = None, monkeypatch=None) -> None:
    """One process: in this process. Several: `accelerate launch` with the orchestrator's command,
    running the driver (the real job, plus a weights dump per rank)."""
    job_path = Path(job.work_dir) / "job.json"
    job_path.write_text(job.model_dump_json())
    if processes == 1 and accelerate_config is None:
        import rank_dump

        import synpo.training.merge as merge
        from synpo.training.trainers import train

        monkeypatch.setattr(merge, "save_trained", rank_dump._dump_then_save)
        train(job)
        return
    acc = read_accelerate_config(job.train.model_copy(update={"num_processes": processes,
                                                              "accelerate_config": accelerate_config}))
    assert acc.processes == processes
    proc = subprocess.run(accelerate_command(acc) + [str(DRIVER), str(job_path)], capture_output=True, text=True,
                          env=child_env(), timeout=900)
    # The rank's own traceback comes before torch elastic's summary: show both.
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "it/s]" not in line)[-8000:]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("loss,adapter", [("dpo", "periodic_lora"), ("simpo", "periodic_lora"), ("simpo", "full")])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, policy, loss, adapter, monkeypatch):
    rows = preference_rows(32)
    # Adam normalises every coordinate's step, so the round-off of summing a batch in another
    # order (two ranks' mean vs one mean) becomes a weight difference proportional to the
    # learning rate wherever a gradient is near zero. Full fine-tuning has many such weights:
    # at lr 1e-3 it ends ~1.5e-5 apart (4e-5 of the update's norm) on some CPUs, so it is
    # compared at 1e-4. PeriodicLoRA at lr 1e-3 ends up to ~1.4e-5 apart on some CPUs too. So the
    # bound is a twentieth of one Adam step (lr), and relative to the whole update below.
    lr = 1e-4 if adapter == "full" else 1e-3
    common = dict(loss=loss, adapter=adapter, max_steps=6, learning_rate=lr, **_periodic(adapter))
    two = training_job(tmp_path, policy, "preference", rows, name="two", batch_size=2, **common)
    one = training_job(tmp_path, policy, "preference", rows, name="one", batch_size=4, **common)
    _run_job(two, processes=2)
    _run_job(one, processes=1, monkeypatch=monkeypatch)

    rank0, rank1 = (load_file(str(Path(two.work_dir) / f"rank{r}.safetensors")) for r in (0, 1))
    assert _max_diff(rank0, rank1) == 0.0  # DDP ranks end bit-identical (folds included)
    single = load_file(str(Path(one.work_dir) / "rank0.safetensors"))
    assert _max_diff(rank0, single) < 0.05 * lr
    start = load_file(str(policy / "model.safetensors"))
    if adapter == "full":  # the two runs differ by a negligible share of what training changed
        keys = [k for k in single if k in start]  # the saved start ties lm_head to the embeddings
        update = sum((single[k].double() - start[k].double()).norm() ** 2 for k in keys) ** 0.5
        apart = sum((rank0[k].double() - single[k].double()).norm() ** 2 for k in keys) ** 0.5
        assert apart < 1e-3 * update
    # The saved (merged) models agree too, and training moved them away from the start.
    merged_two = load_file(str(Path(two.output) / "model.safetensors"))
    merged_one = load_file(str(Path(one.output) / "model.safetensors"))
    assert _max_diff(merged_two, merged_one) < 0.05 * lr
    assert _max_diff(merged_two, start) > 1e-4
    keys = [k for k in merged_one if k in start]
    update = sum((merged_one[k].double() - start[k].double()).norm() ** 2 for k in keys) ** 0.5
    apart = sum((merged_two[k].double() - merged_one[k].double()).norm() ** 2 for k in keys) ** 0.5
    assert apart < 1e-3 * update
    metrics = json.loads((Path(two.output) / "train_metrics.json").read_text())
    assert metrics["steps"] == 6


def test_accelerate_command_starts_several_cpu_processes_on_a_free_port(tmp_path):
    acc = read_accelerate_config(PolicyTrainConfig(num_processes=2))
    cmd = accelerate_command(acc)
    assert acc.processes == 2 and "--multi_gpu" in cmd and "--cpu" not in cmd  # `--cpu` would start one process
    assert cmd[cmd.index("--main_process_port") + 1] == "0"
    ddp = str(ROOT / "recipes" / "accelerate" / "ddp.yaml")
    acc = read_accelerate_config(PolicyTrainConfig(accelerate_config=ddp))
    cmd = accelerate_command(acc)
    assert acc.processes == 2 and cmd[cmd.index("--config_file") + 1] == ddp and "--multi_gpu" not in cmd
    acc = read_accelerate_config(PolicyTrainConfig(accelerate_config=ddp, num_processes=3))
    cmd = accelerate_command(acc)
    assert acc.processes == 3 and cmd[cmd.index("--num_processes") + 1] == "3"
    assert not read_accelerate_config(PolicyTrainConfig()).distributed
    assert threads_per_rank(8, 1) >= 1
    assert threads_per_rank(8, 2) <= max(1, len(__import__("os").sched_getaffinity(0)) // 2)


def test_recipe_naming_an_accelerate_config_launches_a_child(monkeypatch, tmp_path):
    """run_training runs `accelerate launch --config_file FILE ... -m synpo.training.launch JOB.json`."""
    import synpo.stages.train as stage
    from synpo.recipe import ModelConfig

    seen = {}
    monkeypatch.setattr(stage, "run_child", lambda cmd, log, env=None: seen.update(cmd=cmd, env=env))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_metrics.json").write_text('{"steps": 1}')
    config = str(ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml")
    job = TrainingJob(kind="preference", model="m", base=ModelConfig(), data="d", output=str(out),
                      work_dir=str(tmp_path), seed=0, merge=True, threads=2,
                      train=PolicyTrainConfig(accelerate_config=config))
    assert stage.run_training(job, isolate="never", logs=tmp_path / "log") == {"steps": 1}
    assert seen["cmd"][1:3] == ["-m", "accelerate.commands.launch"]
    assert seen["cmd"][-3:] == ["-m", "synpo.training.launch", str(tmp_path / "job.json")]
    assert config in seen["cmd"]
    written = TrainingJob.model_validate_json((tmp_path / "job.json").read_text())
    assert int(seen["env"]["OMP_NUM_THREADS"]) == written.threads <= 2
    assert written == job.model_copy(update={"threads": written.threads})  # the job the ranks run, unchanged


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")
@pytest.mark.parametrize("loss,adapter", [("dpo", "periodic_lora"), ("simpo", "lora")])
def test_deepspeed_zero3_on_cpu_matches_one_process(tmp_path, policy, loss, adapter, monkeypatch):
    rows = preference_rows(32)
    common = dict(loss=loss, adapter=adapter, max_steps=4, **_periodic(adapter))
    zero3 = training_job(tmp_path, policy, "preference", rows, name="zero3", batch_size=2, **common)
    one = training_job(tmp_path, policy, "preference", rows, name="one", batch_size=4, **common)
    _run_job(zero3, processes=2, accelerate_config=str(ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml"))
    _run_job(one, processes=1, monkeypatch=monkeypatch)
    merged_zero3 = load_file(str(Path(zero3.output) / "model.safetensors"))
    merged_one = load_file(str(Path(one.output) / "model.safetensors"))
    assert _max_diff(merged_zero3, merged_one) < 1e-4  # ZeRO reduces in its own order


def _bnb_runs_here() -> bool:
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    try:
        from synpo.models import bnb_config

        bnb_config("4bit")
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _bnb_runs_here(), reason="bitsandbytes (extra `bnb`) is not installed or does not run here")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_and_merges_into_a_dequantized_base(tmp_path, policy, bits, capfd):
    from synpo.models import load_causal_lm
    from synpo.training.trainers import train

    job = training_job(tmp_path, policy, "preference", preference_rows(16), name=bits, adapter="lora",
                       quantization=bits, max_steps=3)
    metrics = train(job)
    assert metrics["steps"] == 3
    assert "dequantized" in capfd.readouterr().err
    merged = load_causal_lm(job.output, dtype="float32")
    start = load_causal_lm(str(policy), dtype="float32")
    weight = dict(merged.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    assert weight.dtype == torch.float32 and type(weight).__name__ == "Parameter"  # a plain full-precision model
    assert (weight - dict(start.named_parameters())["model.layers.0.self_attn.q_proj.weight"]).abs().max() > 0


@pytest.mark.skipif(not _bnb_runs_here(), reason="bitsandbytes (extra `bnb`) is not installed or does not run here")
def test_dequantized_merge_computes_what_was_trained(tmp_path, policy):
    """Quantized base + adapter (the trained function) == the adapter merged into the dequantized base."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from synpo.models import load_causal_lm
    from synpo.training.quantization import dequantized_base

    quantized = load_causal_lm(str(policy), dtype="float32", quantization="4bit")
    model = get_peft_model(quantized, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # a trained-looking adapter
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 20, 33, 47, 51, 60, 71]])
    with torch.no_grad():
        # train mode: bitsandbytes' fp32 path (in eval it may switch to a bf16 CPU kernel and repack)
        trained = model.train()(input_ids=ids).logits
        merged = PeftModel.from_pretrained(dequantized_base(model, str(policy), dtype="float32"),
                                           str(tmp_path / "adapter")).merge_and_unload()
        naive = load_causal_lm(str(policy), dtype="float32", adapter=str(tmp_path / "adapter"))
        gap_merged = (merged(input_ids=ids).logits - trained).abs().max().item()
        gap_naive = (naive(input_ids=ids).logits - trained).abs().max().item()
    assert gap_merged < 1e-4 < 1e-2 < gap_naive  # the original full-precision base is not what was trained


def test_full_and_lora_sft_still_train(tmp_path, policy):
    from synpo.training.trainers import train

    for adapter in ("full", "lora"):
        job = training_job(tmp_path, policy, "sft", sft_rows(16), name=adapter, adapter=adapter, max_steps=3)
        assert train(job)["steps"] == 3
        files = {p.name for p in Path(job.output).iterdir()}
        assert ("adapter_model.safetensors" in files) == (adapter == "lora")


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["periodic_lora", "full"])
def test_tiny_recipe_runs_with_adapter(tmp_path, adapter):
    proc = run_iterate(tmp_path / "run", f"train.adapter={adapter}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "round_01" / "policy" / "train_metrics.json").read_text())
    assert metrics["steps"] == 12


def test_ranks_that_build_the_training_data_at_once_load_one_published_copy(tmp_path, monkeypatch):
    """Two ranks both find no dataset and both write one: the first rename publishes, the
    second rank's rename fails and it loads the published copy (no rank reads a half-swapped dir)."""
    from datasets import Dataset

    from synpo.models import load_tokenizer
    from synpo.toy import TINY_MODEL
    from synpo.training.trainers import _training_data

    tokenizer = load_tokenizer(str(TINY_MODEL))

    job = training_job(tmp_path, TINY_MODEL, "preference", preference_rows(8), max_length=512)
    work = Path(job.work_dir)
    save = Dataset.save_to_disk
    published = []

    def other_rank_wins(self, target, **kw):
        save(self, target, **kw)
        if not published:  # the other rank finishes first, between our exists-check and our rename
            published.append("racing")  # (its own save_to_disk comes back here: do not race again)
            published[0] = _training_data(job, tokenizer)[0]
            (Path(published[0].cache_files[0]["filename"]).parent / "marker").write_text("first")

    monkeypatch.setattr(Dataset, "save_to_disk", other_rank_wins)
    ours, dropped = _training_data(job, tokenizer)
    assert dropped == 0
    assert Path(ours.cache_files[0]["filename"]).parent == Path(published[0].cache_files[0]["filename"]).parent
    assert (Path(ours.cache_files[0]["filename"]).parent / "marker").read_text() == "first"  # not replaced
    assert len(ours) == 8 and not list(work.glob(".dataset-*"))  # the loser's copy is cleaned up



@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")
@pytest.mark.parametrize("kind,loss", [("preference", "simpo"), ("preference", "dpo"), ("sft", None)])
def test_zero3_with_an_adapter_checkpoints_reentrantly_for_every_trainer(tmp_path, policy, monkeypatch, kind, loss):
    """transformers 5 checkpoints non-reentrantly unless told otherwise, which ZeRO-3 with frozen
    parameters (an adapter's base) cannot take (TRL issue 2514); TRL forces reentrant mode in its SFT
    and DPO trainers, not in CPOTrainer (SimPO). The arguments as accelerate launch's ZeRO-3 sets them."""
    from synpo.training.trainers import build_trainer

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    rows = preference_rows(4) if kind == "preference" else sft_rows(4)
    job = training_job(tmp_path, policy, kind, rows, batch_size=2, adapter="lora", max_steps=1,
                       gradient_checkpointing=True, **({"loss": loss} if loss else {}))
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    try:
        trainer, _, _ = build_trainer(job)
        assert trainer.args.deepspeed_plugin.zero_stage == 3
        assert trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": True}
    finally:  # the ZeRO-3 state a trainer leaves behind would shard the next test's model loading
        unset_hf_deepspeed_config()
        AcceleratorState._reset_state(True)
