#!/usr/bin/env bash
# Proves Bolt's cgroup v2 path on a pure-v2 kernel: boots Debian 12's kernel in qemu with only
# cgroup2 mounted (and cgroup_no_v1=all), runs the `bolt` binary built here against it (agent,
# image import, memory/pids/cpu limits, the capsule's cgroup and its removal) and reports one
# PASS/FAIL line per check. The host's cgroups are never touched. Root (apt, dpkg-deb).
#
#   tests/vm/cgroup-v2.sh            build bolt (debug), boot the VM, run the checks
#
# Environment:
#   BOLT_BIN            the bolt binary to test (default: `cargo build -p bolt-agent`'s)
#   BOLT_VM_CACHE       where the kernel package is kept (default ~/.cache/bolt-vm)
#   BOLT_VM_TIMEOUT     seconds the VM may run (default 600)
#   BOLT_TEST_OCI_DIR   the fixture layouts (default: tests/fixtures/build-images.sh env)
# Exits 0 when every check passed, 1 when one failed or the VM did not finish.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${BOLT_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bolt-vm}
TIMEOUT=${BOLT_VM_TIMEOUT:-600}

log() { echo "cgroup-v2: $*" >&2; }
die() {
    log "$*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "must run as root"

# --- packages ---------------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -x cpio >/dev/null || need+=(busybox-static)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
BUSYBOX=/bin/busybox

# --- the kernel: Debian's current linux-image-amd64, cached -----------------------------------
mkdir -p "$CACHE"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
[[ -n $kpkg ]] || die "apt-cache knows no linux-image-amd64 dependency (apt-get update?)"
# (.blk: the cache since the VM has a virtio disk; older caches hold no virtio modules.)
kdir=$CACHE/$kpkg.blk
if [[ ! -d $kdir/boot ]]; then
    log "fetching $kpkg"
    rm -rf "$kdir" "$CACHE"/dl
    mkdir -p "$CACHE/dl"
    (cd "$CACHE/dl" && apt-get download -q "$kpkg" >/dev/null)
    rm -rf "$kdir.tmp" "$kdir.keep"
    dpkg-deb -x "$CACHE"/dl/"$kpkg"_*.deb "$kdir.tmp"
    # Keep what the VM uses: the kernel, overlay.ko, the virtio disk driver, the list of built-in
    # modules (~10 MB of 400).
    mkdir -p "$kdir.keep"
    (cd "$kdir.tmp" && cp -a --parents boot/vmlinuz-* lib/modules/*/modules.builtin "$kdir.keep/" &&
        for d in lib/modules/*/kernel/fs/overlayfs lib/modules/*/kernel/drivers/virtio \
            lib/modules/*/kernel/drivers/block/virtio_blk.ko; do
            [[ ! -e $d ]] || cp -a --parents "$d" "$kdir.keep/"
        done)
    rm -rf "$kdir.tmp"
    mv "$kdir.keep" "$kdir"
    rm -rf "$CACHE/dl"
fi
kver=${kpkg#linux-image-}
vmlinuz=$kdir/boot/vmlinuz-$kver
[[ -f $vmlinuz ]] || die "no $vmlinuz"
overlay_ko=$kdir/lib/modules/$kver/kernel/fs/overlayfs/overlay.ko
[[ -f $overlay_ko ]] || grep -q overlayfs "$kdir/lib/modules/$kver/modules.builtin" ||
    die "no overlay module in $kpkg"

# --- bolt and the image ---------------------------------------------------------------------
if [[ -z ${BOLT_BIN:-} ]]; then
    (cd "$REPO" && cargo build -q -p bolt-agent)
    BOLT_BIN=$REPO/target/debug/bolt
fi
[[ -x $BOLT_BIN ]] || die "no bolt binary at $BOLT_BIN"
# The capsule crate's root tests run in the VM too (BOLT_VM_RUNTIME_TESTS=0: not).
RUNTIME_TESTS= DEVICE_TESTS=
if [[ ${BOLT_VM_RUNTIME_TESTS:-1} != 0 ]]; then
    RUNTIME_TESTS=$(cd "$REPO" && cargo test -q -p bolt-capsule --test runtime --no-run \
        --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    [[ -x $RUNTIME_TESTS ]] || die "cargo test -p bolt-capsule --test runtime --no-run gave no binary"
    DEVICE_TESTS=$(cd "$REPO" && cargo test -q -p bolt-capsule --test runtime_devices --no-run \
        --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    [[ -x $DEVICE_TESTS ]] || die "cargo test -p bolt-capsule --test runtime_devices --no-run gave no binary"
fi
if [[ -z ${BOLT_TEST_OCI_DIR:-} ]]; then
    eval "$("$REPO/tests/fixtures/build-images.sh" env)"
fi
[[ -f $BOLT_TEST_OCI_DIR/busybox/index.json ]] ||
    die "no busybox layout in $BOLT_TEST_OCI_DIR (tests/fixtures/build-images.sh build)"

WORK=$(mktemp -d /tmp/bolt-vm.XXXXXX)
QEMU_PID=
cleanup() {
    local rc=$?
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the initramfs ----------------------------------------------------------------------------
root=$WORK/root
mkdir -p "$root"/{bin,bolt/bin,etc,modules}
cp "$BUSYBOX" "$root/bin/busybox"
strip -o "$root/bolt/bin/bolt" "$BOLT_BIN" 2>/dev/null || cp "$BOLT_BIN" "$root/bolt/bin/bolt"
[[ -n $RUNTIME_TESTS ]] && strip -o "$root/bolt/bin/runtime-tests" "$RUNTIME_TESTS"
[[ -n $RUNTIME_TESTS ]] && strip -o "$root/bolt/bin/device-tests" "$DEVICE_TESTS"
# runc, for the runtime tests' side-by-side check (runc_accepts_the_bundle_and_agrees).
RUNC=
if [[ -n $RUNTIME_TESTS ]]; then
    RUNC=$(command -v runc || true)
    [[ -n $RUNC ]] && cp "$RUNC" "$root/bin/runc"
fi
# The binaries' shared libraries and loader, at the paths ldd names.
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done < <(ldd "$BOLT_BIN" ${RUNTIME_TESTS:+"$RUNTIME_TESTS"} ${DEVICE_TESTS:+"$DEVICE_TESTS"} ${RUNC:+"$RUNC"} | grep -oE '^[[:space:]]+/[^ ]*|=> /[^ ]*' | grep -o '/[^ ]*' | sort -u)
[[ -f $overlay_ko ]] && cp "$overlay_ko" "$root/modules/"
# The virtio disk (/dev/vda, for the device checks), its modules in load order (init loads
# /modules/*.ko sorted by name).
n=1
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk; do
    ko=$kdir/lib/modules/$kver/kernel/$m.ko
    [[ -f $ko ]] && cp "$ko" "$root/modules/$n-$(basename "$ko")"
    n=$((n + 1))
done
cp -a "$BOLT_TEST_OCI_DIR/busybox" "$root/image"
cp "$HERE/init" "$root/init"
cp "$HERE/checks.sh" "$root/checks.sh"
chmod 755 "$root/init"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo '127.0.0.1 localhost' >"$root/etc/hosts"
echo 'vm' >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
(cd "$root" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 >"$WORK/initrd.gz")
log "kernel $kver, initramfs $(du -h "$WORK/initrd.gz" | cut -f1), bolt $BOLT_BIN"

# --- boot -----------------------------------------------------------------------------------
# KVM when it works, else TCG. /dev/kvm may open and still run no guest (nested virtualization
# without vmx/svm in /proc/cpuinfo): a short probe boot shows it, remembered for this host boot.
probe_kvm() {
    local out=$WORK/probe.log i
    [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
    qemu-system-x86_64 -accel kvm -cpu max -m 256 -kernel "$vmlinuz" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 quiet panic=-1 bolt_vm_probe" -display none -serial "file:$out" \
        -monitor none -no-reboot -nodefaults 2>/dev/null &
    QEMU_PID=$!
    for ((i = 0; i < 40; i++)); do
        grep -q VMPROBE "$out" 2>/dev/null && break
        kill -0 "$QEMU_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
    grep -q VMPROBE "$out" 2>/dev/null
}
probe_key=$CACHE/kvm-probe.$(cat /proc/sys/kernel/random/boot_id)
if [[ ! -f $probe_key ]]; then
    rm -f "$CACHE"/kvm-probe.*
    if probe_kvm; then echo kvm >"$probe_key"; else echo tcg >"$probe_key"; fi
fi
accel=(-accel "$(cat "$probe_key")")
# The VM's disk: 1 MiB starting with a marker a capsule must not read unless granted.
printf 'BOLTDISK' >"$WORK/disk.img"
truncate -s 1M "$WORK/disk.img"
serial=$WORK/serial.log
t0=$SECONDS
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 "${accel[@]}" -cpu max -m 1024 -smp 2 \
    -kernel "$vmlinuz" -initrd "$WORK/initrd.gz" \
    -drive "file=$WORK/disk.img,format=raw,if=virtio" \
    -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1" \
    -display none -serial "file:$serial" -monitor none -no-reboot -nodefaults &
QEMU_PID=$!
vm_rc=0
wait "$QEMU_PID" || vm_rc=$?
QEMU_PID=
tr -d '\r' <"$serial" >"$WORK/out.log"
log "VM ran $((SECONDS - t0)) s (${accel[*]}), qemu exit $vm_rc"

grep -E '^VM(INFO|CHECK|TEST) ' "$WORK/out.log" || true
passed=$(grep -c '^VMCHECK PASS ' "$WORK/out.log" || true)
failed=$(grep -c '^VMCHECK FAIL ' "$WORK/out.log" || true)
if ! grep -q '^VMCHECK DONE rc=' "$WORK/out.log"; then
    log "the VM did not finish (qemu exit $vm_rc); its console:"
    tail -n 60 "$WORK/out.log" >&2
    exit 1
fi
if ((failed != 0 || passed == 0)) || ! grep -q '^VMCHECK DONE rc=0$' "$WORK/out.log"; then
    log "console after the checks:"
    sed -n '/^VMINFO /,$p' "$WORK/out.log" | grep -vE '^VM(INFO|CHECK|TEST) ' | tail -n 120 >&2
    log "FAILED: $failed of $((passed + failed)) checks"
    exit 1
fi
log "ok: $passed checks passed on kernel $kver (pure cgroup v2)"
