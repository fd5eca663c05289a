#!/usr/bin/env bash
# Installs every build and test dependency of gritserve from Debian packages
# (and the npm registry for the OpenAI client test), then selects the OpenMP
# build of OpenBLAS as the system BLAS. Idempotent; safe to re-run.
# GRITSERVE_SETUP_TORCH=none leaves out Debian's CPU LibTorch and what only it
# needs (oneDNN, OpenBLAS), for builds against a LibTorch 2.x / CUDA
# distribution (docker/Dockerfile.cuda).
set -euo pipefail
torch=${GRITSERVE_SETUP_TORCH:-debian}
case "$torch" in debian | none) ;; *) echo "setup: GRITSERVE_SETUP_TORCH=debian|none" >&2; exit 2 ;; esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates
  libsentencepiece-dev sentencepiece
  libboost-dev libcpp-httplib-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev
  libpcre2-dev libutf8proc-dev libssl-dev libcli11-dev libxxhash-dev libhnswlib-dev
  # The document store's Redis tier; the tests run a real redis-server.
  libhiredis-dev redis-server
)
# GRITSERVE_SETUP_SANITIZERS=1 adds clang with its sanitizer and libFuzzer
# runtimes, its OpenMP runtime and llvm-symbolizer, for scripts/sanitize.sh.
if [ "${GRITSERVE_SETUP_SANITIZERS:-0}" = 1 ]; then
  PKGS+=(clang-14 libclang-rt-14-dev libomp-14-dev llvm-14)
fi
if [ "$torch" = debian ]; then
  PKGS+=(
    libtorch-dev libopenblas0-openmp libdnnl-dev
    # Debian's dnnl-config.cmake calls find_dependency(OpenCL) and fails hard
    # without it; libdnnl-dev only recommends it (and we install no recommends).
    ocl-icd-opencl-dev
  )
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js (for the OpenAI-client test) may already come from another source
# whose nodejs package bundles npm; Debian's separate npm package conflicts there.
if ! command -v node >/dev/null 2>&1; then missing+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libtorch links libblas.so.3 through the alternatives system. The pthread
# OpenBLAS (which wins by priority when installed) fights libtorch's own OpenMP
# threads and runs 2-3x slower here; the reference BLAS is slower still.
arch_triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for lib in libblas.so.3 liblapack.so.3; do
  target="/usr/lib/${arch_triplet}/openblas-openmp/${lib}"
  if [ -e "$target" ]; then
    $SUDO update-alternatives --set "${lib}-${arch_triplet}" "$target" >/dev/null
  fi
done
echo "setup: BLAS -> $(readlink -f /usr/lib/${arch_triplet}/libblas.so.3)"

# The OpenAI-client test (tests/http_openai_client_test.cc) runs the official
# openai npm SDK pinned by tests/openai_client/package-lock.json; it fails
# without this install. Located from this script so it works from any cwd.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
npm ci --prefix "${repo_root}/tests/openai_client" --no-audit --no-fund
