#!/usr/bin/env bash
# Bolt's main job today, in one command: build the release binary, start an agent on a scratch
# root and watch its event log live. Ctrl-C stops both (the agent gets SIGTERM).
#
#   scripts/demo.sh
#
# Settings: BOLT_DEMO_ROOT (default /var/lib/bolt-demo), BOLT_DEMO_SOCKET (default
# /run/bolt-demo/bolt.sock): root's directories, not guessable names in /tmp that another user
# could create first.
# The agent runs as root (through sudo when you are not root), so the client does too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROOT=${BOLT_DEMO_ROOT:-/var/lib/bolt-demo}
SOCK=${BOLT_DEMO_SOCKET:-/run/bolt-demo/bolt.sock}
BOLT=./target/release/bolt
SUDO=()
[[ $(id -u) == 0 ]] || SUDO=(sudo)

cargo build --release --bin bolt

"${SUDO[@]}" "$BOLT" agent --root "$ROOT" --socket "$SOCK" &
AGENT=$!
stop_agent() {
    # $AGENT is the agent (or the sudo that runs it, which passes the signal on).
    if kill -0 "$AGENT" 2>/dev/null; then
        "${SUDO[@]}" kill -TERM "$AGENT" 2>/dev/null || true
        wait "$AGENT" 2>/dev/null || true
    fi
}
trap stop_agent EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait for the API to answer (the first start generates the node key).
for _ in $(seq 100); do
    if "${SUDO[@]}" "$BOLT" --socket "$SOCK" info >/dev/null 2>&1; then
        break
    fi
    kill -0 "$AGENT" 2>/dev/null || {
        echo "demo: the agent exited (see its messages above)" >&2
        exit 1
    }
    sleep 0.1
done

echo "demo: agent on $SOCK (root $ROOT); following its events, Ctrl-C to stop" >&2
"${SUDO[@]}" "$BOLT" --socket "$SOCK" events --follow
