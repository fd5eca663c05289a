#!/usr/bin/env bash
# Unpacks .devdeps/debs/*.deb (see fetch_deps.sh) into a private prefix, never
# into /, and makes it usable from there: pkg-config files point into the
# prefix, and DEST/bin/pkg-config runs a pkg-config (the system's, or the
# unpacked pkgconf; DD_OWN_PKGCONF=1 forces that). Prints the variables a
# build needs, for `eval`:
#   eval "$(bash scripts/device/unpack_debs.sh /opt/dd)"
# sets DD_PREFIX, DD_LIBDIR, DD_PKG_CONFIG, DD_RUNTIME_LIBDIR, PKG_CONFIG_PATH.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="${1:?usage: unpack_debs.sh DEST}"
debs=("${repo_root}"/.devdeps/debs/*.deb)
[ -f "${debs[0]}" ] || { echo "unpack_debs: no debs in .devdeps/debs (run fetch_deps.sh)" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest"
for deb in "${debs[@]}"; do
  if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$deb" "$dest"
  else
    # A .deb is an ar archive holding data.tar.{xz,zst,gz}.
    tmp=$(mktemp -d)
    (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$dest")
    rm -rf "$tmp"
  fi
done

usr="${dest}/usr"
arch=x86_64-linux-gnu
# .pc files name /usr; the prefix is elsewhere. (Absolute include/lib paths in
# them are then outside the compiler's default search, so pkg-config emits them.)
for pc in "${usr}"/lib/${arch}/pkgconfig/*.pc "${usr}"/share/pkgconfig/*.pc; do
  [ -f "$pc" ] || continue
  sed -i -E -e "s#^([A-Za-z_]+)=/usr(/|\$)#\\1=${usr}\\2#" \
    -e "s#(^|[[:space:]])-([IL])/usr/#\\1-\\2${usr}/#g" "$pc"
done
# Debian 12 keeps some libraries in /lib (zlib): absolute links into the
# prefix's own tree are pointed back into it.
find "$dest" -type l -lname '/*' | while read -r link; do
  target=$(readlink "$link")
  if [ -e "${dest}${target}" ]; then ln -sfn "${dest}${target}" "$link"; fi
done
# A dangling .so link would make find_library miss a library in the prefix.
dangling=$(find "$dest" -xtype l -name '*.so*' | sed "s#^${dest}##" | tr '\n' ' ')
[ -z "$dangling" ] || echo "unpack_debs: note: dangling links: $dangling" >&2

# Our binaries find the libraries they link through their RUNPATH, but not
# those libraries' own dependencies (cpp-httplib needs libssl, libz, brotli).
# The system's copies serve where it has them; runtime-lib/ links the rest, so
# putting it on LD_LIBRARY_PATH shadows nothing the system provides.
mkdir -p "${dest}/runtime-lib"
system_libs=$(ldconfig -p 2>/dev/null || true)
for lib in "${usr}"/lib/${arch}/lib*.so.* "${dest}"/lib/${arch}/lib*.so.*; do
  [ -e "$lib" ] || continue
  name=$(basename "$lib")
  case "$name" in *.so.[0-9]|*.so.[0-9][0-9]|*.so.[0-9].[0-9]*) ;; *) continue ;; esac
  # Only sonames (libfoo.so.N or libfoo.so.N.M as Debian's spdlog uses).
  soname=$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  [ "$soname" = "$name" ] || continue
  if ! grep -q "[[:space:]]${name} " <<<"$system_libs"; then
    ln -sfn "$lib" "${dest}/runtime-lib/${name}"
  fi
done

mkdir -p "${dest}/bin"
if [ -z "${DD_OWN_PKGCONF:-}" ] && command -v pkg-config >/dev/null 2>&1; then
  real_pc=$(command -v pkg-config)
  printf '#!/bin/sh\nexec %s "$@"\n' "$real_pc" > "${dest}/bin/pkg-config"
else
  # The unpacked pkgconf needs its libpkgconf, and only it gets this library path.
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
    "${usr}/lib/${arch}" "${usr}/bin/pkgconf" > "${dest}/bin/pkg-config"
fi
chmod +x "${dest}/bin/pkg-config"

echo "DD_PREFIX='${usr}'"
echo "DD_LIBDIR='${usr}/lib/${arch}:${dest}/lib/${arch}'"
echo "DD_PKG_CONFIG='${dest}/bin/pkg-config'"
echo "DD_RUNTIME_LIBDIR='${dest}/runtime-lib'"
echo "export PKG_CONFIG_PATH='${usr}/lib/${arch}/pkgconfig:${usr}/share/pkgconfig'\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
