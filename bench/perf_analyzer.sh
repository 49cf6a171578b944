#!/usr/bin/env bash
# Triton's perf_analyzer, set up in a tool folder of its own and run from there:
#
#   bench/perf_analyzer.sh -m mnist-encoder -u 127.0.0.1:8000 -i http ...
#
# installs it on first use, then runs it with the given arguments (none: only install).
# The binary ships in the tritonclient 2.41.0 manylinux wheel (later wheels dropped it);
# it links Debian's libb64 and libcudart.so.12, which the nvidia-cuda-runtime-cu12
# wheel carries (no GPU is needed for HTTP and gRPC). Only the files are taken from the
# wheels, never installed into a Python environment: that tritonclient's gRPC half wants
# protobuf < 5, the project's wants 6. Used by bench/triton.py and tests/test_triton_tools.py.
set -euo pipefail

tools="${PERF_ANALYZER_HOME:-$(cd "$(dirname "$0")" && pwd)/.perf_analyzer}"
python="${PYTHON:-python3}"  # any Python with pip: it only downloads and unpacks
wheels=(tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79)

if [ ! -x "$tools/perf_analyzer" ]; then
  if ! dpkg-query -W -f='${Status}' libb64-0d 2>/dev/null | grep -q "ok installed"; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "== installing libb64-0d (perf_analyzer links it)" >&2
    $sudo apt-get install -y -qq libb64-0d >/dev/null 2>&1 || {
      $sudo apt-get update -qq && $sudo apt-get install -y -qq libb64-0d >/dev/null
    }
  fi
  echo "== setting up perf_analyzer in $tools" >&2
  staging="$(mktemp -d "${tools%/*}/.perf_analyzer.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
    --dest "$staging/wheels" "${wheels[@]}" 2>&1 | grep -v "is ignored" >&2 || true
  "$python" - "$staging" <<'EOF'
import sys
import zipfile
from pathlib import Path

staging = Path(sys.argv[1])
wanted = {"bin/perf_analyzer": "perf_analyzer.bin", "lib/libcudart.so.12": "lib/libcudart.so.12"}
found = set()
for wheel in sorted((staging / "wheels").glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            for tail, target in wanted.items():
                if name.endswith(tail):
                    out = staging / target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(archive.read(name))
                    out.chmod(0o755)
                    found.add(tail)
missing = set(wanted) - found
assert not missing, f"not in the downloaded wheels: {sorted(missing)}"
EOF
  rm -rf "$staging/wheels"
  cat >"$staging/perf_analyzer" <<'EOF'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/perf_analyzer.bin" "$@"
EOF
  chmod +x "$staging/perf_analyzer"
  "$staging/perf_analyzer" --version >/dev/null 2>&1 || {
    echo "error: perf_analyzer does not start:" >&2
    "$staging/perf_analyzer" --version 2>&1 | head -5 >&2
    exit 1
  }
  rm -rf "$tools"
  mv "$staging" "$tools"
  trap - EXIT
fi

if [ $# -gt 0 ]; then
  exec "$tools/perf_analyzer" "$@"
fi
