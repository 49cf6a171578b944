#!/usr/bin/env bash
# perf_analyzer against vae-serve and PyTriton, from a fresh checkout: installs what is
# missing (the project's .venv, PyTriton's bench/.venv-pytriton, perf_analyzer's tool
# folder), then runs bench/triton.py, which writes bench/triton-results.md. Options go
# to it (--window-ms, --out; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
source bench/install_pytriton.sh
bash bench/perf_analyzer.sh
exec .venv/bin/python -m bench.triton "$@"
