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
ARMO_HEADER = "### assistant:\n"  # ArmoRM gates on the tokens of its template's assistant header

# ArmoRM's modeling_custom.py (RLHFlow/ArmoRM-Llama3-8B-v0.1), shortened but with the same module
# imports, the same decorator on forward, the same config attributes read and the same backbone call
# (past_key_values=, output_attentions=, output_hidden_states=, return_dict=, outputs indexed [0]):
# those are what a transformers release can break. The gating token pattern is ArmoRM's assistant
# header as this tokenizer encodes it (written in by build_armo_like), searched for as ArmoRM does.
ARMO_CODE = '''
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.models.llama.modeling_llama import LLAMA_INPUTS_DOCSTRING
from transformers.utils import ModelOutput
from transformers.utils import add_start_docstrings_to_model_forward

token_pattern = TOKEN_PATTERN


def find_token_for_gating(lst):
    for j in range(len(lst) - len(token_pattern), -1, -1):
        if lst[j:j + len(token_pattern)] == token_pattern:
            return j
    raise ValueError("Token pattern not found in the list.")


@dataclass
class RewardOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    hidden_state: Optional[Tuple[torch.FloatTensor, ...]] = None
    gating_output: Optional[torch.FloatTensor] = None
    score: Optional[torch.FloatTensor] = None


class TinyRewardModelWithGating(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.num_objectives = config.to_dict().get("num_objectives", 19)
        self.regression_layer = nn.Linear(config.hidden_size, self.num_objectives, bias=False)
        self.post_init()
        eye = torch.zeros(self.num_objectives, self.num_objectives)  # ArmoRM: no torch.eye in bf16
        eye[range(self.num_objectives), range(self.num_objectives)] = 1.0
        self.reward_transform_matrix = nn.Parameter(eye)
        self.reward_transform_matrix.requires_grad = False
        self.gating = nn.Linear(config.hidden_size, self.num_objectives)

    @add_start_docstrings_to_model_forward(LLAMA_INPUTS_DOCSTRING)
    def forward(self, input_ids: torch.LongTensor = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None,
                past_key_values: Optional[List[torch.FloatTensor]] = None,
                inputs_embeds: Optional[torch.FloatTensor] = None, labels: Optional[torch.FloatTensor] = None,
                use_cache: Optional[bool] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        transformer_outputs = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                         past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                                         use_cache=use_cache, output_attentions=output_attentions,
                                         output_hidden_states=output_hidden_states, return_dict=return_dict)
        tokens_hidden_states = transformer_outputs[0]
        batch_size = input_ids.shape[0]
        # the last token is the one before the first pad (right padding)
        sequence_lengths = torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1
        sequence_lengths = sequence_lengths % input_ids.shape[-1]
        rows = torch.arange(batch_size, device=tokens_hidden_states.device)
        hidden_states = tokens_hidden_states[rows, sequence_lengths]
        rewards = self.regression_layer(hidden_states)
        gating_token_positions = [find_token_for_gating(ids.tolist()) for ids in input_ids]
        gating_output = F.softmax(self.gating(tokens_hidden_states[rows, gating_token_positions, :]), dim=1)
        score = torch.sum(gating_output * (rewards @ self.reward_transform_matrix), dim=1)
        return RewardOutput(rewards=rewards, hidden_state=hidden_states, gating_output=gating_output, score=score)
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

    from synpo.scoring.reward_model import remote_code_shims

    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    header = tok(ARMO_HEADER, add_special_tokens=False)["input_ids"]
    (out / "modeling_custom.py").write_text(ARMO_CODE.replace("TOKEN_PATTERN", repr(header)))
    spec = importlib.util.spec_from_file_location("tiny_armo_modeling", out / "modeling_custom.py")
    module = importlib.util.module_from_spec(spec)
    remote_code_shims()
    spec.loader.exec_module(module)
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
