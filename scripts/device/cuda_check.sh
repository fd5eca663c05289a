#!/usr/bin/env bash
# One-shot check on a GPU machine that has a compiler, CMake, ninja, nvcc and a
# pip-installed CUDA PyTorch (LibTorch 2.x) but no Debian -dev packages and no
# network. Run from the repo root with .devdeps/ (scripts/device/fetch_deps.sh)
# next to the tree:
#   bash scripts/device/cuda_check.sh        # logs and summary in $OUT
# Stages: tool versions, unpack the debs into a private prefix, configure
# against torch's CMake package, build everything, the CUDA tests, a short
# bf16 benchmark on the Qwen2.5-0.5B shape, then the CPU test suite (minus the
# Node.js client test). A failed stage does not stop the later ones that can
# still run; each has a timeout, and all share a budget (BUDGET_S, 420 s).
# Files in $OUT: summary.txt env.log build.log cuda.log bench.log bench.json ctest.log
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
OUT=${OUT:-/tmp/gritserve-device-out}
BUILD=${BUILD:-$ROOT/build-cuda}
DD=${DD:-/opt/dd}
JOBS=${JOBS:-$(nproc)}
BUDGET_S=${BUDGET_S:-420}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET_S))
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# run_stage NAME LIMIT_S LOG FUNCTION: runs an exported shell function under a
# timeout (killing its whole process group, servers included), output to LOG.
run_stage() {
  local name=$1 limit=$2 log=$3 fn=$4
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    note "[$name] SKIPPED: time budget spent"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "===== $name (limit ${limit}s, t=$(elapsed)s) =====" >> "$log"
  local s
  s=$(date +%s)
  timeout -k 10 "$limit" bash -c "$fn" >> "$log" 2>&1
  local rc=$?
  local d=$(( $(date +%s) - s ))
  if [ "$rc" -eq 0 ]; then
    note "[$name] ok (${d}s)"
  else
    note "[$name] FAILED rc=$rc$([ "$rc" -eq 124 ] && echo ' (timeout)') (${d}s, log: $(basename "$log"))"
  fi
  return "$rc"
}

# ---------------------------------------------------------------- tools
PY=${PYTHON:-}
for cand in python3 /opt/torch/.venv/bin/python3 python; do
  [ -n "$PY" ] && break
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then
    PY=$(command -v "$cand")
  fi
done
CXX_BIN=${CXX_BIN:-$(command -v g++ || command -v c++ || true)}
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -d /usr/local/cuda ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  CUDA_HOME=/usr/local/cuda
elif [ -n "$NVCC" ]; then
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
else
  CUDA_HOME=""
fi
[ -n "$CUDA_HOME" ] && NVCC=$CUDA_HOME/bin/nvcc
{
  echo "== nvidia-smi"; nvidia-smi -L 2>&1; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  echo "== compiler: $CXX_BIN"; [ -n "$CXX_BIN" ] && "$CXX_BIN" --version 2>&1 | head -1
  echo "== cmake: $(command -v cmake)"; cmake --version 2>&1 | head -1
  echo "== ninja: $(command -v ninja) $(ninja --version 2>&1)"
  echo "== nvcc: $NVCC (CUDA_HOME=$CUDA_HOME)"; [ -n "$NVCC" ] && "$NVCC" --version 2>&1 | tail -2
  echo "== pkg-config: $(command -v pkg-config || echo none)  dpkg-deb: $(command -v dpkg-deb || echo none)"
  echo "== python: $PY"
  [ -n "$PY" ] && "$PY" - <<'PYEOF' 2>&1
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print("cmake_prefix_path", torch.utils.cmake_prefix_path)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PYEOF
  echo "== os: $(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")  cores: $(nproc)  mem: $(free -g | awk '/Mem:/ {print $2}')G"
} > "$OUT/env.log" 2>&1
note "== env (full: env.log)"
grep -E '^GPU|^== compiler|^g\+\+|^c\+\+|^cmake version|^== ninja|Cuda compilation|^Build cuda|^torch |^device |^== os' \
  "$OUT/env.log" | head -14 | tee -a "$SUMMARY"
if [ -z "$CXX_BIN" ] || [ -z "$PY" ]; then
  note "FATAL: no C++ compiler ($CXX_BIN) or no python with torch ($PY)"
  exit 1
fi

# ---------------------------------------------------------------- prefix
if ! bash scripts/device/unpack_debs.sh "$DD" > "$OUT/dd.env" 2>> "$OUT/env.log"; then
  note "FATAL: unpacking .devdeps/debs failed (env.log)"
  exit 1
fi
# shellcheck disable=SC1091
. "$OUT/dd.env"
rm -f "$OUT/dd.env"
note "[deps] unpacked into $DD; runtime fallbacks: $(ls "$DD_RUNTIME_LIBDIR" | tr '\n' ' ')"

TORCH_CMAKE=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_DIR=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
TORCH_ABI=$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
SITE=$(dirname "$TORCH_DIR")
# torch's CUDA libraries come from pip's nvidia-* packages; the linker needs
# them to check libtorch_cuda.so's dependencies, and at run time our binaries
# must load the same copies torch does (not the toolkit's, whose minor version
# may differ). Debian libraries that the system lacks come last.
NV_LIBS=$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$TORCH_DIR/lib:${NV_LIBS}${DD_RUNTIME_LIBDIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -n "$CUDA_HOME" ]; then
  export CUDA_HOME CUDA_PATH=$CUDA_HOME CUDACXX=$NVCC
  export PATH="$CUDA_HOME/bin:$PATH"
fi
# Torch's CMake package compiles for these architectures instead of probing the
# GPU (H100/H200: sm_90).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export ROOT OUT BUILD JOBS PY TORCH_CMAKE TORCH_DIR TORCH_ABI NVCC CXX_BIN DD_PREFIX DD_PKG_CONFIG

# ---------------------------------------------------------------- C++ standard
# Newer LibTorch headers need C++20; the build picks it up from ATen.h's #error
# text, and this probe also catches headers that need it without saying so.
probe_std() {
  local src=/tmp/gritserve-std-probe.cc
  printf '#include <ATen/ATen.h>\n#include <ATen/Parallel.h>\n#include <ATen/CPUGeneratorImpl.h>\n#include <c10/core/InferenceMode.h>\nint main() { return at::hasCUDA() ? 0 : 1; }\n' > "$src"
  for std in 17 20; do
    if "$CXX_BIN" -std=c++$std -fsyntax-only -D_GLIBCXX_USE_CXX11_ABI="$TORCH_ABI" \
        -I "$TORCH_DIR/include" -I "$TORCH_DIR/include/torch/csrc/api/include" "$src"; then
      echo "STD=$std"
      return 0
    fi
  done
  return 1
}
export -f probe_std
STD_FLAG=()
if run_stage probe 90 "$OUT/build.log" probe_std; then
  std=$(grep -o 'STD=[0-9]*' "$OUT/build.log" | tail -1 | cut -d= -f2)
  [ "$std" = 20 ] && STD_FLAG=(-DCMAKE_CXX_STANDARD=20)
  note "[probe] LibTorch headers compile as C++$std"
fi

# ---------------------------------------------------------------- configure
GEN=(-G Ninja)
command -v ninja >/dev/null 2>&1 || GEN=()
CONFIGURE_ARGS=(-S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_PREFIX_PATH=$DD_PREFIX;$TORCH_CMAKE" "-DPKG_CONFIG_EXECUTABLE=$DD_PKG_CONFIG"
  "-DCMAKE_CXX_COMPILER=$CXX_BIN"
  -DUSE_SYSTEM_NVTX=ON "-DPython_EXECUTABLE=$PY" "-DPYTHON_EXECUTABLE=$PY" "${STD_FLAG[@]}"
  -DGRITSERVE_WITH_DNNL=OFF)  # no system oneDNN beside a wheel; never mix it with torch's own
if [ -n "$CUDA_HOME" ]; then
  CONFIGURE_ARGS+=("-DCUDAToolkit_ROOT=$CUDA_HOME" "-DCUDA_TOOLKIT_ROOT_DIR=$CUDA_HOME"
    "-DCMAKE_CUDA_COMPILER=$NVCC")
fi
# Second try: settings that sidestep the usual trouble in torch's CUDA CMake
# code (architecture detection, nvrtc hashing, optional CUDA libraries).
RETRY_ARGS=(-DCMAKE_CUDA_ARCHITECTURES=90 -DCUDA_NVRTC_SHORTHASH=XXXXXXXX -DCAFFE2_USE_CUDNN=OFF
  -DCAFFE2_USE_CUSPARSELT=OFF -DUSE_CUDSS=OFF -DCAFFE2_USE_CUFILE=OFF "-DCMAKE_CUDA_HOST_COMPILER=$CXX_BIN")
export CONFIGURE_ARGS_STR RETRY_ARGS_STR
CONFIGURE_ARGS_STR=$(printf '%q ' "${CONFIGURE_ARGS[@]}")
RETRY_ARGS_STR=$(printf '%q ' "${RETRY_ARGS[@]}")
# FRESH_BUILD=0 reuses an existing build directory (a rerun on a warm machine).
configure1() { [ "${FRESH_BUILD:-1}" = 1 ] && rm -rf "$BUILD"; eval cmake "$CONFIGURE_ARGS_STR"; }
configure2() { rm -rf "$BUILD"; eval cmake "$CONFIGURE_ARGS_STR" "$RETRY_ARGS_STR"; }
export -f configure1 configure2
configured=0
if run_stage configure 150 "$OUT/build.log" configure1; then
  configured=1
elif run_stage configure-retry 150 "$OUT/build.log" configure2; then
  configured=1
fi
grep -E 'LibTorch [0-9]|CUDA detected|CUDA nvcc is|Found CUDAToolkit|Cannot find|CMake Warning at.*(Caffe2|Torch)' \
  "$OUT/build.log" | sort -u | head -8 | sed 's/^/  /' | tee -a "$SUMMARY"
if [ "$configured" = 0 ]; then
  note "-- configure errors:"
  grep -n -A6 'CMake Error' "$OUT/build.log" | head -50 | tee -a "$SUMMARY"
  for f in "$BUILD/CMakeFiles/CMakeError.log" "$BUILD/CMakeFiles/CMakeConfigureLog.yaml"; do
    [ -f "$f" ] && { echo "===== $f (tail)"; tail -80 "$f"; } >> "$OUT/build.log"
  done
fi

# ---------------------------------------------------------------- build
# Keep going past a failed target: whatever else builds can still run.
build_all() {
  if [ -f "$BUILD/build.ninja" ]; then
    cmake --build "$BUILD" -j "$JOBS" -- -k 0
  else
    cmake --build "$BUILD" -j "$JOBS" -- -k
  fi
}
export -f build_all
if [ "$configured" = 1 ]; then
  if ! run_stage build 330 "$OUT/build.log" build_all; then
    note "-- first build errors:"
    grep -E 'error:|FAILED:|undefined reference|cannot find -l|not found \(try using' "$OUT/build.log" \
      | head -30 | cut -c1-400 | tee -a "$SUMMARY"
  fi
  warns=$(grep -E 'warning:' "$OUT/build.log" | grep -E "^$ROOT/(src|include|tests|bench)/" | sort -u)
  note "[build] warnings in our sources: $(printf '%s' "$warns" | grep -c . )"
  [ -n "$warns" ] && printf '%s\n' "$warns" | head -10 | cut -c1-300 | tee -a "$SUMMARY"
  note "[build] CUDA tests built: $( [ -x "$BUILD/tests/cuda_engine_test" ] && echo yes || echo NO)"
fi

# ---------------------------------------------------------------- CUDA tests
cuda_tests() {
  echo "--- smoke: gritserve embed --device cuda"
  "$BUILD/gritserve" embed --model "$ROOT/tests/fixtures/qwen2-tiny" --device cuda "hello world" \
    | head -c 400; echo
  echo "--- cuda_engine_test"
  "$BUILD/tests/cuda_engine_test" --gtest_color=no
}
export -f cuda_tests
if [ -x "$BUILD/tests/cuda_engine_test" ]; then
  run_stage cuda 150 "$OUT/cuda.log" cuda_tests
  grep -E '^\[ +(OK|FAILED|PASSED) +\]|^\[==========\]' "$OUT/cuda.log" | sort -u | head -14 | tee -a "$SUMMARY"
  grep -B2 -A6 -E 'Failure$|error:|what\(\)|terminate' "$OUT/cuda.log" | head -60 | cut -c1-300 | tee -a "$SUMMARY"
fi

# ---------------------------------------------------------------- benchmark
CKPT=/tmp/gritserve-qwen2.5-0.5b-bf16
export CKPT
bench() {
  "$BUILD/gritserve" make-checkpoint --preset qwen2.5-0.5b --dtype bf16 --out "$CKPT" >/dev/null || return 1
  local rc=0
  "$BUILD/bench_engine" --model "$CKPT" --device cuda --dtype bfloat16 --repeats 2 \
    > "$OUT/bench_engine.json" || rc=1
  "$BUILD/bench_rag" --model "$CKPT" --device cuda --dtype bfloat16 --repeats 2 \
    > "$OUT/bench_rag.json" || rc=1
  return $rc
}
export -f bench
if [ -x "$BUILD/bench_engine" ] && [ -x "$BUILD/bench_rag" ]; then
  run_stage bench 150 "$OUT/bench.log" bench
  {
    printf '{"gpu": "%s",\n "bench_engine_cuda_bf16": ' "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    if [ -s "$OUT/bench_engine.json" ]; then cat "$OUT/bench_engine.json"; else echo null; fi
    printf ',\n "bench_rag_cuda_bf16": '
    if [ -s "$OUT/bench_rag.json" ]; then cat "$OUT/bench_rag.json"; else echo null; fi
    printf '}\n'
  } > "$OUT/bench.json"
  rm -f "$OUT/bench_engine.json" "$OUT/bench_rag.json"
  tr -d ' \n' < "$OUT/bench.json" | cut -c1-1200 | tee -a "$SUMMARY"; echo | tee -a "$SUMMARY"
  tail -5 "$OUT/bench.log" | cut -c1-300 >> "$SUMMARY"
fi

# ---------------------------------------------------------------- CPU suite
# Everything but the CUDA tests (run above) and the Node.js client test (no
# node there). Few threads per test: ctest runs JOBS of them at once.
ctest_all() {
  cd "$BUILD" && OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 ctest -j "$JOBS" --output-on-failure \
    --timeout 150 -LE cuda -E '^(OpenAiClientTest|CudaEngineTest)\.'
}
export -f ctest_all
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  run_stage ctest 240 "$OUT/ctest.log" ctest_all
  note "[ctest] $(grep -cE 'Test +#[0-9]+: .* Passed' "$OUT/ctest.log") passed, $(grep -cE 'Test +#[0-9]+: .*(\*\*\*|Failed|Timeout)' "$OUT/ctest.log") failed"
  grep -E 'tests passed|tests failed out of|Total Test time' "$OUT/ctest.log" | tail -2 | tee -a "$SUMMARY"
  sed -n '/The following tests FAILED/,$p' "$OUT/ctest.log" | head -25 | tee -a "$SUMMARY"
fi

# ---------------------------------------------------------------- wrap up
# Keep every returned file under the transfer limit.
for f in "$OUT"/*.log; do
  if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
    tail -c 15000000 "$f" > "$f.tmp" && mv "$f.tmp" "$f"
  fi
done
note "== done in $(elapsed)s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
