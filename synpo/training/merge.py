"""Saving what a training job produced, as a standard Hugging Face directory.

- full fine-tuning: the model.
- LoRA, merge=False: the adapter alone (PEFT format) plus `synpo_model.json` naming its
  base, so vLLM can serve it with a LoRARequest and the hf engine can merge it on load.
- LoRA, merge=True (the policy θ_t): the adapter folded into a full-precision copy of the
  base. A 4-bit/8-bit base cannot hold merged weights: its quantized weights are dequantized
  to `dtype` first (the weights the adapter was trained against) and the log says so.
- PeriodicLoRA: the callback folds the last stage at the end of training, so the base holds
  the whole update and the output is always the merged model (under ZeRO-3 the sharded
  base is gathered first).

Everything lands in a temporary directory that replaces the output only when complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from synpo.io import atomic_dir
from synpo.progress import log
from synpo.training.job import TrainingJob


def save_trained(trainer, tokenizer, job: TrainingJob, metrics: dict) -> None:
    """Called on every rank (ZeRO-3 gathers weights in save_model); rank 0 writes the output."""
    from peft import PeftModel

    adapter = job.train.adapter
    staging = Path(job.work_dir) / "staging"
    is_main = trainer.accelerator.is_main_process
    gathered = None
    if adapter != "periodic_lora":
        trainer.save_model(str(staging))
    elif trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        # ZeRO-3 shards the (folded) base over the ranks: gather it, collectively, before rank 0 saves.
        gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_deepspeed_enabled:
        # Training is over; rank 0 alone reloads the base below, which under a live ZeRO-3 config
        # transformers would build partitioned (a collective the other ranks never join).
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if not is_main:
        return
    with atomic_dir(job.output) as tmp:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if adapter == "periodic_lora":
            if gathered is not None:
                _base_from_peft_state(gathered, job).save_pretrained(tmp, safe_serialization=True)
            else:  # the callback folded the last stage at train end: merging adds a zero adapter
                model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        elif isinstance(model, PeftModel) and job.merge:
            _merged_lora(model, job, staging).save_pretrained(tmp, safe_serialization=True)
        else:
            for item in staging.iterdir():
                if item.name not in ("training_args.bin",) and not item.name.startswith("tokenizer"):
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            if isinstance(model, PeftModel):
                (tmp / "synpo_model.json").write_text(json.dumps({"base": job.model}) + "\n")
        tokenizer.save_pretrained(tmp)
        _copy_generation_config(job.model, tmp)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(staging, ignore_errors=True)


def _merged_lora(model, job: TrainingJob, staging: Path):
    """The saved adapter merged into a full-precision base (CPU). A quantized base is dequantized
    first: the adapter then sits on exactly the weights it was trained against."""
    from peft import PeftModel

    from synpo.models import load_causal_lm

    dtype, trust = job.base.dtype, job.base.trust_remote_code
    quantization = job.train.quantization
    if not quantization:
        return load_causal_lm(job.model, dtype=dtype, adapter=str(staging), device="cpu", trust_remote_code=trust)
    from synpo.training.quantization import dequantized_base

    log(f"merging: the {quantization} base is dequantized to {dtype} before the adapter is merged "
        "(a quantized layer cannot hold merged weights)")
    base = dequantized_base(model, job.model, dtype=dtype, trust_remote_code=trust)
    return PeftModel.from_pretrained(base, str(staging)).merge_and_unload()


def _base_from_peft_state(state: dict, job: TrainingJob):
    """A base model loaded with the base weights of a PEFT model's full state dict (LoRA dropped:
    after PeriodicLoRA's final fold the adapter is zero and the base holds the whole update)."""
    from synpo.models import load_causal_lm

    base = load_causal_lm(job.model, dtype=job.base.dtype, device="cpu",
                          trust_remote_code=job.base.trust_remote_code)
    weights = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        weights[key] = value
    missing, unexpected = base.load_state_dict(weights, strict=False)
    tied = set(getattr(base, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"PeriodicLoRA save: gathered state does not match the base (missing "
                           f"{sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
    return base


def _copy_generation_config(base: str, out: Path) -> None:
    """Keep the base's generation config (end-of-turn ids, defaults) on the trained model."""
    from transformers import GenerationConfig

    with contextlib.suppress(OSError):
        GenerationConfig.from_pretrained(base).save_pretrained(out)
