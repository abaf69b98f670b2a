#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): run from anywhere, needs only this
# checkout and a Python with torch (and the kit's dependencies). Arguments go to gpu_check.py:
#   bash benchmarks/gpu_check.sh                     # GPU machine, <= 8 minutes, benchmarks/gpu_results/
#   bash benchmarks/gpu_check.sh --dry-run --out DIR # CPU smoke run, toy sizes
# Python: $PYTHON if set, else the checkout's .venv, else python3. A hard stop after
# $GPU_CHECK_TIMEOUT seconds (default 540) backs up the script's own time budget; the JSON written
# after each finished part stays.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "gpu_check: python $py ($("$py" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>&1 | sed 's/^/gpu_check: /'; fi
exec timeout --kill-after=20 "${GPU_CHECK_TIMEOUT:-540}" "$py" "$root/benchmarks/gpu_check.py" "$@"
