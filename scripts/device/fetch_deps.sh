#!/usr/bin/env bash
# Prepares .devdeps/ for a build on a machine that has a compiler, CMake and
# LibTorch but no Debian packages and no network (the GPU check machine): the
# Debian 12 .deb files of every other build/test dependency (the test fixtures
# live in tests/fixtures and travel with the work tree).
# Runs here, on a Debian 12 machine with apt. scripts/device/cuda_check.sh
# unpacks the debs into a private prefix there. Idempotent.
#   bash scripts/device/fetch_deps.sh
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${repo_root}/.devdeps"

# -dev packages whose headers, pkg-config files or CMake configs the build
# uses, plus the runtime libraries their .so symlinks point at (a dev package
# alone leaves those links dangling). cpp-httplib's .pc names openssl, zlib and
# brotli as Requires.private and its header includes theirs, so they come too.
# pkgconf: the GPU image may have no pkg-config. Left out on purpose: glibc,
# libstdc++ and libgcc (every image with a compiler has newer ones), gmock
# (unused), catch2 and googletest sources (dev-package recommends, unused).
PKGS=(
  libspdlog-dev libspdlog1.10
  libfmt-dev libfmt9
  nlohmann-json3-dev
  libcpp-httplib-dev libcpp-httplib0.11
  libssl-dev libssl3
  zlib1g-dev zlib1g
  libbrotli-dev libbrotli1
  libsentencepiece-dev libsentencepiece0
  libpcre2-dev libpcre2-8-0
  libutf8proc-dev libutf8proc2
  libxxhash-dev libxxhash0
  libgtest-dev
  libcli11-dev
  libhnswlib-dev
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p "${out}/debs"
if ! grep -qx '/.devdeps/' "${repo_root}/.gitignore" 2>/dev/null; then
  echo '/.devdeps/' >> "${repo_root}/.gitignore"
fi

# Every package must exist in this release; apt-cache says so without downloading.
missing=()
for p in "${PKGS[@]}"; do
  apt-cache show "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "fetch_deps: apt knows none of: ${missing[*]} (run apt-get update?)" >&2
  exit 1
fi

# A fresh download each time, so that no stale version is left beside the new one.
rm -f "${out}"/debs/*.deb
# (apt warns that it downloads unsandboxed as root: harmless here.)
(cd "${out}/debs" && apt-get download -q "${PKGS[@]}" 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' || true)
n=$(ls "${out}"/debs/*.deb | wc -l)
if [ "$n" -ne "${#PKGS[@]}" ]; then
  echo "fetch_deps: expected ${#PKGS[@]} debs, got $n" >&2
  exit 1
fi

# A dependency of a dev package that is neither listed nor a library the GPU
# image surely has would break the build there: report it.
# (pcre2's 16/32-bit and POSIX libraries are left out: the build uses libpcre2-8.)
known=" ${PKGS[*]} libc6 libc6-dev libc-dev libstdc++6 libgcc-s1 libgcc1 catch2 googletest "
known+="debconf perl-base libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 "
for p in "${PKGS[@]}"; do
  for d in $(apt-cache depends "$p" 2>/dev/null | awk '/^  (Pre)?Depends:/ {print $2}' | tr -d '<>'); do
    case "$known" in *" $d "*) ;; *) echo "fetch_deps: note: $p depends on $d (not fetched)" ;; esac
  done
done

du -sh "${out}/debs" "${out}"
