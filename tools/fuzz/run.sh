#!/usr/bin/env bash
# Builds swraid's libFuzzer targets (the Fuzz package) and runs each one: first over its kept
# regression inputs (every crash the fuzzers found, each fixed), then fuzzing from a copy of its
# seed corpus for the time or number of executions asked.
#
#   tools/fuzz/run.sh [--seconds N | --runs N] [--jobs N] [TARGET...]   (targets: nbd superblock control)
#   tools/fuzz/run.sh --write-seeds     (regenerates Fuzz/corpus/* from swraid's own encoders)
#
# Exit 0 when no target crashed; 1 when one did (its input is copied to
# Fuzz/crashes/TARGET/ to be fixed and then kept under Fuzz/regressions/TARGET/).
# Prints, per target, the executions done, the time taken and the corpus size.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
seconds=30
runs=""
targets=()
write_seeds=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --write-seeds) write_seeds=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        nbd|superblock|control) targets+=("$1"); shift ;;
        *) echo "fuzz: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(nbd superblock control)

product() {
    case "$1" in nbd) echo FuzzNBD ;; superblock) echo FuzzSuperblock ;; control) echo FuzzControl ;; esac
}

cd Fuzz
for t in "${targets[@]}"; do
    # The entry point is `<module>_main`; gold cannot link libFuzzer into it, lld can.
    if ! swift build -c release -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -use-ld=lld \
        --product "$(product "$t")" >/tmp/swraid-fuzz-build.log 2>&1; then
        grep -E "error" /tmp/swraid-fuzz-build.log | head -20 >&2
        echo "fuzz: $(product "$t") did not build" >&2
        exit 1
    fi
done

if [ $write_seeds = 1 ]; then
    for t in "${targets[@]}"; do
        rm -rf "corpus/$t"
        ".build/release/$(product "$t")" --write-seeds "corpus/$t"
        echo "fuzz: wrote $(ls "corpus/$t" | wc -l) seeds to Fuzz/corpus/$t"
    done
    exit 0
fi

status=0
work=$(mktemp -d /tmp/swraid-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    bin=".build/release/$(product "$t")"
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    # The kept crash inputs first: each must now run clean.
    if [ -d "regressions/$t" ] && [ -n "$(ls "regressions/$t")" ]; then
        if ! SWIFT_BACKTRACE=enable=no "$bin" -rss_limit_mb=2048 -error_exitcode=77 regressions/"$t"/* >"$work/$t/regressions.log" 2>&1; then
            echo "fuzz $t: a kept regression input fails again:" >&2
            tail -30 "$work/$t/regressions.log" >&2
            status=1
            continue
        fi
        echo "fuzz $t: $(ls "regressions/$t" | wc -l) regression inputs run clean"
    fi
    cp "corpus/$t"/* "$work/$t/corpus/"
    limit=(-max_total_time="$seconds")
    [ -n "$runs" ] && limit=(-runs="$runs")
    started=$(date +%s)
    if SWIFT_BACKTRACE=enable=no "$bin" "$work/$t/corpus" "${limit[@]}" -rss_limit_mb=2048 -max_len=8192 -timeout=10 \
        -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 >"$work/$t/fuzz.log" 2>&1; then
        result=passed
    else
        result=CRASHED
        status=1
        mkdir -p "crashes/$t"
        cp "$work/$t/artifacts"/* "crashes/$t/" 2>/dev/null || true
        grep -E "ERROR|Fatal error|fuzz property|SUMMARY" "$work/$t/fuzz.log" | head -10 >&2 || true
        tail -5 "$work/$t/fuzz.log" >&2
    fi
    elapsed=$(( $(date +%s) - started ))
    executions=$(grep -Eo "stat::number_of_executed_units: *[0-9]+" "$work/$t/fuzz.log" | grep -Eo "[0-9]+$" || echo "?")
    [ "$executions" = "?" ] && executions=$(grep -Eo "Done [0-9]+ runs" "$work/$t/fuzz.log" | grep -Eo "[0-9]+" || echo "?")
    echo "fuzz $t: $result, $executions executions in ${elapsed} s, corpus $(ls "$work/$t/corpus" | wc -l) inputs"
done
exit $status
