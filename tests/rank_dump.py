"""Test driver: run one training job (`python tests/rank_dump.py SPEC.json`, under accelerate launch)
and let every rank write its final weights to WORK_DIR/rank{R}.safetensors, so a test can check
that the ranks agree. Everything else is the real job: synpo.training.trainers.train."""

import json
import os
import sys

import synpo.training.merge as merge
from synpo.training.trainers import train

_save_trained = merge.save_trained


def _dump_then_save(trainer, tokenizer, spec, **kwargs):
    from safetensors.torch import save_file

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    rank = int(os.environ.get("RANK", 0))  # (under ZeRO-3 a rank holds only its shards)
    save_file(state, os.path.join(spec["work_dir"], f"rank{rank}.safetensors"))
    return _save_trained(trainer, tokenizer, spec, **kwargs)


if __name__ == "__main__":
    merge.save_trained = _dump_then_save
    with open(sys.argv[1]) as f:
        train(json.load(f))
