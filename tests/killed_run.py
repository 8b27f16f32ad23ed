"""`python tests/killed_run.py POINT ARGS...`: `python -m synpo.iterate ARGS...` that SIGKILLs itself
at POINT, so the kill test hits the same moment on every machine, loaded or not:

- generation: round 1's responses stage has written its first shard (of several);
- between_stages: state.json has just recorded round 1's refinements; the stage's scratch is
  still there and the pairs stage has not started;
- dataset_write: D's new copy is half-written in its temporary directory (pairs.jsonl and hf/
  written, info.json not, nothing swapped in);
- training: the policy's Trainer has just saved checkpoint 20.
"""

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "generation":
        import synpo.engines.base as base

        write = base.write_jsonl

        def write_jsonl(path, rows):
            n = write(path, rows)
            if Path(path).name == "shard-00000.jsonl" and "round_01__responses" in str(path):
                die()
            return n

        base.write_jsonl = write_jsonl
    elif point == "between_stages":
        from synpo.run import Run

        save = Run._save

        def _save(self):
            save(self)
            if "round_01/refined" in self.state["stages"]:
                die()

        Run._save = _save
    elif point == "dataset_write":
        import synpo.stages.pairs as pairs

        write = pairs.write_json

        def write_json(path, obj):
            if Path(path).parent.name.startswith(".dataset."):
                die()
            write(path, obj)

        pairs.write_json = write_json
    elif point == "training":
        from transformers import Trainer

        save = Trainer._save_checkpoint

        def _save_checkpoint(self, *args, **kwargs):
            save(self, *args, **kwargs)
            if self.state.global_step == 20 and "round_01__policy" in self.args.output_dir:
                die()

        Trainer._save_checkpoint = _save_checkpoint
    else:
        raise SystemExit(f"unknown kill point {point}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from synpo.iterate import main

    sys.exit(main(sys.argv[2:]))
