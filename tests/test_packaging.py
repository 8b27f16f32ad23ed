"""The wheel a user installs carries everything the code reads at run time."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_prompt_templates_toy_assets_and_eval_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("synpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "prompts").glob("*.jinja"):
        assert f"synpo/prompt_templates/{template.name}" in names
    assert "synpo/prompt_templates/mt_bench_judge_prompts.jsonl" in names
    for asset in ("toy/assets/tiny-llama/model.safetensors", "toy/assets/tiny-llama/tokenizer.json",
                  "toy/assets/data/seed.jsonl", "toy/assets/data/corpus.jsonl"):
        assert f"synpo/{asset}" in names
    assert any(n.startswith("synpo/evals/data/") for n in names)
