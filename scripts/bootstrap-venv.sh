#!/usr/bin/env bash
# Creates .venv on Python 3.13 (from PATH or pyenv) and installs the pinned project into it.
set -euo pipefail
venv=${1:-.venv}
want=3.13
if [ ! -x "$venv/bin/python" ]; then
  py=""
  if python$want -c 'import sys' >/dev/null 2>&1; then
    py=$(command -v python$want)
  elif command -v pyenv >/dev/null 2>&1; then
    v=$(pyenv versions --bare 2>/dev/null | grep -E "^$want(\.[0-9]+)?$" | sort -V | tail -n1 || true)
    [ -n "$v" ] && py="$(pyenv root)/versions/$v/bin/python$want"
  fi
  if [ -z "$py" ]; then
    echo "Python $want is needed and was found neither on PATH nor in pyenv." >&2
    echo "Install it (for example: pyenv install $want) and run make again." >&2
    exit 1
  fi
  echo "bootstrap: creating $venv with $py"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "bootstrap: installing pinned dependencies into $venv (a few minutes the first time)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,demo]'
