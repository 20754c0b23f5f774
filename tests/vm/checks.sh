# shellcheck shell=sh
# Bolt's limit checks on a pure cgroup v2 kernel, run by /init inside the VM of
# tests/vm/cgroup-v2.sh (busybox sh). Each check prints one `VMCHECK PASS|FAIL name: detail`
# line; the host script counts them. Exits non-zero when any failed.
IMAGE=bolt-test/busybox:latest
CG=/sys/fs/cgroup
export BOLT_SOCKET=/tmp/bolt.sock
FAILS=0

pass() { echo "VMCHECK PASS $1: $2"; }
fail() {
    echo "VMCHECK FAIL $1: $2"
    FAILS=$((FAILS + 1))
}
check() { # check NAME DETAIL CONDITION...
    name=$1 detail=$2
    shift 2
    if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}
# The 64-hex id of a capsule, from `bolt inspect`.
id_of() {
    bolt inspect --format json "$1" >"/tmp/inspect-$1.json" 2>&1
    grep -o '"id": *"[0-9a-f]\{64\}"' "/tmp/inspect-$1.json" | head -n 1 | grep -o '[0-9a-f]\{64\}'
}
# Microseconds of CPU time a v2 group has used.
usage_usec() { sed -n 's/^usage_usec //p' "$1/cpu.stat"; }
# Milliseconds since boot.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

echo "VMINFO kernel $(uname -r)"
echo "VMINFO cgroup mounts: $(grep -E ' - cgroup2? ' /proc/self/mountinfo | awk '{ print $5 " " $(NF - 2) }' | tr '\n' ';')"
echo "VMINFO root subtree_control before bolt: '$(cat $CG/cgroup.subtree_control)'"
echo "VMINFO hypervisor: $(dmesg | grep -o 'Hypervisor detected: .*' || echo 'none detected (TCG)'), $(nproc) CPUs"
echo "VMINFO bolt $(bolt version 2>&1 | head -n 1)"

# --- the machine is pure v2 ---------------------------------------------------------------
v1=$(grep -c ' - cgroup ' /proc/self/mountinfo)
v2=$(grep -c ' - cgroup2 ' /proc/self/mountinfo)
check pure-v2 "cgroup v1 mounts: $v1, cgroup2 mounts: $v2, controllers: $(cat $CG/cgroup.controllers)" \
    [ "$v1" = 0 -a "$v2" = 1 ]

# --- the agent and the image ----------------------------------------------------------------
bolt agent --root /tmp/bolt --socket "$BOLT_SOCKET" --default-network none >/tmp/agent.log 2>&1 &
AGENT=$!
i=0
while ! bolt info >/dev/null 2>&1 && [ $i -lt 300 ]; do
    sleep 0.2
    i=$((i + 1))
done
if ! bolt info >/dev/null 2>&1; then
    fail agent "the agent did not answer; its log:"
    cat /tmp/agent.log
    exit 1
fi
pass agent "bolt agent --default-network none answers on $BOLT_SOCKET"
out=$(bolt image import -q --reference "$IMAGE" /image 2>&1)
check import "$out" sh -c "bolt images | grep -q bolt-test/busybox"

# --- memory: a capsule past --memory 16m is OOM-killed, exits 137, the event says oom ---------
bolt run --name hog --memory 16m "$IMAGE" dd if=/dev/zero of=/dev/null bs=64M count=1 \
    >/tmp/hog.out 2>&1
code=$?
check memory-exit-137 "bolt run --memory 16m dd bs=64M exited $code" [ "$code" = 137 ]
hog=$(id_of hog)
ev=$(bolt events --format json | grep '"kind":"capsule.exited"' | grep "\"id\":\"$hog\"")
check memory-oom-event "capsule.exited: $(echo "$ev" | grep -o '"exited":{[^}]*}')" \
    sh -c "echo '$ev' | grep -q '\"oom\":true' && echo '$ev' | grep -q '\"signal\":9'"
check memory-inspect "bolt inspect: exit $(tr -d ' \n' </tmp/inspect-hog.json | grep -o '"exit":{[^}]*}')" \
    grep -q '"oom": *true' /tmp/inspect-hog.json
check memory-ps "$(bolt ps -a | grep -o 'Exited ([^)]*)' | head -n 1)" \
    sh -c "bolt ps -a | grep -q 'Exited (137, OOM)'"
bolt rm hog >/dev/null 2>&1
check memory-cgroup-gone "after bolt rm: $CG/bolt/$hog" [ -n "$hog" -a ! -e "$CG/bolt/$hog" ]

# --- pids: fork fails past --pids-limit 4 (as tests/tests/capsules.rs pids_limit_makes_fork_fail)
bolt run --rm --pids-limit 4 "$IMAGE" sh -c \
    'for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; echo all' >/tmp/pids.out 2>/tmp/pids.err
code=$?
check pids-fork-fails "exit $code, stderr: $(head -n 1 /tmp/pids.err)" \
    sh -c "grep -q fork /tmp/pids.err && ! grep -q all /tmp/pids.out"

# --- the limits reach the capsule's group, --cpus 0.2 throttles a busy loop ------------------
id=$(bolt run -d --name lim --memory 48m --cpus 0.2 --pids-limit 33 "$IMAGE" \
    sh -c 'while :; do :; done' 2>/tmp/lim.err)
dir=$CG/bolt/$id
check cgroup-dir "$dir" [ -n "$id" -a -d "$dir" ]
check cgroup-memory-max "memory.max $(cat "$dir/memory.max" 2>&1)" \
    [ "$(cat "$dir/memory.max" 2>/dev/null)" = $((48 << 20)) ]
check cgroup-pids-max "pids.max $(cat "$dir/pids.max" 2>&1)" [ "$(cat "$dir/pids.max" 2>/dev/null)" = 33 ]
check cgroup-cpu-max "cpu.max $(cat "$dir/cpu.max" 2>&1)" \
    [ "$(cat "$dir/cpu.max" 2>/dev/null)" = "20000 100000" ]
procs=$(tr '\n' ' ' <"$dir/cgroup.procs" 2>/dev/null)
check cgroup-pid-inside "cgroup.procs: $procs" [ -n "$procs" ]
check parent-subtree "$CG/bolt/cgroup.subtree_control: '$(cat $CG/bolt/cgroup.subtree_control 2>&1)'" \
    sh -c "grep -qw memory $CG/bolt/cgroup.subtree_control && grep -qw pids $CG/bolt/cgroup.subtree_control && grep -qw cpu $CG/bolt/cgroup.subtree_control"
sleep 1
u0=$(usage_usec "$dir")
t0=$(now_ms)
sleep 3
u1=$(usage_usec "$dir")
t1=$(now_ms)
pct=$(((u1 - u0) / 10 / (t1 - t0)))
throttled=$(sed -n 's/^nr_throttled //p' "$dir/cpu.stat")
check cpu-throttled "busy loop used ${pct}% of one CPU over $((t1 - t0)) ms (quota 20%), nr_throttled $throttled" \
    [ "$pct" -ge 5 -a "$pct" -le 40 -a "${throttled:-0}" -gt 0 ]
id_of lim >/dev/null
stats=$(grep -o '"cpu_millis": *[0-9]*' /tmp/inspect-lim.json | head -n 1)
check inspect-spec "$stats" sh -c "echo '$stats' | grep -q '[: ]200\$'"
# --- bolt commit freezes the running capsule's group for the diff and thaws it ---------------
out=$(bolt commit lim vm-commit:1 2>&1)
code=$?
check commit-thawed "bolt commit of a running capsule: exit $code ($out), cgroup.freeze $(cat "$dir/cgroup.freeze" 2>&1), events $(grep frozen "$dir/cgroup.events" 2>&1)" \
    sh -c "[ $code = 0 ] && [ \"\$(cat $dir/cgroup.freeze)\" = 0 ] && grep -qx 'frozen 0' $dir/cgroup.events"
bolt rm -f lim >/dev/null 2>&1
check cgroup-removed "after bolt rm -f: $dir" [ ! -e "$dir" ]
check bolt-parent-removed "$CG/bolt with no capsule left" [ ! -e "$CG/bolt" ]

# --- devices: the rootfs is nodev, the eBPF device program denies, --device grants -----------
# The VM's disk (/dev/vda) starts with BOLTDISK. An image shipping a block node for it (built
# here as an OCI layout: the busybox image plus one layer holding /disk), a node made in the
# capsule's /dev, and the host's /dev bound in must all fail to read it; --device grants it.
# $out (a capsule's output) says the disk was refused by the cgroup and not read.
not_permitted() { echo "$out" | grep -q 'Operation not permitted' && ! echo "$out" | grep -q BOLTDISK; }
# $out lists the image's block node and did not read the disk through it.
node_listed_not_read() { echo "$out" | grep -q '^b' && ! echo "$out" | grep -q BOLTDISK; }
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ -b /dev/vda ]; then
    majmin=$(cat /sys/block/vda/dev)
    maj=${majmin%:*} min=${majmin#*:}
    echo "VMINFO disk /dev/vda $majmin: $(head -c 8 /dev/vda)"
    L=/tmp/disk-image
    rm -rf $L /tmp/disk-layer && mkdir -p /tmp/disk-layer && cp -a /image $L
    mknod /tmp/disk-layer/disk b "$maj" "$min"
    (cd /tmp/disk-layer && tar -cf /tmp/disk-layer.tar disk)
    ld=$(sha256sum /tmp/disk-layer.tar | cut -d' ' -f1)
    cp /tmp/disk-layer.tar "$L/blobs/sha256/$ld"
    man=$(sed 's/.*ref.name":"latest"},"digest":"sha256:\([0-9a-f]*\)".*/\1/' /image/index.json)
    cfg=$(sed 's/.*"config":{[^}]*"digest":"sha256:\([0-9a-f]*\)".*/\1/' "/image/blobs/sha256/$man")
    sed "s/\"diff_ids\":\[\([^]]*\)\]/\"diff_ids\":[\1,\"sha256:$ld\"]/" \
        "/image/blobs/sha256/$cfg" >/tmp/disk-config.json
    cd2=$(sha256sum /tmp/disk-config.json | cut -d' ' -f1)
    cp /tmp/disk-config.json "$L/blobs/sha256/$cd2"
    sed -e "s/$cfg/$cd2/" -e "s/\"size\":[0-9]*},\"layers\"/\"size\":$(wc -c </tmp/disk-config.json)},\"layers\"/" \
        -e "s/}\]}\$/},{\"mediaType\":\"application\/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$ld\",\"size\":$(wc -c </tmp/disk-layer.tar)}]}/" \
        "/image/blobs/sha256/$man" | tr -d '\n' >/tmp/disk-manifest.json
    md=$(sha256sum /tmp/disk-manifest.json | cut -d' ' -f1)
    cp /tmp/disk-manifest.json "$L/blobs/sha256/$md"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
        "$md" "$(wc -c </tmp/disk-manifest.json)" >$L/index.json
    out=$(bolt image import -q --reference bolt-test/disk-node:latest $L 2>&1)
    check device-image-imported "$out" sh -c "bolt images | grep -q disk-node"
    out=$(bolt run --rm bolt-test/disk-node:latest sh -c 'ls -l /disk; head -c 8 /disk' 2>&1)
    check device-image-node-refused "an image layer's b $majmin /disk: $(echo "$out" | tr '\n' ' ')" \
        node_listed_not_read
    out=$(bolt run --rm "$IMAGE" sh -c "mknod /dev/d b $maj $min && head -c 8 /dev/d" 2>&1)
    check device-mknod-refused "mknod in the capsule's /dev, then read: $out" not_permitted
    out=$(bolt run --rm -v /dev:/hostdev "$IMAGE" head -c 8 /hostdev/vda 2>&1)
    check device-host-dev-refused "the host's /dev bound in, read vda: $out" not_permitted
    out=$(bolt run --rm --device /dev/vda:/dev/xvda:r "$IMAGE" head -c 8 /dev/xvda 2>&1)
    check device-granted-reads "--device /dev/vda:/dev/xvda:r: $out" [ "$out" = BOLTDISK ]
    out=$(bolt run --rm --device /dev/vda:/dev/xvda:r "$IMAGE" sh -c 'echo x > /dev/xvda' 2>&1)
    check device-granted-read-only "write to the read-only grant: $out" not_permitted
else
    fail device-disk "no /dev/vda in the VM (virtio modules: $(ls /modules | tr '\n' ' '))"
fi

check events-verify "$(bolt events verify 2>&1 | tail -n 1)" sh -c "bolt events verify >/dev/null 2>&1"

kill "$AGENT"
wait "$AGENT"

# --- the capsule crate's root tests (cargo test -p bolt-capsule --test runtime), when given ----
# runc_accepts_the_bundle_and_agrees runs too (runc is in the image): on v2 it allows the one
# documented difference, runc's /dev/core (docs/runtime.md, "cgroup v2, proven in a VM"); both
# keep CAP_MKNOD behind an eBPF device program.
if [ -x /bolt/bin/runtime-tests ]; then
    BOLT_REQUIRE_ROOT_TESTS=1 /bolt/bin/runtime-tests --test-threads=2 >/tmp/runtime-tests.log 2>&1
    code=$?
    grep -E '^test .* \.\.\. ' /tmp/runtime-tests.log | sed 's/^/VMTEST /'
    [ "$code" = 0 ] || sed -n '/^failures:/,$p' /tmp/runtime-tests.log | head -n 120
    check capsule-runtime-tests "exit $code, $(grep '^test result:' /tmp/runtime-tests.log)" [ "$code" = 0 ]
fi
if [ -x /bolt/bin/device-tests ]; then
    BOLT_REQUIRE_ROOT_TESTS=1 /bolt/bin/device-tests --test-threads=1 >/tmp/device-tests.log 2>&1
    code=$?
    grep -E '^test .* \.\.\. ' /tmp/device-tests.log | sed 's/^/VMTEST /'
    [ "$code" = 0 ] || sed -n '/^failures:/,$p' /tmp/device-tests.log | head -n 60
    check capsule-device-tests "exit $code, $(grep '^test result:' /tmp/device-tests.log)" [ "$code" = 0 ]
fi
if [ "$FAILS" != 0 ]; then
    echo "--- agent log (tail)"
    tail -n 40 /tmp/agent.log
    for f in /tmp/hog.out /tmp/pids.out /tmp/pids.err /tmp/lim.err; do
        echo "--- $f"
        cat "$f"
    done
fi
[ "$FAILS" = 0 ]
