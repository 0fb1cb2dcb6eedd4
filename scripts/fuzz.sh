#!/usr/bin/env bash
# Coverage-guided fuzzing of the native code (libFuzzer, ASan + UBSan).
#
#   scripts/fuzz.sh [--seconds N] [target...] [-- libFuzzer-flag...]
#
# For each target (bridger/native/fuzz/fuzz_<name>.c, every one unless named;
# "segment" and "fuzz_segment" both name fuzz_segment.c):
#   1. build it with clang -fsanitize=fuzzer,address,undefined, linked with
#      every bridger/native/src/bn_*.c but the bindings (bn_py_*.c,
#      bn_module.c; compiled once per run into build/fuzz/lib/) and
#      libsodium, into build/fuzz/<name>;
#   2. replay every file in tests/native/crashes/<name>/ once: any failure
#      there is a regression;
#   3. fuzz for N seconds (default 30) from a scratch corpus, build/fuzz/
#      corpus/<name>/, seeded with tests/native/corpus/<name>/ (the checked-in
#      seeds are only read, never grown); a crash, leak, timeout or sanitizer
#      report stops it and leaves the input in build/fuzz/artifacts/<name>/;
#   4. print the run's executions and coverage (libFuzzer's final stats).
# Exits 1 when any target failed, 2 on bad usage or no clang.  Flags after
# `--` go to libFuzzer as they are (e.g. -jobs=4 -workers=4 for a long run;
# then its per-job logs are in build/fuzz/work/<name>/).  docs/native.md
# tells how to run it and how a crash becomes a regression file.
#
# --harnesses DIR, --corpora DIR, --crashes DIR and --out DIR replace those
# four places (tests/native/test_fuzz.py checks this script on its own
# throwaway harnesses that way).
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
root=$PWD

seconds=30
harnesses=$root/bridger/native/fuzz
corpora=$root/tests/native/corpus
crashes=$root/tests/native/crashes
out=$root/build/fuzz
src=$root/bridger/native/src
names=()
extra=()
usage() { echo "usage: scripts/fuzz.sh [--seconds N] [target...] [-- libFuzzer-flag...]" >&2; exit 2; }
while (($#)); do
    case $1 in
        --seconds) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; seconds=$2; shift 2 ;;
        --harnesses|--corpora|--crashes|--out)
            [ -n "${2:-}" ] || usage
            dir=$(cd "$here" && mkdir -p "$2" && cd "$2" && pwd)
            case $1 in
                --harnesses) harnesses=$dir ;; --corpora) corpora=$dir ;;
                --crashes) crashes=$dir ;; --out) out=$dir ;;
            esac
            shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) names+=("${1#fuzz_}"); shift ;;
    esac
done

if ! command -v clang >/dev/null; then
    echo "fuzz: clang not found (scripts/setup.sh installs it)" >&2
    exit 2
fi

if ((${#names[@]} == 0)); then
    shopt -s nullglob
    for f in "$harnesses"/fuzz_*.c; do
        n=${f##*/fuzz_}
        names+=("${n%.c}")
    done
    shopt -u nullglob
    if ((${#names[@]} == 0)); then
        echo "fuzz: no targets in ${harnesses#"$root"/}/ (fuzz_*.c): nothing to do"
        exit 0
    fi
fi
for n in "${names[@]}"; do
    [ -f "$harnesses/fuzz_$n.c" ] || { echo "fuzz: no such target: $harnesses/fuzz_$n.c" >&2; exit 2; }
done

# The native code under test: the pure C parts, not the CPython bindings.
lib=()
shopt -s nullglob
for f in "$src"/bn_*.c; do
    case ${f##*/} in bn_py_*.c|bn_module.c) ;; *) lib+=("$f") ;; esac
done
shopt -u nullglob

cflags=(-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -I "$src")
# Leaks are reported; a UBSan report aborts (with its stack) like an ASan one.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
runflags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

mkdir -p "$out"
failed=()
summary=()

# The code under test is compiled once per run (instrumented for coverage and
# the sanitizers, without libFuzzer's main), then linked into every harness.
objs=()
rm -rf "$out/lib"
mkdir -p "$out/lib"
echo "fuzz: building the code under test (${#lib[@]} files)"
for f in "${lib[@]}"; do
    o=$out/lib/$(basename "${f%.c}").o
    if ! clang "${cflags[@]/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,}" -c "$f" -o "$o"; then
        echo "fuzz: $f does not build" >&2
        exit 1
    fi
    objs+=("$o")
done

for n in "${names[@]}"; do
    bin=$out/$n
    log=$out/$n.log
    echo "fuzz: $n: building"
    if ! clang "${cflags[@]}" "$harnesses/fuzz_$n.c" "${objs[@]}" -lsodium -o "$bin"; then
        failed+=("$n (build)")
        summary+=("$n: BUILD FAILED")
        continue
    fi

    shopt -s nullglob dotglob
    regressions=("$crashes/$n"/*)
    shopt -u nullglob dotglob
    if ((${#regressions[@]})); then
        echo "fuzz: $n: replaying ${#regressions[@]} crash regression(s) from ${crashes#"$root"/}/$n/"
        if ! "$bin" "${runflags[@]}" "${regressions[@]}" >"$out/$n.replay.log" 2>&1; then
            tail -n 40 "$out/$n.replay.log" >&2
            echo "fuzz: $n: a crash regression fails again (log: $out/$n.replay.log)" >&2
            failed+=("$n (regression)")
            summary+=("$n: REGRESSION FAILED")
            continue
        fi
    fi

    # A scratch corpus: kept between runs (so a long run goes on where the
    # last stopped; rm -rf build/fuzz to start over), seeded every time.
    corpus=$out/corpus/$n
    artifacts=$out/artifacts/$n
    work=$out/work/$n
    rm -rf "$work"
    mkdir -p "$corpus" "$artifacts" "$work"
    seeds=0
    if [ -d "$corpora/$n" ]; then
        cp -R "$corpora/$n/." "$corpus/"
        seeds=$(find "$corpora/$n" -type f | wc -l)
    fi
    echo "fuzz: $n: fuzzing for ${seconds}s ($seeds seed(s))"
    rc=0
    (cd "$work" && "$bin" "${runflags[@]}" -max_total_time="$seconds" \
        -artifact_prefix="$artifacts/" "${extra[@]}" "$corpus") >"$log" 2>&1 || rc=$?
    if [ "${#extra[@]}" -gt 0 ] && grep -q -- '-jobs=\|-workers=' <<<"${extra[*]}"; then
        cat "$work"/fuzz-*.log >>"$log" 2>/dev/null || true
    fi
    # The last stats line (#N DONE/pulse/NEW... cov: ft: corp: exec/s: rss:).
    stats=$(grep -E "^#[0-9]+" "$log" | tail -n 1 | tr -s "\t " "  " || true)
    execs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -n 1 | awk '{print $2}' || true)
    if ((rc != 0)) || grep -qE '^(==[0-9]+==ERROR|SUMMARY: (Address|Undefined|Leak)Sanitizer)|runtime error:' "$log"; then
        tail -n 60 "$log" >&2
        echo "fuzz: $n: FAILED (exit $rc; log: $log; input in $artifacts/)" >&2
        failed+=("$n")
        summary+=("$n: FAILED after ${execs:-?} executions; $stats")
        continue
    fi
    summary+=("$n: ok, ${execs:-?} executions in ${seconds}s; $stats")
done

echo "fuzz: summary"
for line in "${summary[@]}"; do
    echo "  $line"
done
if ((${#failed[@]})); then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
