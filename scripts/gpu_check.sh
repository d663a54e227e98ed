#!/usr/bin/env bash
# One-command GPU check: build for the local GPU, run the whole test suite on
# it, run the benchmark suite, and leave every result in one folder.
#
#   make gpu-check OUT=/path/to/results      (or: bash scripts/gpu_check.sh OUT)
#
# Meant for a machine with a CUDA GPU, torch, triton and nvcc already
# installed and no network: the project is installed into that Python with
# --no-build-isolation --no-deps. If pytest / pytest-benchmark / hypothesis
# are missing they are installed from FASTCAE_WHEELS (a folder of wheels,
# default ./wheels) without touching the network.
#
# Output folder: summary.txt (device, versions, outcome of each phase),
# build.log, tests.xml + tests.log (JUnit and text), bench.log and the
# benchmark files <device>.json / .md / .png, targets.log and
# <device>-targets.txt / .json. Each phase has a time limit so the whole run
# stays inside 10 minutes; a phase that fails or times out is reported and
# the next one still runs.
set -uo pipefail

OUT="${1:-${OUT:-}}"
if [ -z "$OUT" ]; then
    echo "usage: bash scripts/gpu_check.sh OUTPUT_FOLDER" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"
status=0

note() { echo "$*" | tee -a "$SUMMARY"; }

run_phase() {  # name, seconds, command...
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    local outcome="ok"
    [ $rc -ne 0 ] && outcome="FAILED (exit $rc)"
    [ $rc -eq 124 ] && outcome="TIMED OUT after ${limit}s"
    [ $rc -ne 0 ] && status=1
    note "$(printf '%-8s %-28s %4ss' "$name" "$outcome" $((SECONDS - start)))"
}

: > "$SUMMARY"
note "fastcae GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PY" - <<'EOF' | tee -a "$SUMMARY"
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
else:
    print("WARNING: no CUDA device visible: the GPU phases will skip")
EOF
command -v nvcc >/dev/null && note "$(nvcc --version | tail -n 2 | head -n 1)"

missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('pytest', 'pytest_benchmark', 'hypothesis') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
    WHEELS="${FASTCAE_WHEELS:-wheels}"
    note "missing Python packages: $missing; installing from $WHEELS (no network)"
    "$PY" -m pip install --no-index --find-links "$WHEELS" pytest pytest-benchmark hypothesis >> "$OUT/build.log" 2>&1 \
        || note "could not install them from $WHEELS"
fi

# Build for the visible GPU (TORCH_CUDA_ARCH_LIST unset: torch detects it), CUDA required.
unset TORCH_CUDA_ARCH_LIST
arch=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')" 2>/dev/null || echo "")
export FASTCAE_CUDA=1
run_phase build 120 bash -c "'$PY' -m pip install --no-build-isolation --no-deps -e . > '$OUT/build.log' 2>&1 \
    && '$PY' scripts/check_cuda_build.py $arch >> '$OUT/build.log' 2>&1"

# Tests on the GPU: every backend, bf16/fp16 included. Triton autotuning is off
# in tests (tests/conftest.py: one config per kernel) so compile time stays bounded.
run_phase tests 180 bash -c "'$PY' -m pytest tests -q -p no:cacheprovider -m 'not slow' \
    --junitxml='$OUT/tests.xml' > '$OUT/tests.log' 2>&1"
tail -n 3 "$OUT/tests.log" | tee -a "$SUMMARY"

# Benchmarks: autotuned kernels, float32 and bfloat16, every available backend.
run_phase bench 180 bash -c "FASTCAE_BENCH_OUT='$OUT' '$PY' -m pytest benchmarks -p no:cacheprovider \
    > '$OUT/bench.log' 2>&1"
grep -A 1000 "fastcae benchmark summary" "$OUT/bench.log" | head -n 200 >> "$SUMMARY"

# The issues' GPU targets, timed interleaved in one process.
run_phase targets 120 bash -c "'$PY' -m benchmarks.targets --device cuda --rounds 50 --out-dir '$OUT' \
    > '$OUT/targets.log' 2>&1"
grep TARGET "$OUT/targets.log" | tee -a "$SUMMARY"

note "results in $OUT"
exit $status
