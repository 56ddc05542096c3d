#!/usr/bin/env bash
# User-space instructions per call of a siplb binary under the peer benchmark's traffic:
# three SIPp UAS backends, the balancer under callgrind, one SIPp UAC (one TCP connection).
# Counters are zeroed once the balancer is up, so start-up is not counted.
#
#   xtask/scripts/callgrind-peer.sh [lb-mio|lb-tokio] [CALLS] [RATE] [extra siplb flags...]
#
# Needs valgrind and sipp; everything listens on 127.0.0.1. Prints `ir_per_call=N`.
set -euo pipefail
lb=${1:-lb-mio}; calls=${2:-2000}; rate=${3:-200}; shift $(( $# < 3 ? $# : 3 ))
root=$(cd "$(dirname "$0")/../.." && pwd)
scen=$root/xtask/scenarios
bin=$root/target/release/$lb
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

backends=()
for port in 25071 25072 25073; do
    sipp -sf "$scen/uas_rr.xml" -t t1 -i 127.0.0.1 -bind_local -nostdin -p $port \
        >"$work/uas$port.out" 2>&1 &
    pids+=($!)
    backends+=(--backend "127.0.0.1:$port,mode=plain")
done
sleep 1
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" \
    --listen 127.0.0.1:25060 --advertise 127.0.0.1:25060 --algorithm round-robin \
    "${backends[@]}" "$@" 2>"$work/lb.err" &
lb_pid=$!
pids+=($lb_pid)
for _ in $(seq 100); do
    [ "$(grep -c 'backend up' "$work/lb.err" || true)" -ge 3 ] && break
    sleep 0.2
done
callgrind_control -z "$lb_pid" >/dev/null
sipp -sf "$scen/uac_rr.xml" 127.0.0.1:25060 -t t1 -i 127.0.0.1 -bind_local -nostdin \
    -p 25080 -m "$calls" -r "$rate" -l "$calls" -recv_timeout 5000 \
    -trace_stat -stf "$work/uac.csv" >"$work/uac.out" 2>&1 || true
ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c}' "$work/uac.csv")
callgrind_control -d "$lb_pid" >/dev/null
sleep 1
ir=$(awk '/^(summary|totals):/{print $2}' "$work"/cg.out.* | head -n 1)
echo "lb=$lb calls_ok=$ok ir_total=$ir ir_per_call=$(( ir / (ok > 0 ? ok : 1) ))"
