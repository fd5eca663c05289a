#!/usr/bin/env bash
# Makes sure podman has docker.io/library/debian:bookworm-slim, the base the
# Dockerfiles name: pulled where a registry serves it, otherwise bootstrapped
# from Debian's own archive with mmdebstrap and imported under that name. The
# stand-in is barer than the official image (Essential packages and apt only,
# no other Priority: required ones), so what the Dockerfiles rely on without
# installing it shows up here first.
set -euo pipefail
source "$(dirname "$0")/env.sh"
image=docker.io/library/debian:bookworm-slim
if podman image exists "$image"; then exit 0; fi
if podman pull -q "$image" >/dev/null 2>&1; then exit 0; fi
echo "base-image: no registry answered; bootstrapping $image with mmdebstrap"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=apt --quiet bookworm "$work/base.tar" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
podman import -q "$work/base.tar" "$image" >/dev/null
podman image exists "$image"
