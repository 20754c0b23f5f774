# shellcheck shell=bash
# The Debian 12 packages Bolt's tests and fixtures need: the one list, sourced by .ci/run and
# scripts/setup.sh. Add a package here, not in the callers.

BOLT_APT_PACKAGES=(
    # the loopback registry and the image fixtures (tests/fixtures/build-images.sh)
    docker-registry skopeo umoci debootstrap debian-archive-keyring busybox-static zstd python3
    # runtimes and isolation
    runc uidmap
    # storage and networking
    btrfs-progs nftables iproute2 dnsutils
    # tools used by tests, scripts and benchmarks
    ca-certificates curl jq hyperfine crun
    # the pure cgroup v2 VM (tests/vm/cgroup-v2.sh)
    qemu-system-x86
)

# Prints the packages of "$@" that are not installed, one a line.
bolt_missing_packages() {
    local p
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || echo "$p"
    done
}

# Installs whatever is missing from BOLT_APT_PACKAGES (as root). Idempotent: with everything
# present it neither updates nor installs.
bolt_install_deps() {
    local -a missing
    mapfile -t missing < <(bolt_missing_packages "${BOLT_APT_PACKAGES[@]}")
    if ((${#missing[@]} == 0)); then
        echo "deps: all ${#BOLT_APT_PACKAGES[@]} packages present"
        return 0
    fi
    echo "deps: installing ${missing[*]}"
    local log
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 ||
        ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        echo "deps: apt-get failed (output above)" >&2
        return 1
    fi
    rm -f "$log"
    mapfile -t missing < <(bolt_missing_packages "${BOLT_APT_PACKAGES[@]}")
    if ((${#missing[@]} != 0)); then
        echo "deps: still missing after install: ${missing[*]}" >&2
        return 1
    fi
    echo "deps: installed"
}

# The non-root user of the rootless test (tests/tests/rootless.rs), with a subordinate id range
# in /etc/subuid and /etc/subgid for newuidmap/newgidmap (as root). Idempotent.
BOLT_ROOTLESS_USER=bolt-rootless-test
BOLT_ROOTLESS_RANGE=524288-589823
bolt_rootless_user() {
    id -u "$BOLT_ROOTLESS_USER" >/dev/null 2>&1 ||
        useradd --system --create-home --shell /usr/sbin/nologin "$BOLT_ROOTLESS_USER" || return 1
    if ! grep -q "^$BOLT_ROOTLESS_USER:" /etc/subuid 2>/dev/null ||
        ! grep -q "^$BOLT_ROOTLESS_USER:" /etc/subgid 2>/dev/null; then
        usermod --add-subuids "$BOLT_ROOTLESS_RANGE" --add-subgids "$BOLT_ROOTLESS_RANGE" \
            "$BOLT_ROOTLESS_USER" || return 1
    fi
    echo "deps: rootless test user $BOLT_ROOTLESS_USER ($(grep "^$BOLT_ROOTLESS_USER:" /etc/subuid))"
}
