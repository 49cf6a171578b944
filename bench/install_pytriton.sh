#!/usr/bin/env bash
# PyTriton's own environment, bench/.venv-pytriton, made when missing: the protocol's
# reference implementation as a peer (bench/pytriton_service.py). Sourced by
# bench/run.sh and bench/triton.sh from the repository root.

if ! bench/.venv-pytriton/bin/python -c "import pytriton, onnxruntime" 2>/dev/null; then
  echo "== installing PyTriton into bench/.venv-pytriton"
  python3 -m venv bench/.venv-pytriton
  # PyTriton 0.7 is built against numpy 1.
  bench/.venv-pytriton/bin/pip install -q 'nvidia-pytriton==0.7.0' onnxruntime 'numpy<2'
fi
