#!/usr/bin/env bash
# CI fuzz step, on the stable toolchain (no nightly, no cargo-fuzz, no ASan):
#
#  1. builds every fuzz target with libFuzzer and SanitizerCoverage
#     instrumentation from stable codegen flags, into its own target directory
#     (fuzz/target-ci), so the plain build in fuzz/target stays valid;
#  2. builds the seed generator (examples/make_seeds.rs) with the same flags;
#  3. replays every committed file under fuzz/seeds/, fuzz/regressions/ and fuzz/corpus/ through
#     every target (libFuzzer runs file arguments once each);
#  4. fuzzes each reader target for FUZZ_SECONDS (default 20), then gemm and
#     conv for FUZZ_KERNEL_SECONDS (default 10), one target at a time, one
#     process, new inputs going to a temporary corpus (never into fuzz/seeds).
#     The whole script keeps to FUZZ_BUDGET seconds (default 235, builds
#     included): when the builds took so long that the full times would not
#     fit, every remaining target's time is scaled down alike, to no less than
#     FUZZ_MIN_SECONDS (default 5). FUZZ_BUDGET=0 always runs the full times.
#
# A crash, a timeout or an out-of-memory exits non-zero, after printing
# libFuzzer's output tail, the artifact's path and a hex dump of it (`xxd -r`
# turns the dump back into the file). Reproduce with the printed command, or
# with any build of the target: `fuzz/target/debug/<target> crash-file`.
#
# Other settings: FUZZ_TIMEOUT (seconds one input may take, default 10),
# FUZZ_TARGETS (a space-separated subset, default all eleven), FUZZ_TARGET_DIR
# (default fuzz/target-ci), FUZZ_KEEP=1 (keep the work directory, which holds
# the logs and the new corpus, even on success; it is always kept on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

readers=(png photo npy safetensors pack splits tasks descriptors checkpoint)
kernels=(gemm conv)
read -r -a targets <<<"${FUZZ_TARGETS:-${readers[*]} ${kernels[*]}}"
fuzz_seconds=${FUZZ_SECONDS:-20}
kernel_seconds=${FUZZ_KERNEL_SECONDS:-10}
timeout=${FUZZ_TIMEOUT:-10}
budget=${FUZZ_BUDGET:-235}
min_seconds=${FUZZ_MIN_SECONDS:-5}
target_dir=${FUZZ_TARGET_DIR:-fuzz/target-ci}
start=$SECONDS

stamp() { echo "[fuzz/ci.sh +$((SECONDS - start))s] $*"; }
die() { echo "fuzz/ci.sh: error: $*" >&2; exit 1; }

command -v xxd >/dev/null 2>&1 || command -v od >/dev/null 2>&1 || die "neither xxd nor od is installed (needed to print a crashing input)"

host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$host" ] || die "cannot read the host triple from 'rustc -vV'"

# SanitizerCoverage as cargo-fuzz sets it up, minus -Zsanitizer=address
# (nightly only). --target keeps the flags off build scripts and proc macros,
# which are not linked with libFuzzer. -Cdebug-assertions/-Coverflow-checks:
# an overflow in a reader is a bug, as under cargo-fuzz.
sancov_flags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"

stamp "building the instrumented fuzz targets (stable sancov, $host, release) into $target_dir"
RUSTFLAGS="$sancov_flags" cargo build --manifest-path fuzz/Cargo.toml --release --bins \
    --target "$host" --target-dir "$target_dir"
bin="$target_dir/$host/release"

# The seed generator (and any other example) is built too, so that it keeps
# compiling against nhpatch's API. It is built with the same flags, reusing
# the instrumented dependencies instead of a second, plain build of nhpatch;
# as it is not a fuzz target nothing links libFuzzer into it by itself, so it
# is handed the archive libfuzzer-sys just built (the instrumented code calls
# libFuzzer's coverage callbacks; the example keeps its own main).
libfuzzer_a=$(find "$bin/build" -path '*/libfuzzer-sys-*/out/libfuzzer.a' -printf '%T@ %p\n' | sort -rn | sed -n '1s/^[^ ]* //p')
[ -n "$libfuzzer_a" ] || die "libfuzzer-sys built no libfuzzer.a under $bin/build"
for example in fuzz/examples/*.rs; do
    example=$(basename "$example" .rs)
    stamp "building the example $example (the seed generator) with the same flags"
    RUSTFLAGS="$sancov_flags" cargo rustc --manifest-path fuzz/Cargo.toml --release --example "$example" \
        --target "$host" --target-dir "$target_dir" -- \
        -L "native=$(dirname "$libfuzzer_a")" -l static=fuzzer -l dylib=stdc++
done

work=$(mktemp -d "${TMPDIR:-/tmp}/nhpatch-fuzz-ci.XXXXXX")
mkdir -p "$work/tmp"
keep_work=${FUZZ_KEEP:-0}
cleanup() { if [ "$keep_work" = 1 ]; then echo "fuzz/ci.sh: work directory kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
# Targets that read a path (pack, tasks, checkpoint) write their input under
# $TMPDIR/nhpatch-fuzz-<target>-<pid>/: keep those inside the work directory.
export TMPDIR="$work/tmp"

# Prints a failing input: path, size, hash, hex dump, how to rerun it.
dump_input() {
    local target=$1 f=$2
    echo "--- failing input: $f ($(wc -c <"$f") bytes, sha1 $(sha1sum "$f" | cut -d' ' -f1))"
    echo "--- hex dump (first 65536 bytes; 'xxd -r' rebuilds the file from these lines):"
    if command -v xxd >/dev/null 2>&1; then xxd -l 65536 "$f"; else od -A x -t x1z -v -N 65536 "$f"; fi
    echo "--- reproduce: $bin/$target $f"
}

# Prints what a failed libFuzzer run left behind, then exits non-zero.
report_failure() {
    local target=$1 rc=$2 log=$3 artifacts=$4 shown=0 f
    keep_work=1
    echo
    echo "=================== FUZZ FAILURE: target '$target' (libFuzzer exit status $rc) ==================="
    echo "--- libFuzzer output (last 80 lines of $log):"
    tail -n 80 "$log"
    # Fuzzing writes crash-/timeout-/oom-<sha1> artifacts.
    for f in "$artifacts"/*; do
        [ -f "$f" ] || continue
        case "$(basename "$f")" in slow-unit-*) continue ;; esac
        dump_input "$target" "$f"
        shown=1
    done
    # Replaying files writes none: the culprit is the last file it started.
    if [ "$shown" = 0 ]; then
        f=$(sed -n 's/^Running: //p' "$log" | tail -n 1)
        if [ -n "$f" ] && [ -f "$f" ]; then
            dump_input "$target" "$f"
        else
            echo "--- no artifact under $artifacts and no 'Running: <file>' line: see libFuzzer's output above."
        fi
    fi
    echo "=================== end of failure report for '$target' ==================="
    exit 1
}

# run_libfuzzer <target> <log> <args...>: runs the target binary with its
# artifacts in the work directory; any non-zero exit is a failure.
run_libfuzzer() {
    local target=$1 log=$2 rc=0
    shift 2
    local artifacts="$work/artifacts/$target"
    mkdir -p "$artifacts"
    "$bin/$target" -artifact_prefix="$artifacts/" "$@" >"$log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || report_failure "$target" "$rc" "$log" "$artifacts"
}

# Every committed input of every target: the seeds, the regressions (inputs
# that once crashed, replayed but never mutated: a large one would slow the
# fuzzing down) and any committed corpus file (plus new ones not yet
# committed; never the ignored local corpus).
committed=()
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    while IFS= read -r -d '' f; do
        if [ -f "$f" ]; then committed+=("$f"); fi
    done < <(git ls-files -z --cached --others --exclude-standard -- fuzz/seeds fuzz/regressions fuzz/corpus)
else
    while IFS= read -r -d '' f; do committed+=("$f"); done < <(find fuzz/seeds fuzz/regressions -type f -print0 | sort -z)
fi
[ "${#committed[@]}" -gt 0 ] || die "no committed seed files found under fuzz/seeds"

for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || die "no binary for target '$t' at $bin/$t (FUZZ_TARGETS='${FUZZ_TARGETS:-}'?)"
    ls fuzz/seeds/"$t"/* >/dev/null 2>&1 || die "target '$t' has no seeds in fuzz/seeds/$t (cargo run --manifest-path fuzz/Cargo.toml --example make_seeds)"
done

stamp "replaying ${#committed[@]} committed seed/corpus files through each of ${#targets[@]} targets"
for t in "${targets[@]}"; do
    log="$work/replay-$t.log"
    run_libfuzzer "$t" "$log" -timeout="$timeout" -rss_limit_mb=2048 -malloc_limit_mb=1024 "${committed[@]}"
    echo "  $t: $(grep -c '^Running: ' "$log") files, no failure"
done

is_kernel() { case " ${kernels[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
want() { if is_kernel "$1"; then echo "$kernel_seconds"; else echo "$fuzz_seconds"; fi; }
# Readers first, then gemm and conv, in the order given.
order=()
for t in "${targets[@]}"; do if ! is_kernel "$t"; then order+=("$t"); fi; done
for t in "${targets[@]}"; do if is_kernel "$t"; then order+=("$t"); fi; done
# Seconds a run takes beyond -max_total_time (start-up, loading the seeds).
overhead=2

for i in "${!order[@]}"; do
    t=${order[$i]}
    seconds=$(want "$t")
    [ "$seconds" -gt 0 ] || continue
    if [ "$budget" -gt 0 ]; then
        wanted=0
        left=0
        for u in "${order[@]:$i}"; do wanted=$((wanted + $(want "$u"))); left=$((left + 1)); done
        avail=$((budget - (SECONDS - start) - overhead * left))
        if [ "$avail" -lt "$wanted" ]; then
            seconds=$((seconds * (avail > 0 ? avail : 0) / wanted))
            [ "$seconds" -ge "$min_seconds" ] || seconds=$min_seconds
            echo "  (budget: ${avail}s left for ${wanted}s of fuzzing: $t gets ${seconds}s of its $(want "$t")s)"
        fi
    fi
    extra=()
    # pack's smallest valid seed is 36 KB.
    if [ "$t" = pack ]; then extra=(-max_len=65536); fi
    corpus="$work/corpus/$t"
    mkdir -p "$corpus"
    log="$work/fuzz-$t.log"
    stamp "fuzzing $t for ${seconds}s"
    run_libfuzzer "$t" "$log" "$corpus" "fuzz/seeds/$t" -max_total_time="$seconds" -timeout="$timeout" \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 "${extra[@]}"
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)
    echo "  $t: ${done_line:-no 'Done' line}; last status: ${last:-none}"
done

stamp "fuzz step passed: ${#targets[@]} targets replayed and fuzzed, no crash"
if [ "$budget" -gt 0 ] && [ $((SECONDS - start)) -gt "$budget" ]; then
    echo "fuzz/ci.sh: warning: took $((SECONDS - start))s, over FUZZ_BUDGET=${budget}s (the builds, or the ${min_seconds}s floor per target)"
fi
