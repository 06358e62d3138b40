#!/usr/bin/env bash
# The GPU check in one command: benchmarks/gpu_check.sh <rust_buffer abi3 wheel> [--out DIR]
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
