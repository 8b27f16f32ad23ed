"""Entry point of a training job in its own process: `python -m synpo.training.launch JOB.json`.

`accelerate launch ... -m synpo.training.launch JOB.json` runs the same job on several
processes; the orchestrator writes JOB.json, a `TrainingJob` (see synpo.stages.train).
"""

import sys
from pathlib import Path

from synpo.training.job import TrainingJob
from synpo.training.trainers import train


def main() -> None:
    job = TrainingJob.model_validate_json(Path(sys.argv[1]).read_text())  # a bad job fails before any library loads
    from synpo.progress import quiet_libraries

    quiet_libraries()
    train(job)


if __name__ == "__main__":
    main()
