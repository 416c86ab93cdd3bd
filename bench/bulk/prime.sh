#!/usr/bin/env bash
# Scenario 3: a 20 MiB transfer on a fresh pool vs a primed pool, on the
# scenario 1 path. Usage: bench/bulk/prime.sh  (RATE=200Mbit RTT=100ms LOSS=0.1% SIZE=20M RUNS=5)
. "$(dirname "$0")/common.sh"
need python3 go ip
RATE=${RATE:-200Mbit}; RTT=${RTT:-100ms}; LOSS=${LOSS:-0.1%}; SIZE=${SIZE:-20M}; RUNS=${RUNS:-5}
build
(cd "$ROOT_DIR" && go build -o "$WORK/prime" ./bench/bulk/prime)
machine
lab_up bkprm "rate $RATE, rtt $RTT, loss $LOSS"
head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
mkdir -p "$WORK/recv"
CCS=${CCS:-auto cubic}
echo "file: $(stat -c %s "$WORK/src.bin") bytes, 4 connections, RUNS=$RUNS, congestion control: $CCS"
$H1 "$HF" serve --state "$WORK/state" --listen $A1:7470 --root "$WORK/recv" 2>"$WORK/serve.log" & PIDS+=($!)
sleep 1
# The kernel restarts an idle connection's window (net.ipv4.tcp_slow_start_after_idle,
# per namespace, 1 by default): a pool keeps its windows only with it at 0.
for ssai in 1 0; do
	$H0 sysctl -qw net.ipv4.tcp_slow_start_after_idle=$ssai
	for cc in $CCS; do
		echo
		echo "## sender's tcp_slow_start_after_idle=$ssai, --cc $cc"
		$H0 "$WORK/prime" -state "$WORK/state" -peer $A1:7470 -src "$WORK/src.bin" -runs "$RUNS" -streams 4 -cc "$cc"
		cmp -s "$WORK/src.bin" "$WORK/recv/prime-pooled.bin" && echo "(both copies verified)"
	done
done
