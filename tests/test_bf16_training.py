"""bf16 training keeps its updates: full fine-tuning steps fp32 master weights under bf16 autocast,
and PeriodicLoRA's folds into a bf16 base carry their rounding (torch computes bf16 on CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from training_utils import preference_rows, tiny_policy, training_job

from synpo.training.periodic_lora import fold_lora, lora_layers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _weights(directory) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()}


def _one_full_step(tmp_path, policy, dtype: str) -> dict[str, torch.Tensor]:
    from synpo.training.trainers import train

    train(training_job(tmp_path, policy, "preference", preference_rows(8), name=dtype, dtype=dtype, adapter="full",
                       learning_rate=1e-6, max_steps=1, batch_size=4, loss="dpo", beta=0.1))
    before, after = _weights(policy), _weights(tmp_path / dtype / "out")
    return {k: after[k] - before[k] for k in before}


def test_one_full_fine_tuning_step_at_lr_1e6_in_bf16_moves_the_weights_as_fp32_does(tmp_path, policy):
    bf16, fp32 = _one_full_step(tmp_path, policy, "bfloat16"), _one_full_step(tmp_path, policy, "float32")
    moved_bf16 = sum(int((d != 0).sum()) for d in bf16.values())
    moved_fp32 = sum(int((d != 0).sum()) for d in fp32.values())
    total = sum(d.numel() for d in fp32.values())
    assert moved_fp32 / total > 0.95  # AdamW's first step moves (nearly) every weight by ~lr
    # Pure-bf16 weights moved 0.7 % of the entries here: the update is far below bf16's spacing.
    assert moved_bf16 / total > 0.95
    flat_bf16 = torch.cat([d.flatten() for d in bf16.values()])
    flat_fp32 = torch.cat([fp32[k].flatten() for k in bf16])
    assert flat_bf16.abs().max() < 2e-6  # an lr-sized step (Adam's first step is ~lr·sign(g))
    # bf16 autocast changes the gradient a little, not the step: the same sign almost everywhere.
    same_sign = ((flat_bf16 > 0) == (flat_fp32 > 0)).float().mean()
    assert same_sign > 0.9
    assert (flat_bf16 - flat_fp32).norm() < 0.5 * flat_fp32.norm()


def _bf16_peft(policy, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.bfloat16)
    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                           task_type="CAUSAL_LM"))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_k_folds_into_a_bf16_base_end_within_one_rounding_of_fp32_accumulated_folds(policy, momentum):
    model = _bf16_peft(policy)
    layers = lora_layers(model)
    exact = {name: layer.get_base_layer().weight.detach().double().clone() for name, layer in layers}
    generator = torch.Generator().manual_seed(1)
    folds = 8
    for k in range(folds):
        for name, layer in layers:  # a stage's update: std ~1e-5 .. 1e-4, the size of one stage at lr 1e-5
            b = layer.lora_B["default"].weight
            b.data = (torch.randn(b.shape, generator=generator) * 3e-3).to(b.dtype)
            exact[name] += (1 - momentum) * layer.get_delta_weight("default").detach().double()
        fold_lora(model, keep=momentum, seed=k)
    for name, layer in layers:  # the last fold in full, as at the end of training
        exact[name] += layer.get_delta_weight("default").detach().double()
    fold_lora(model, keep=0.0, seed=folds)

    within_one_rounding, moved = 0, 0
    total = 0
    for name, layer in layers:
        weight = layer.get_base_layer().weight.detach()
        assert weight.dtype == torch.bfloat16
        once = exact[name].to(torch.bfloat16)  # the fp32-accumulated folds, rounded once
        within_one_rounding += int((weight == once).sum())
        start = load_file(str(policy / "model.safetensors"))
        total += weight.numel()
        key = next(k for k in start if name.split("base_model.model.")[-1] in k)
        moved += int((weight != start[key].to(torch.bfloat16)).sum())
    # Rounding the exact sum once, in the same direction: identical but for the odd tie.
    assert within_one_rounding / total > 0.999
    assert moved / total > 0.3  # the updates did reach the base (without the carry most rounded away)


def test_folds_without_the_carry_would_lose_the_update(policy):
    """The loss the carry prevents, measured: W += ΔW in bf16 drops most entries of a small update."""
    model = _bf16_peft(policy)
    name, layer = lora_layers(model)[0]
    weight = layer.get_base_layer().weight
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 1e-5
    naive = weight.detach() + delta.to(torch.bfloat16)
    lost = float((naive == weight.detach()).float().mean())
    assert lost > 0.3


def test_the_fold_carry_costs_two_bytes_a_weight(policy):
    """fp32 carries were 4 bytes a weight on every rank (~28 GB of host RAM for Llama-3-8B): int16."""
    model = _bf16_peft(policy)
    for _, layer in lora_layers(model):
        b = layer.lora_B["default"].weight
        b.data = (torch.randn(b.shape, generator=torch.Generator().manual_seed(2)) * 3e-3).to(b.dtype)
    fold_lora(model, keep=0.0, seed=0)
    from synpo.training.periodic_lora import RESIDUAL

    for _, layer in lora_layers(model):
        carry = getattr(layer, RESIDUAL)
        weight = layer.get_base_layer().weight
        assert carry.shape == weight.shape and carry.element_size() == 2 and carry.device.type == "cpu"
