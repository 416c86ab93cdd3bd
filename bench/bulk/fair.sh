#!/usr/bin/env bash
# Scenario 5: fairness. holdfast cp shares the bottleneck with one ordinary
# TCP flow (iperf3 -P 1, cubic) started at the same moment; both flows'
# rates are reported, for holdfast's default (several connections) and
# for --fair (one connection: one flow's share).
# Usage: bench/bulk/fair.sh  (RATE=100Mbit RTT=40ms SIZE=96M RUNS=3)
. "$(dirname "$0")/common.sh"
need iperf3 python3 go ip
RATE=${RATE:-100Mbit}; RTT=${RTT:-40ms}; SIZE=${SIZE:-96M}
build
machine
lab_up bkfair "rate $RATE, rtt $RTT"
head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
BYTES=$(stat -c %s "$WORK/src.bin")
mkdir -p "$WORK/recv"
echo "file: $BYTES bytes, RUNS=$RUNS, cubic for both flows"
$H1 "$HF" serve --state "$WORK/state" --listen $A1:7470 --root "$WORK/recv" 2>"$WORK/serve.log" & PIDS+=($!)
$H1 iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
sleep 1

run() { # holdfast flags -> "holdfast_bps iperf_bps"
	rm -f "$WORK/recv/dst.bin"
	# iperf3 runs as long as holdfast is expected to, so both share the
	# bottleneck for the whole copy.
	$H0 iperf3 -c $A1 -p 5201 -P 1 -C cubic -t "${SECS:-12}" -J > "$WORK/iperf.json" &
	local ip=$!
	$H0 "$HF" cp --state "$WORK/state" --no-progress --json --cc cubic "$@" "$WORK/src.bin" $A1:7470:/dst.bin > "$WORK/rep.json"
	wait $ip
	python3 -c "import json; d=json.load(open('$WORK/rep.json')); i=json.load(open('$WORK/iperf.json')); print(d['goodput_bits_per_sec'], i['end']['sum_received']['bits_per_second'], d['seconds'], d['max_streams_used'])"
}

declare -A HR IR
for i in $(seq "$RUNS"); do
	for mode in default fair; do
		if [ $mode = fair ]; then r=$(run --fair); else r=$(run); fi
		set -- $r
		HR[$mode]+="$1 "; IR[$mode]+="$2 "
		echo "run $i $mode: holdfast $(python3 -c "print('%.1f' % ($1/1e6))") Mbit/s over $3 s with up to $4 connections; competing flow $(python3 -c "print('%.1f' % ($2/1e6))") Mbit/s" >&2
	done
done
echo
printf "%-9s %22s %24s %8s\n" mode "holdfast median Mbit/s" "TCP flow median Mbit/s" "share"
for mode in default fair; do
	h=$(echo ${HR[$mode]} | tr ' ' '\n' | median); f=$(echo ${IR[$mode]} | tr ' ' '\n' | median)
	python3 -c "import sys; n,h,f=sys.argv[1],*map(float,sys.argv[2:4]); print('%-9s %22.1f %24.1f %7.0f%%' % (n, h/1e6, f/1e6, 100*h/(h+f)))" $mode "$h" "$f"
done
echo "(the competing flow's rate is over its whole ${SECS:-12} s run; holdfast's over its copy)"
