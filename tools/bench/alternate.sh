#!/usr/bin/env bash
# One figure by hand, swraid against nbdkit's file plugin, measured alternately (nbdkit, swraid,
# nbdkit, ...) with both servers running, and the CPU ticks each server spent on each
# measurement: on this noisy 2-vCPU machine only figures taken side by side compare.
#
#   tools/bench/alternate.sh read|randwrite|qd1 [--reps N] [--level 5|6] [--swraid BIN] [--fio-cpu N] [-- RUN-OPTIONS...]
#
#   read       nbdcopy 1 GiB to null: (4 connections), after one warming read of each
#   randwrite  fio's nbd engine, 4 KiB random writes at QD32 for 5 s, each after a `sync`
#   qd1        fio's nbd engine, 4 KiB random reads at QD1 for 5 s, the servers on CPU 0 and fio
#              on CPU 0 too (or --fio-cpu N): mean latency, and the user and system CPU each
#              server spent per request (where a request's time goes when the wake-ups between
#              CPUs are taken out)
#
# Both over Unix sockets; RAID5 of 4 (default) or RAID6 of 5 member files of 1 GiB of data,
# 512K chunks, no bitmap, against one 1 GiB file. RUN-OPTIONS go to `swraid run` (for example
# `-- --io-threads 4`). Needs nbdkit, libnbd-bin (nbdcopy) and, for randwrite, fio.
set -euo pipefail

what=${1:-}
shift || true
reps=4 level=5 bin="" fioCPU=0
while [ $# -gt 0 ]; do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --fio-cpu) fioCPU=$2; shift 2 ;;
        --level) level=$2; shift 2 ;;
        --swraid) bin=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "alternate.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
runOptions=("$@")
case $what in read | randwrite | qd1) ;; *) echo "usage: alternate.sh read|randwrite|qd1 [--reps N] [--level 5|6] [--swraid BIN] [--fio-cpu N] [-- RUN-OPTIONS...]" >&2; exit 2 ;; esac
[[ $fioCPU =~ ^[0-9]+$ ]] || { echo "alternate.sh: --fio-cpu takes a CPU number" >&2; exit 2; }
case $level in 5 | 6) ;; *) echo "alternate.sh: --level takes 5 or 6" >&2; exit 2 ;; esac
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "alternate.sh: --reps takes a positive count" >&2; exit 2; }
for tool in nbdkit nbdcopy python3 $([ "$what" != read ] && echo fio) $([ "$what" = qd1 ] && echo taskset); do
    command -v "$tool" >/dev/null || { echo "alternate.sh: $tool is missing" >&2; exit 77; }
done
cd "$(dirname "$0")/../.."
if [ -z "$bin" ]; then
    swift build -c release --product swraid >&2
    bin=$(swift build -c release --show-bin-path)/swraid
fi

dir=$(mktemp -d /var/tmp/swraid-alternate.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

disks=$([ "$level" = 5 ] && echo 4 || echo 5)
data=$((disks - (level == 6 ? 2 : 1)))
size=$((1 << 30))
members=()
for i in $(seq 0 $((disks - 1))); do members+=("$dir/m$i.img"); done
"$bin" create -q --level "$level" --raid-devices "$disks" --size $((size / data / 1024 / 512 * 512 + 512)) --bitmap none \
    --assume-clean --name alt "${members[@]}" >/dev/null
head -c $size /dev/urandom >"$dir/source.img"
truncate -s $size "$dir/file.img"
pin=()  # qd1: both servers on CPU 0
[ "$what" = qd1 ] && pin=(taskset -c 0)
"${pin[@]}" "$bin" run "${runOptions[@]}" --socket "$dir/swraid.sock" --control "$dir/control.sock" "${members[@]}" >"$dir/run.log" 2>&1 &
spid=$!
pids+=($spid)
"${pin[@]}" nbdkit -f -U "$dir/nbdkit.sock" file "$dir/file.img" >"$dir/nbdkit.log" 2>&1 &
kpid=$!
pids+=($kpid)
for _ in $(seq 100); do [ -S "$dir/swraid.sock" ] && [ -S "$dir/nbdkit.sock" ] && break; sleep 0.1; done
[ -S "$dir/swraid.sock" ] || { echo "alternate.sh: swraid did not start:" >&2; cat "$dir/run.log" >&2; exit 1; }
S="nbd+unix:///alt?socket=$dir/swraid.sock"
K="nbd+unix:///?socket=$dir/nbdkit.sock"
# The same bytes on both, written through each server (so that each made its own page cache:
# how large a write was decides how large its page cache folios are, which matters to later
# small writes), then one read of each (the page cache as a steady reader sees it).
nbdcopy --flush "$dir/source.img" "$S"
nbdcopy --flush "$dir/source.img" "$K"
rm "$dir/source.img"
nbdcopy "$S" null:
nbdcopy "$K" null:

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# qd1: "latency_us requests" of 5 s of 4 KiB random reads at QD1
qd1() {
    taskset -c "$fioCPU" fio --name=alt --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=1 --size=900m --iomem_align=4096 \
        --time_based --runtime=5 --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
        python3 -c 'import json, sys; r = json.load(sys.stdin)["jobs"][0]["read"]; print(round(r["lat_ns"]["mean"] / 1e3, 1), r["total_ios"])'
}
if [ "$what" = qd1 ]; then
    hz=$(getconf CLK_TCK)
    echo "# 4 KiB random reads at QD1, servers on CPU 0, fio on CPU $fioCPU; swraid RAID$level of $disks (${runOptions[*]:-default options}) against nbdkit file"
    perRequest() { # pid command... -> "latency us, user us, system us" per request
        local pid=$1 u0 s0 u1 s1 lat n
        shift
        read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        read -r lat n < <("$@")
        read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        python3 -c "import sys; l, n, du, ds, hz = map(float, sys.argv[1:]); print(f'{l} us, user {du / hz * 1e6 / n:.1f} us, system {ds / hz * 1e6 / n:.1f} us')" \
            "$lat" "$n" $((u1 - u0)) $((s1 - s0)) "$hz"
    }
    for rep in $(seq "$reps"); do
        echo "rep $rep: nbdkit $(perRequest $kpid qd1 "$K")  swraid $(perRequest $spid qd1 "$S")"
    done
    exit 0
fi
measure() { # uri -> figure
    if [ "$what" = read ]; then
        local t0 t1
        t0=$(date +%s.%N); nbdcopy "$1" null:; t1=$(date +%s.%N)
        python3 -c "import sys; print(round(1073.741824 / (float(sys.argv[2]) - float(sys.argv[1]))))" "$t0" "$t1"
    else
        sync
        fio --name=alt --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 --size=900m --iomem_align=4096 --time_based --runtime=5 \
            --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
            python3 -c 'import json, sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"] / 1e3, 1))'
    fi
}
unit=$([ "$what" = read ] && echo "MB/s" || echo "k/s")
echo "# $what, swraid RAID$level of $disks (${runOptions[*]:-default options}) against nbdkit file; ticks = CPU of the server"
for rep in $(seq "$reps"); do
    k0=$(ticks $kpid); a=$(measure "$K"); k1=$(ticks $kpid)
    s0=$(ticks $spid); b=$(measure "$S"); s1=$(ticks $spid)
    echo "rep $rep: nbdkit $a $unit ($((k1 - k0)) ticks)  swraid $b $unit ($((s1 - s0)) ticks)  ratio $(python3 -c "print(round($b / $a, 2))")"
done
