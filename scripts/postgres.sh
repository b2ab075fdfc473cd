#!/usr/bin/env bash
# PostgreSQL for the tests of the shared jobs store (tests/integration/postgres_env.py).
#
#   scripts/postgres.sh                   install Debian's postgresql with apt when its server
#                                         binaries are missing (what .ci/run does)
#   scripts/postgres.sh start DIR PORT    a throwaway cluster in DIR (empty or absent) on
#                                         127.0.0.1:PORT; prints its postgresql:// URL
#   scripts/postgres.sh restart DIR       stop it (every connection drops) and start it again
#   scripts/postgres.sh stop DIR          stop it (DIR can then be deleted)
#
# The server refuses to run as root: as root the cluster belongs to the `postgres` user that
# Debian's package creates. The cluster is for tests: no fsync, a password on TCP (scram), trust
# on its own socket in DIR. Safe to run again: install is skipped when already done.
set -euo pipefail

log() { printf 'postgres: %s\n' "$*" >&2; }

# The server binaries (initdb, pg_ctl, postgres): $PG_BIN, Debian's newest /usr/lib/postgresql/N/bin,
# else whatever PATH has.
bindir() {
    if [ -n "${PG_BIN:-}" ]; then
        printf '%s\n' "$PG_BIN"
        return
    fi
    local found
    found=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$found" ]; then
        dirname "$found"
    elif command -v initdb >/dev/null; then
        dirname "$(command -v initdb)"
    fi
}

install() {
    if [ -n "$(bindir)" ]; then
        log "server binaries in $(bindir): $("$(bindir)/postgres" --version)"
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    log "installing postgresql with apt"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq postgresql >/dev/null
    # The package starts a system cluster where an init system runs; the tests use their own.
    log "installed: $("$(bindir)/postgres" --version)"
}

# Run a server binary as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=$1 port=$2 bin password
    bin=$(bindir)
    if [ -z "$bin" ]; then
        log "no PostgreSQL server binaries (initdb); run scripts/postgres.sh to install them"
        exit 3
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$password" >"$dir/password"
    chmod 0644 "$dir/password"  # the owner's initdb reads it; the folder is private to this run
    as_owner "$bin/initdb" --pgdata="$dir/data" --username=postgres --pwfile="$dir/password" \
        --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
        log "initdb failed:"
        cat "$dir/initdb.log" >&2
        exit 1
    }
    as_owner "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait --timeout=60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" \
        -o "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB" \
        start >/dev/null || {
        log "the server did not start; its log:"
        tail -n 30 "$dir/server.log" >&2
        exit 1
    }
    printf 'postgresql://postgres:%s@127.0.0.1:%s/postgres\n' "$password" "$port"
}

restart() {
    local dir=$1
    as_owner "$(bindir)/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --mode=fast --wait \
        --timeout=60 restart >/dev/null
}

stop() {
    local dir=$1
    as_owner "$(bindir)/pg_ctl" --pgdata="$dir/data" --mode=immediate --wait stop >/dev/null
}

case "${1:-install}" in
    install) install ;;
    start) start "${2:?start DIR PORT}" "${3:?start DIR PORT}" ;;
    restart) restart "${2:?restart DIR}" ;;
    stop) stop "${2:?stop DIR}" ;;
    *)
        log "usage: $0 [install | start DIR PORT | restart DIR | stop DIR]"
        exit 2
        ;;
esac
