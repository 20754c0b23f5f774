#!/usr/bin/env bash
# A local OCI registry for the tests: Debian's docker-registry (distribution 2.8.2) run directly,
# without systemd, on 127.0.0.1.
#
#   scripts/registry.sh start   start it (idempotent: a live registry in the state dir is reused)
#   scripts/registry.sh env     print `export ...` lines for the tests (eval "$(scripts/registry.sh env)")
#   scripts/registry.sh stop    kill the pid this script started (and nothing else)
#   scripts/registry.sh status  exit 0 when it answers
#
# Settings (environment):
#   BOLT_TEST_REGISTRY_DIR   state dir: config.yml, registry.log, registry.pid, port, storage/
#                            (default /tmp/bolt-registry)
#   BOLT_REGISTRY_PORT       preferred port (default 5015); the next free one is taken if it is busy
set -euo pipefail

STATE_DIR=${BOLT_TEST_REGISTRY_DIR:-/tmp/bolt-registry}
PREFERRED_PORT=${BOLT_REGISTRY_PORT:-5015}
PIDFILE=$STATE_DIR/registry.pid
PORTFILE=$STATE_DIR/port
CONFIG=$STATE_DIR/config.yml
LOG=$STATE_DIR/registry.log
STORAGE=$STATE_DIR/storage

die() { echo "registry.sh: $*" >&2; exit 1; }

# The pid in the pidfile, only if that process is still the docker-registry serving our config
# (a recycled pid is never reported, so never killed).
live_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *docker-registry*"$CONFIG"* ]] || return 1
    echo "$pid"
}

answers() {
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1/v2/" 2>/dev/null
}

port_busy() {
    [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

write_config() {
    cat >"$CONFIG" <<EOF
# written by scripts/registry.sh
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $STORAGE
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$1
  headers:
    X-Content-Type-Options: [nosniff]
EOF
}

cmd_start() {
    command -v docker-registry >/dev/null || die "docker-registry not installed (run scripts/setup.sh)"
    mkdir -p "$STATE_DIR" "$STORAGE"
    local pid port
    if pid=$(live_pid) && port=$(<"$PORTFILE") && answers "$port"; then
        echo "registry already running: pid $pid on 127.0.0.1:$port" >&2
        return 0
    fi
    port=$PREFERRED_PORT
    local tries=0
    while ((tries < 50)); do
        tries=$((tries + 1))
        if port_busy "$port"; then
            port=$((port + 1))
            continue
        fi
        write_config "$port"
        echo "$port" >"$PORTFILE"
        docker-registry serve "$CONFIG" </dev/null >>"$LOG" 2>&1 &
        pid=$!
        echo "$pid" >"$PIDFILE"
        local waited=0
        while ((waited < 100)); do
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            if answers "$port"; then
                echo "registry started: pid $pid on 127.0.0.1:$port (state $STATE_DIR)" >&2
                return 0
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        # Died (port taken between the check and the bind) or never answered: stop it, try the next port.
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
        rm -f "$PIDFILE"
        echo "registry did not come up on port $port, trying the next one" >&2
        port=$((port + 1))
    done
    tail -n 20 "$LOG" >&2 || true
    die "could not start docker-registry (log: $LOG)"
}

cmd_stop() {
    local pid
    if pid=$(live_pid); then
        kill "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "registry stopped: pid $pid" >&2
    fi
    rm -f "$PIDFILE"
}

cmd_env() {
    local port
    [[ -f $PORTFILE ]] || die "not started (no $PORTFILE)"
    port=$(<"$PORTFILE")
    live_pid >/dev/null || die "not running (state $STATE_DIR)"
    printf 'export BOLT_TEST_REGISTRY=%q\n' "127.0.0.1:$port"
    printf 'export BOLT_TEST_REGISTRY_DIR=%q\n' "$STATE_DIR"
    printf 'export BOLT_TEST_REGISTRY_STORAGE=%q\n' "$STORAGE"
}

cmd_status() {
    local pid port
    pid=$(live_pid) || die "not running"
    port=$(<"$PORTFILE")
    answers "$port" || die "pid $pid does not answer on 127.0.0.1:$port"
    echo "running: pid $pid on 127.0.0.1:$port"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
status) cmd_status ;;
*) die "usage: $0 start|stop|env|status" ;;
esac
