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
source bench/install_pytriton.sh
exec .venv/bin/python -m bench.run "$@"
