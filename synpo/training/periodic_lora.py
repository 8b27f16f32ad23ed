"""PeriodicLoRA (Meng et al., 2024): LoRA trained in stages whose updates accumulate in the base.

At the end of every stage (every `stage_steps` optimizer steps, or `stages` equal stages of
the run) each LoRA layer's update ΔW = (α/r)·B·A is folded into its base weight in place,
A and B are re-initialised as PEFT initialises them (A Kaiming-uniform, B zero) and the
optimizer state of the LoRA parameters is cleared. The sum of S rank-r updates can reach
rank r·S while the trainable part, the optimizer state and the memory stay LoRA's.
Optionally the warm-up restarts at each stage. The trainer is never rebuilt: this is a
plain `TrainerCallback`, so it works with SFTTrainer, DPOTrainer and CPOTrainer alike.

Momentum unloading (`momentum` = m, 0 <= m < 1; the paper gives no formula, this is ours):

    W ← W + (1 − m)·ΔW        the base takes the share 1 − m of the adapter's update
    B ← m·B,  A unchanged      the adapter keeps the share m:  (α/r)·(m·B)·A = m·ΔW

so the adapter is an exponentially decaying accumulator (what it holds after fold k is
m·(what it held before) + what stage k added), and the base moves by a smoothed share of it
at every fold. m = 0 is the plain fold (then A is re-initialised too; with m > 0 a fresh A
could not hold the kept share, so A stays). In every variant the model computes the same
function right after a fold as right before it: W + (1 − m)·ΔW + m·ΔW = W + ΔW. The LoRA
optimizer state is cleared in every variant: Adam's moments were estimated for the old
factors (after B ← m·B the gradient of A shrinks by m).

At the end of training the last stage is folded in full (m = 0), so the base holds the
whole update and the saved model is a plain merged checkpoint.

Distributed training: a fold is deterministic on every rank. The re-initialisation draws
from a generator seeded by (training seed, fold index), so DDP ranks fold identically
without communication. Under DeepSpeed ZeRO (stage 1-3) the partitioned weights are
gathered for the fold, DeepSpeed's fp32 master copies are set too, and the (flat) Adam
state is zeroed; this needs every trainable parameter to be a LoRA parameter. FSDP is
refused (its flat sharded parameters cannot be folded in place here).

Resuming: a Trainer checkpoint of a PEFT model holds only the adapter, not the folded base.
When a checkpoint is written the callback stores the folded base weights next to it
(`periodic_lora_base.safetensors`) and restores them when training resumes from it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

BASE_FILE = "periodic_lora_base.safetensors"


# ---- the fold ---------------------------------------------------------------------------


def lora_layers(model, adapter: str = "default") -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) for every PEFT LoRA layer of `model` holding `adapter`."""
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, LoraLayer) and (adapter in m.lora_A or adapter in m.lora_embedding_A)]
    if not layers:
        raise ValueError(f"PeriodicLoRA: the model has no LoRA layers for adapter {adapter!r}")
    return layers


def _factors(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    if adapter in layer.lora_A:
        return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]


def _is_deepspeed(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def _gathered(params: list[torch.Tensor], modifier_rank: int | None):
    """ZeRO-3 partitions parameters: gather them for the block (written back from `modifier_rank`)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _seeded(seed: int, like: torch.Tensor):
    """Draw from a fixed seed without disturbing the trainer's random streams."""
    devices = [like.device.index or 0] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _init_mode(model, adapter: str):
    """PEFT's initialisation of this adapter when it is a random one (True or "gaussian")."""
    config = getattr(model, "peft_config", {}).get(adapter)
    mode = getattr(config, "init_lora_weights", True)
    return mode if mode is True or mode == "gaussian" else True


@torch.no_grad()
def fold_lora(model, *, keep: float = 0.0, seed: int = 0, adapter: str = "default") -> list[torch.Tensor]:
    """Fold each LoRA layer's update into its base weight; see the module docstring.

    `keep` is the momentum m: the share of the update left in the adapter (B ← m·B). With
    keep = 0, A and B are re-initialised as PEFT does, from a generator seeded by `seed`.
    Returns the LoRA parameters whose optimizer state must now be cleared.
    """
    if not 0 <= keep < 1:
        raise ValueError(f"PeriodicLoRA: momentum must be in [0, 1), got {keep}")
    if any(getattr(c, "use_dora", False) for c in getattr(model, "peft_config", {}).values()):
        raise ValueError("PeriodicLoRA: DoRA adapters cannot be folded additively; use plain LoRA")
    init = _init_mode(model, adapter)
    touched = []
    for i, (_, layer) in enumerate(lora_layers(model, adapter)):
        a, b = _factors(layer, adapter)
        weight = layer.get_base_layer().weight
        if getattr(layer, "lora_bias", {}).get(adapter):
            raise ValueError("PeriodicLoRA: LoRA layers with a bias (lora_bias) are not supported")
        with _gathered([a, b, weight], modifier_rank=0):
            delta = layer.get_delta_weight(adapter)  # (α/r)·B·A in the base weight's layout
            _add_carrying_rounding(layer, weight, (1.0 - keep) * delta.float())
            if keep > 0:
                b.data.mul_(keep)
            else:
                with _seeded(seed * 1_000_003 + i, a):
                    layer.reset_lora_parameters(adapter, init)
            for p in (a, b):
                if _is_deepspeed(p):  # DeepSpeed steps its own fp32 copy; the module's is derived
                    from deepspeed.utils import safe_set_full_fp32_param

                    safe_set_full_fp32_param(p, p.data.float())
            touched += [a, b]
    return touched


RESIDUAL = "periodic_lora_residual"  # the layer attribute holding its base weight's rounding carry


def _add_carrying_rounding(layer, weight: torch.Tensor, update: torch.Tensor) -> None:
    """weight += update, losing nothing but the one rounding of the current sum.

    In bf16 a small update mostly rounds away (a stage's ΔW of std 1e-5 next to weights of 1e-2
    is below bf16's spacing), so each fold adds the previous folds' rounding residual back and
    keeps the new one on the CPU (folds are rare; GPU memory is not spent on it), 2 bytes a weight
    (`residual_code`). The base then equals the exact fp32 sum of all folds rounded once (but for
    the odd tie). An fp32 base needs no carry."""
    if weight.dtype == torch.float32:
        weight.data += update
        return
    exact = weight.data.float() + update
    carry = getattr(layer, RESIDUAL, None)
    if carry is not None:
        exact += residual_value(carry.to(exact.device), weight.data)
    weight.data.copy_(exact)  # the one rounding
    setattr(layer, RESIDUAL, residual_code(exact - weight.data.float(), weight.data).cpu())


# The carry is at most half a spacing of the rounded weight: held as int16 in units of 2^-15 of
# that spacing it costs 2 bytes a weight instead of fp32's 4 (Llama-3-8B: 14 GB of host RAM a rank,
# not 28), and its own rounding (2^-16 of a spacing) is far below the base's.
CARRY_SCALE = 2.0**15


def _spacing(weight: torch.Tensor) -> torch.Tensor:
    """The distance between adjacent values of `weight`'s dtype around each (rounded) weight."""
    _, exponent = torch.frexp(weight.float())
    eps = torch.full_like(weight, torch.finfo(weight.dtype).eps, dtype=torch.float32)  # the spacing in [1, 2)
    return torch.ldexp(eps, exponent - 1)


def residual_code(residual: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.round(residual / _spacing(weight) * CARRY_SCALE).clamp_(-32767, 32767).to(torch.int16)


def residual_value(code: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return code.float() * _spacing(weight) / CARRY_SCALE


def _base_optimizer(optimizer):
    """The torch optimizer inside accelerate's / DeepSpeed's wrappers."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def clear_optimizer_state(optimizer, params: list[torch.Tensor], model=None) -> None:
    """Forget Adam's moments and step count for `params` (the LoRA factors after a fold)."""
    if optimizer is None:
        return
    if any(_is_deepspeed(p) for p in params):
        _clear_deepspeed_state(optimizer, params, model)
        return
    inner = _base_optimizer(optimizer)
    for p in params:
        inner.state.pop(p, None)  # torch optimizers re-create the state lazily at the next step


def _clear_deepspeed_state(optimizer, params, model) -> None:
    """ZeRO keeps flat fp32 partitions: Adam's state is one tensor per group, not per parameter."""
    lora_ids = {id(p) for p in params}
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in lora_ids]
    if others:
        raise ValueError(f"PeriodicLoRA under DeepSpeed needs every trainable parameter to be a LoRA factor; "
                         f"also trainable: {others[:3]}")
    # ZeRO optimizer (stage 1-3) -> its wrapped torch optimizer, whose params are the flat partitions.
    zero = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    inner = getattr(zero, "optimizer", zero)
    for state in inner.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()  # exp_avg, exp_avg_sq, step (a zero step makes Adam start afresh)
            elif key == "step":
                state[key] = 0
    for group in inner.param_groups:
        if "step" in group:  # DeepSpeed's fused / CPU Adam count steps per group
            group["step"] = 0


# ---- the callback -----------------------------------------------------------------------


def fold_steps(max_steps: int, stage_steps: int | None = None, stages: int | None = None) -> list[int]:
    """Optimizer steps after which to fold (the end of training is folded separately)."""
    if stage_steps is not None:
        return list(range(stage_steps, max_steps, stage_steps))
    if stages is None:
        raise ValueError("PeriodicLoRA: give stage_steps or stages")
    return sorted({i * max_steps // stages for i in range(1, stages)} - {0})


class PeriodicLoRACallback(TrainerCallback):
    """Fold the LoRA adapter into the base every K optimizer steps; see the module docstring."""

    def __init__(self, model=None, *, stage_steps: int | None = None, stages: int | None = None,
                 momentum: float = 0.0, restart_warmup: bool = False, adapter: str = "default"):
        if (stage_steps is None) == (stages is None):
            raise ValueError("PeriodicLoRA: give exactly one of stage_steps and stages")
        if not 0 <= momentum < 1:
            raise ValueError(f"PeriodicLoRA: momentum must be in [0, 1), got {momentum}")
        self.model = model
        self.stage_steps, self.stages = stage_steps, stages
        self.momentum, self.restart_warmup, self.adapter = momentum, restart_warmup, adapter
        self.folds: list[int] = []
        self.folded: list[int] = []  # steps at which this process folded (for logs and tests)
        self._base_lambdas: dict[int, list] = {}

    def _model(self, kwargs):
        model = kwargs.get("model")
        return self.model if model is None else model

    def on_train_begin(self, args, state, control, **kwargs):
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
            raise ValueError("PeriodicLoRA cannot fold FSDP's sharded flat parameters; use DDP or DeepSpeed "
                             "(recipes/accelerate/ddp.yaml, deepspeed_zero3.yaml)")
        self.seed = args.seed
        self.folds = fold_steps(state.max_steps, self.stage_steps, self.stages)
        model = self._model(kwargs)
        lora_layers(model, self.adapter)  # fail early on a model without LoRA
        done = [s for s in self.folds if s <= state.global_step]
        if done:  # resuming after folds: the checkpoint's adapter belongs to the folded base
            self._restore_base(model, Path(args.output_dir) / f"checkpoint-{state.global_step}")
        if self.restart_warmup and done:
            self._restart_warmup(kwargs.get("lr_scheduler"), args, state, done[-1])

    def on_step_end(self, args, state, control, **kwargs):
        model = self._model(kwargs)
        if state.global_step in self.folds:
            index = self.folds.index(state.global_step) + 1
            params = fold_lora(model, keep=self.momentum, seed=self.seed + index, adapter=self.adapter)
            clear_optimizer_state(kwargs.get("optimizer"), params, model)
            self.folded.append(state.global_step)
            if self.restart_warmup:
                self._restart_warmup(kwargs.get("lr_scheduler"), args, state, state.global_step)
        if control.should_save:  # the Trainer writes this checkpoint next; the folded base goes with it
            self._save_base(model, Path(args.output_dir) / f"checkpoint-{state.global_step}", state)

    def on_train_end(self, args, state, control, **kwargs):
        model = self._model(kwargs)
        fold_lora(model, keep=0.0, seed=self.seed + len(self.folds) + 1, adapter=self.adapter)
        self.folded.append(state.global_step)

    # ---- warm-up restarts ----

    def _restart_warmup(self, lr_scheduler, args, state, start: int) -> None:
        """Multiply the schedule by a linear ramp over the warm-up length, starting at `start`."""
        from torch.optim.lr_scheduler import LambdaLR

        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
        warmup = args.get_warmup_steps(state.max_steps)
        if not isinstance(sched, LambdaLR) or warmup == 0:
            return  # no warm-up to restart (or a scheduler we cannot extend)
        base = self._base_lambdas.setdefault(id(sched), list(sched.lr_lambdas))

        def ramp(step: int) -> float:
            return min(1.0, (step - start + 1) / (warmup + 1)) if step >= start else 1.0

        # Closures, not objects: LambdaLR.state_dict() skips functions, so checkpoints stay plain.
        sched.lr_lambdas = [lambda step, f=f: f(step) * ramp(step) for f in base]
        lrs = [base_lr * f(sched.last_epoch) for base_lr, f in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs

    # ---- checkpoints ----

    def _save_base(self, model, checkpoint: Path, state) -> None:
        if not any(s <= state.global_step for s in self.folds):
            return  # nothing folded yet: the base is the starting model
        from safetensors.torch import save_file

        tensors = {}
        for name, layer in lora_layers(model, self.adapter):
            weight = layer.get_base_layer().weight
            with _gathered([weight], modifier_rank=None):
                if state.is_world_process_zero:
                    tensors[name] = weight.detach().to("cpu", copy=True).contiguous()
                    if getattr(layer, RESIDUAL, None) is not None:
                        tensors[f"{name}.{RESIDUAL}"] = getattr(layer, RESIDUAL).contiguous()
        if state.is_world_process_zero:
            checkpoint.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint / f".{BASE_FILE}.tmp"
            save_file(tensors, str(tmp))
            tmp.replace(checkpoint / BASE_FILE)

    def _restore_base(self, model, checkpoint: Path) -> None:
        path = checkpoint / BASE_FILE
        if not path.exists():
            raise ValueError(f"{checkpoint}: resuming PeriodicLoRA after a fold needs {BASE_FILE} (the folded "
                             f"base); delete {checkpoint.parent} to restart this training stage")
        from safetensors.torch import load_file

        saved = load_file(str(path))
        with torch.no_grad():
            for name, layer in lora_layers(model, self.adapter):
                weight = layer.get_base_layer().weight
                with _gathered([weight], modifier_rank=0):
                    weight.data.copy_(saved[name].to(weight.device, weight.dtype))
                if f"{name}.{RESIDUAL}" in saved:
                    setattr(layer, RESIDUAL, saved[f"{name}.{RESIDUAL}"])


def numerical_rank(matrix: torch.Tensor, rtol: float = 1e-4) -> int:
    """Singular values above rtol × the largest (used to show rank growth across stages)."""
    s = torch.linalg.svdvals(matrix.double())
    return int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0


__all__ = ["PeriodicLoRACallback", "fold_lora", "clear_optimizer_state", "fold_steps", "lora_layers",
           "numerical_rank", "BASE_FILE"]
