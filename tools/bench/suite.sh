#!/usr/bin/env bash
# The performance suite: every figure beside its peer and the ratio, all from one run on this
# machine (only ratios from one run compare; see ../shared/perf-ceilings.md).
#
#   tools/bench/suite.sh [--quick] [--skip-build] [--dir DIR]
#
#   1. parity kernels against ISA-L (swraid bench parity);
#   2. the core alone (swraid bench core), against the issue's targets;
#   3. end to end over NBD, Unix socket and TCP: swraid RAID5 of 4 and RAID6 of 5 on files against
#      nbdkit's file plugin serving one file on the same disk. nbdcopy 1 GiB write (--flush) and
#      read with 4 connections; fio's nbd engine: 4 KiB random read and write at QD1 and QD32,
#      1 MiB sequential read at QD8. Peak RSS and CPU seconds of each server under that load;
#   4. check and rebuild (sync_speed_max raised) against a plain sequential read of all members;
#   5. the simulator's throughput (seeds, events and simulated member I/Os per second).
#
# Needs (Debian): nbdkit fio libnbd-bin libisal2 python3. --quick runs each fio job 2 s and each
# measurement once (the recorded runs use the default: 5 s, median of 3). Scratch files go to DIR
# (default /var/tmp/swraid-bench, on the disk, not tmpfs) and are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=0 build=1 dir=/var/tmp/swraid-bench
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --skip-build) build=0 ;;
        --dir) dir=$2; shift ;;
        *) echo "usage: $0 [--quick] [--skip-build] [--dir DIR]" >&2; exit 2 ;;
    esac
    shift
done
for tool in nbdkit fio nbdcopy nbdinfo python3; do
    command -v "$tool" >/dev/null || { echo "suite.sh: $tool is missing (apt-get install nbdkit fio libnbd-bin python3)" >&2; exit 77; }
done
runtime=5 reps=3
[ "$quick" = 1 ] && runtime=2 reps=1

if [ "$build" = 1 ]; then swift build -c release --product swraid >&2; fi
bin="$(swift build -c release --show-bin-path)/swraid"
[ -x "$bin" ] || { echo "suite.sh: no release build at $bin" >&2; exit 1; }

rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

results="$dir/results.tsv"   # name <TAB> value <TAB> unit
: > "$results"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$results"; }
median() { python3 -c 'import sys,statistics; print("%.6g" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
now() { date +%s.%N; }

echo "# swraid performance suite, $(date -u +%FT%TZ), $(nproc) CPUs"
echo "# peers: $(nbdkit --version | head -1); $(nbdcopy --version | head -1); $(fio --version)"
echo

echo "## 1. Parity kernels (GB/s of data in, one core; ratio = swraid / ISA-L)"
"$bin" bench parity
echo

echo "## 2. The core alone (one thread, members in memory)"
"$bin" bench core --size-mib $([ "$quick" = 1 ] && echo 512 || echo 2048) --small-writes $([ "$quick" = 1 ] && echo 50000 || echo 200000)
echo

# --- 3. NBD end to end -------------------------------------------------------------------------
arrayBytes=$((1 << 30))
src="$dir/source.1g"
head -c "$arrayBytes" /dev/urandom > "$src"
cat "$src" > /dev/null   # page-cached: the write tests read it from memory

wait_up() { # uri
    for _ in $(seq 200); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "suite.sh: server did not come up at $1" >&2; return 1
}
cpu_seconds() { # pid: user + system CPU seconds so far
    python3 -c "import os,sys; f=open('/proc/%s/stat'%sys.argv[1]).read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"
}
peak_rss_mib() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

pin=()  # a command fio runs under (taskset), none by default
# fio's I/O buffers are page-aligned, as a block device's client's are (the kernel's, qemu's,
# nbdcopy's): fio's own default is not, and on this AMD CPU the kernel's copy of page-aligned
# data into a misaligned buffer runs at a fifth of its speed (fio at 88 % system time, 1.4-1.9
# GB/s of 1 MiB reads from swraid's sendfile replies against 4.9-5.1 aligned), which measured
# the client's memcpy, not the servers. Every server gets the same fio.
fio_job() { # uri rw bs qd field -> value (iops | bw MB/s | lat us)
    local out
    out=$("${pin[@]}" fio --name=t --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="$arrayBytes" --iomem_align=4096 \
        --time_based --runtime="$runtime" --output-format=json 2>/dev/null | sed -n '/^{/,$p')
    python3 -c '
import json, sys
j = json.loads(sys.argv[1])["jobs"][0]
x = j["read"] if j["read"]["io_bytes"] else j["write"]
print({"iops": x["iops"], "bw": x["bw_bytes"] / 1e6, "lat": x["lat_ns"]["mean"] / 1e3}[sys.argv[2]])' "$out" "$5"
}

# Every figure is measured on the three servers of a transport in turn, repetition by
# repetition (nbdkit, RAID5, RAID6, nbdkit, ...), all three running: on this noisy machine the
# disk and the page cache change from minute to minute, and measuring one server after the
# other gave one of them all the bad minutes. A write starts with no dirty data left by the one
# before it (`sync`, outside the timing), whoever wrote it.
measure() { # what uri -> value
    local t0 t1
    case "$1" in
        write) sync; t0=$(now); nbdcopy -C 4 --flush "$src" "$2"; t1=$(now)
               python3 -c "print($arrayBytes / ($t1 - $t0) / 1e6)" ;;
        read) t0=$(now); nbdcopy -C 4 "$2" null:; t1=$(now)
              python3 -c "print($arrayBytes / ($t1 - $t0) / 1e6)" ;;
        randread-1|randread-32|randwrite-1|randwrite-32) fio_job "$2" "${1%-*}" 4k "${1#*-}" iops ;;
        latency) fio_job "$2" randread 4k 1 lat ;;
        read-1m) fio_job "$2" read 1m 8 bw ;;
    esac
}
nbd_load() { # transport; labels, uris and spids hold the servers
    local transport=$1 what i v cpu0=() rep
    local -A values
    for i in "${!spids[@]}"; do cpu0+=("$(cpu_seconds "${spids[$i]}")"); done
    measures=(write read randread-1 randread-32 randwrite-1 randwrite-32 latency read-1m)
    # The same QD1 latency with each server and fio on one CPU: on this VM a wake-up across
    # CPUs (the request waking the server, the reply waking the client) costs more than the
    # work; this row shows each server's own cost without it. Last: the servers stay pinned.
    command -v taskset >/dev/null && measures+=(latency-one-cpu)
    for what in "${measures[@]}"; do
        echo "#   $what" >&2
        if [ "$what" = latency-one-cpu ]; then
            for i in "${!spids[@]}"; do taskset -a -p -c 0 "${spids[$i]}" >/dev/null; done
            pin=(taskset -c 0)
        fi
        for rep in $(seq "$reps"); do
            for i in "${!uris[@]}"; do values[$i,$what]+=" $(measure "${what/-one-cpu/}" "${uris[$i]}")"; done
        done
        pin=()
    done
    for i in "${!labels[@]}"; do
        local label="${labels[$i]}"
        record "$label nbdcopy write" "$(median ${values[$i,write]})" MB/s
        record "$label nbdcopy read" "$(median ${values[$i,read]})" MB/s
        for rw in randread randwrite; do for qd in 1 32; do
            record "$label 4K $rw QD$qd" "$(median ${values[$i,$rw-$qd]})" IOPS
        done; done
        record "$label 4K randread QD1 latency" "$(median ${values[$i,latency]})" us
        record "$label 1M read QD8" "$(median ${values[$i,read-1m]})" MB/s
        [ -n "${values[$i,latency-one-cpu]:-}" ] && record "$label 4K randread QD1 latency, one CPU" "$(median ${values[$i,latency-one-cpu]})" us
        record "$label CPU seconds" "$(python3 -c "print($(cpu_seconds "${spids[$i]}") - ${cpu0[$i]})")" s
        record "$label peak RSS" "$(peak_rss_mib "${spids[$i]}")" MiB
    done
}

# The serve_ functions start a server in the background, push its pid on `pids` and set `uri`
# (not echoed: a command substitution would run them in a subshell).
serve_nbdkit() { # transport (nbdkit serving one 1 GiB file)
    local img="$dir/nbdkit.img"
    rm -f "$img"; truncate -s "$arrayBytes" "$img"
    if [ "$1" = unix ]; then
        nbdkit -f -U "$dir/nbdkit.sock" file "$img" >"$dir/nbdkit.log" 2>&1 & pids+=($!)
        uri="nbd+unix:///?socket=$dir/nbdkit.sock"
    else
        nbdkit -f -i 127.0.0.1 -p 10931 file "$img" >"$dir/nbdkit.log" 2>&1 & pids+=($!)
        uri="nbd://127.0.0.1:10931"
    fi
}

make_array() { # level disks -> member paths (array of 1 GiB of data, 512K chunks, no bitmap)
    local level=$1 disks=$2 data=$(( $2 - ($1 == 6 ? 2 : 1) )) members=()
    local memberKiB=$(( (arrayBytes / data + (512 << 10) - 1) / (512 << 10) * 512 ))
    for i in $(seq 0 $((disks - 1))); do members+=("$dir/r$level-m$i.img"); rm -f "$dir/r$level-m$i.img"; done
    "$bin" create -q --level "$level" --raid-devices "$disks" --size "$memberKiB" --bitmap none --assume-clean \
        --name "bench$level" "${members[@]}" >&2
    echo "${members[@]}"
}

serve_swraid() { # transport level members...
    local transport=$1 level=$2; shift 2
    local control="$dir/control-$level.sock"
    if [ "$transport" = unix ]; then
        "$bin" run --socket "$dir/swraid-$level.sock" --control "$control" "$@" >>"$dir/run-$level.log" 2>&1 & pids+=($!)
        uri="nbd+unix:///bench$level?socket=$dir/swraid-$level.sock"
    else
        "$bin" run --listen 127.0.0.1:$((10927 + level)) --control "$control" "$@" >>"$dir/run-$level.log" 2>&1 & pids+=($!)
        uri="nbd://127.0.0.1:$((10927 + level))/bench$level"
    fi
}

stop_last() {
    local p=${pids[-1]}
    kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
    unset 'pids[-1]'
}

r5=($(make_array 5 4))
r6=($(make_array 6 5))
for transport in unix tcp; do
    echo "# NBD over $transport: nbdkit file, swraid RAID5x4, swraid RAID6x5, in turn" >&2
    labels=() uris=() spids=()
    serve_nbdkit $transport; wait_up "$uri"
    labels+=("nbdkit-file $transport") uris+=("$uri") spids+=("${pids[-1]}")
    serve_swraid $transport 5 "${r5[@]}"; wait_up "$uri"
    labels+=("swraid RAID5x4 $transport") uris+=("$uri") spids+=("${pids[-1]}")
    serve_swraid $transport 6 "${r6[@]}"; wait_up "$uri"
    labels+=("swraid RAID6x5 $transport") uris+=("$uri") spids+=("${pids[-1]}")
    nbd_load $transport
    stop_last; stop_last; stop_last
done

# --- 4. check and rebuild against a plain sequential read of the members -----------------------
drop_caches() { sync; { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null || true; }
plain_read() { # members... -> MB/s of all of them read at once, 1 MiB at a time, from the disk
    local t0 t1 bytes=0 f
    drop_caches
    t0=$(now)
    for f in "$@"; do dd if="$f" of=/dev/null bs=1M iflag=direct status=none & done
    wait
    t1=$(now)
    for f in "$@"; do bytes=$((bytes + $(stat -c %s "$f"))); done
    python3 -c "print($bytes / ($t1 - $t0) / 1e6)"
}
sync_run() { # level action members... -> sets `rate`: MB/s of member bytes covered (all members)
    local level=$1 action=$2; shift 2
    local control="$dir/control-$level.sock" t0 t1 bytes=0 f
    serve_swraid unix "$level" "$@"; wait_up "$uri"
    "$bin" set --control "$control" sync_speed_max 100000000 >/dev/null
    drop_caches
    if [ "$action" = check ]; then
        t0=$(now)
        "$bin" set --control "$control" sync_action check >/dev/null
        "$bin" wait --control "$control" >/dev/null
        t1=$(now)
    else
        # md's rebuild: fail the last member, remove it, add a fresh file in its place.
        local last=${*: -1}
        "$bin" fail --control "$control" "$last" >/dev/null
        "$bin" remove --control "$control" "$last" >/dev/null
        rm -f "$last.new"; truncate -s "$(stat -c %s "$last")" "$last.new"
        t0=$(now)
        "$bin" add --control "$control" "$last.new" >/dev/null
        "$bin" wait --control "$control" >/dev/null
        t1=$(now)
    fi
    stop_last
    for f in "$@"; do bytes=$((bytes + $(stat -c %s "$f"))); done
    rate=$(python3 -c "print($bytes / ($t1 - $t0) / 1e6)")
}
for level in 5 6; do
    echo "# RAID$level: plain read of the members, check, rebuild" >&2
    if [ $level = 5 ]; then members=("${r5[@]}"); else members=("${r6[@]}"); fi
    v=""; for _ in $(seq "$reps"); do v="$v $(plain_read "${members[@]}")"; done
    record "RAID${level} plain read of all members" "$(median $v)" MB/s
    v=""; for _ in $(seq "$reps"); do sync_run $level check "${members[@]}"; v="$v $rate"; done
    record "RAID${level} check" "$(median $v)" MB/s
    sync_run $level rebuild "${members[@]}"
    record "RAID${level} rebuild" "$rate" MB/s
done

# --- 5. the simulator --------------------------------------------------------------------------
seeds=$([ "$quick" = 1 ] && echo 100 || echo 400)
simOut=$("$bin" sim --seeds "1..$seeds" 2>&1 | tail -1)
record "simulator seeds per second" "$(echo "$simOut" | sed -n 's/.* \([0-9.]*\) seeds\/s.*/\1/p')" seeds/s
record "simulator events per second" "$(echo "$simOut" | python3 -c '
import re, sys
line = sys.stdin.read()
events = int(re.search(r"(\d+) events", line).group(1)); seconds = float(re.search(r"([\d.]+) s,", line).group(1))
print("%.0f" % (events / seconds))')" events/s
record "simulator member I/Os per second" "$(echo "$simOut" | python3 -c '
import re, sys
line = sys.stdin.read()
ios = int(re.search(r"(\d+) member I/Os,", line).group(1)); seconds = float(re.search(r"([\d.]+) s,", line).group(1))
print("%.0f" % (ios / seconds))')" I/Os/s

# --- the table ---------------------------------------------------------------------------------
echo "## 3-5. End to end, check and rebuild, simulator"
python3 - "$results" <<'PY'
import sys
rows = {}
order = []
for line in open(sys.argv[1]):
    name, value, unit = line.rstrip("\n").split("\t")
    rows[name] = (float(value), unit)
    order.append(name)

def show(name, peer, target=None, ceiling=False):
    """ratio = swraid / peer; the target is a floor, or a ceiling for latency."""
    if name not in rows or peer not in rows: return
    (v, unit), (p, _) = rows[name], rows[peer]
    ratio = v / p if p else float("nan")
    verdict = ""
    if target is not None:
        met = ratio <= target if ceiling else ratio >= target
        verdict = f"{'<=' if ceiling else '>='}{target:<5} {'met' if met else 'MISSED'}"
    print(f"{name:<44} {v:>10.1f} {unit:<8} {p:>10.1f}  {ratio:5.2f}  {verdict}")

print(f"{'figure':<44} {'swraid':>10} {'':<8} {'peer':>10}  ratio  target")
for transport in ("unix", "tcp"):
    peer = f"nbdkit-file {transport}"
    for shape in ("RAID5x4", "RAID6x5"):
        me = f"swraid {shape} {transport}"
        show(f"{me} nbdcopy read", f"{peer} nbdcopy read", 1.0)
        show(f"{me} nbdcopy write", f"{peer} nbdcopy write", 0.75)
        show(f"{me} 1M read QD8", f"{peer} 1M read QD8", 1.0)
        show(f"{me} 4K randread QD32", f"{peer} 4K randread QD32", 0.8)
        show(f"{me} 4K randwrite QD32", f"{peer} 4K randwrite QD32", 0.3)
        show(f"{me} 4K randread QD1", f"{peer} 4K randread QD1")
        show(f"{me} 4K randwrite QD1", f"{peer} 4K randwrite QD1")
        show(f"{me} 4K randread QD1 latency", f"{peer} 4K randread QD1 latency", 1.2, ceiling=True)
        show(f"{me} 4K randread QD1 latency, one CPU", f"{peer} 4K randread QD1 latency, one CPU", 1.2, ceiling=True)
        show(f"{me} CPU seconds", f"{peer} CPU seconds")
        show(f"{me} peak RSS", f"{peer} peak RSS")
for level in ("5", "6"):
    show(f"RAID{level} check", f"RAID{level} plain read of all members", 0.8)
    show(f"RAID{level} rebuild", f"RAID{level} plain read of all members")
for name in order:
    if name.startswith("simulator"):
        v, unit = rows[name]
        print(f"{name:<44} {v:>10.1f} {unit}")
print()
print("Peak RSS target: 64 MiB plus the stripe cache (swraid run's default: 256 stripes of 4 KiB per member + 2).")
print("Simulator target: 4x 23 seeds/s (all five scenarios, each replayed, 2 cores).")
PY
