#!/usr/bin/env bash
# Make the local stand-in for python:3.11-slim on machines that cannot reach Docker Hub: a minimal
# Debian bookworm (python3 3.11, venv, pip, ca-certificates) made with debootstrap and imported
# as an image. Reuses the image when it already exists. Needs root and a running engine.
#
#   scripts/base-image.sh [IMAGE]        default IMAGE: opea-media-base:bookworm
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security), CA_BUNDLE (the host's
# certificate bundle, copied in so that pip and apt inside `docker build` trust what the host
# trusts; default /etc/ssl/certs/ca-certificates.crt), DOCKER (the docker client to use).
set -euo pipefail

IMAGE=${1:-opea-media-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKER=${DOCKER:-docker}

log() { printf 'base-image: %s\n' "$*" >&2; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists; reusing it"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS=$(mktemp -d /var/tmp/opea-media-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap bookworm into $ROOTFS (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2
    rm -f "$ROOTFS.log"
    exit 1
}
rm -f "$ROOTFS.log"

if [ -f "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi
# pip trusts its own bundled certificates, not the system's: point it at the bundle above.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
# Security and point-release updates too, as in Debian's own images (debootstrap writes main only).
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
# What python:3.11-slim's users rely on: a `python` command and a UTF-8 locale.
ln -sf python3 "$ROOTFS/usr/bin/python"
# Keep the image small: apt's package cache and lists are refetched by whoever needs them.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/tmp/*

log "importing as $IMAGE"
tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
log "made $IMAGE ($("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE") bytes)"
