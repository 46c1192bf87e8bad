#!/usr/bin/env bash
# Soak test of the C ABI: SOAK_THREADS (8) pthreads share one HardNet
# nhp_network and describe batches of 1..300 patches for SOAK_MAX_SECONDS
# (600) or SOAK_MAX_PATCHES (1,000,000) patches, whichever comes first; every
# descriptor must be bit-identical to a single-threaded reference, no nhp_
# call may fail, and the resident memory at the end may exceed the one after
# warm-up by at most max(10 %, 16 MiB), both taken with no call in flight
# (and glibc's live heap by at most 4 MiB). See bench/soak_capi.c for what it
# does, how memory is sampled, and every SOAK_* setting.
#
#   bash bench/soak_capi.sh [--weights FILE] [--static] [LOG]
#
#   --weights FILE  a HardNet weights file; default: a fresh one from
#                   `nhpatch init --model hardnet --variant original --seed 1`
#   --static        link target/release/libnhpatch.a instead of the .so
#   LOG             where the full output goes (default
#                   bench/results/soak-capi-YYYY-MM-DD.txt); it is also printed
#   SOAK_NOTE=...   a line added to the log's header (e.g. "machine shared")
#   MALLOC_*        glibc's malloc tuning passes through and is logged, e.g.
#                   MALLOC_MMAP_THRESHOLD_=131072 (keeps large buffers out of
#                   the arenas, so freed ones go back to the system)
#
# A CI-sized run (about a minute on 2 cores):
#   SOAK_MAX_PATCHES=20000 SOAK_MAX_SECONDS=60 bash bench/soak_capi.sh /tmp/soak.txt
#
# Results: bench/results/soak-capi-2026-12-03.txt (passes with glibc's
# default malloc settings). Before a Network kept inference-only workspaces
# for every batch size and took callers in turns, the RSS check failed:
# freed workspaces stayed in malloc's arenas while the live heap did not
# grow (bench/results/soak-capi-2026-12-03-before-fix.txt; with
# MALLOC_MMAP_THRESHOLD_=131072 it passed,
# bench/results/soak-capi-2026-12-03-before-fix-mmap-threshold.txt).
#
# Exit status: the soak program's (0 pass, 1 failure), or the build's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

weights=""
link=shared
log=""
while [ $# -gt 0 ]; do
    case "$1" in
        --weights) weights="$2"; shift 2 ;;
        --static) link=static; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "soak_capi.sh: unknown option $1" >&2; exit 2 ;;
        *) log="$1"; shift ;;
    esac
done
[ -n "$log" ] || log="bench/results/soak-capi-$(date +%F).txt"
mkdir -p "$(dirname "$log")"
[ -z "$weights" ] || weights=$(realpath "$weights")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Everything below goes to the log and to the terminal.
exec > >(tee "$log") 2>&1

echo "== nhpatch C ABI soak test (bench/soak_capi.sh)"
echo "date:    $(date -Is)"
echo "machine: $(nproc) CPUs; $(lscpu | grep 'Model name' | sed 's/  */ /g'); memory $(free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }')"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at start"
echo "rustc:   $(rustc --version); gcc: $(gcc --version | head -1)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (src/ or Cargo.toml modified in the working tree)')"
echo "command: SOAK_THREADS=${SOAK_THREADS:-8} SOAK_MAX_PATCHES=${SOAK_MAX_PATCHES:-1000000} SOAK_MAX_SECONDS=${SOAK_MAX_SECONDS:-600}$(env | grep -E '^(SOAK_(SET|REF_BATCH|BATCHES|POOL|REPORT|RSS_PCT|RSS_MIB|LIVE_MIB|MALLOC_STATS)|MALLOC_[A-Z_]+)=' | sort | sed 's/^/ /' | tr -d '\n') bash bench/soak_capi.sh${weights:+ --weights $weights}$([ $link = static ] && echo ' --static') $log"
[ -z "${SOAK_NOTE:-}" ] || echo "note:    $SOAK_NOTE"
echo

echo "== build"
cargo build --release --lib
lib=target/release
if [ $link = static ]; then
    gcc -O2 -pthread -Wall -Wextra -Iinclude bench/soak_capi.c "$lib/libnhpatch.a" \
        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o "$tmp/soak_capi"
else
    gcc -O2 -pthread -Wall -Wextra -Iinclude bench/soak_capi.c -L"$lib" -lnhpatch \
        -Wl,-rpath,"$root/$lib" -o "$tmp/soak_capi"
fi
echo "compiled bench/soak_capi.c against $lib/libnhpatch.$([ $link = static ] && echo a || echo so)"

if [ -z "$weights" ]; then
    weights="$tmp/hardnet.safetensors"
    cargo run --release --quiet -- init --model hardnet --variant original --seed 1 --out "$weights"
    echo "weights: nhpatch init --model hardnet --variant original --seed 1 ($(stat -c %s "$weights") bytes)"
else
    echo "weights: $weights"
fi
echo

echo "== soak"
status=0
"$tmp/soak_capi" "$weights" || status=$?
echo
echo "exit status $status; log: $log"
exit $status
