"""Test driver: run one training job (`python tests/rank_dump.py JOB.json`, under accelerate launch)
and let every rank write its final weights to WORK_DIR/rank{R}.safetensors, so a test can check
that the ranks agree. Everything else is the real job: synpo.training.trainers.train."""

import os
import sys
from pathlib import Path

import synpo.training.merge as merge
from synpo.training.job import TrainingJob
from synpo.training.trainers import train

_save_trained = merge.save_trained


def _dump_then_save(trainer, tokenizer, job, **kwargs):
    from safetensors.torch import save_file

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    rank = int(os.environ.get("RANK", 0))  # (under ZeRO-3 a rank holds only its shards)
    save_file(state, os.path.join(job.work_dir, f"rank{rank}.safetensors"))
    return _save_trained(trainer, tokenizer, job, **kwargs)


if __name__ == "__main__":
    merge.save_trained = _dump_then_save
    train(TrainingJob.model_validate_json(Path(sys.argv[1]).read_text()))
