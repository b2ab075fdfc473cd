#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io (engine 20.10) and docker-compose
# (1.29) with apt when they are missing, start dockerd when it is not running, wait until it
# answers. Safe to run again: each step is skipped when already done. Needs root (or sudo).
set -euo pipefail

log() { printf 'docker-engine: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Debian's client, not whatever else sits earlier on PATH: it matches the engine's API version.
DOCKER=/usr/bin/docker
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

if [ -x "$DOCKER" ] && $SUDO "$DOCKER" info >/dev/null 2>&1 && command -v docker-compose >/dev/null; then
    log "engine already running: $($SUDO "$DOCKER" version --format '{{.Server.Version}}')"
    exit 0
fi

missing=()
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # docker.io's recommends pull in what a working engine needs (iptables, containerd, runc).
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! $SUDO "$DOCKER" info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        log "starting docker with systemd"
        $SUDO systemctl start docker
    else
        # No init system here (a container or a bare VM): run dockerd in the background.
        log "starting dockerd (log: $DOCKERD_LOG)"
        $SUDO sh -c "nohup dockerd >>'$DOCKERD_LOG' 2>&1 &"
    fi
    for _ in $(seq 1 60); do
        if $SUDO "$DOCKER" info >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
fi

if ! $SUDO "$DOCKER" info >/dev/null 2>&1; then
    log "dockerd did not answer within 60 s; last lines of $DOCKERD_LOG:"
    $SUDO tail -n 20 "$DOCKERD_LOG" >&2 || true
    exit 1
fi
log "engine running: $($SUDO "$DOCKER" version --format '{{.Server.Version}}'), $(docker-compose version --short)"
