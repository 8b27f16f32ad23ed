"""Generation engines: the hf engine's contract, the vLLM engine (child process and in-process in
the vLLM venv) against hf and HF+PEFT, the chat-template contract with the trainers'
tokenisation, and a generation stage killed half-way then resumed.

vLLM tests need the separate vLLM environment (scripts/setup_vllm_env.sh; CI exports
SYNPO_VLLM_PYTHON) and skip with that reason where it is absent.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synpo.engines import make_engine
from synpo.engines.base import Completion, Request, Sampling, generate_sharded
from synpo.engines.hf import HFEngine
from synpo.io import read_jsonl
from synpo.recipe import EngineConfig
from synpo.toy import DATA, TINY_MODEL

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def vllm_python() -> str | None:
    for candidate in (os.environ.get("SYNPO_VLLM_PYTHON"), str(ROOT / ".venv-vllm" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


needs_vllm = pytest.mark.skipif(vllm_python() is None, reason="no vLLM environment: run scripts/setup_vllm_env.sh "
                                "(builds .venv-vllm) or set SYNPO_VLLM_PYTHON to a vLLM venv's python")


def benchmark_requests(n: int) -> list[Request]:
    rows = read_jsonl(DATA / "benchmark.jsonl")[:n]
    return [Request(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in rows]


CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Reverse the order of these words: apple dog red"},
                {"role": "assistant", "content": "red dog apple"},
                {"role": "user", "content": "Now sort these numbers in ascending order: 9, 4, 7"}]


@pytest.fixture(scope="module")
def hf():
    return HFEngine(str(TINY_MODEL), dtype="float32", batch_size=16)


@pytest.fixture(scope="module")
def vllm_engine():
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM environment")
    engine = make_engine(EngineConfig(kind="vllm", python=python), TINY_MODEL, dtype="float32")
    yield engine
    engine.close()


# ---- the hf engine ---------------------------------------------------------------------


def test_hf_n_samples_stop_strings_and_lengths(hf):
    requests = benchmark_requests(16)
    greedy = hf.generate(requests, Sampling(n=3, max_new_tokens=24))
    assert all(len(c.texts) == 3 and len(set(c.texts)) == 1 for c in greedy)  # greedy n>1: one answer, repeated
    sampled = hf.generate(requests, Sampling(temperature=1.5, n=4, seed=1, max_new_tokens=24))
    assert all(len(c.texts) == len(c.finish_reasons) == len(c.num_tokens) == 4 for c in sampled)
    assert any(len(set(c.texts)) > 1 for c in sampled)

    short = hf.generate(requests, Sampling(max_new_tokens=2))
    assert "length" in {c.finish_reasons[0] for c in short} and all(c.num_tokens[0] <= 2 for c in short)
    full = [c.text for c in hf.generate(requests, Sampling(max_new_tokens=24))]
    stop = next(t for t in full if len(t) > 2)[1:3]  # a string some answer goes on after
    cut = hf.generate(requests, Sampling(max_new_tokens=24, stop=[stop]))
    for before, after in zip(full, cut):
        assert after.text == (before[: before.index(stop)].strip() if stop in before else before)
        if stop in before:
            assert after.finish_reasons[0] == "stop"


def test_hf_seed_does_not_touch_the_callers_random_state(hf):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hf.generate(benchmark_requests(2), Sampling(temperature=1.0, seed=9, max_new_tokens=8))
    assert torch.equal(torch.rand(3), expected)


# ---- the chat-template contract ----------------------------------------------------------


def trainer_prompt_ids(tmp_path, messages: list[dict]) -> dict[str, list[int]]:
    """The prompt's token ids as TRL's SFTTrainer, DPOTrainer and CPOTrainer (SimPO) tokenise it
    for training, with synpo's tokenizer loading."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from synpo.models import load_tokenizer

    tok = load_tokenizer(str(TINY_MODEL))
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    common = dict(use_cpu=True, bf16=False, report_to=[], max_length=256)
    answer = lambda text: [{"role": "assistant", "content": text}]
    pairs = Dataset.from_list([{"prompt": messages, "chosen": answer("4, 7, 9"), "rejected": answer("9, 7, 4")}])
    sft = SFTTrainer(model=model, processing_class=tok, args=SFTConfig(output_dir=str(tmp_path / "sft"), **common),
                     train_dataset=Dataset.from_list([{"prompt": messages, "completion": answer("4, 7, 9")}]))
    row = sft.train_dataset[0]
    dpo = DPOTrainer(model=model, processing_class=tok, args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     train_dataset=pairs)
    cpo = CPOTrainer(model=model, processing_class=tok, train_dataset=pairs,
                     args=CPOConfig(output_dir=str(tmp_path / "cpo"), loss_type="simpo", cpo_alpha=0.0,
                                    remove_unused_columns=False, **common))
    first_label = next(i for i, label in enumerate(row["labels"]) if label != -100)  # the completion's start
    return {"sft": row["input_ids"][:first_label],
            "dpo": dpo.train_dataset[0]["prompt_ids"],
            "cpo (simpo)": cpo.train_dataset[0]["prompt_input_ids"]}


def test_hf_rendering_matches_the_trainers_with_one_bos(hf, tmp_path):
    ids = hf.render(Request("c", CONVERSATION))
    bos = hf.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1
    # the naive path (tokenizer(text) on the rendered template) would add a second BOS
    text = hf.tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert hf.tokenizer(text)["input_ids"].count(bos) == 2
    for trainer, prompt_ids in trainer_prompt_ids(tmp_path, CONVERSATION).items():
        assert prompt_ids == ids, trainer


@pytest.mark.slow
@needs_vllm
def test_vllm_renders_the_same_token_ids(hf, vllm_engine):
    for messages in (CONVERSATION, [{"role": "user", "content": "What is 3 plus 4?"}]):
        assert vllm_engine.render(Request("c", messages)) == hf.render(Request("c", messages))


# ---- the vLLM engine ---------------------------------------------------------------------


def test_vllm_without_a_vllm_environment_is_a_clear_user_error():
    from synpo.errors import UserError

    if importlib.util.find_spec("vllm") is None:  # vllm is not installed in synpo's environment
        with pytest.raises(UserError, match="setup_vllm_env.sh"):
            make_engine(EngineConfig(kind="vllm"), TINY_MODEL)
    # This python has synpo (and synpo/engines/vllm.py) but no vllm: the worker must not mistake
    # the engine module next to it for the vllm package.
    with pytest.raises(UserError, match="cannot import vllm"):
        make_engine(EngineConfig(kind="vllm", python=sys.executable), TINY_MODEL)


@pytest.mark.slow
@needs_vllm
def test_vllm_greedy_equals_hf(hf, vllm_engine):
    assert vllm_engine.mode == "child"
    requests = benchmark_requests(48)
    sampling = Sampling(max_new_tokens=32)
    expected = hf.generate(requests, sampling)
    got = vllm_engine.generate(requests, sampling)
    assert [c.id for c in got] == [r.id for r in requests]
    assert got == expected  # texts, finish reasons and token counts


@pytest.mark.slow
@needs_vllm
def test_vllm_sampling_n_seed_stop_and_length(vllm_engine):
    requests = benchmark_requests(8)
    a = vllm_engine.generate(requests, Sampling(temperature=1.0, n=3, seed=5, max_new_tokens=24))
    b = vllm_engine.generate(requests, Sampling(temperature=1.0, n=3, seed=5, max_new_tokens=24))
    c = vllm_engine.generate(requests, Sampling(temperature=1.0, n=3, seed=6, max_new_tokens=24))
    assert a == b and a != c
    assert all(len(x.texts) == 3 for x in a) and any(len(set(x.texts)) > 1 for x in a)
    twins = vllm_engine.generate([requests[0], requests[0]], Sampling(temperature=1.5, n=4, seed=5, max_new_tokens=24))
    assert twins[0].texts != twins[1].texts  # one seed per request, not one per prompt text
    greedy = vllm_engine.generate(requests, Sampling(n=2, max_new_tokens=24))
    assert all(len(set(x.texts)) == 1 and len(x.texts) == 2 for x in greedy)
    short = vllm_engine.generate(requests, Sampling(max_new_tokens=2))
    assert "length" in {x.finish_reasons[0] for x in short} and all(x.num_tokens[0] <= 2 for x in short)


def test_context_budgets_cap_answers_and_skip_prompts_that_fill_the_context():
    from synpo.engines.vllm_worker import context_budgets

    assert context_budgets([10, 490, 500, 512, 600], 24, 512) == [24, 22, 12, 0, 0]
    assert context_budgets([10, 600], 24, None) == [24, 24]


@pytest.mark.slow
@needs_vllm
def test_vllm_one_over_long_prompt_does_not_fail_its_shard(vllm_engine, tmp_path):
    """The tiny model's context is 512 tokens: a 600-token prompt is not sent to vLLM (which would
    reject the whole batch, on every rerun), a ~500-token one has its answer capped, both counted."""
    long_text = " ".join(["red blue green"] * 400)
    requests = benchmark_requests(3)
    requests[1] = Request("too-long", [{"role": "user", "content": long_text}])
    near = next(k for k in range(120, 200) if len(vllm_engine.render(Request("x", [{"role": "user", "content":
                " ".join(["red blue green"] * k)}]))) in range(495, 505))
    requests.append(Request("near", [{"role": "user", "content": " ".join(["red blue green"] * near)}]))
    out = generate_sharded(vllm_engine, requests, Sampling(max_new_tokens=24), tmp_path / "shards", shard_size=8)
    assert [c.id for c in out] == [r.id for r in requests]
    assert out[1].finish_reasons == ["prompt_too_long"] and out[1].texts == [""]
    assert all(c.finish_reasons[0] != "prompt_too_long" for c in out[:1] + out[2:])
    assert out[3].num_tokens[0] <= 512 - len(vllm_engine.render(requests[3]))


@pytest.mark.slow
@needs_vllm
def test_vllm_stop_strings_match_hf(hf, vllm_engine):
    requests = benchmark_requests(24)
    sampling = Sampling(max_new_tokens=32, stop=[",", "is"])
    assert vllm_engine.generate(requests, sampling) == hf.generate(requests, sampling)


def make_adapter(out: Path) -> Path:
    """A LoRA adapter on the tiny model, saved the way synpo's trainers save one (PEFT + synpo_model.json)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter): give it small random weights
            p.data = torch.randn(p.shape, generator=generator) * 0.05
    model.save_pretrained(out)
    (out / "synpo_model.json").write_text(json.dumps({"base": str(TINY_MODEL)}) + "\n")
    return out


IN_PROCESS = """
import json, sys
from synpo.engines import make_engine
from synpo.engines.base import Request, Sampling
from synpo.recipe import EngineConfig
requests = [Request(r["id"], r["messages"]) for r in json.loads(sys.argv[1])]
engine = make_engine(EngineConfig(kind="vllm"), sys.argv[2], dtype="float32")  # a synpo adapter dir
out = engine.generate(requests, Sampling(max_new_tokens=32))
print(json.dumps({"mode": engine.mode, "completions": [c.__dict__ for c in out]}))
engine.close()
"""


@pytest.mark.slow
@needs_vllm
def test_vllm_in_process_in_the_vllm_venv_serves_a_lora_adapter_like_hf_peft(hf, tmp_path):
    """synpo imported inside the vLLM venv (not installed there: PYTHONPATH) runs vLLM in-process;
    the stage's model is a LoRA adapter, served on its base through LoRARequest."""
    adapter = make_adapter(tmp_path / "adapter")
    requests = benchmark_requests(32)
    sampling = Sampling(max_new_tokens=32)
    with_peft = HFEngine(str(TINY_MODEL), adapter=str(adapter), dtype="float32").generate(requests, sampling)
    assert with_peft != hf.generate(requests, sampling)  # the adapter changes answers
    payload = json.dumps([{"id": r.id, "messages": r.messages} for r in requests])
    proc = subprocess.run([vllm_python(), "-c", IN_PROCESS, payload, str(adapter)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mode"] == "in-process"
    assert [Completion(**c) for c in result["completions"]] == with_peft


ORPHAN = """
import os, sys, threading, time
from synpo.engines.vllm import VLLMEngine
from synpo.recipe import EngineConfig
threading.Thread(target=VLLMEngine, args=(sys.argv[1],), daemon=True,
                 kwargs=dict(cfg=EngineConfig(kind="vllm", python=sys.argv[2]))).start()
time.sleep(600)
"""


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@needs_vllm
def test_vllm_worker_dies_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, str(TINY_MODEL), vllm_python()],
                              env={**os.environ, "SYNPO_QUIET": "1", "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not children(parent.pid) and time.time() < deadline:
            time.sleep(0.2)
        (worker,) = children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(worker)
    finally:
        parent.kill()


# ---- a generation stage killed half-way, with a real engine --------------------------------


KILLED_STAGE = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from synpo.engines.base import Sampling, generate_sharded
from synpo.engines.hf import HFEngine
sys.path.insert(0, sys.argv[2])
from test_engines import STAGE_SAMPLING, stage_requests

class KilledInThirdShard(HFEngine):  # SIGKILLs itself while generating shard 3 of 6: the same on any machine
    calls = 0

    def generate(self, requests, sampling):
        self.calls += 1
        if self.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(requests, sampling)

generate_sharded(KilledInThirdShard(sys.argv[3], dtype="float32"), stage_requests(), STAGE_SAMPLING, sys.argv[1],
                 shard_size=8)
"""
STAGE_SAMPLING = Sampling(temperature=1.0, seed=11, max_new_tokens=24)


def stage_requests() -> list[Request]:
    return benchmark_requests(48)  # 6 shards of 8


class CountingEngine:
    """The real hf engine, counting the shards it is asked to generate."""

    name = "counting"

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def generate(self, requests, sampling) -> list[Completion]:
        self.calls += 1
        return self.engine.generate(requests, sampling)

    def close(self):
        pass


def test_generation_stage_sigkilled_half_way_regenerates_only_missing_shards(hf, tmp_path):
    shards = tmp_path / "shards"
    script = [sys.executable, "-c", KILLED_STAGE, str(shards), str(Path(__file__).parent), str(TINY_MODEL)]
    proc = subprocess.run(script, env={**os.environ, "SYNPO_QUIET": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    finished = len(list(shards.glob("shard-*.jsonl")))
    assert finished == 2 and not list(shards.glob(".*.tmp"))  # killed mid-stage, between two shard writes

    engine = CountingEngine(hf)
    resumed = generate_sharded(engine, stage_requests(), STAGE_SAMPLING, shards, shard_size=8)
    assert engine.calls == 6 - finished
    uninterrupted = generate_sharded(hf, stage_requests(), STAGE_SAMPLING, tmp_path / "whole", shard_size=8)
    assert resumed == uninterrupted


def test_recipe_chat_template_overrides_the_tokenizers_in_every_local_engine(tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
                        "{% if add_generation_prompt %}ANSWER:{% endif %}")
    engine = make_engine(EngineConfig(kind="hf", batch_size=2), TINY_MODEL, chat_template=str(template))
    try:
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                    add_generation_prompt=True)
    finally:
        engine.close()
    assert text == "<s><<hi>>ANSWER:"  # the recipe's template, with the BOS its tokenizer adds (written once)
    plain = HFEngine(str(TINY_MODEL), batch_size=2)
    assert "<<hi>>" not in plain.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.slow
@needs_vllm
def test_recipe_chat_template_reaches_the_vllm_worker(tmp_path):
    template = ("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
                "{% if add_generation_prompt %}ANSWER:{% endif %}")
    engine = make_engine(EngineConfig(kind="vllm", python=vllm_python()), TINY_MODEL, dtype="float32",
                         chat_template=template)
    try:
        ids = engine.render(Request("t", [{"role": "user", "content": "hi"}]))
    finally:
        engine.close()
    hf = HFEngine(str(TINY_MODEL), batch_size=2, chat_template=template)
    # the template writes no BOS and the tokenizer adds one: both engines render it once, in front
    assert ids == hf.render(Request("t", [{"role": "user", "content": "hi"}]))
    assert hf.tokenizer.decode(ids) == "<s><<hi>>ANSWER:"
