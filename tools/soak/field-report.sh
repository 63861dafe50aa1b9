#!/usr/bin/env bash
# field-report.sh: the field report's three loops (../shared/seed-scenario.md) against a live
# `swraid run`: a RAID6 of 5 member files with an internal bitmap, served over NBD, carrying
# ext4 through nbdfuse and a loop device.
#
#   control loop   swraid set sync_action check; wait CHECK s; swraid set sync_action idle; wait IDLE s
#   write loop     write a FILE_MIB file, sync, drop the page cache, verify its sha256, delete, 0.1 s
#   monitor        once a second: elapsed, sync_action, sync_completed, array_state, stripe_cache_active
#
# --mode deadlock runs mdadm's 24raid456deadlock shape instead: `check`, 0.1 s, `idle` in a tight
# loop under sequential 4 KiB O_DIRECT writes to the array (no file system).
#
# Fails (exit 1) when a `set` takes longer than 5 s, when array_state reads write-pending three
# seconds in a row, when a file reads back wrong, or when the final check's mismatch_cnt is not 0.
# Prints the figures at the end. Needs root, /dev/fuse, nbdfuse, losetup, mkfs.ext4, fusermount3.
#
# Usage: field-report.sh [--mode field|deadlock] [--seconds N] [--check-seconds N] [--idle-seconds N]
#                        [--file-mib N] [--member-mib N] [--swraid PATH]
set -euo pipefail

mode=field seconds=120 check_s=10 idle_s=2 file_mib=256 member_mib=256
swraid=${SWRAID:-$(command -v swraid || echo .build/debug/swraid)}
while [ $# -gt 0 ]; do
    case $1 in
        --mode) mode=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --check-seconds) check_s=$2; shift 2 ;;
        --idle-seconds) idle_s=$2; shift 2 ;;
        --file-mib) file_mib=$2; shift 2 ;;
        --member-mib) member_mib=$2; shift 2 ;;
        --swraid) swraid=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case $mode in field|deadlock) ;; *) echo "--mode is field or deadlock" >&2; exit 2 ;; esac
for tool in nbdfuse losetup mkfs.ext4 fusermount3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
[ "$(id -u)" = 0 ] && [ -e /dev/fuse ] || { echo "SKIP: needs root and /dev/fuse"; exit 77; }
swraid=$(readlink -f "$swraid")

work=$(mktemp -d /tmp/swraid-soak.XXXXXX)
ctl=$work/ctl.sock
result=$work/result
mkdir -p "$work/fuse" "$work/mnt" "$result"
daemon_pid="" fuse_pid="" loop="" loops=()
cleanup() {
    set +e
    touch "$work/stop"
    [ ${#loops[@]} -gt 0 ] && wait "${loops[@]}" 2>/dev/null
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    [ -n "$fuse_pid" ] && { fusermount3 -u "$work/fuse"; wait "$fuse_pid"; }
    [ -n "$daemon_pid" ] && { "$swraid" stop --control "$ctl" >/dev/null 2>&1 || kill "$daemon_pid"; wait "$daemon_pid"; }
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" | tee -a "$result/failures"; }
now() { date +%s%N; }

members=()
for i in 0 1 2 3 4; do members+=("$work/m$i.img"); done
"$swraid" create --level 6 --raid-devices 5 --chunk 512K --bitmap internal --size "${member_mib}M" --name soak "${members[@]}" >/dev/null

# The daemon says when it serves; a FIFO carries that line (no polling).
mkfifo "$work/daemon.log"
"$swraid" run --listen 127.0.0.1:0 --control "$ctl" "${members[@]}" 2>"$work/daemon.log" &
daemon_pid=$!
exec 3<"$work/daemon.log"
port=""
while read -r line <&3; do
    echo "$line" >>"$work/daemon.txt"
    case $line in *"serving 'soak'"*) port=${line##*:} ;; esac
    case $line in *"control socket"*) break ;; esac
done
cat <&3 >>"$work/daemon.txt" &
[ -n "$port" ] || { echo "the daemon did not start"; cat "$work/daemon.txt"; exit 1; }
mkfifo "$work/fuse.ready"
nbdfuse -P "$work/fuse.ready" "$work/fuse" "nbd://127.0.0.1:$port/soak" &
fuse_pid=$!
cat "$work/fuse.ready" >/dev/null
loop=$(losetup -f --show "$work/fuse/nbd")

timed_set() {  # timed_set ATTR VALUE: the set, its duration recorded; over 5 s fails
    local t0 t1 ms
    t0=$(now)
    "$swraid" set --control "$ctl" "$1" "$2" >/dev/null 2>&1 || true
    t1=$(now)
    ms=$(( (t1 - t0) / 1000000 ))
    echo "$ms" >>"$result/set_ms"
    [ "$ms" -le 5000 ] || fail "set $1 $2 took $ms ms"
}

control_loop() {
    while [ ! -e "$work/stop" ]; do
        timed_set sync_action check && echo >>"$result/checks_started"
        if [ "$mode" = field ]; then sleep "$check_s"; else sleep 0.1; fi
        timed_set sync_action idle && echo >>"$result/checks_stopped"
        [ "$mode" = field ] && sleep "$idle_s"
    done
}

write_loop() {
    head -c "$((file_mib << 20))" /dev/urandom >"$work/source"
    local want
    want=$(sha256sum <"$work/source" | cut -d' ' -f1)
    while [ ! -e "$work/stop" ]; do
        cp "$work/source" "$work/mnt/file"
        sync
        echo 3 >/proc/sys/vm/drop_caches
        got=$(sha256sum <"$work/mnt/file" | cut -d' ' -f1)
        [ "$got" = "$want" ] || fail "the file read back wrong"
        echo "$file_mib" >>"$result/mib_verified"
        rm "$work/mnt/file"
        sync
        sleep 0.1
    done
}

direct_write_loop() {  # 24raid456deadlock: sequential 4 KiB O_DIRECT writes, wrapping around
    local size blocks at=0
    size=$(blockdev --getsize64 "$loop")
    blocks=$((size / 4096))
    while [ ! -e "$work/stop" ]; do
        dd if=/dev/zero of="$loop" bs=4k count=1024 seek=$at oflag=direct conv=notrunc status=none
        at=$(( (at + 1024) % (blocks - 1024) ))
        echo 4 >>"$result/mib_verified"
    done
}

monitor() {
    local start pending=0 longest=0 elapsed state
    start=$(date +%s)
    while [ ! -e "$work/stop" ]; do
        elapsed=$(( $(date +%s) - start ))
        state=$("$swraid" get --control "$ctl" array_state 2>/dev/null || echo "?")
        printf '%02d:%02d:%02d sync_action %s sync_completed %s array_state %s stripe_cache_active %s\n' \
            $((elapsed / 3600)) $((elapsed / 60 % 60)) $((elapsed % 60)) \
            "$("$swraid" get --control "$ctl" sync_action 2>/dev/null)" \
            "$("$swraid" get --control "$ctl" sync_completed 2>/dev/null)" "$state" \
            "$("$swraid" get --control "$ctl" stripe_cache_active 2>/dev/null)" >>"$result/monitor"
        if [ "$state" = write-pending ]; then pending=$((pending + 1)); else pending=0; fi
        [ $pending -gt $longest ] && longest=$pending && echo $longest >"$result/longest_pending"
        [ $pending -lt 3 ] || fail "array_state write-pending for $pending s"
        sleep 1
    done
}

if [ "$mode" = field ]; then
    mkfs.ext4 -q -F "$loop"
    mount "$loop" "$work/mnt"
    write_loop &
    loops+=($!)
else
    direct_write_loop &
    loops+=($!)
fi
control_loop &
loops+=($!)
monitor &
loops+=($!)
echo "swraid soak ($mode): RAID6 of 5 x ${member_mib} MiB, ${seconds} s; monitor below"
sleep "$seconds"
touch "$work/stop"
wait "${loops[@]}" 2>/dev/null || true
loops=()
tail -n 5 "$result/monitor" 2>/dev/null || true
mountpoint -q "$work/mnt" && umount "$work/mnt"

# The final check: nothing running, then a whole check; mismatch_cnt must be 0.
"$swraid" set --control "$ctl" sync_action idle >/dev/null 2>&1 || true
"$swraid" set --control "$ctl" sync_action check >/dev/null
"$swraid" wait --control "$ctl" >/dev/null
mismatch=$("$swraid" get --control "$ctl" mismatch_cnt)
[ "$mismatch" = 0 ] || fail "final check: mismatch_cnt $mismatch"

count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
slowest=$(sort -n "$result/set_ms" 2>/dev/null | tail -1)
verified=$(awk '{s += $1} END {print s + 0}' "$result/mib_verified" 2>/dev/null || echo 0)
echo "mode $mode, ${seconds} s: checks started $(count "$result/checks_started"), stopped $(count "$result/checks_stopped"), slowest set ${slowest:-0} ms," \
    "longest write-pending run $(cat "$result/longest_pending" 2>/dev/null || echo 0) s, $verified MiB $([ "$mode" = field ] && echo verified || echo written)," \
    "final mismatch_cnt $mismatch"
if [ -s "$result/failures" ]; then
    sort -u "$result/failures"
    exit 1
fi
echo PASS
