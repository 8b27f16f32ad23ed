"""Entry point of a training job in its own process: `python -m synpo.training.launch SPEC.json`.

`accelerate launch ... -m synpo.training.launch SPEC.json` runs the same job on several
processes; the orchestrator writes SPEC.json (see synpo.stages.train).
"""

import json
import sys

from synpo.training.trainers import train


def main() -> None:
    from synpo.progress import quiet_libraries

    quiet_libraries()
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    train(spec)


if __name__ == "__main__":
    main()
