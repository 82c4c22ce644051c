#!/usr/bin/env bash
# One command for every figure: `bench/run.sh` (full, ~10 min) or `bench/run.sh --smoke` (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
exec uv run --frozen python -m bench "$@"
