"""Generation engines behind one interface (see base.py)."""

from __future__ import annotations

import json
from pathlib import Path

from synpo.engines.base import Completion, Engine, Request, Sampling, generate_sharded
from synpo.models import chat_template_text
from synpo.recipe import EngineConfig, ModelConfig, SamplingConfig

__all__ = ["Completion", "Engine", "Request", "Sampling", "generate", "generate_sharded", "make_engine", "model_ref",
           "sampling_of"]


def model_ref(path: str | Path) -> tuple[str, str | None]:
    """(base model, adapter or None) for a directory saved by synpo's trainers, or a plain model."""
    meta = Path(path) / "synpo_model.json"
    if meta.exists():
        return json.loads(meta.read_text())["base"], str(path)
    return str(path), None


def make_engine(cfg: EngineConfig, model: str | Path, *, dtype: str = "auto", trust_remote_code: bool = False,
                seed: int = 0, chat_template: str | None = None) -> Engine:
    """`chat_template` (the recipe's model.chat_template: Jinja text or a file) overrides the
    tokenizer's; an OpenAI-compatible server renders prompts with its own (`--chat-template`)."""
    from synpo.engines.parallel import DataParallelEngine, wants_workers

    if wants_workers(cfg):  # N workers, each building this same engine on its own GPUs (engines/parallel.py)
        return DataParallelEngine(cfg, model, dict(dtype=dtype, trust_remote_code=trust_remote_code, seed=seed,
                                                   chat_template=chat_template))
    base, adapter = model_ref(model)
    if chat_template:  # text from here on: the vLLM worker may run in another environment
        chat_template = chat_template_text(chat_template)
    if cfg.kind == "hf":
        from synpo.engines.hf import HFEngine

        return HFEngine(base, adapter=adapter, dtype=dtype, batch_size=cfg.batch_size,
                        trust_remote_code=trust_remote_code, chat_template=chat_template)
    if cfg.kind == "vllm":
        from synpo.engines.vllm import VLLMEngine
        from synpo.models import effective_chat_template

        # the worker loads the tokenizer itself: it gets the template as this process renders it
        chat_template = effective_chat_template(base, trust_remote_code, chat_template)

        return VLLMEngine(base, adapter=adapter, cfg=cfg, dtype=dtype, trust_remote_code=trust_remote_code,
                          seed=seed, chat_template=chat_template)
    from synpo.engines.openai import OpenAIEngine

    return OpenAIEngine(cfg, model=str(model))


def engine_for(base: ModelConfig, cfg: EngineConfig, model: str | Path, seed: int = 0) -> Engine:
    """The engine serving `model` (θ0, or a directory synpo trained from it) with θ0's settings."""
    return make_engine(cfg, model, dtype=base.dtype, trust_remote_code=base.trust_remote_code, seed=seed,
                       chat_template=base.chat_template)


def sampling_of(cfg: SamplingConfig, seed: int, n: int = 1, stop: list[str] | None = None) -> Sampling:
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, n=n, seed=seed,
                    stop=list(stop or []))


def generate(model: str | Path, requests: list[Request], sampling: Sampling, *, base: ModelConfig,
             engine: EngineConfig, shard_dir: Path, desc: str) -> list[Completion]:
    """A stage's generation: start the engine, answer every request shard by shard, close it (its GPU
    memory goes back before the next stage starts)."""
    running = engine_for(base, engine, model, seed=sampling.seed)
    try:
        return generate_sharded(running, requests, sampling, shard_dir, shard_size=engine.shard_size, desc=desc)
    finally:
        running.close()
