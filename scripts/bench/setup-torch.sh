#!/usr/bin/env bash
# The PyTorch side of the benchmarks: a venv at .venv-bench with torch, transformers, peft and
# gguf from PyPI (about 5 GB; the CPU runs the PyPI wheel). train.sh and forward.sh use it when
# it exists and $PYTHON is not set.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python3 -m venv "$root/.venv-bench"
"$root/.venv-bench/bin/pip" install --quiet torch transformers peft gguf safetensors sentencepiece
"$root/.venv-bench/bin/python" -c "import torch, transformers, peft; print('torch', torch.__version__, '· transformers', transformers.__version__, '· peft', peft.__version__)"
