#!/usr/bin/env bash
# The GPU measurement of issue 12 (bench/gpu_engine.py) as one command on the GPU machine.
#
#   bench/gpu_run.sh prepare   here: render the pages (.gpu-pages/), download the wheels (.whl/), check the
#                              size the device command carries (< 64 MiB with the working tree)
#   bench/gpu_run.sh check     here: the import chain with only .whl/ + the device's packages (clean venv)
#   bench/gpu_run.sh device    there: install .whl/ into /tmp/site, run the benchmark, JSON lines to $OUT
#
# The device command (run tool, carry [".whl", ".gpu-pages"], timeout 600):
#   bash bench/gpu_run.sh device
# It writes $OUT/gpu.jsonl (one JSON line per setting, bench/gpu_engine.py's docstring),
# $OUT/gpu.reference.json (the CPU runtime's text per page), $OUT/env.txt (pip list, nvidia-smi)
# and $OUT/gpu.stderr. The benchmark stops starting settings after DEADLINE_S (default 420 s) so
# that the command ends inside the 10-minute limit with what it has measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
LIMIT=$((64 * 1024 * 1024))

carried_bytes() {
  # the working tree as the device command sends it (tracked + untracked not ignored) plus the carried folders
  local tree extra
  tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true) \
          | awk '{s+=$1} END {print s+0}')
  extra=$(find .whl .gpu-pages -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}')
  echo $((tree + extra))
}

case "${1:-}" in
  prepare)
    "$PY" bench/gpu_engine.py --render
    rm -rf .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl -r bench/gpu_wheels.txt
    total=$(carried_bytes)
    echo "carried: $((total / 1024)) KiB of $((LIMIT / 1024)) KiB (.whl $(du -sk .whl | cut -f1) KiB, .gpu-pages $(du -sk .gpu-pages | cut -f1) KiB)"
    if [ "$total" -ge "$LIMIT" ]; then echo "over the 64 MiB the device command carries" >&2; exit 1; fi
    ;;
  check)
    # Same wheels for this machine's Python, in a virtualenv that has only what the GPU machine has.
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    dir=${CHECK_DIR:-/tmp/ocrstream-gpu-check}
    rm -rf "$dir/whl" "$dir/site" && mkdir -p "$dir"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$ver" --implementation cp \
      "${PLATFORMS[@]}" -d "$dir/whl" -r bench/gpu_wheels.txt
    if [ ! -x "$dir/venv/bin/python" ]; then  # kept between checks: torch is several GB
      "$PY" -m venv "$dir/venv"
      "$dir/venv/bin/pip" install -q numpy opencv-python-headless onnx onnxruntime pillow nvidia-ml-py torch
    fi
    "$dir/venv/bin/pip" install -q --no-index --no-deps --target "$dir/site" "$dir"/whl/*.whl
    PYTHONPATH="$dir/site:$PWD" "$dir/venv/bin/python" -c '
import importlib.util as u, ocrstream.engine
from ocrstream.engine.torch_session import _import_onnx2torch
_import_onnx2torch()  # onnx2torch imports torchvision: a placeholder stands in where it is absent
print("imports ok; torchvision installed:", u.find_spec("torchvision") is not None)'
    PYTHONPATH="$dir/site:$PWD" "$dir/venv/bin/python" bench/gpu_engine.py --device cpu --pages 2 \
      --batch-sizes 1,2 --workers 2 --host-seconds 2 --out "$dir/gpu.jsonl" > /dev/null
    tail -1 "$dir/gpu.jsonl"
    ;;
  device)
    OUT=${OUT:-bench/out}
    mkdir -p "$OUT"
    { "$PY" -m pip list 2>/dev/null || true; nvidia-smi 2>&1 || true; nproc || true; } > "$OUT/env.txt"
    # WHL / SITE: other folders only to rehearse this branch elsewhere (e.g. with check's wheels)
    "$PY" -m pip install -q --no-index --no-deps --target "${SITE:-/tmp/site}" "${WHL:-.whl}"/*.whl
    export PYTHONPATH=${SITE:-/tmp/site}:$PWD
    timeout "${TIMEOUT_S:-560}" "$PY" bench/gpu_engine.py --device "${DEVICE:-cuda:0}" --out "$OUT/gpu.jsonl" \
      --deadline-s "${DEADLINE_S:-420}" --max-seconds "${MAX_SECONDS:-20}" ${BENCH_ARGS:-} 2> "$OUT/gpu.stderr" \
      || { rc=$?; echo "gpu_engine.py rc=$rc" >> "$OUT/gpu.stderr"; tail -40 "$OUT/gpu.stderr"; exit $rc; }
    ;;
  *)
    sed -n '2,17p' "$0"; exit 2
    ;;
esac
