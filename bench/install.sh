#!/usr/bin/env bash
# What the benchmark scripts need on a fresh checkout, installed when missing:
# wrk from Debian's packages and the project's .venv. Sourced by bench/run.sh
# and bench/load.sh from the repository root.

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
