#!/usr/bin/env bash
# One step of `cargo xtask bench scale` by hand, for profiling: three `envelope-backend --plain`,
# lb-mio with one worker and plain backends, `lb-loadgen` over 8 connections with the bench's
# flags. Prints the load generator's summary and the worker thread's user and system CPU per
# completed call (from /proc/PID/task/TID/stat, clock ticks: about ±1 tick of noise per scope).
#
#   xtask/scripts/scale-step.sh [RATE] [SECONDS] [plain|strace|perf|stat] [extra lb-mio flags...]
#
# `strace` counts the worker's system calls for 2 s of the run (`strace -c -f`), `perf` records
# 2 s of it (`perf record -g`; PERFOPT overrides `-g`, e.g. "--call-graph dwarf,16384 -F 1000"),
# `stat` runs `perf stat` over 2 s. BIN names the folder of the binaries (target/release). The
# output stays in the printed folder. Everything listens on 127.0.0.1.
set -euo pipefail
rate=${1:-20000}; secs=${2:-5}; mode=${3:-plain}; shift $(( $# < 3 ? $# : 3 ))
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN:-$root/target/release}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
backends=()
for i in 1 2 3; do
    port=$((base + i))
    "$bin/envelope-backend" --plain --name "b$i" --listen "127.0.0.1:$port" \
        >"$work/b$i.out" 2>"$work/b$i.err" &
    pids+=($!)
    backends+=(--backend "127.0.0.1:$port")
done
sleep 0.5
listen=127.0.0.1:$((base + 10))
"$bin/lb-mio" --listen "$listen" --advertise "$listen" --workers 1 --algorithm round-robin \
    --log-level info "${backends[@]}" "$@" >"$work/lb.out" 2>"$work/lb.err" &
lb=$!
pids+=($lb)
for _ in $(seq 100); do
    [ "$(grep -c 'backend up' "$work/lb.err" || true)" -ge 3 ] && break
    sleep 0.1
done
loadgen() {
    "$bin/lb-loadgen" --target "$listen" --connections 8 --rate "$1" --duration "$2" \
        --hold 100ms --timeout 2s --retransmit-every 0
}
loadgen 2000 1s >"$work/warm.out" 2>&1
sleep 0.5
tid=
for t in /proc/$lb/task/*; do
    grep -q siplb-worker "$t/comm" && tid=${t##*/}
done
ticks() { awk '{print $14, $15}' "/proc/$lb/task/$tid/stat"; }
read -r u0 s0 < <(ticks)
aux=
case $mode in
    strace) (sleep 1; timeout -s INT 2 strace -c -f -p "$lb" -o "$work/strace.txt") & aux=$! ;;
    perf) (sleep 1; perf record ${PERFOPT:--g} -t "$tid" -o "$work/perf.data" -- sleep 2 \
        >/dev/null 2>&1) & aux=$! ;;
    stat) (sleep 1; perf stat -t "$tid" -o "$work/stat.txt" -- sleep 2) & aux=$! ;;
    plain) ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
loadgen "$rate" "${secs}s" >"$work/lg.out" 2>"$work/lg.err"
read -r u1 s1 < <(ticks)
[ -n "$aux" ] && wait "$aux"
grep calls_ok "$work/lg.out"
ok=$(grep -o 'calls_ok=[0-9]*' "$work/lg.out" | cut -d= -f2)
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v ok="$ok" -v tk="$(getconf CLK_TCK)" 'BEGIN {
    printf "worker_user_us_per_call=%.2f worker_sys_us_per_call=%.2f worker_us_per_call=%.2f\n",
        u / tk * 1e6 / ok, s / tk * 1e6 / ok, (u + s) / tk * 1e6 / ok }'
echo "loadavg=$(cut -d' ' -f1 /proc/loadavg) output=$work"
