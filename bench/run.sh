#!/usr/bin/env bash
# The benchmark, from a fresh checkout: installs what is missing (wrk from
# Debian's packages, the project's .venv, BentoML's own bench/.venv-bento,
# PyTriton's own bench/.venv-pytriton),
# then runs every cell and writes bench/results.md. Options go to bench/run.py
# (--store, --seconds, --connections, ...; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
if ! bench/.venv-bento/bin/python -c "import bentoml, onnxruntime" 2>/dev/null; then
  echo "== installing BentoML into bench/.venv-bento"
  python3 -m venv bench/.venv-bento
  bench/.venv-bento/bin/pip install -q 'bentoml==1.4.39' onnxruntime numpy
fi
if ! bench/.venv-pytriton/bin/python -c "import pytriton, onnxruntime" 2>/dev/null; then
  echo "== installing PyTriton into bench/.venv-pytriton"
  python3 -m venv bench/.venv-pytriton
  # PyTriton 0.7 is built against numpy 1.
  bench/.venv-pytriton/bin/pip install -q 'nvidia-pytriton==0.7.0' onnxruntime 'numpy<2'
fi
exec .venv/bin/python -m bench.run "$@"
