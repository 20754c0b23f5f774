#!/usr/bin/env bash
# Fails when Bolt (or its tests) left anything on this machine: run after the tests
# (`.ci/run` does), as root. Looks in the machine's own namespaces only:
#   - links named like Bolt's bridges (bolt0, bolt-<hex>) and capsule veths (bv<hex>), and
#     like the cluster harness's bridges and veths (bc<8 hex>br, bc<8 hex>p<n>, bc<8 hex>n<n>,
#     tests/src/cluster.rs; they live in its namespaces and must never reach this one);
#   - `table ip bolt` in nftables, and the cluster harness's `table inet boltpart`;
#   - named network namespaces of the tests (/run/netns/bolt-test-*, the cluster harness's
#     bolt-test-<pid>-k<n>-sw and bolt-test-<pid>-k<n>-n<i> among them);
#   - mounts below temporary roots (/tmp, /var/tmp) or a Bolt root's capsules/ or volumes/;
#   - loop devices backed by files below those roots;
#   - cgroups Bolt owns (<hierarchy>/bolt);
#   - `bolt supervise` and `bolt agent` processes.
# Prints one line per leftover and exits 1 when there is any; read only, removes nothing.
set -uo pipefail

found=0
leftover() {
    echo "leftover: $*"
    found=1
}

while read -r name; do
    leftover "link $name"
done < <(ip -o link 2>/dev/null | awk -F': ' '{split($2, n, "@"); print n[1]}' |
    grep -E '^(bolt0$|bolt-[0-9a-f]+$|bv[0-9a-f]+$|bc[0-9a-f]{8}(br|[np][0-9]+)$)')

if nft list table ip bolt >/dev/null 2>&1; then
    leftover "nft table ip bolt"
fi
if nft list table inet boltpart >/dev/null 2>&1; then
    leftover "nft table inet boltpart"
fi

while read -r ns _; do
    [[ $ns == bolt-test-* ]] && leftover "network namespace $ns"
done < <(ip netns list 2>/dev/null)

# Field 5 of mountinfo is the mount point (octal escapes left as they are).
while read -r mp; do
    leftover "mount $mp"
done < <(awk '{print $5}' /proc/self/mountinfo |
    grep -E '^/(var/)?tmp/|/capsules/|/volumes/|^/run/netns/bolt-')

if command -v losetup >/dev/null; then
    while read -r line; do
        leftover "loop device $line"
    done < <(losetup -a 2>/dev/null | grep -E '\((/var)?/tmp/|bolt')
fi

for dir in /sys/fs/cgroup/bolt /sys/fs/cgroup/*/bolt; do
    [[ -d $dir ]] && leftover "cgroup $dir ($(ls "$dir" | tr '\n' ' '))"
done

for proc in /proc/[0-9]*; do
    [[ -r $proc/cmdline ]] || continue
    cmd=$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) || continue
    case $cmd in
    *bolt\ supervise\ * | *bolt\ *agent\ --root\ *) leftover "process ${proc#/proc/}: $cmd" ;;
    esac
done

if ((found)); then
    echo "check-leftovers: Bolt left the above on this machine" >&2
    exit 1
fi
echo "check-leftovers: nothing left"
