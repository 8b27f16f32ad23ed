"""Tiny random-weight stand-ins for the paper's models, built locally (no hub).

- `build_reward_model(dir)`: a Llama-architecture `LlamaForSequenceClassification` with one
  output, the tiny tokenizer and a chat template of its own (not the policy's); pad = eos, and
  the template ends every turn with eos, the case that trips last-token pooling.
- `build_armo_like(dir)`: the same backbone behind a custom-code class (config `auto_map`),
  ArmoRM-style: several objective heads, the `score` output, last token = before the first pad.
- `build_tiny_pairrm(dir)`: a PairRM-architecture ranker (llm-blender's CrossCompareReranker on a
  tiny random DeBERTa-v2), saved as llm-blender saves one; needs llm-blender installed.
- `paper_to_tiny(...)`: `--set` overrides that run a paper recipe on the tiny policy, toy seed and
  corpus, the hf engine standing in for vLLM, one process, one round, small counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RM_TEMPLATE = ("{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + eos_token }}"
               "{% endfor %}")

ARMO_CODE = '''
from dataclasses import dataclass

import torch
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class RewardOutput(ModelOutput):
    rewards: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None


class TinyRewardModelWithGating(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression_layer = torch.nn.Linear(config.hidden_size, config.num_objectives, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        # ArmoRM's convention: the last token is the one before the first pad (right padding)
        last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        rewards = self.regression_layer(hidden[torch.arange(hidden.shape[0]), last])
        return RewardOutput(rewards=rewards, score=rewards.mean(-1, keepdim=True))
'''


def _tokenizer():
    from transformers import AutoTokenizer

    from synpo.toy import TINY_MODEL

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tok.chat_template = RM_TEMPLATE
    tok.pad_token = tok.eos_token
    return tok


def _config(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       initializer_range=0.2, **extra)


def build_reward_model(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    tok = _tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tok, num_labels=1))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_armo_like(out: Path, seed: int = 0) -> Path:
    import importlib.util

    import torch

    out.mkdir(parents=True, exist_ok=True)
    (out / "modeling_custom.py").write_text(ARMO_CODE)
    spec = importlib.util.spec_from_file_location("tiny_armo_modeling", out / "modeling_custom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tok = _tokenizer()
    torch.manual_seed(seed)
    config = _config(tok, num_objectives=3)
    model = module.TinyRewardModelWithGating(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = ["TinyRewardModelWithGating"]
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.TinyRewardModelWithGating"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def copy_policy(out: Path) -> Path:
    """The tiny policy as a plain local checkpoint directory (stands in for the 7-8B SFT model)."""
    from synpo.toy import TINY_MODEL

    shutil.copytree(TINY_MODEL, out)
    return out


def paper_to_tiny(policy: Path, reward_model: Path, scorer_kind: str = "reward_model") -> list[str]:
    train = ["accelerate_config=null", "num_processes=null", "gradient_checkpointing=false", "max_steps=8",
             "batch_size=16", "max_length=256", "learning_rate=1.0e-3", "warmup_ratio=0.05"]
    # G must learn the <question> format to write any prompt: more steps at a higher rate
    generator = [o for o in train if not o.startswith(("max_steps", "learning_rate"))]
    generator += ["max_steps=24", "learning_rate=3.0e-3"]
    return [
        "rounds=1",
        f"model.path={policy}", "model.dtype=float32",
        "data.seed.path=toy:seed.jsonl", "data.seed.format=jsonl", "data.seed.prompt_field=prompt",
        "data.seed.response_field=response", "data.seed.limit=256",
        "data.corpus.path=toy:corpus.jsonl", "data.corpus.format=jsonl", "data.corpus.text_field=text",
        "data.corpus.split_paragraphs=false",
        "engine.kind=hf", "engine.python=null", "engine.max_model_len=null", "engine.batch_size=32",
        "engine.shard_size=32",
        f"scorer.kind={scorer_kind}", f"scorer.path={reward_model}", "scorer.max_length=256", "scorer.batch_size=16",
        "prompt_generator.num_prompts=96", "prompt_generator.sampling.max_new_tokens=48",
        "prompt_generator.max_prompt_chars=200",
        *[f"prompt_generator.train.{o}" for o in generator], *[f"improver.train.{o}" for o in train],
        "improver.gap=-1.0e9", "improver.seed_sampling.max_new_tokens=32", "improver.sampling.max_new_tokens=32",
        "responses.sampling.max_new_tokens=32",
        "pairs.gap=-1.0e9", "pairs.per_round=32",  # random reward weights: keep every pair, D is never empty
        *[f"train.{o}" for o in train if not o.startswith("learning_rate")], "train.learning_rate=5.0e-4",
        "train.batch_size=8",
        "eval.suites=[toy]", "eval.limit=16", "eval.judge=null", "eval.sampling.max_new_tokens=32",
        "runtime.device=cpu", "runtime.isolate=never", "runtime.threads=1",
    ]


def build_tiny_pairrm(root: Path, seed: int = 0) -> Path:
    """root/pairrm: config.json (llm-blender's RankerConfig) + model.safetensors, on root/backbone."""
    import safetensors.torch
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

    from synpo.scoring.pairwise import _import_blender
    from synpo.toy import TINY_MODEL

    _import_blender()
    from llm_blender.blender.blender_utils import load_ranker
    from llm_blender.pair_ranker.config import RankerConfig

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    bos, eos = tok.bos_token, tok.eos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(  # DeBERTa-style [CLS] text [SEP]
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tok.bos_token_id), (eos, tok.eos_token_id)])
    tok.sep_token, tok.cls_token = eos, bos
    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                             position_buckets=64, pos_att_type=["p2c", "c2p"], pad_token_id=tok.pad_token_id)
    backbone = root / "backbone"
    DebertaV2Model(config).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    ranker_config = RankerConfig(ranker_type="pairranker", model_type="deberta", model_name=str(backbone),
                                 source_maxlength=64, candidate_maxlength=32, fp16=False)
    ranker, _, _ = load_ranker(ranker_config)
    out = root / "pairrm"
    out.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(ranker, str(out / "model.safetensors"))
    saved = ranker_config.to_dict()
    saved.pop("device", None)
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    return out
