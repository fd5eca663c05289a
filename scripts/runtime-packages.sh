#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries
# load (ldd, through symbolic links and the alternatives system), one per line.
# The container's runtime stage installs exactly these, so its package list is
# derived from what was built rather than kept by hand beside setup.sh.
#   bash scripts/runtime-packages.sh build/gritserve build/libgritserve_spm.so
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

owner() {  # the package that installed a file, trying the merged-/usr twin too
  local path="$1" alt
  case "$path" in
    /usr/lib/*) alt="${path#/usr}" ;;
    /lib/*) alt="/usr${path}" ;;
    *) alt="$path" ;;
  esac
  for p in "$path" "$alt"; do
    dpkg-query -S "$p" 2>/dev/null | head -n1 | cut -d: -f1 && return 0
  done
  return 1
}

missing=0
pkgs=""
# ldd lines: "\tname => /path (0x...)" and "\t/path (0x...)"; sed, not awk,
# since a bare Debian root has no awk.
libs=$(ldd "$@" | sed -n -e 's/.*=> \(\/[^ ]*\) (.*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
for lib in $(printf '%s\n' "$libs" | sort -u); do
  if pkg=$(owner "$(readlink -f "$lib")") || pkg=$(owner "$lib"); then
    pkgs+="${pkg}"$'\n'
  else
    echo "runtime-packages: no package holds $lib" >&2
    missing=1
  fi
done
printf '%s' "$pkgs" | sort -u
exit "$missing"
