"""Training with TRL: SFT for the prompt generator and the improver, DPO or SimPO for the policy.

A training job is a `TrainingJob` (synpo.training.job: start weights, data file, the recipe's
train section, output directory, seed), JSON-able so the same function runs in-process, as a
child process, or under `accelerate launch` (see `synpo.training.launch`). This module only wires
recipes to TRL/PEFT: the losses are TRL's, LoRA is PEFT's; `trl_arguments` is the one place the
recipe's option names become TRL's config fields. What TRL lacks lives beside it:
PeriodicLoRA (`periodic_lora.py`), merging (`merge.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from synpo.recipe import TrainConfig
from synpo.training.job import Tracking, TrainingJob


def _device_is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16_autocast(dtype: str) -> bool:
    """Compute in bf16 under autocast: the recipe asks for bfloat16, or `auto` on a GPU."""
    return dtype == "bfloat16" or (dtype == "auto" and _device_is_cuda())


def trainer_loss(job: TrainingJob) -> Literal["sft", "dpo", "simpo"]:
    """The TRL trainer that runs the job: SFT for an SFT job and for `loss: sft` on pairs."""
    return "sft" if job.kind == "sft" or job.train.loss == "sft" else job.train.loss


def trl_arguments(job: TrainingJob, output_dir: str) -> dict:
    """The job's train section in TRL's field names (SFTConfig, DPOConfig or CPOConfig, by
    `trainer_loss`): the one place the recipe's option names meet TRL's."""
    cfg, seed, dtype = job.train, job.seed, job.base.dtype
    cuda = _device_is_cuda()
    checkpoints = cfg.checkpoint_steps is not None
    args = dict(
        output_dir=output_dir,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio),
        lr_scheduler_type=cfg.scheduler,
        weight_decay=cfg.weight_decay,
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=_bf16_autocast(dtype),  # autocast compute; the optimizer steps fp32 weights (_weights_dtype)
        fp16=cuda and dtype == "float16",
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=10,
        logging_nan_inf_filter=False,  # a NaN loss must show in the metrics, not be logged as 0
        save_strategy="steps" if checkpoints else "no",
        save_steps=cfg.checkpoint_steps or 500,
        save_total_limit=2,
        save_only_model=False,
        report_to=list(job.tracking.report_to) if job.tracking else [],
        disable_tqdm=os.environ.get("SYNPO_QUIET") == "1",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        max_length=cfg.max_length,
    )
    if args["report_to"]:
        args["run_name"] = f"{job.tracking.run}/{job.tracking.stage}"
    loss = trainer_loss(job)
    if loss == "dpo":
        loss_type, weights = ["sigmoid"], None
        if cfg.nll_weight > 0:
            loss_type, weights = ["sigmoid", "sft"], [1.0, cfg.nll_weight]
        args.update(beta=cfg.beta, loss_type=loss_type, loss_weights=weights,
                    # PeriodicLoRA folds move the base, i.e. the adapter-off reference:
                    # freeze the reference by computing its log-probs before training.
                    precompute_ref_log_probs=cfg.adapter == "periodic_lora")
    elif loss == "simpo":
        args.update(beta=cfg.beta, loss_type="simpo", simpo_gamma=cfg.gamma, cpo_alpha=cfg.nll_weight,
                    remove_unused_columns=False)
    return args


def _load_device() -> str:
    """Where this rank loads the model. DeepSpeed and FSDP place (and shard) it themselves, so it
    stays on CPU for them; otherwise each rank takes its own GPU (not all cuda:0)."""
    if not _device_is_cuda():
        return "cpu"
    if any(os.environ.get(v, "false").lower() in ("1", "true") for v in ("ACCELERATE_USE_DEEPSPEED",
                                                                        "ACCELERATE_USE_FSDP")):
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def _sharded_with_master_weights() -> bool:
    """DeepSpeed and FSDP on GPUs keep fp32 master weights of a bf16 model themselves: DeepSpeed's
    bf16 optimizer holds fp32 partitions, and accelerate upcasts FSDP's trainable parameters to fp32
    when mixed precision is on (the Trainer's bf16=True)."""
    return _device_is_cuda() and any(os.environ.get(v, "false").lower() in ("1", "true")
                                     for v in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"))


def _weights_dtype(dtype: str, cfg: TrainConfig) -> str:
    """The dtype θ is loaded in for training. Full fine-tuning steps the weights themselves, and an
    AdamW step at lr 1e-6 is far below bf16's spacing (2^-8 relative): in bf16 it rounds away and
    the model does not train. So full fine-tuning loads fp32 master weights and computes in bf16
    under autocast (the Trainer's bf16=True), as transformers' Trainer expects, unless DeepSpeed or
    FSDP keep the masters. A LoRA base is frozen: it stays in the recipe's dtype (PEFT keeps the
    adapter in fp32); PeriodicLoRA's folds into it carry their rounding (periodic_lora.py)."""
    if cfg.adapter == "full" and not cfg.quantization and not _sharded_with_master_weights():
        return "float32"
    return dtype


def _prepare_model(job: TrainingJob):
    """θ (from job.model) wrapped for training: full, or with a fresh LoRA adapter."""
    from synpo.models import load_causal_lm

    cfg = job.train
    model = load_causal_lm(job.model, dtype=_weights_dtype(job.base.dtype, cfg), device=_load_device(),
                           trust_remote_code=job.base.trust_remote_code, quantization=cfg.quantization)
    if cfg.adapter == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    from transformers import set_seed

    set_seed(job.seed)  # A's random init: the same on every rank and in every run with this seed
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _callbacks(cfg: TrainConfig, model) -> list:
    if cfg.adapter != "periodic_lora":
        return []
    from synpo.training.periodic_lora import PeriodicLoRACallback

    return [PeriodicLoRACallback(model, stage_steps=cfg.periodic.stage_steps, stages=cfg.periodic.stages,
                                 momentum=cfg.periodic.momentum, restart_warmup=cfg.periodic.restart_warmup)]


def _resume_checkpoint(out_dir: str) -> str | None:
    """The newest complete Trainer checkpoint in out_dir (trainer_state.json is written last)."""
    ckpts = sorted(Path(out_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in ckpts if (c / "trainer_state.json").exists()]
    return str(complete[-1]) if complete else None


def _training_data(job: TrainingJob, tokenizer):
    """The job's rows as an on-disk (memory-mapped) dataset in the work dir. TRL caches DPO's
    precomputed reference log-probs next to a dataset's files, and every rank reads rank 0's
    cache: an in-memory dataset would cache in a per-process temporary dir that rank 1 cannot see.

    Every rank may get here before the others (no barrier: before the Trainer exists, accelerate's
    state on CPU does not know it is distributed, so `main_process_first` would not wait), so the
    dataset is published with `publish_dir_once`: whichever rank renames first wins, and all load it.

    Rows whose prompt alone fills max_length are dropped first and counted (returned with the data):
    they leave no answer token to train on (TRL's SimPO would make that a NaN loss). SFT rows whose
    answer would be cut at max_length are dropped and counted too (chat_ids.drop_cut_answers)."""
    import hashlib
    import json

    from datasets import Dataset, load_from_disk

    from synpo.io import publish_dir_once, read_jsonl

    columns = ("prompt", "completion") if job.kind == "sft" else ("prompt", "chosen", "rejected")
    from synpo.errors import UserError
    from synpo.training.chat_ids import drop_cut_answers, drop_long_prompts

    rows = [{k: r[k] for k in columns} for r in read_jsonl(job.data)]
    if job.kind == "preference" and job.train.loss == "sft":  # the chosen side only, as SFT rows
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    max_length = job.train.max_length
    rows, long_prompts = drop_long_prompts(rows, tokenizer, max_length)
    if not rows:
        raise UserError(f"{job.data}: every row's prompt fills train.max_length ({max_length} tokens); "
                        "raise max_length")
    cut = 0
    if "completion" in rows[0]:
        rows, cut = drop_cut_answers(rows, tokenizer, max_length)
        if not rows:
            raise UserError(f"{job.data}: no row's conversation fits in train.max_length ({max_length} tokens); "
                            "raise max_length")
    dropped = {"long_prompts": long_prompts, "cut_answers": cut}
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(job.work_dir) / f"dataset-{digest}"
    with publish_dir_once(path) as tmp:
        if tmp is not None:
            Dataset.from_list(rows).save_to_disk(str(tmp))
    return load_from_disk(str(path)), dropped


def mlflow_store(tracking_dir: Path) -> str:
    """The default MLflow tracking URI of a run: an SQLite file in RUN_DIR/tracking (local, no server)."""
    return f"sqlite:///{(Path(tracking_dir) / 'mlflow.db').resolve()}"


def _set_tracker_environment(tracking: Tracking | None) -> None:
    """The recipe's `logging.report_to`, with this job's place in the recipe run's tracking (the job is
    named RUN/STAGE): TensorBoard writes to RUN_DIR/tracking/tensorboard/<stage>; W&B groups a run's
    stages under the run's name; MLflow files them in an experiment named after the run, kept in
    in RUN_DIR/tracking/mlflow.db (an SQLite store: MLflow 3 refuses its file store) unless
    MLFLOW_TRACKING_URI says otherwise."""
    if not tracking or not tracking.report_to:
        return
    root = Path(tracking.dir)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard" / tracking.stage)
    os.environ["WANDB_RUN_GROUP"] = tracking.run
    os.environ.setdefault("WANDB_PROJECT", "synpo")  # the loop's own figures go to the same project
    os.environ.setdefault("WANDB_DIR", str(root))  # beside the loop's run, not in whatever directory synpo ran from
    os.environ["MLFLOW_EXPERIMENT_NAME"] = tracking.run
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow_store(root))


def build_trainer(job: TrainingJob):
    """The TRL trainer of `job`, its tokenizer and the rows dropped ({"long_prompts": rows whose prompt
    fills max_length, "cut_answers": SFT rows it would cut}): (trainer, tokenizer, dropped). Tokenised
    data: trainer.train_dataset."""
    from synpo.models import load_tokenizer

    tokenizer = load_tokenizer(job.model, trust_remote_code=job.base.trust_remote_code,
                               chat_template=job.base.chat_template)
    model = _prepare_model(job)
    data, dropped = _training_data(job, tokenizer)
    if any(dropped.values()):
        from synpo.progress import log

        log(f"training data: {dropped['long_prompts']} row(s) dropped, their prompt fills train.max_length "
            f"({job.train.max_length} tokens); {dropped['cut_answers']} more whose answer it would cut")
    args = trl_arguments(job, str(Path(job.work_dir) / "trainer"))
    _set_tracker_environment(job.tracking)
    callbacks = _callbacks(job.train, model)
    common = dict(model=model, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)
    loss = trainer_loss(job)
    if loss == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(args=SFTConfig(**args), **common)
    elif loss == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(args=DPOConfig(**args), **common)
    else:
        from trl.experimental.cpo import CPOConfig

        from synpo.training.chat_ids import SimPOTrainer

        trainer = SimPOTrainer(args=_reentrant_under_zero3(CPOConfig(**args), model), **common)
    return trainer, tokenizer, dropped


def _reentrant_under_zero3(args, model):
    """Reentrant activation checkpointing for an adapter under ZeRO-3, as TRL's SFT and DPO trainers
    force it (TRL issue 2514): transformers 5 checkpoints non-reentrantly by default, and ZeRO-3's
    partitioned frozen base weights break the non-reentrant recompute. TRL's CPOTrainer (SimPO) does
    not do this; SimPO gets the same rule here."""
    from accelerate.utils import is_peft_model

    plugin = getattr(args, "deepspeed_plugin", None)
    if is_peft_model(model) and args.gradient_checkpointing and plugin is not None and plugin.zero_stage == 3:
        args.gradient_checkpointing_kwargs = {**(args.gradient_checkpointing_kwargs or {}), "use_reentrant": True}
    return args


def train(job: TrainingJob) -> dict:
    """Run one training job; returns its metrics. See module docstring."""
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    trainer, tokenizer, dropped = build_trainer(job)
    trainer_dir = trainer.args.output_dir
    result = trainer.train(resume_from_checkpoint=_resume_checkpoint(trainer_dir))
    metrics = {"train_loss": round(result.training_loss, 4), "steps": result.global_step,
               "train_rows": len(trainer.train_dataset), "dropped_long_prompts": dropped["long_prompts"],
               "dropped_cut_answers": dropped["cut_answers"],
               "train_seconds": round(result.metrics.get("train_runtime", 0.0), 2)}  # the loop, not loading
    history = [h for h in trainer.state.log_history if "loss" in h]
    if history:
        metrics["final_loss"] = round(history[-1]["loss"], 4)
    from synpo.training.merge import save_trained

    save_trained(trainer, tokenizer, job, metrics=metrics)
    return metrics
