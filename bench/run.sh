#!/usr/bin/env bash
# The benchmark, from a fresh checkout: installs what is missing (wrk from
# Debian's packages, the project's .venv, BentoML's own bench/.venv-bento),
# then runs every cell and writes bench/results.md. Options go to bench/run.py
# (--store, --seconds, --connections, ...; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
  echo "== installing wrk"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
if ! .venv/bin/python -c "import app, torch, onnx" 2>/dev/null; then
  echo "== installing the project into .venv"
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[train]'
fi
if ! bench/.venv-bento/bin/python -c "import bentoml, onnxruntime" 2>/dev/null; then
  echo "== installing BentoML into bench/.venv-bento"
  python3 -m venv bench/.venv-bento
  bench/.venv-bento/bin/pip install -q 'bentoml==1.4.39' onnxruntime numpy
fi
exec .venv/bin/python -m bench.run "$@"
