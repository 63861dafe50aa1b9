#!/usr/bin/env bash
# qemu-md-check.sh — prove that md member images are accepted by the real
# Linux kernel md driver.
#
# Boots the host's distribution kernel (/boot/vmlinuz-*) in qemu (TCG by
# default, no KVM needed) with a tiny busybox+mdadm initramfs, attaches every
# IMAGE as a virtio disk, assembles /dev/md0 with `mdadm --assemble --run`,
# runs an md `check` scrub, and reports mismatch_cnt, the array size and the
# sha256 of the whole array device.
#
# Usage:
#   qemu-md-check.sh [options] IMAGE...
#     --expect-sha256 HEX   fail unless sha256(/dev/md0) == HEX
#     --expect-bytes N      fail unless size(/dev/md0) == N bytes
#     --expect-clean        fail if the kernel ran a resync/recovery after
#                           assembly (superblocks dirty or members behind)
#     --timeout SECONDS     hard limit for the whole VM run (default 300)
#     --log FILE            keep the VM console log in FILE
#     -h, --help
#
# Images are NEVER modified: each is attached with `snapshot=on`, so every
# write (mdadm/kernel superblock updates on assembly) goes to a temporary
# qcow2 overlay that qemu creates in this script's private temp dir and
# discards at exit.  The image file itself is only opened read-only.
#
# Exit status: 0 pass, 1 fail, 2 usage error, 77 skip (no qemu, kernel, ...).
#
# Environment (all optional):
#   SWRAID_KERNEL=/path/vmlinuz  SWRAID_KVER=6.1.0-x-amd64   kernel to boot
#   SWRAID_MODDIR=/root/lib/modules/$KVER   its modules (default /lib/modules)
#   SWRAID_QEMU=qemu-system-x86_64   SWRAID_QEMU_MEM=512 (MiB)
#   SWRAID_QEMU_ACCEL=tcg   (e.g. "kvm"; default tcg: on some hosts /dev/kvm
#                            exists but guests triple-fault silently)
#   SWRAID_INTEROP_NO_CACHE=1   always rebuild the initramfs
#
# Console protocol: the VM prints lines "RESULT key=value"; the last one is
# "RESULT done".  Everything else on the console is diagnostics.
set -u
set -o pipefail

prog=${0##*/}
say()  { printf '%s: %s\n' "$prog" "$*" >&2; }
skip() { echo "SKIP: $*"; exit 77; }
usage() { sed -n '/^# Usage:/,/^#  *-h, --help/s/^# \{0,1\}//p' "$0"; }

# ---------------------------------------------------------------- arguments
expect_sha="" expect_bytes="" expect_clean=0 timeout_s=300 keep_log=""
images=()
while [ $# -gt 0 ]; do
    case $1 in
        --expect-sha256) [ $# -ge 2 ] || { usage >&2; exit 2; }; expect_sha=$2; shift 2 ;;
        --expect-sha256=*) expect_sha=${1#*=}; shift ;;
        --expect-bytes) [ $# -ge 2 ] || { usage >&2; exit 2; }; expect_bytes=$2; shift 2 ;;
        --expect-bytes=*) expect_bytes=${1#*=}; shift ;;
        --expect-clean) expect_clean=1; shift ;;
        --timeout) [ $# -ge 2 ] || { usage >&2; exit 2; }; timeout_s=$2; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --log) [ $# -ge 2 ] || { usage >&2; exit 2; }; keep_log=$2; shift 2 ;;
        --log=*) keep_log=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; images+=("$@"); break ;;
        -*) say "unknown option: $1"; usage >&2; exit 2 ;;
        *) images+=("$1"); shift ;;
    esac
done
[ ${#images[@]} -gt 0 ] || { say "no IMAGE given"; usage >&2; exit 2; }
case $timeout_s in ''|*[!0-9]*) say "--timeout must be a whole number of seconds"; exit 2 ;; esac
[ "$timeout_s" -ge 30 ] || { say "--timeout must be >= 30"; exit 2; }
case $expect_bytes in *[!0-9]*) say "--expect-bytes must be a number"; exit 2 ;; esac
expect_sha=$(printf '%s' "$expect_sha" | tr 'A-F' 'a-f')
if [ -n "$expect_sha" ] && ! [[ $expect_sha =~ ^[0-9a-f]{64}$ ]]; then
    say "--expect-sha256 must be 64 hex digits"; exit 2
fi
[ ${#images[@]} -le 26 ] || { say "at most 26 images are supported"; exit 2; }
for img in "${images[@]}"; do
    [ -f "$img" ] && [ -r "$img" ] || { say "not a readable regular file: $img"; exit 2; }
done

# ------------------------------------------------------------ prerequisites
findbin() {  # findbin NAME -> path (also looks in sbin dirs, which non-root PATHs lack)
    local p
    p=$(PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" 2>/dev/null) || return 1
    printf '%s\n' "$p"
}
QEMU=${SWRAID_QEMU:-qemu-system-x86_64}
QEMU=$(findbin "$QEMU") || skip "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
MDADM=$(findbin mdadm) || skip "mdadm not found (apt-get install mdadm)"
CPIO=$(findbin cpio) || skip "cpio not found (apt-get install cpio)"
TIMEOUT=$(findbin timeout) || skip "coreutils timeout not found"
BUSYBOX=""
for b in ${SWRAID_BUSYBOX:-} /bin/busybox /usr/bin/busybox "$(findbin busybox || true)"; do
    [ -n "$b" ] && [ -x "$b" ] && { BUSYBOX=$b; break; }
done
[ -n "$BUSYBOX" ] || skip "busybox not found (apt-get install busybox-static)"

# Kernel: $SWRAID_KERNEL/$SWRAID_KVER, else the running kernel if installed
# in /boot, else the newest /boot/vmlinuz-* that has a modules directory.
moddir_of() { local d; for d in "/lib/modules/$1" "/usr/lib/modules/$1"; do
    [ -f "$d/modules.dep" ] && { printf '%s\n' "$d"; return 0; }; done; return 1; }
KVER=${SWRAID_KVER:-} VMLINUZ=${SWRAID_KERNEL:-}
if [ -n "$VMLINUZ" ]; then
    [ -n "$KVER" ] || KVER=${VMLINUZ##*/vmlinuz-}
else
    for v in "$(uname -r)" $(ls /boot 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -rV); do
        if [ -r "/boot/vmlinuz-$v" ] && moddir_of "$v" >/dev/null; then KVER=$v; VMLINUZ=/boot/vmlinuz-$v; break; fi
    done
fi
[ -n "$VMLINUZ" ] && [ -r "$VMLINUZ" ] || skip "no readable kernel ${VMLINUZ:-in /boot} (apt-get install linux-image-amd64)"
if [ -n "${SWRAID_MODDIR:-}" ]; then MODDIR=${SWRAID_MODDIR%/}   # .../lib/modules/$KVER
    [ -f "$MODDIR/modules.dep" ] || skip "no modules.dep in SWRAID_MODDIR=$MODDIR"
else MODDIR=$(moddir_of "$KVER") || skip "no /lib/modules/$KVER/modules.dep for kernel $VMLINUZ"; fi

# ------------------------------------------------------------------ workdir
work=$(mktemp -d "${TMPDIR:-/tmp}/swraid-interop.XXXXXX") || { say "mktemp failed"; exit 1; }
qpid=""
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ------------------------------------------------------------ VM /init script
# Runs as PID 1 under busybox sh. Never exits: always ends in poweroff.
write_init() {
cat >"$1" <<'INIT'
#!/bin/sh
PATH=/sbin:/bin:/usr/sbin:/usr/bin; export PATH
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /run/mdadm /tmp

r() { echo "RESULT $*"; }
finish() {
    [ -e /sys/block/md0/md ] && mdadm --stop /dev/md0 >/dev/null 2>&1
    echo "--- kernel md messages"
    dmesg | grep -E '\] md' | tail -n 40
    sync
    r "done"
    poweroff -f; reboot -f; echo o >/proc/sysrq-trigger
    while :; do sleep 60; done
}
fail() { r "$1"; finish; }
# poll N TENTHS CMD...: run CMD every 0.1 s until it succeeds, at most N times
poll() { n=$1; shift; while ! "$@"; do n=$((n-1)); [ $n -gt 0 ] || return 1; usleep 100000; done; return 0; }

ND=0 WAIT=120
for a in $(cat /proc/cmdline); do
    case $a in
        swraid.ndisks=*) ND=${a#*=} ;;
        swraid.wait=*) WAIT=${a#*=} ;;
    esac
done
r "kernel=$(uname -r)"

# Kernel modules, in dependency order (list made by the host). Some are
# optional alternatives (crc32c-intel needs SSE4.2, which TCG's default CPU
# lacks: ENODEV), so only the targets listed in /etc/swraid-required must load.
for m in $(cat /etc/swraid-modules); do
    insmod "/lib/modules/$m" || echo "insmod $m failed (optional unless listed below)"
done
mods=ok
for m in $(cat /etc/swraid-required); do
    [ -d "/sys/module/$m" ] || { echo "required module $m not loaded"; mods=fail; }
done
r modules=$mods

nvd() { c=0; for d in /sys/block/vd*; do [ -e "$d" ] && c=$((c+1)); done; echo $c; }
havedisks() { [ "$(nvd)" -ge "$ND" ]; }
poll 300 havedisks
DISKS=$(for d in /sys/block/vd*; do [ -e "$d" ] && echo "/dev/${d##*/}"; done)
r "disks=$(nvd)"
havedisks || fail "assemble=fail reason=only_$(nvd)_of_${ND}_disks_appeared"

echo "--- mdadm --assemble --run /dev/md0" $DISKS
mdadm --assemble --run /dev/md0 $DISKS
rc=$?
state=$(cat /sys/block/md0/md/array_state 2>/dev/null)
if [ $rc -ne 0 ] || [ ! -b /dev/md0 ] || [ -z "$state" ] || [ "$state" = inactive ] || [ "$state" = clear ]; then
    echo "--- /proc/mdstat"; cat /proc/mdstat
    for d in $DISKS; do echo "--- mdadm --examine $d"; mdadm --examine "$d"; done
    fail "assemble=fail reason=mdadm_rc_${rc}_state_${state:-none}"
fi
r assemble=ok
md=/sys/block/md0/md
r array_state_at_assembly=$state
r "sync_action_at_assembly=$(cat $md/sync_action)"
echo "--- /proc/mdstat"; cat /proc/mdstat
echo "--- mdadm --detail /dev/md0"; mdadm --detail /dev/md0
r "level=$(cat $md/level) raid_disks=$(cat $md/raid_disks) degraded=$(cat $md/degraded 2>/dev/null)"
r "layout=$(cat $md/layout 2>/dev/null) chunk_size=$(cat $md/chunk_size 2>/dev/null)"

# Do not let md throttle the scrub (nothing else runs in this VM).
echo 2000000 >/proc/sys/dev/raid/speed_limit_max
echo 1000000 >/proc/sys/dev/raid/speed_limit_min

idle() { [ "$(cat $md/sync_action)" = idle ]; }
# A resync/recovery started by assembly must finish before `check` is accepted.
poll $((WAIT*10)) idle || fail "check=timeout phase=initial_sync"
# Did the kernel resync/recover at assembly (superblocks not clean, members
# out of date)? sync_action alone races with short syncs, the log does not.
init=$(dmesg | sed -n 's/.*md: \(resync\|recovery\|reshape\) of RAID array md0.*/\1/p' | head -n 1)
r initial_sync=${init:-none}
echo check >$md/sync_action || fail "check=fail reason=sync_action_write"
poll $((WAIT*10)) idle || { r "mismatch_cnt=$(cat $md/mismatch_cnt)"; fail "check=timeout"; }
r check=ok
r "mismatch_cnt=$(cat $md/mismatch_cnt)"
# md skips the scrub when no redundancy is left (raid5 with 1 missing, raid6
# with 2): mismatch_cnt=0 then proves nothing about parity.
lvl=$(cat $md/level) deg=$(cat $md/degraded 2>/dev/null || echo 0)
case $lvl:$deg in
    *:0) cov=full ;;
    raid6:1) cov=partial ;;
    *) cov=none ;;
esac
r check_coverage=$cov

bytes=$(blockdev --getsize64 /dev/md0 2>/dev/null) || bytes=$(( $(cat /sys/block/md0/size) * 512 ))
r bytes=$bytes
sum=$(sha256sum /dev/md0) || fail "sha256=read_error"
r sha256=${sum%% *}
finish
INIT
chmod 755 "$1"
}

# --------------------------------------------------------------- initramfs
# Modules for virtio disks and raid456 with all dependencies (and soft
# dependencies), in load order; prints module file paths.  Targets that are
# modules (not built in) are written to $work/required.  Prefer
# modprobe --show-depends; fall back to recursive modinfo (depends + softdep pre).
TARGET_MODS="virtio_pci virtio_blk raid456"
resolve_mods() {
    local m out
    : >"$work/required"
    if MODPROBE=$(findbin modprobe); then
        for m in $TARGET_MODS; do
            out=$("$MODPROBE" -S "$KVER" -d "${MODDIR%/lib/modules/*}/" --ignore-install --show-depends "$m") \
                || { say "modprobe --show-depends $m failed"; return 1; }
            printf '%s\n' "$out" | awk '$1=="insmod"{print $2}'
            printf '%s\n' "$out" | grep -q '^insmod ' && echo "$m" >>"$work/required"
        done
    else
        local MODINFO seen=" "
        MODINFO=$(findbin modinfo) || { say "neither modprobe nor modinfo found (kmod)"; return 1; }
        # visit NAME: a name or alias may resolve to several files (crc32c).
        # Depth-first: soft "pre:" deps and hard deps before the module itself.
        visit() {
            local name=$1 f files dep
            files=$("$MODINFO" -b "${MODDIR%/lib/modules/*}/" -k "$KVER" -F filename "$name" 2>/dev/null) || return 1
            for f in $files; do
                case $f in /*) ;; *) continue ;; esac         # "(builtin)"
                case $seen in *" $f "*) continue ;; esac
                seen="$seen$f "
                for dep in $("$MODINFO" -F softdep "$f" | sed -n 's/.*pre:\(.*\)/\1/p' | sed 's/post:.*//'); do
                    visit "$dep" || true                        # soft: optional
                done
                for dep in $("$MODINFO" -F depends "$f" | tr ',' ' '); do
                    visit "$dep" || { say "cannot resolve module $dep"; return 1; }
                done
                printf '%s\n' "$f"
                case " $TARGET_MODS " in *" $name "*) echo "$name" >>"$work/required" ;; esac
            done
        }
        for m in $TARGET_MODS; do visit "$m" || return 1; done
    fi
}

# Copy an ELF binary's shared libraries (and loader) as listed by ldd.
copy_libs() {  # copy_libs ROOT BINARY
    local lib libs
    libs=$(ldd "$2" 2>/dev/null | grep -o '/[^ ]*' | sort -u) || true   # static: none
    for lib in $libs; do
        mkdir -p "$1${lib%/*}" && cp -L "$lib" "$1$lib" || return 1
    done
}

build_initramfs() {  # build_initramfs OUT.cpio
    local root=$work/root f n base list seen_mods=""
    rm -rf "$root"; mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/mdadm,lib/modules,proc,sys,dev,run,tmp}
    cp -L "$BUSYBOX" "$root/bin/busybox" && ln -s busybox "$root/bin/sh" || return 1
    copy_libs "$root" "$BUSYBOX" || return 1   # no-op for busybox-static
    cp -L "$MDADM" "$root/sbin/mdadm" && copy_libs "$root" "$MDADM" || return 1
    [ -e "$root/lib64/ld-linux-x86-64.so.2" ] || [ -n "$(ls "$root"/lib*/ld-linux* "$root"/lib/*/ld-linux* 2>/dev/null)" ] \
        || { say "dynamic loader for mdadm not found by ldd"; return 1; }
    : >"$root/etc/mdadm/mdadm.conf"            # empty: no host config leaks in
    echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    list=$(resolve_mods) || return 1
    cp "$work/required" "$root/etc/swraid-required"
    [ -n "$list" ] || { say "no modules resolved for virtio/raid456"; return 1; }
    n=0
    : >"$root/etc/swraid-modules"
    for f in $list; do
        case " $seen_mods " in *" $f "*) continue ;; esac   # dedupe, keep first
        seen_mods="$seen_mods $f"
        n=$((n+1)); base=$(printf '%02d-%s' "$n" "${f##*/}"); base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
        case $f in   # busybox insmod cannot load compressed modules
            *.ko)     cp "$f" "$root/lib/modules/$base" ;;
            *.ko.xz)  xz -dc "$f" >"$root/lib/modules/$base" ;;
            *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$base" ;;
            *.ko.gz)  gzip -dc "$f" >"$root/lib/modules/$base" ;;
            *) say "unknown module file type: $f"; return 1 ;;
        esac || { say "cannot copy/decompress $f"; return 1; }
        echo "$base" >>"$root/etc/swraid-modules"
    done
    write_init "$root/init"
    (cd "$root" && find . -print | LC_ALL=C sort | "$CPIO" -o -H newc -R 0:0 --quiet) >"$1.tmp.$$" \
        && mv -f "$1.tmp.$$" "$1"
}

# Cache key: this script (it embeds /init), kernel, mdadm, busybox, modules.dep.
self=$(readlink -f "${BASH_SOURCE[0]}")
key=$( { cat "$self"; echo "$KVER"; sha256sum "$MDADM" "$BUSYBOX" "$MODDIR/modules.dep"; } | sha256sum | cut -c1-16)
cache_dir=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/swraid-interop
initrd=$cache_dir/initramfs-$KVER-$key.cpio
if [ -n "${SWRAID_INTEROP_NO_CACHE:-}" ] || ! mkdir -p "$cache_dir" 2>/dev/null || [ ! -w "$cache_dir" ]; then
    initrd=$work/initramfs.cpio
fi
if [ ! -s "$initrd" ]; then
    build_initramfs "$initrd" || { say "building the initramfs failed"; exit 1; }
    # drop stale cache entries for this kernel
    for old in "$cache_dir"/initramfs-"$KVER"-*.cpio; do
        [ "$old" != "$initrd" ] && [ -e "$old" ] && rm -f "$old"
    done
fi

# A private link/copy, so a concurrent run pruning the cache cannot pull it away.
ln "$initrd" "$work/initrd.cpio" 2>/dev/null || cp "$initrd" "$work/initrd.cpio" || exit 1
initrd=$work/initrd.cpio

# ---------------------------------------------------------------------- run
log=$work/console.log
ndisks=${#images[@]}
# The VM's own polling budget: leave ~1/3 of the time for boot and hashing.
vm_wait=$(( timeout_s * 2 / 3 ))
drives=()
for img in "${images[@]}"; do
    # file.filename= (not file=) so names with ':' are never taken as a
    # protocol prefix; ',' is escaped by doubling (qemu option syntax).
    drives+=(-drive "if=virtio,format=raw,snapshot=on,file.driver=file,file.filename=${img//,/,,}")
done
start=$(date +%s)
: >"$log"
# TMPDIR: where qemu puts the snapshot overlays -> inside our workdir.
TMPDIR=$work "$TIMEOUT" -k 10 "$timeout_s" "$QEMU" \
    -nodefaults -no-user-config -display none -no-reboot \
    -accel "${SWRAID_QEMU_ACCEL:-tcg}" -smp 1 -m "${SWRAID_QEMU_MEM:-512}" \
    -kernel "$VMLINUZ" -initrd "$initrd" \
    -append "console=ttyS0 loglevel=3 panic=1 rdinit=/init swraid.ndisks=$ndisks swraid.wait=$vm_wait" \
    -serial "file:$log" "${drives[@]}" \
    </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
wait "$qpid"; qrc=$?; qpid=""
elapsed=$(( $(date +%s) - start ))
[ -n "$keep_log" ] && cp "$log" "$keep_log" 2>/dev/null

# ------------------------------------------------------------------ verdict
tr -d '\r' <"$log" 2>/dev/null | grep -a '^RESULT [a-z_0-9]*=\|^RESULT done$' >"$work/results" || true
get() { sed -n "s/^RESULT \(.* \)\{0,1\}$1=\([^ ]*\).*/\2/p" "$work/results" | tail -n 1; }
cat "$work/results"
echo "RESULT elapsed_s=$elapsed"

reason=""
if ! grep -qx 'RESULT done' "$work/results"; then
    if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then reason="VM timed out after ${timeout_s}s"
    elif [ ! -s "$log" ]; then reason="VM printed nothing (qemu exit $qrc): kernel did not boot (too little memory? broken accel?)"
    else reason="VM ended without 'RESULT done' (qemu exit $qrc)"; fi
elif [ "$(get modules)" != ok ]; then
    reason="required kernel modules did not load in the VM"
elif [ "$(get assemble)" != ok ]; then
    reason="kernel md did not assemble the array"
elif [ "$(get check)" != ok ]; then
    reason="md check did not complete ($(get check))"
elif [ "$(get mismatch_cnt)" != 0 ]; then
    reason="mismatch_cnt=$(get mismatch_cnt) (parity/data inconsistent)"
elif [ -z "$(get sha256)" ] || [ -z "$(get bytes)" ]; then
    reason="no sha256/bytes reported (read error on /dev/md0?)"
elif [ -n "$expect_bytes" ] && [ "$(get bytes)" != "$expect_bytes" ]; then
    reason="array is $(get bytes) bytes, expected $expect_bytes"
elif [ -n "$expect_sha" ] && [ "$(get sha256)" != "$expect_sha" ]; then
    reason="sha256 $(get sha256) != expected $expect_sha"
elif [ "$expect_clean" = 1 ] && [ "$(get initial_sync)" != none ]; then
    reason="kernel ran a '$(get initial_sync)' at assembly (array not clean)"
fi

if [ -n "$reason" ]; then
    echo "--- last 40 console lines${keep_log:+ (full log: $keep_log)}"
    tr -d '\r' <"$log" 2>/dev/null | tail -n 40 | sed 's/^/| /'   # prefixed: not parsed as results
    if grep -aq '^mdadm:' "$log" 2>/dev/null; then
        echo "--- mdadm messages"; tr -d '\r' <"$log" | grep -a '^mdadm:' | tail -n 20 | sed 's/^/| /'
    fi
    if [ -s "$work/qemu.out" ]; then echo "--- qemu output"; tail -n 20 "$work/qemu.out" | sed 's/^/| /'; fi
    echo "FAIL: $reason"
    exit 1
fi
echo "PASS: kernel $KVER assembled ${ndisks} image(s), check mismatch_cnt=0, ${elapsed}s"
exit 0
