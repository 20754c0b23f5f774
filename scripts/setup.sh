#!/usr/bin/env bash
# Prepares a Debian 12 developer machine for Bolt: installs the system packages the tests need
# (the list is scripts/deps.sh, shared with .ci/run). Uses sudo when not run as root.
#
#   scripts/setup.sh              install the packages
#   scripts/setup.sh --fixtures   also start the test registry and build and push the test
#                                 images, then print the environment the tests read
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) != 0 ]]; then
    exec sudo --preserve-env=BOLT_TEST_REGISTRY_DIR,BOLT_REGISTRY_PORT,BOLT_FIXTURES_CACHE,BOLT_DEBIAN_MIRROR \
        "$0" "$@"
fi

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
bolt_install_deps >&2

command -v cargo >/dev/null || echo "setup: note: cargo not on PATH (the Rust toolchain comes from rustup)" >&2

if [[ ${1:-} == --fixtures ]]; then
    scripts/registry.sh start
    eval "$(scripts/registry.sh env)"
    tests/fixtures/build-images.sh >&2
    echo "# the test registry keeps running; stop it with scripts/registry.sh stop" >&2
    scripts/registry.sh env
    tests/fixtures/build-images.sh env
fi
