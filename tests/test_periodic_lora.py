"""PeriodicLoRA: what a fold must (and must not) change, inside real TRL trainers."""

from __future__ import annotations

import pytest
import torch
from training_utils import preference_rows, sft_rows, tiny_policy
from transformers import TrainerCallback

from synpo.training.periodic_lora import (
    BASE_FILE,
    PeriodicLoRACallback,
    fold_lora,
    fold_steps,
    lora_layers,
    numerical_rank,
)

torch.set_num_threads(1)
R = 2  # LoRA rank used throughout


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def peft_model(policy, r: int = R, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    base = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    set_seed(seed)
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear",
                                           task_type="CAUSAL_LM"))


PROBE = torch.tensor([[1, 20, 33, 47, 51, 60, 71, 80, 99, 120]])


def logits(model) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=PROBE).logits.clone()
    model.train(was_training)
    return out


def snapshot(model) -> dict:
    """Per LoRA layer: base weight, A, B, and the adapter's current ΔW."""
    snap = {}
    for name, layer in lora_layers(model):
        snap[name] = {"W": layer.get_base_layer().weight.detach().clone(),
                      "A": layer.lora_A["default"].weight.detach().clone(),
                      "B": layer.lora_B["default"].weight.detach().clone(),
                      "delta": layer.get_delta_weight("default").detach().clone()}
    return snap


class Spy(TrainerCallback):
    """Records the model around the fold steps (put one before and one after PeriodicLoRACallback)."""

    def __init__(self, steps):
        self.steps, self.records = set(steps), {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step in self.steps:
            lora = [p for n, p in model.named_parameters() if "lora_" in n]
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            self.records[state.global_step] = {
                "logits": logits(model), "snap": snapshot(model),
                "lora_states": sum(p in inner.state and len(inner.state[p]) > 0 for p in lora),
                "lr": inner.param_groups[0]["lr"]}


def sft_trainer(model, tmp_path, callbacks, steps=6, **args):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from synpo.models import load_tokenizer
    from synpo.toy import TINY_MODEL

    config = SFTConfig(output_dir=str(tmp_path / "trainer"), max_steps=steps, learning_rate=5e-3,
                       per_device_train_batch_size=4, lr_scheduler_type=args.pop("scheduler", "constant"),
                       use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                       disable_tqdm=True, seed=0, data_seed=0, max_length=128, **args)
    return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(sft_rows(32)),
                      processing_class=load_tokenizer(str(TINY_MODEL)), callbacks=callbacks)


def test_fold_steps():
    assert fold_steps(6, stage_steps=2) == [2, 4]
    assert fold_steps(7, stage_steps=2) == [2, 4, 6]
    assert fold_steps(10, stages=4) == [2, 5, 7]  # four stages of 2, 3, 2, 3 steps
    assert fold_steps(3, stages=8) == [1, 2]


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fold_keeps_the_function_and_resets_the_adapter(tmp_path, policy, momentum):
    model = peft_model(policy)
    before, after = Spy([2, 4]), Spy([2, 4])
    periodic = PeriodicLoRACallback(model, stage_steps=2, momentum=momentum)
    trainer = sft_trainer(model, tmp_path, [before, periodic, after])
    trainer.train()
    assert periodic.folded == [2, 4, 6]  # two stage ends and the final fold

    for step in (2, 4):
        pre, post = before.records[step], after.records[step]
        assert pre["lora_states"] > 0  # Adam had state for the LoRA factors ...
        assert post["lora_states"] == 0  # ... and the fold cleared all of it
        assert (pre["logits"] - post["logits"]).abs().max().item() < 1e-4
        for name, old in pre["snap"].items():
            new = post["snap"][name]
            assert old["delta"].abs().max() > 0  # the stage trained something
            # the base took the share 1 - m of the update, the adapter kept m of it
            torch.testing.assert_close(new["W"] - old["W"], (1 - momentum) * old["delta"], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(new["delta"], momentum * old["delta"], rtol=1e-4, atol=1e-6)
            if momentum == 0:
                assert new["B"].abs().max() == 0
                assert not torch.equal(new["A"], old["A"])  # A re-initialised
                # ... as PEFT initialises it: Kaiming-uniform with a = sqrt(5), bound 1/sqrt(fan_in)
                assert new["A"].abs().max() <= 1 / new["A"].shape[1] ** 0.5 + 1e-6
            else:
                torch.testing.assert_close(new["B"], momentum * old["B"])
                assert torch.equal(new["A"], old["A"])
    # After the final fold the base holds everything: the adapter adds nothing.
    for _, layer in lora_layers(model):
        assert layer.lora_B["default"].weight.abs().max() == 0


def _accumulated_updates(policy, tmp_path, callbacks_for):
    model = peft_model(policy)
    start = {n: layer.get_base_layer().weight.detach().clone() for n, layer in lora_layers(model)}
    sft_trainer(model, tmp_path, callbacks_for(model), steps=8).train()
    updates = {}
    for name, layer in lora_layers(model):
        update = layer.get_base_layer().weight.detach() - start[name] + layer.get_delta_weight("default").detach()
        updates[name] = update
    return updates


def test_stages_break_the_rank_bound(tmp_path, policy):
    stages = 4
    periodic = _accumulated_updates(policy, tmp_path / "p", lambda m: [PeriodicLoRACallback(m, stages=stages)])
    plain = _accumulated_updates(policy, tmp_path / "l", lambda m: [])
    ranks = [numerical_rank(u) for u in periodic.values()]
    assert all(R < k <= R * stages for k in ranks), ranks
    assert max(ranks) == R * stages
    assert all(numerical_rank(u) <= R for u in plain.values())  # plain LoRA cannot exceed r


def test_restart_warmup_ramps_the_learning_rate_again(tmp_path, policy):
    model = peft_model(policy)
    spy = Spy(range(1, 9))
    periodic = PeriodicLoRACallback(model, stage_steps=4, restart_warmup=True)
    sft_trainer(model, tmp_path, [periodic, spy], steps=8, scheduler="constant_with_warmup", warmup_steps=2).train()
    lr = {s: r["lr"] for s, r in spy.records.items()}  # the rate the next step will use
    assert lr[3] == lr[2] == 5e-3  # warm-up over, constant
    assert lr[4] < lr[5] < lr[6] == 5e-3  # the fold at step 4 restarted the ramp


def test_dpo_reference_stays_fixed_across_folds(tmp_path, policy):
    """DPO's reference is θ_start: precomputed before training, so the folds (which move the
    adapter-off model that a PEFT DPOTrainer would otherwise use as reference) cannot move it."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from synpo.models import load_tokenizer
    from synpo.toy import TINY_MODEL

    model = peft_model(policy)
    frozen = peft_model(policy).get_base_model().eval()  # an untouched copy of θ_start
    seen = []

    class Recording(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            seen.append({k: inputs[k].detach().clone() for k in ("input_ids", "attention_mask", "completion_mask",
                                                                 "ref_chosen_logps", "ref_rejected_logps")})
            return super()._compute_loss(model, inputs, return_outputs)

    periodic = PeriodicLoRACallback(model, stage_steps=2)
    config = DPOConfig(output_dir=str(tmp_path / "trainer"), max_steps=6, learning_rate=5e-3,
                       per_device_train_batch_size=4, lr_scheduler_type="constant", use_cpu=True, bf16=False,
                       report_to=[], save_strategy="no", disable_tqdm=True, seed=0, max_length=128,
                       precompute_ref_log_probs=True)  # what synpo sets for PeriodicLoRA + DPO
    trainer = Recording(model=model, args=config, train_dataset=Dataset.from_list(preference_rows(32)),
                        processing_class=load_tokenizer(str(TINY_MODEL)), callbacks=[periodic])
    trainer.train()
    assert periodic.folded == [2, 4, 6] and len(seen) == 6

    def completion_logps(net, batch):
        with torch.no_grad():
            out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token = torch.log_softmax(out.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token * batch["completion_mask"][:, 1:]).sum(1).chunk(2)

    moved = 0.0
    for batch in seen:  # steps 1-6, before and after each fold
        chosen, rejected = completion_logps(frozen, batch)
        torch.testing.assert_close(batch["ref_chosen_logps"], chosen, rtol=0, atol=1e-4)
        torch.testing.assert_close(batch["ref_rejected_logps"], rejected, rtol=0, atol=1e-4)
        with model.disable_adapter():  # what a PEFT reference would be now: the folded base
            off_chosen, _ = completion_logps(model.eval(), batch)
        moved = max(moved, (off_chosen - chosen).abs().max().item())
    assert moved > 1e-2  # the folds did move the adapter-off model: a PEFT reference would have drifted


def test_resume_after_folds_restores_the_folded_base(tmp_path, policy, monkeypatch):
    """A run killed after a fold and resumed from its checkpoint ends where an uninterrupted run ends."""
    from training_utils import training_job

    import synpo.training.trainers as trainers

    rows = preference_rows(32)
    common = dict(adapter="periodic_lora", periodic={"stage_steps": 2}, max_steps=6, scheduler="cosine",
                  warmup_ratio=0.2)
    whole = training_job(tmp_path, policy, "preference", rows, name="whole", **common)
    trainers.train(whole)

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise KeyboardInterrupt("killed")

    resumed = training_job(tmp_path, policy, "preference", rows, name="resumed", checkpoint_steps=4, **common)
    real_callbacks = trainers._callbacks
    monkeypatch.setattr(trainers, "_callbacks", lambda cfg, model: real_callbacks(cfg, model) + [Kill()])
    with pytest.raises(KeyboardInterrupt):
        trainers.train(resumed)
    checkpoint = tmp_path / "resumed" / "work" / "trainer" / "checkpoint-4"
    assert (checkpoint / BASE_FILE).exists()
    monkeypatch.setattr(trainers, "_callbacks", real_callbacks)
    trainers.train(resumed)

    from safetensors.torch import load_file

    a = load_file(f"{whole.output}/model.safetensors")
    b = load_file(f"{resumed.output}/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_fold_refuses_dora(policy):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        fold_lora(model)
