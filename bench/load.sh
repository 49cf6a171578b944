#!/usr/bin/env bash
# Load scenarios, from a fresh checkout: bash bench/load.sh interference |
# overload | soak [options] (bench/load.py; --help lists them). Installs what
# is missing (wrk, the project's .venv), serves on 127.0.0.1 only, stops by
# itself, writes bench/load-<scenario>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
exec .venv/bin/python -m bench.load "$@"
