#!/usr/bin/env bash
# Catches a `swraid run` whose resident memory passes a threshold, and records what holds it.
#
#   tools/bench/rss-peak-watch.sh [THRESHOLD_MIB] [OUT]     (defaults: 100, /tmp/swraid-rss-peak.txt)
#
# Run it beside a load (the suite, nbdcopy by hand); it polls every 20 ms, and on the first
# sample over the threshold writes the time, RSS, thread names, the largest mappings (smaps)
# and the process status to OUT, then exits. For a peak that shows up rarely (issue 11: RAID6
# over TCP, the first write after start).
set -euo pipefail
threshold=$(( ${1:-100} * 1024 )) out=${2:-/tmp/swraid-rss-peak.txt}
while true; do
    pid=$(pgrep -f "swraid run" | head -1 || true)
    if [ -n "$pid" ]; then
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        if [ -n "$rss" ] && [ "$rss" -gt "$threshold" ]; then
            {
                date -u +%FT%T.%NZ
                echo "pid $pid RSS ${rss} kB, threads $(ls "/proc/$pid/task" | wc -l)"
                cat /proc/"$pid"/task/*/comm | sort | uniq -c
                echo "# largest mappings (Rss kB, mapping)"
                awk '/^[0-9a-f]/ {name=$0} /^Rss:/ {if ($2 > 2000) print $2, name}' "/proc/$pid/smaps" | sort -rn | head -16
                echo "# resident anonymous memory by mapping size (count, mapping kB, resident kB)"
                python3 - "/proc/$pid/smaps" <<'PY'
import collections, sys
count, resident = collections.Counter(), collections.Counter()
size = None
for line in open(sys.argv[1]):
    fields = line.split()
    if "-" in fields[0] and len(fields) >= 5:
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        size = (hi - lo) // 1024 if len(fields) == 5 else None  # anonymous: no path
    elif fields[0] == "Rss:" and size is not None and int(fields[1]) > 0:
        count[size] += 1
        resident[size] += int(fields[1])
for s, r in sorted(resident.items(), key=lambda kv: -kv[1])[:12]:
    print(count[s], s, r)
PY
                echo "# status"
                cat "/proc/$pid/status"
            } > "$out"
            echo "rss-peak-watch: $rss kB in pid $pid, recorded in $out"
            exit 0
        fi
    fi
    sleep 0.02
done
