#!/usr/bin/env bash
# Installs the Python environment of the msgraph-sdk client (tests/graph_sdk/client.py) into a
# venv under target/, where git never sees it, from the fully pinned
# tests/graph_sdk/requirements.txt. Idempotent: when the venv already holds exactly that file's
# pins it does nothing. Prints the venv's python path as its last line of stdout, which is where
# `cargo test --test graph_sdk -- --ignored` looks for it (or set GRAPH_SDK_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${GRAPH_SDK_VENV:-target/graph-sdk-venv}
req=tests/graph_sdk/requirements.txt
stamp="$venv/.requirements.sha256"
python=${PYTHON:-python3}
want=$(sha256sum "$req" | cut -d' ' -f1)

# The stamp is written only after a complete install, and the import check catches a venv whose
# interpreter moved or was removed since (e.g. another Python on a reused machine).
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
  "$venv/bin/python" -c 'import msgraph, kiota_http' >/dev/null 2>&1; then
  echo "graph-sdk: $venv is up to date" >&2
else
  # Only ever remove a venv (a mistyped GRAPH_SDK_VENV must not cost a directory).
  if [ -e "$venv" ]; then
    [ -f "$venv/pyvenv.cfg" ] || { echo "graph-sdk: $venv exists and is not a venv" >&2; exit 1; }
    rm -rf "$venv"
  fi
  echo "graph-sdk: installing $req into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$req" >&2
  "$venv/bin/python" -c 'import msgraph, kiota_http' >&2
  echo "$want" >"$stamp"
fi
echo "$(cd "$venv/bin" && pwd)/python"
