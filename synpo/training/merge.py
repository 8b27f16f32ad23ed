"""Saving what a training job produced, as a standard Hugging Face directory.

- full fine-tuning: the model.
- LoRA, merge=False: the adapter alone (PEFT format) plus `synpo_model.json` naming its
  base, so vLLM can serve it with a LoRARequest and the hf engine can merge it on load.
- LoRA, merge=True (the policy θ_t): the adapter folded into a full-precision copy of the
  base. A 4-bit/8-bit base cannot hold merged weights, so it is reloaded in `dtype` first
  (dequantised) and the log says so.
- PeriodicLoRA: earlier stages already live in the base weights, so the output is always
  the merged model.

Everything lands in a temporary directory that replaces the output only when complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from synpo.io import atomic_dir
from synpo.progress import log


def load_trained(path: str, base: str | None = None, **kwargs):
    """Load a model saved by `save_trained` (a full model, or base + adapter merged)."""
    from synpo.models import load_causal_lm

    meta = Path(path) / "synpo_model.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        return load_causal_lm(base or info["base"], adapter=path, **kwargs)
    return load_causal_lm(path, **kwargs)


def save_trained(trainer, tokenizer, spec: dict, merge: bool, metrics: dict) -> None:
    """Called on every rank (ZeRO-3 gathers weights in save_model); rank 0 writes the output."""
    from peft import PeftModel

    adapter = spec["train"].get("adapter", "lora")
    staging = Path(spec["work_dir"]) / "staging"
    is_main = trainer.accelerator.is_main_process
    if adapter != "periodic_lora":
        trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return
    with atomic_dir(spec["output"]) as tmp:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if adapter == "periodic_lora":
            # Fold the last stage too; the base already holds the earlier ones.
            model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        elif isinstance(model, PeftModel) and merge:
            from synpo.models import load_causal_lm

            if spec["train"].get("quantization"):
                log(f"merging: the {spec['train']['quantization']} base is reloaded in {spec.get('dtype', 'auto')} "
                    "(dequantised) to hold the merged weights")
            merged = load_causal_lm(spec["model"], dtype=spec.get("dtype", "auto"), adapter=str(staging),
                                    device="cpu", trust_remote_code=spec.get("trust_remote_code", False))
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            for item in staging.iterdir():
                if item.name not in ("training_args.bin",) and not item.name.startswith("tokenizer"):
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            if isinstance(model, PeftModel):
                (tmp / "synpo_model.json").write_text(json.dumps({"base": spec["model"]}) + "\n")
        tokenizer.save_pretrained(tmp)
        _copy_generation_config(spec["model"], tmp)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(staging, ignore_errors=True)


def _copy_generation_config(base: str, out: Path) -> None:
    """Keep the base's generation config (end-of-turn ids, defaults) on the trained model."""
    from transformers import GenerationConfig

    with contextlib.suppress(OSError):
        GenerationConfig.from_pretrained(base).save_pretrained(out)
